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

// A clock on which every reading is `step` after the one before: each lz4 pass of a
// StreamCompressor takes exactly `step`.
class SteppingClock final : public Clock {
 public:
  explicit SteppingClock(absl::Duration step) : step_(step) {}
  absl::Time Now() const override { return now_ += step_; }

 private:
  const absl::Duration step_;
  mutable absl::Time now_ = absl::UnixEpoch();
};

constexpr size_t kChunk = 64 << 10;

// How many of `n` messages of `data` were sent compressed, the plain ones written at 1 ns
// a byte.
int CompressedOf(StreamCompressor& c, const std::string& data, int n) {
  int compressed = 0;
  std::string out;
  for (int i = 0; i < n; ++i) {
    if (c.Compress(data, &out)) {
      ++compressed;
    } else {
      c.Written(data.size(), absl::Nanoseconds(static_cast<int64_t>(data.size())));
    }
  }
  return compressed;
}

TEST(StreamCompressor, NothingIsCompressedBeforeTheWireIsMeasured) {
  SteppingClock clock(absl::Microseconds(1));
  StreamCompressor c(clock);
  std::string out;
  EXPECT_FALSE(c.Compress(Text(kChunk), &out));
  c.Written(StreamCompressor::kMinMeasuredBytes - 1, absl::Seconds(1));  // Too short to say.
  EXPECT_FALSE(c.Compress(Text(kChunk), &out));
  c.Written(kChunk, absl::Seconds(1));
  EXPECT_TRUE(c.Compress(Text(kChunk), &out));
}

// Text shrinks to under a fifth: at 10 ns a byte on the wire, 50 KiB saved are worth
// 500 us, more than the 100 us lz4 takes; at 1 ns a byte they are not.
TEST(StreamCompressor, CompressesWhileTheWireIsSlowerThanLz4AndBacksOffWhenItIsNot) {
  const std::string text = Text(kChunk);
  SteppingClock clock(absl::Microseconds(100));
  StreamCompressor c(clock);
  c.Written(kChunk, absl::Nanoseconds(10 * kChunk));
  std::string out;
  for (int i = 0; i < 100; ++i) ASSERT_TRUE(c.Compress(text, &out)) << i;

  StreamCompressor fast(clock);
  fast.Written(kChunk, absl::Nanoseconds(kChunk));
  // One try, then 1, 2, 4 ... 64 plain messages between tries: 7 + 1,000 / 65 tries.
  const int tried = CompressedOf(fast, text, 1000);
  EXPECT_GE(tried, 1000 / (StreamCompressor::kMaxSkip + 1));
  EXPECT_LE(tried, 8 + 1000 / (StreamCompressor::kMaxSkip + 1));
}

TEST(StreamCompressor, RandomBytesAreTriedOnceInKMaxSkipMessages) {
  SteppingClock clock(absl::Microseconds(1));
  StreamCompressor c(clock);
  c.Written(kChunk, absl::Milliseconds(10));  // However slow the wire, nothing is saved.
  const std::string random = testing::RandomBytes(kChunk);
  std::string out = "untouched";
  int tries = 0;
  for (int i = 0; i < 1000; ++i) {
    // A text message in its place is compressed only on a try: count them that way.
    StreamCompressor probe = c;
    if (probe.Compress(Text(kChunk), &out)) ++tries;
    EXPECT_FALSE(c.Compress(random, &out));
  }
  EXPECT_LE(tries, 8 + 1000 / (StreamCompressor::kMaxSkip + 1));
}

TEST(StreamCompressor, AReaderFallingBehindTurnsCompressionBackOn) {
  const std::string text = Text(kChunk);
  SteppingClock clock(absl::Microseconds(100));
  StreamCompressor c(clock);
  c.Written(kChunk, absl::Nanoseconds(kChunk));  // Quick: lz4 does not pay.
  CompressedOf(c, text, 1000);
  // The reader slows down: writes of plain messages take 20 ns a byte from now on.
  std::string out;
  int plain = 0;
  while (!c.Compress(text, &out)) {
    c.Written(kChunk, absl::Nanoseconds(20 * kChunk));
    ASSERT_LE(++plain, StreamCompressor::kMaxSkip + 1);
  }
  for (int i = 0; i < 10; ++i) EXPECT_TRUE(c.Compress(text, &out)) << i;
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
