// lz4 frame compression of command output (the lz4 frame format, so `lz4 -d` reads it).
// Thread-safe (no shared state).
#pragma once

#include <cstddef>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "core/clock.h"

namespace execd::core {

// Output shorter than this is sent as is: below it the frame's header and the per-message
// work cost more than they save (see BENCHMARKS.md, lz4 break-even).
inline constexpr size_t kMinCompressBytes = 512;

// An lz4 frame of `data` (fast mode, level 1, independent 64 KiB blocks).
std::string Lz4Compress(absl::string_view data);

// `data` compressed when that is worth it: at least kMinCompressBytes and the frame at
// most 7/8 of the input. Returns false (and leaves `out` alone) otherwise.
bool Lz4CompressIfSmaller(absl::string_view data, std::string* out);

// Decides, message by message, whether one stream's output is worth compressing, from
// costs it measures on that stream. Compressing n bytes takes n / (lz4's rate on this
// output) and saves a fraction of them on the wire, so it pays only while the wire drains
// slower than that fraction of lz4's rate: for a reader far away or falling behind, or
// output lz4 shrinks to almost nothing; on loopback to a quick reader, text goes faster
// as it is. The wire's rate is measured on plain messages (Written), lz4's on each try.
// A try that did not pay is followed by 1, 2, 4 ... kMaxSkip plain messages before the
// next, so a stream for which lz4 never pays (random bytes) costs one lz4 pass in
// kMaxSkip messages, and one whose output changes is re-judged within as many; a wire that
// slows down so much that the last try would have paid is re-judged at the next message.
// Not thread-safe: one per stream, used by the thread that writes it.
class StreamCompressor {
 public:
  static constexpr int kMaxSkip = 64;
  // Plain messages at least this long measure the wire (shorter ones measure the
  // per-message cost instead, which compressing does not save).
  static constexpr size_t kMinMeasuredBytes = 16 << 10;

  explicit StreamCompressor(const Clock& clock = MonotonicClock::Get()) : clock_(clock) {}

  // True when `data` was compressed into `*out`; false (`out` untouched) when it is to go
  // as it is.
  bool Compress(absl::string_view data, std::string* out);
  // A plain message of `bytes` took `took` from the start of its write to its end.
  void Written(size_t bytes, absl::Duration took);

 private:
  // By the last try's figures and the wire as measured now.
  bool Pays() const;

  const Clock& clock_;
  double wire_ns_per_byte_ = -1;  // Moving average; negative until measured.
  // The last try: lz4's time and the bytes it saved, per byte of input.
  double compress_ns_per_byte_ = 0;
  double saved_per_byte_ = 0;
  int skip_ = 0;     // Plain messages still to send before the next try.
  int backoff_ = 0;  // Plain messages after the next try that does not pay.
};

// The bytes of an lz4 frame; INVALID_ARGUMENT if it is not one, or if it would be larger
// than `max_bytes`.
absl::StatusOr<std::string> Lz4Decompress(absl::string_view frame, size_t max_bytes);
// The same into `out`, reusing its buffer (no allocation or zero-filling when it is
// already large enough: for a caller that decompresses chunk after chunk).
absl::Status Lz4DecompressInto(absl::string_view frame, size_t max_bytes, std::string* out);

}  // namespace execd::core
