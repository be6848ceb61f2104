#include "core/compress.h"

#include <lz4frame.h>

#include <cstdio>
#include <string>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/support/subprocess.h"

namespace execd::core {
namespace {

std::string Text(size_t n) {
  std::string s;
  for (int i = 0; s.size() < n; ++i) absl::StrAppend(&s, "line ", i, ": some build output\n");
  s.resize(n);
  return s;
}

TEST(Lz4, RoundTripsAnySize) {
  for (size_t n : {size_t{0}, size_t{1}, size_t{511}, size_t{70000}, size_t{3} << 20}) {
    for (const std::string& data : {Text(n), testing::RandomBytes(n)}) {
      auto back = Lz4Decompress(Lz4Compress(data), data.size());
      ASSERT_TRUE(back.ok()) << n << ": " << back.status();
      EXPECT_EQ(*back, data) << n;
    }
  }
}

TEST(Lz4, CompressesOnlyWhenItPays) {
  std::string out = "untouched";
  EXPECT_FALSE(Lz4CompressIfSmaller(Text(kMinCompressBytes - 1), &out));   // Too small.
  EXPECT_FALSE(Lz4CompressIfSmaller(testing::RandomBytes(100000), &out));  // Incompressible.
  EXPECT_EQ(out, "untouched");
  ASSERT_TRUE(Lz4CompressIfSmaller(Text(100000), &out));
  EXPECT_LT(out.size(), 100000u / 4);
}

TEST(Lz4, BadFramesAreErrorsNotCrashes) {
  const std::string frame = Lz4Compress(Text(100000));
  EXPECT_FALSE(Lz4Decompress("not lz4 at all", 1 << 20).ok());
  EXPECT_FALSE(Lz4Decompress(frame.substr(0, frame.size() / 2), 1 << 20).ok());  // Truncated.
  EXPECT_FALSE(Lz4Decompress(frame + "x", 1 << 20).ok());                        // Trailing.
  auto too_big = Lz4Decompress(frame, 1000);  // A decompression bomb is refused.
  EXPECT_FALSE(too_big.ok());
  EXPECT_THAT(too_big.status().message(), ::testing::HasSubstr("more than 1000"));
  std::string flipped = frame;
  flipped[flipped.size() / 2] ^= 0x55;
  auto corrupt = Lz4Decompress(flipped, 1 << 20);  // May decode to garbage, never crash.
  if (corrupt.ok()) {
    EXPECT_NE(*corrupt, Text(100000));
  }
}

TEST(Lz4, AHeaderClaimingGigabytesAllocatesNothingLikeIt) {
  // A frame header declaring 1 GiB of content, then the end mark: no data at all.
  LZ4F_preferences_t prefs{};
  prefs.frameInfo.contentSize = size_t{1} << 30;
  LZ4F_cctx* cctx = nullptr;
  ASSERT_FALSE(LZ4F_isError(LZ4F_createCompressionContext(&cctx, LZ4F_VERSION)));
  std::string frame(LZ4F_HEADER_SIZE_MAX, '\0');
  size_t header = LZ4F_compressBegin(cctx, frame.data(), frame.size(), &prefs);
  LZ4F_freeCompressionContext(cctx);
  ASSERT_FALSE(LZ4F_isError(header));
  frame.resize(header);
  frame.append(4, '\0');
  std::string out;
  absl::Status s = Lz4DecompressInto(frame, size_t{1} << 32, &out);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_LT(out.capacity(), size_t{1} << 20);
}

TEST(Lz4, TheLz4ToolReadsOurFrames) {
  testing::ScopedTempDir dir("lz4");
  const std::string path = dir.path() + "/out.lz4";
  const std::string data = Text(200000);
  FILE* f = fopen(path.c_str(), "wb");
  ASSERT_NE(f, nullptr);
  std::string frame = Lz4Compress(data);
  ASSERT_EQ(fwrite(frame.data(), 1, frame.size(), f), frame.size());
  fclose(f);
  testing::ProcessResult r = testing::RunProcess({"/usr/bin/lz4", "-d", "-c", path});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, data);
}

}  // namespace
}  // namespace execd::core
