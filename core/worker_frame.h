// The framing of the persistent-worker protocol (protos/execd/worker/v1/worker.proto): each
// message is its size as a base-128 varint, then that many bytes of it. Pure functions over
// buffers, apart from PersistentWorker's pipes, so a fuzzer can feed them a hostile
// worker's output. Thread-safe (no shared state).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "execd/worker/v1/worker.pb.h"
#include "google/protobuf/message_lite.h"

namespace execd::core {

// Appends `message` (a WorkRequest; a WorkResponse in tests), framed, to `out`.
void AppendFrame(const google::protobuf::MessageLite& message, std::string& out);

// Reads the frame at the front of `in` (bytes a worker wrote to its stdout) into
// `response`. Returns the bytes it took, or 0 when `in` does not yet hold a whole frame;
// INTERNAL when the bytes break the protocol: a header over 10 bytes, a frame over
// `max_frame_bytes` (at most INT_MAX, what protobuf parses), or a body that is not a
// WorkResponse.
absl::StatusOr<size_t> ReadResponseFrame(absl::string_view in, int64_t max_frame_bytes,
                                         worker::v1::WorkResponse& response);

}  // namespace execd::core
