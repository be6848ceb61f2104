// lz4 frame compression of command output (the lz4 frame format, so `lz4 -d` reads it).
// Thread-safe (no shared state).
#pragma once

#include <cstddef>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace execd::core {

// Output shorter than this is sent as is: below it the frame's header and the per-message
// work cost more than they save (see BENCHMARKS.md, lz4 break-even).
inline constexpr size_t kMinCompressBytes = 512;

// An lz4 frame of `data` (fast mode, level 1, independent 64 KiB blocks).
std::string Lz4Compress(absl::string_view data);

// `data` compressed when that is worth it: at least kMinCompressBytes and the frame at
// most 7/8 of the input. Returns false (and leaves `out` alone) otherwise.
bool Lz4CompressIfSmaller(absl::string_view data, std::string* out);

// The bytes of an lz4 frame; INVALID_ARGUMENT if it is not one, or if it would be larger
// than `max_bytes`.
absl::StatusOr<std::string> Lz4Decompress(absl::string_view frame, size_t max_bytes);
// The same into `out`, reusing its buffer (no allocation or zero-filling when it is
// already large enough: for a caller that decompresses chunk after chunk).
absl::Status Lz4DecompressInto(absl::string_view frame, size_t max_bytes, std::string* out);

}  // namespace execd::core
