#include "core/compress.h"

#include <lz4frame.h>

#include <memory>

#include "absl/strings/str_cat.h"

namespace execd::core {
namespace {

LZ4F_preferences_t Preferences() {
  LZ4F_preferences_t p{};
  p.frameInfo.blockSizeID = LZ4F_max64KB;
  p.frameInfo.blockMode = LZ4F_blockIndependent;
  p.compressionLevel = 1;
  return p;
}

}  // namespace

std::string Lz4Compress(absl::string_view data) {
  const LZ4F_preferences_t prefs = Preferences();
  std::string out(LZ4F_compressFrameBound(data.size(), &prefs), '\0');
  size_t n = LZ4F_compressFrame(out.data(), out.size(), data.data(), data.size(), &prefs);
  // The bound is exact for these preferences; an error cannot happen with it.
  out.resize(LZ4F_isError(n) ? 0 : n);
  return out;
}

bool Lz4CompressIfSmaller(absl::string_view data, std::string* out) {
  if (data.size() < kMinCompressBytes) return false;
  std::string frame = Lz4Compress(data);
  if (frame.empty() || frame.size() > data.size() / 8 * 7) return false;
  *out = std::move(frame);
  return true;
}

absl::StatusOr<std::string> Lz4Decompress(absl::string_view frame, size_t max_bytes) {
  LZ4F_dctx* raw = nullptr;
  if (LZ4F_isError(LZ4F_createDecompressionContext(&raw, LZ4F_VERSION))) {
    return absl::ResourceExhaustedError("lz4: cannot create a decompression context");
  }
  std::unique_ptr<LZ4F_dctx, size_t (*)(LZ4F_dctx*)> dctx(raw, LZ4F_freeDecompressionContext);
  std::string out;
  const char* in = frame.data();
  size_t left = frame.size();
  char buf[64 << 10];
  size_t hint = 1;
  while (left > 0 && hint != 0) {
    size_t in_size = left;
    size_t out_size = sizeof(buf);
    hint = LZ4F_decompress(dctx.get(), buf, &out_size, in, &in_size, nullptr);
    if (LZ4F_isError(hint)) {
      return absl::InvalidArgumentError(
          absl::StrCat("not a valid lz4 frame: ", LZ4F_getErrorName(hint)));
    }
    if (out.size() + out_size > max_bytes) {
      return absl::InvalidArgumentError(
          absl::StrCat("lz4 frame decompresses to more than ", max_bytes, " bytes"));
    }
    out.append(buf, out_size);
    in += in_size;
    left -= in_size;
    // No progress on either side means the input ended inside a frame.
    if (in_size == 0 && out_size == 0) break;
  }
  if (hint != 0) return absl::InvalidArgumentError("lz4 frame is truncated");
  if (left != 0) return absl::InvalidArgumentError("trailing bytes after the lz4 frame");
  return out;
}

}  // namespace execd::core
