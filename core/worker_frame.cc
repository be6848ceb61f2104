#include "core/worker_frame.h"

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace execd::core {
namespace {

void AppendVarint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out.push_back(static_cast<char>(v | 0x80));
    v >>= 7;
  }
  out.push_back(static_cast<char>(v));
}

// Decodes a varint at the front of `in`. Returns the number of bytes it took, 0 when more
// bytes are needed, or -1 when it is malformed (over 10 bytes).
int ReadVarint(absl::string_view in, uint64_t& value) {
  value = 0;
  for (size_t i = 0; i < in.size() && i < 10; ++i) {
    value |= static_cast<uint64_t>(static_cast<unsigned char>(in[i]) & 0x7f) << (7 * i);
    if ((static_cast<unsigned char>(in[i]) & 0x80) == 0) return static_cast<int>(i + 1);
  }
  return in.size() >= 10 ? -1 : 0;
}

}  // namespace

void AppendFrame(const google::protobuf::MessageLite& message, std::string& out) {
  std::string body = message.SerializeAsString();
  AppendVarint(out, body.size());
  out += body;
}

absl::StatusOr<size_t> ReadResponseFrame(absl::string_view in, int64_t max_frame_bytes,
                                         worker::v1::WorkResponse& response) {
  uint64_t size;
  int header = ReadVarint(in, size);
  if (header == 0) return 0;
  if (header < 0 || size > static_cast<uint64_t>(max_frame_bytes)) {
    return absl::InternalError(absl::StrCat(
        "broke the protocol: a response frame header of ", header < 0 ? "over 10" : "",
        header < 0 ? " bytes" : absl::StrCat(size, " bytes (limit ", max_frame_bytes, ")"),
        "; is it writing to stdout outside the protocol?"));
  }
  if (in.size() < header + size) return 0;
  if (!response.ParseFromArray(in.data() + header, static_cast<int>(size))) {
    return absl::InternalError(
        "broke the protocol: a response frame is not a WorkResponse; is it writing to stdout "
        "outside the protocol?");
  }
  return header + size;
}

}  // namespace execd::core
