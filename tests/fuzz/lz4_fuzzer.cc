// Fuzzes lz4 frame decompression as execctl does it (Lz4Decompress with a 4 GiB cap) and as
// a streaming client does it (Lz4DecompressInto, one buffer reused chunk after chunk):
// arbitrary bytes give INVALID_ARGUMENT, never a crash or an allocation out of proportion
// to the input. Also checks that compressing the bytes and decompressing gives them back.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "absl/strings/string_view.h"
#include "core/compress.h"

namespace {

void Check(bool ok) {
  if (!ok) std::abort();
}

void CheckDecompress(absl::string_view frame, size_t max_bytes, std::string* reused) {
  absl::StatusOr<std::string> plain = execd::core::Lz4Decompress(frame, max_bytes);
  if (plain.ok()) {
    Check(plain->size() <= max_bytes);
  } else {
    Check(plain.status().code() == absl::StatusCode::kInvalidArgument ||
          plain.status().code() == absl::StatusCode::kResourceExhausted);
    Check(!plain.status().message().empty());
  }
  absl::Status s = execd::core::Lz4DecompressInto(frame, max_bytes, reused);
  Check(s.ok() == plain.ok());
  if (s.ok()) Check(*reused == *plain);
  // Memory in proportion to what the input can decode to (255 times its size), whatever
  // its header claims: growth by doubling at most doubles that.
  std::string fresh;
  (void)execd::core::Lz4DecompressInto(frame, max_bytes, &fresh);
  Check(fresh.capacity() <= 4 * 255 * frame.size() + (256 << 10));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  absl::string_view bytes(reinterpret_cast<const char*>(data), size);
  static std::string* reused = new std::string();
  CheckDecompress(bytes, size_t{1} << 32, reused);  // execctl's cap.
  CheckDecompress(bytes, 1000, reused);             // A small cap, to reach its checks.

  std::string frame = execd::core::Lz4Compress(bytes);
  absl::StatusOr<std::string> back = execd::core::Lz4Decompress(frame, bytes.size());
  Check(back.ok() && *back == bytes);
  return 0;
}
