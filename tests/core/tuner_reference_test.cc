// The reference controllers follow their authors' rules, one window at a time.
#include "tests/core/tuner_reference.h"

#include <memory>

#include "gtest/gtest.h"

namespace execd::testing {
namespace {

using core::ConcurrencyController;
using core::TunerWindow;

constexpr LimitBounds kBounds{.start = 8, .floor = 2, .cap = 64};

// Feeds a controller windows of 500 ms, each with the figures a test gives it.
class Feeder {
 public:
  explicit Feeder(ConcurrencyController& c) : c_(c) {}
  int Window(int in_flight, int64_t completions, absl::Duration mean_rtt, int64_t drops = 0) {
    now_ += absl::Milliseconds(500);
    TunerWindow w;
    w.now = now_;
    w.length = absl::Milliseconds(500);
    w.limit = limit_;
    w.in_flight = in_flight;
    w.completions = completions;
    w.service_time_sum = mean_rtt * completions;
    w.drops = drops;
    w.cores = 2;
    limit_ = c_.Update(w);
    return limit_;
  }
  // The same window `n` times; the last limit.
  int Windows(int n, int in_flight, int64_t completions, absl::Duration mean_rtt) {
    for (int i = 1; i < n; ++i) Window(in_flight, completions, mean_rtt);
    return Window(in_flight, completions, mean_rtt);
  }

 private:
  ConcurrencyController& c_;
  absl::Time now_ = absl::UnixEpoch();
  int limit_ = kBounds.start;
};

const absl::Duration kRtt = absl::Milliseconds(100);

TEST(StaticLimit, NeverMoves) {
  auto c = MakeStaticLimit(5);
  Feeder f(*c);
  EXPECT_EQ(f.Window(5, 20, kRtt, 3), 5);
  EXPECT_EQ(c->name(), "static-5");
}

TEST(Aimd, GrowsByOneWhileHalfUsedAndBacksOffTenPercentOnADrop) {
  auto c = MakeAimd(kBounds);
  Feeder f(*c);
  EXPECT_EQ(f.Window(4, 20, kRtt), 9);
  EXPECT_EQ(f.Window(4, 20, kRtt), 9);  // 4 of 9 is under half
  EXPECT_EQ(f.Window(9, 20, kRtt, /*drops=*/1), 8);
  EXPECT_EQ(f.Window(9, 0, kRtt, /*drops=*/1), 8);  // nothing ended: no sample
}

TEST(Aimd, StaysWithinFloorAndCap) {
  auto c = MakeAimd(kBounds);
  Feeder f(*c);
  for (int i = 0; i < 20; ++i) f.Window(8, 20, kRtt, /*drops=*/1);
  EXPECT_EQ(f.Window(8, 20, kRtt, 1), kBounds.floor);
  EXPECT_EQ(f.Windows(100, 64, 20, kRtt), kBounds.cap);
}

TEST(Vegas, ProbesUpBySixWithoutQueueingAndBacksOffWhenTheQueueExceedsBeta) {
  auto c = MakeVegas(kBounds, 1);
  Feeder f(*c);
  EXPECT_EQ(f.Window(8, 20, kRtt), 8);          // the first rtt is rtt_noload
  EXPECT_EQ(f.Window(8, 20, kRtt), 14);         // queue 0: +beta
  EXPECT_EQ(f.Window(14, 20, kRtt * 2), 13);    // queue 14·(1 - 1/2) = 7 > 6: -1
  EXPECT_EQ(f.Window(13, 20, kRtt * 1.2), 13);  // queue ceil(13/6) = 3: neither < alpha nor > beta
  EXPECT_EQ(f.Window(5, 20, kRtt), 13);         // under half used: no growth
}

TEST(Gradient2, GrowsByItsQueueSizeSmoothedAndShrinksWhenRttOutgrowsTheLongAverage) {
  auto c = MakeGradient2(kBounds);
  Feeder f(*c);
  // Stable rtt: L ← 0.8·L + 0.2·(L + 4), 0.8 a window.
  EXPECT_EQ(f.Windows(20, 64, 20, kRtt), 24);
  // Four times the long average: gradient 0.5 at its clamp, L ← 0.9·L + 0.8.
  EXPECT_EQ(f.Window(64, 20, kRtt * 4), 22);
}

TEST(EnvoyGradient, MeasuresMinRttPinnedThenGrowsByGradientAndHeadroom) {
  auto c = MakeEnvoyGradient(kBounds, 1);
  Feeder f(*c);
  EXPECT_EQ(f.Window(8, 20, kRtt), 3);  // pinned; commands from before the pin still run
  EXPECT_EQ(f.Window(3, 20, kRtt), 3);  // drained: samples count from the next window
  EXPECT_EQ(f.Window(3, 30, kRtt), 3);
  EXPECT_EQ(f.Window(3, 20, kRtt), 8);  // 50 samples: back to the limit before the pin
  // gradient = 1.25·minRTT/sample = 1.25: 10 + √10.
  EXPECT_EQ(f.Window(8, 20, kRtt), 13);
  // Twice the buffered minRTT: gradient 0.5 at its clamp, 6.5 + √6.5.
  EXPECT_EQ(f.Window(13, 20, kRtt * 2.5), 9);
}

TEST(BrpcAuto, IgnoresWindowsWithFewerThanAHundredSamples) {
  auto c = MakeBrpcAuto(kBounds, 1);
  Feeder f(*c);
  EXPECT_EQ(f.Windows(10, 8, 40, kRtt), 8);
}

TEST(BrpcAuto, SetsLittlesLawWithExplorationMargin) {
  auto c = MakeBrpcAuto(kBounds, 1);
  Feeder f(*c);
  EXPECT_EQ(f.Window(8, 100, kRtt), 8);
  // 200 completions in 1 s at 0.1 s: 0.1 × 200 × (1 + 0.3).
  EXPECT_EQ(f.Window(8, 100, kRtt), 26);
}

TEST(SeedTuner, KeepsAVariationOnlyForMoreThanTenPercentMoreThroughput) {
  auto c = MakeSeedTuner(kBounds);
  Feeder f(*c);
  // Measures 8 for four windows, then tries 4, 6, 10 and 12 for a settling window and four.
  EXPECT_EQ(f.Windows(4, 8, 20, kRtt), 4);
  EXPECT_EQ(f.Windows(5, 4, 20, kRtt), 6);
  EXPECT_EQ(f.Windows(5, 6, 20, kRtt), 10);
  EXPECT_EQ(f.Windows(5, 10, 20, kRtt), 12);
  EXPECT_EQ(f.Windows(5, 12, 21, kRtt), 8);  // 5% more: back to 8
  // The next round, after a settling window back at 8.
  EXPECT_EQ(f.Windows(5, 8, 20, kRtt), 4);
  EXPECT_EQ(f.Windows(5, 4, 20, kRtt), 6);
  EXPECT_EQ(f.Windows(5, 6, 20, kRtt), 10);
  EXPECT_EQ(f.Windows(5, 10, 20, kRtt), 12);
  EXPECT_EQ(f.Windows(5, 12, 30, kRtt), 12);  // 50% more: kept
}

TEST(ReferenceControllers, AreSixWithDistinctNames) {
  auto all = ReferenceControllers(kBounds, 1);
  ASSERT_EQ(all.size(), 6u);
  for (size_t i = 0; i < all.size(); ++i) {
    for (size_t j = i + 1; j < all.size(); ++j) EXPECT_NE(all[i]->name(), all[j]->name());
  }
}

}  // namespace
}  // namespace execd::testing
