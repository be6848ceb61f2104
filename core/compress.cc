#include "core/compress.h"

#include <lz4frame.h>

#include <algorithm>
#include <memory>

#include "absl/strings/str_cat.h"

namespace execd::core {
namespace {

LZ4F_preferences_t Preferences(size_t content_size) {
  LZ4F_preferences_t p{};
  // Recorded in the header, so the reader can size its output once and decode into it.
  p.frameInfo.contentSize = content_size;
  p.frameInfo.blockSizeID = LZ4F_max64KB;
  p.frameInfo.blockMode = LZ4F_blockIndependent;
  p.compressionLevel = 1;
  return p;
}

}  // namespace

std::string Lz4Compress(absl::string_view data) {
  const LZ4F_preferences_t prefs = Preferences(data.size());
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

bool StreamCompressor::Compress(absl::string_view data, std::string* out) {
  // Until the wire is measured, nothing says lz4 would pay.
  if (data.size() < kMinCompressBytes || wire_ns_per_byte_ < 0) return false;
  if (skip_ > 0) {
    --skip_;
    return false;
  }
  const absl::Time start = clock_.Now();
  std::string frame = Lz4Compress(data);
  const double compress_ns = absl::ToDoubleNanoseconds(clock_.Now() - start);
  const double size = static_cast<double>(data.size());
  compress_ns_per_byte_ = compress_ns / size;
  saved_per_byte_ = std::max(0.0, size - static_cast<double>(frame.size())) / size;
  if (Pays()) {
    backoff_ = 0;
  } else {
    backoff_ = std::clamp(backoff_ * 2, 1, kMaxSkip);
    skip_ = backoff_;
  }
  // The work is done: a frame that is smaller is sent whether or not the next is tried.
  if (frame.empty() || frame.size() > data.size() / 8 * 7) return false;
  *out = std::move(frame);
  return true;
}

void StreamCompressor::Written(size_t bytes, absl::Duration took) {
  if (bytes < kMinMeasuredBytes) return;
  const double ns_per_byte = absl::ToDoubleNanoseconds(took) / static_cast<double>(bytes);
  // A quarter weight: a few messages follow a change of reader or network.
  wire_ns_per_byte_ =
      wire_ns_per_byte_ < 0 ? ns_per_byte : 0.75 * wire_ns_per_byte_ + 0.25 * ns_per_byte;
  if (Pays()) skip_ = 0;
}

bool StreamCompressor::Pays() const {
  return saved_per_byte_ * wire_ns_per_byte_ > compress_ns_per_byte_;
}

absl::StatusOr<std::string> Lz4Decompress(absl::string_view frame, size_t max_bytes) {
  std::string out;
  absl::Status s = Lz4DecompressInto(frame, max_bytes, &out);
  if (!s.ok()) return s;
  return out;
}

absl::Status Lz4DecompressInto(absl::string_view frame, size_t max_bytes, std::string* result) {
  std::string& out = *result;
  LZ4F_dctx* raw = nullptr;
  if (LZ4F_isError(LZ4F_createDecompressionContext(&raw, LZ4F_VERSION))) {
    return absl::ResourceExhaustedError("lz4: cannot create a decompression context");
  }
  std::unique_ptr<LZ4F_dctx, size_t (*)(LZ4F_dctx*)> dctx(raw, LZ4F_freeDecompressionContext);
  const char* in = frame.data();
  size_t left = frame.size();
  LZ4F_frameInfo_t info{};
  size_t header = left;
  size_t hint = LZ4F_getFrameInfo(dctx.get(), &info, in, &header);
  if (LZ4F_isError(hint)) {
    return absl::InvalidArgumentError(
        absl::StrCat("not a valid lz4 frame: ", LZ4F_getErrorName(hint)));
  }
  in += header;
  left -= header;
  if (info.contentSize > max_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("lz4 frame decompresses to more than ", max_bytes, " bytes"));
  }
  // Decode straight into the result: sized once when the header gives the size, else
  // grown as needed. The size is believed only as far as the input can hold it (an lz4
  // block decodes to at most 255 times its size): a few bytes must not claim gigabytes.
  const size_t first = info.contentSize > 0 ? std::min<size_t>(info.contentSize, left * 255)
                                            : std::min<size_t>(max_bytes, 64 << 10);
  if (out.size() < first) out.resize(first);
  size_t filled = 0;
  while (hint != 0) {
    if (filled == out.size()) {
      // Room for one byte past the limit, to tell "exactly max_bytes" from "more".
      if (out.size() > max_bytes) {
        return absl::InvalidArgumentError(
            absl::StrCat("lz4 frame decompresses to more than ", max_bytes, " bytes"));
      }
      out.resize(std::min(max_bytes + 1, std::max<size_t>(64 << 10, out.size() * 2)));
    }
    size_t in_size = left;
    size_t out_size = out.size() - filled;
    hint = LZ4F_decompress(dctx.get(), out.data() + filled, &out_size, in, &in_size, nullptr);
    if (LZ4F_isError(hint)) {
      return absl::InvalidArgumentError(
          absl::StrCat("not a valid lz4 frame: ", LZ4F_getErrorName(hint)));
    }
    filled += out_size;
    in += in_size;
    left -= in_size;
    if (hint != 0 && left == 0 && out_size == 0) {
      return absl::InvalidArgumentError("lz4 frame is truncated");
    }
  }
  if (left != 0) return absl::InvalidArgumentError("trailing bytes after the lz4 frame");
  if (filled > max_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("lz4 frame decompresses to more than ", max_bytes, " bytes"));
  }
  if (info.contentSize > 0 && filled != info.contentSize) {
    return absl::InvalidArgumentError("lz4 frame content does not match its declared size");
  }
  out.resize(filled);
  return absl::OkStatus();
}

}  // namespace execd::core
