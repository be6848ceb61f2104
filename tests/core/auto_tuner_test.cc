// The auto-tuner's control loop: what it measures between two snapshots, that it applies
// and reports the controller's moves, and that it keeps the limit within its bounds. The
// controller's own choices are tested in the simulator (tuner_test.cc).
#include "core/auto_tuner.h"

#include <string>
#include <utility>
#include <vector>

#include "absl/synchronization/notification.h"
#include "gtest/gtest.h"
#include "tests/support/manual_clock.h"

namespace execd::core {
namespace {

class FakePlant final : public AutoTuner::Plant {
 public:
  Load load() const override { return load_; }
  void SetLimit(int limit) override {
    load_.limit = limit;
    ++sets_;
  }
  Load load_;
  int sets_ = 0;
};

class FakeMetrics final : public Metrics {
 public:
  MetricsTotals Totals() const override {
    absl::MutexLock lock(&mu_);
    return totals_;
  }
  void LimitMoved(bool up, absl::string_view reason) override {
    absl::MutexLock lock(&mu_);
    moves_.push_back(absl::StrCat(up ? "up " : "down ", reason));
  }
  void Set(MetricsTotals totals) {
    absl::MutexLock lock(&mu_);
    totals_ = std::move(totals);
  }
  std::vector<std::string> moves() const {
    absl::MutexLock lock(&mu_);
    return moves_;
  }

 private:
  mutable absl::Mutex mu_;
  MetricsTotals totals_;
  std::vector<std::string> moves_;
};

// Latency counts with `n` latencies in the bucket whose bound is `seconds`.
std::vector<int64_t> Latencies(std::vector<std::pair<double, int64_t>> at) {
  const std::vector<double>& bounds = DurationBucketBounds();
  std::vector<int64_t> buckets(bounds.size() + 1);
  for (auto [seconds, n] : at) {
    buckets[std::lower_bound(bounds.begin(), bounds.end(), seconds) - bounds.begin()] += n;
  }
  return buckets;
}

class AutoTunerTest : public ::testing::Test {
 protected:
  AutoTuner::Options Bounds(int min, int max) {
    AutoTuner::Options o;
    o.min = min;
    o.max = max;
    o.cores = 2;
    return o;
  }
  std::unique_ptr<AutoTuner> Make(AutoTuner::Options options) {
    return std::make_unique<AutoTuner>(
        options, plant_, metrics_, clock_,
        [this] {
          return AutoTuner::CpuReading{used_, stall_};
        },
        [this](const AutoTuner::Decision& d) { decisions_.push_back(d); });
  }
  testing::ManualClock clock_;
  FakePlant plant_;
  FakeMetrics metrics_;
  std::optional<absl::Duration> stall_ = absl::ZeroDuration();
  std::optional<absl::Duration> used_;  // None: the CPU comes from the metrics.
  std::vector<AutoTuner::Decision> decisions_;
};

TEST_F(AutoTunerTest, AStartingLimitOutsideTheBoundsIsBroughtWithinThemAtOnce) {
  plant_.load_.limit = 100;
  auto tuner = Make(Bounds(2, 16));
  EXPECT_EQ(plant_.load_.limit, 16);
  plant_.load_.limit = 1;
  auto low = Make(Bounds(2, 16));
  EXPECT_EQ(plant_.load_.limit, 2);
}

TEST_F(AutoTunerTest, AWindowIsTheDifferenceOfTwoSnapshotsAndTheLoadAtItsEnd) {
  plant_.load_ = {.limit = 4, .running = 4, .queued = 10};
  auto tuner = Make(Bounds(2, 64));
  MetricsTotals t;
  t.completions = 100;
  t.service_time = absl::Seconds(50);
  t.queue_wait = absl::Seconds(7);
  t.child_cpu_seconds = 1;
  t.drops = 3;
  t.latency_buckets = Latencies({{0.001, 1000}});
  metrics_.Set(t);
  stall_ = absl::Seconds(10);
  EXPECT_FALSE(tuner->Step().has_value());  // The first snapshot: nothing to compare yet.

  clock_.Advance(absl::Milliseconds(500));
  t.completions += 10;
  t.service_time += absl::Seconds(2);
  t.queue_wait += absl::Seconds(1);
  t.child_cpu_seconds += 0.1;  // 10% of two cores for half a second.
  t.latency_buckets = Latencies({{0.001, 1000}, {0.2, 9}, {0.5, 1}});
  metrics_.Set(t);
  stall_ = *stall_ + absl::Milliseconds(50);  // Some task waited 10% of the window.
  std::optional<AutoTuner::Decision> d = tuner->Step();
  ASSERT_TRUE(d.has_value()) << "commands queue, the cores are free: the limit grows";
  const TunerWindow& w = d->window;
  EXPECT_EQ(w.length, absl::Milliseconds(500));
  EXPECT_EQ(w.limit, 4);
  EXPECT_EQ(w.in_flight, 4);
  EXPECT_EQ(w.queued, 10);
  EXPECT_EQ(w.completions, 10);
  EXPECT_EQ(w.service_time_sum, absl::Seconds(2));
  EXPECT_EQ(w.queue_wait_sum, absl::Seconds(1));
  EXPECT_EQ(w.drops, 0);
  EXPECT_NEAR(w.child_cpu_seconds, 0.1, 1e-9);
  EXPECT_NEAR(w.cpu_pressure, 0.1, 1e-9);
  EXPECT_EQ(w.cores, 2);
  // Of the window's 10 latencies the 10th is the p99: 0.5 s, as its bucket's bound.
  const std::vector<double>& bounds = DurationBucketBounds();
  EXPECT_EQ(w.latency_p99, absl::Seconds(*std::lower_bound(bounds.begin(), bounds.end(), 0.5)));
}

TEST_F(AutoTunerTest, AMoveIsAppliedCountedAndReportedWithItsReason) {
  plant_.load_ = {.limit = 4, .running = 4, .queued = 10};
  auto tuner = Make(Bounds(2, 64));
  tuner->Step();
  clock_.Advance(absl::Milliseconds(500));
  std::optional<AutoTuner::Decision> d = tuner->Step();
  ASSERT_TRUE(d.has_value());
  EXPECT_EQ(d->from, 4);
  EXPECT_GT(d->to, 4);
  EXPECT_EQ(d->reason, "queueing");
  EXPECT_EQ(plant_.load_.limit, d->to);
  ASSERT_EQ(decisions_.size(), 1u);
  EXPECT_EQ(decisions_[0].to, d->to);
  EXPECT_EQ(metrics_.moves(), std::vector<std::string>{"up queueing"});
  ASSERT_TRUE(tuner->last_decision().has_value());
  EXPECT_EQ(tuner->last_decision()->to, d->to);
}

TEST_F(AutoTunerTest, NeverSetsALimitOutsideItsBounds) {
  plant_.load_ = {.limit = 4, .running = 4, .queued = 1000};
  auto tuner = Make(Bounds(2, 12));
  tuner->Step();
  for (int i = 0; i < 50; ++i) {
    clock_.Advance(absl::Milliseconds(500));
    plant_.load_.running = plant_.load_.limit;
    tuner->Step();
    ASSERT_LE(plant_.load_.limit, 12);
  }
  EXPECT_EQ(plant_.load_.limit, 12);
  // A fork error brings it down, not below the floor.
  MetricsTotals t = metrics_.Totals();
  for (int i = 0; i < 20; ++i) {
    clock_.Advance(absl::Milliseconds(500));
    t.resource_errors += 5;
    metrics_.Set(t);
    plant_.load_.running = 0;
    tuner->Step();
    ASSERT_GE(plant_.load_.limit, 2);
  }
  EXPECT_EQ(plant_.load_.limit, 2);
  EXPECT_EQ(decisions_.back().reason, "resource_error");
}

TEST_F(AutoTunerTest, WithoutCpuPressureInformationThePressureIsZero) {
  stall_ = std::nullopt;
  plant_.load_ = {.limit = 4, .running = 4, .queued = 10};
  auto tuner = Make(Bounds(2, 64));
  tuner->Step();
  clock_.Advance(absl::Milliseconds(500));
  std::optional<AutoTuner::Decision> d = tuner->Step();
  ASSERT_TRUE(d.has_value());
  EXPECT_EQ(d->window.cpu_pressure, 0);
}

// A cgroup over the commands tells their CPU as they use it: a long command's CPU falls in
// the windows it was used in, not all in the one it ends in.
TEST_F(AutoTunerTest, TheCommandsOwnCpuFiguresWinOverThoseCountedAtTheirEnd) {
  plant_.load_ = {.limit = 4, .running = 4, .queued = 10};
  used_ = absl::Seconds(100);
  auto tuner = Make(Bounds(2, 64));
  tuner->Step();
  clock_.Advance(absl::Milliseconds(500));
  used_ = *used_ + absl::Milliseconds(300);
  MetricsTotals t;
  t.child_cpu_seconds = 7;  // A command that ran for minutes ended: not this window's CPU.
  metrics_.Set(t);
  std::optional<AutoTuner::Decision> d = tuner->Step();
  ASSERT_TRUE(d.has_value());
  EXPECT_NEAR(d->window.child_cpu_seconds, 0.3, 1e-9);
}

TEST_F(AutoTunerTest, NothingMovesWhileNothingWaits) {
  plant_.load_ = {.limit = 4, .running = 1, .queued = 0};
  auto tuner = Make(Bounds(2, 64));
  tuner->Step();
  for (int i = 0; i < 20; ++i) {
    clock_.Advance(absl::Milliseconds(500));
    EXPECT_FALSE(tuner->Step().has_value());
  }
  EXPECT_EQ(plant_.load_.limit, 4);
  EXPECT_TRUE(metrics_.moves().empty());
}

TEST(AutoTunerPercentileTest, IsTheBoundOfTheBucketHoldingThe99thPercentile) {
  EXPECT_EQ(AutoTuner::Percentile99({}), absl::ZeroDuration());
  EXPECT_EQ(AutoTuner::Percentile99(Latencies({})), absl::ZeroDuration());
  const std::vector<double>& b = DurationBucketBounds();
  EXPECT_EQ(AutoTuner::Percentile99(Latencies({{b[3], 1}})), absl::Seconds(b[3]));
  // 99 fast and 1 slow: the 99th of 100 is fast; one more slow one makes it slow.
  EXPECT_EQ(AutoTuner::Percentile99(Latencies({{b[1], 99}, {b[20], 1}})), absl::Seconds(b[1]));
  EXPECT_EQ(AutoTuner::Percentile99(Latencies({{b[1], 98}, {b[20], 2}})), absl::Seconds(b[20]));
  // Past the last bound: the last bound.
  EXPECT_EQ(AutoTuner::Percentile99(Latencies({{1e6, 1}})), absl::Seconds(b.back()));
}

// Every command it allows runs at once, and more wait: a limit that can only grow.
class BusyPlant final : public AutoTuner::Plant {
 public:
  Load load() const override {
    absl::MutexLock lock(&mu_);
    return Load{limit_, limit_, 50};
  }
  void SetLimit(int limit) override {
    absl::MutexLock lock(&mu_);
    limit_ = limit;
  }

 private:
  mutable absl::Mutex mu_;
  int limit_ = 2;
};

// The thread: steps on its own every window, and stops when told.
TEST(AutoTunerThreadTest, StepsEveryWindowUntilStopped) {
  BusyPlant plant;
  FakeMetrics metrics;
  AutoTuner::Options o;
  o.min = 1;
  o.max = 8;
  o.window = absl::Milliseconds(5);
  absl::Mutex mu;
  int decisions = 0;
  absl::Notification reached_max;
  AutoTuner tuner(
      o, plant, metrics, MonotonicClock::Get(), [] { return AutoTuner::CpuReading{}; },
      [&](const AutoTuner::Decision& d) {
        absl::MutexLock lock(&mu);
        ++decisions;
        if (d.to == 8) reached_max.Notify();
      });
  tuner.Start();
  ASSERT_TRUE(reached_max.WaitForNotificationWithTimeout(absl::Seconds(30)));
  tuner.Stop();
  tuner.Stop();  // Idempotent.
  absl::MutexLock lock(&mu);
  EXPECT_GE(decisions, 2);  // 2 → 3 → 4 → 6 → 8: a step a window, not one jump.
  EXPECT_EQ(plant.load().limit, 8);
}

}  // namespace
}  // namespace execd::core
