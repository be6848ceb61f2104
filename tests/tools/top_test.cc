// execctl top's figures and frames, from snapshots built by hand: no server.
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tools/execctl/metrics_snapshot.h"
#include "tools/execctl/top_figures.h"
#include "tools/execctl/top_frame.h"

namespace execd::execctl {
namespace {

using ::testing::DoubleNear;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::Optional;
using ::testing::Pair;

constexpr double kInf = std::numeric_limits<double>::infinity();

struct Sample {
  std::string name;
  Labels labels;
  double value = 0;
};

// A snapshot of `samples` taken `at` after an arbitrary origin.
MetricsSnapshot Snapshot(absl::Duration at, const std::vector<Sample>& samples) {
  google::protobuf::RepeatedPtrField<v1::MetricSample> out;
  for (const Sample& s : samples) {
    v1::MetricSample* sample = out.Add();
    sample->set_name(s.name);
    for (const auto& [label, value] : s.labels) (*sample->mutable_labels())[label] = value;
    sample->set_value(s.value);
  }
  return MetricsSnapshot(out, absl::UnixEpoch() + at);
}

// The samples of a duration histogram series: cumulative counts by bound, as "le" is written.
std::vector<Sample> Histogram(const std::string& rpc, const std::string& stage,
                              const std::vector<std::pair<std::string, double>>& buckets) {
  std::vector<Sample> out;
  for (const auto& [le, count] : buckets) {
    out.push_back({"execd_request_duration_seconds_bucket",
                   {{"rpc", rpc}, {"stage", stage}, {"le", le}},
                   count});
  }
  out.push_back({"execd_request_duration_seconds_count",
                 {{"rpc", rpc}, {"stage", stage}},
                 buckets.back().second});
  return out;
}

std::vector<Sample> Join(std::vector<std::vector<Sample>> parts) {
  std::vector<Sample> out;
  for (auto& part : parts) out.insert(out.end(), part.begin(), part.end());
  return out;
}

Sample Requests(const std::string& rpc, const std::string& code, double n) {
  return {"execd_requests_total", {{"rpc", rpc}, {"code", code}}, n};
}

// What a server shows at rest, with `running` commands: every gauge, no traffic yet.
std::vector<Sample> Gauges(double running) {
  return {
      {"execd_build_info", {{"version", "0.20.0"}}, 1},
      {"execd_running", {}, running},
      {"execd_concurrency_limit", {}, 8},
      {"execd_queued", {{"priority", "low"}}, 1},
      {"execd_queued", {{"priority", "normal"}}, 2},
      {"execd_queued", {{"priority", "high"}}, 0},
      {"execd_queue_capacity", {}, 1024},
      {"execd_memory_budget_used_bytes", {}, 3 << 20},
      {"execd_memory_budget_bytes", {}, 1 << 30},
      {"execd_child_memory_bytes", {}, 5 << 20},
      {"process_resident_memory_bytes", {}, 20 << 20},
  };
}

TEST(TopQuantile, InterpolatesWithinTheBucketAsPrometheusDoes) {
  // 10 at most 0.1 s, 20 more at most 0.2 s, 10 more at most 0.4 s.
  const std::vector<Bucket> buckets = {{0.1, 10}, {0.2, 30}, {0.4, 40}, {kInf, 40}};
  // p50: rank 20 falls in (0.1, 0.2], 10 into its 20: 0.1 + 0.1 × 10/20.
  EXPECT_THAT(HistogramQuantile(0.5, buckets), Optional(DoubleNear(0.15, 1e-12)));
  // p99: rank 39.6 falls in (0.2, 0.4], 9.6 into its 10: 0.2 + 0.2 × 9.6/10.
  EXPECT_THAT(HistogramQuantile(0.99, buckets), Optional(DoubleNear(0.392, 1e-12)));
}

TEST(TopQuantile, TheFirstBucketStartsAtZero) {
  EXPECT_THAT(HistogramQuantile(0.5, {{1, 4}, {kInf, 4}}), Optional(DoubleNear(0.5, 1e-12)));
}

TEST(TopQuantile, InTheInfBucketIsTheHighestFiniteBound) {
  EXPECT_THAT(HistogramQuantile(0.99, {{1, 1}, {2, 1}, {kInf, 10}}), Optional(2.0));
}

TEST(TopQuantile, NoneWithoutObservationsOrWithoutAnInfBucket) {
  EXPECT_EQ(HistogramQuantile(0.5, {{1, 0}, {kInf, 0}}), std::nullopt);
  EXPECT_EQ(HistogramQuantile(0.5, {{1, 3}, {2, 5}}), std::nullopt);
  EXPECT_EQ(HistogramQuantile(0.5, {}), std::nullopt);
}

TEST(TopFigures, QuantilesComeFromTheIncreaseOfEachBucket) {
  // 100 fast calls before the interval; in it, 4 at most 10 ms and 6 at most 100 ms.
  const MetricsSnapshot before = Snapshot(
      absl::Seconds(10),
      Histogram("Execute", "total", {{"0.001", 100}, {"0.01", 100}, {"0.1", 100}, {"+Inf", 100}}));
  const MetricsSnapshot after = Snapshot(
      absl::Seconds(11),
      Histogram("Execute", "total", {{"0.001", 100}, {"0.01", 104}, {"0.1", 110}, {"+Inf", 110}}));
  const TopFigures f = ComputeFigures(before, after);
  // Increases: 0, 4, 10, 10. p50: rank 5 falls in (0.01, 0.1], 1 into its 6.
  EXPECT_THAT(f.commands[0].p50, Optional(DoubleNear(0.01 + 0.09 * 1 / 6, 1e-12)));
  // p99: rank 9.9, 5.9 into its 6.
  EXPECT_THAT(f.commands[0].p99, Optional(DoubleNear(0.01 + 0.09 * 5.9 / 6, 1e-12)));
}

TEST(TopFigures, AllCommandsAddsTheBucketsOfEveryCommandRpcButNotPing) {
  const MetricsSnapshot before = Snapshot(absl::Seconds(0), {});
  const MetricsSnapshot after =
      Snapshot(absl::Seconds(1), Join({Histogram("Execute", "total", {{"0.1", 1}, {"+Inf", 1}}),
                                       Histogram("Attach", "total", {{"0.1", 0}, {"+Inf", 1}}),
                                       Histogram("Ping", "total", {{"0.1", 50}, {"+Inf", 50}}),
                                       Histogram("Execute", "run", {{"0.1", 9}, {"+Inf", 9}})}));
  const TopFigures f = ComputeFigures(before, after);
  // Of 2 calls, one at most 0.1 s and one above: the median is the whole first bucket.
  EXPECT_THAT(f.all_commands.p50, Optional(DoubleNear(0.1, 1e-12)));
  EXPECT_THAT(f.all_commands.p99, Optional(0.1));  // In +Inf: the highest finite bound.
  EXPECT_THAT(f.ping.p50, Optional(DoubleNear(0.05, 1e-12)));
}

TEST(TopFigures, RatesAreIncreasesOverTheTimeBetweenSnapshots) {
  const MetricsSnapshot before =
      Snapshot(absl::Seconds(10), {Requests("Execute", "OK", 10),
                                   Requests("Ping", "OK", 4),
                                   {"process_cpu_seconds_total", {}, 1.0},
                                   {"execd_child_cpu_seconds_total", {{"mode", "user"}}, 2},
                                   {"execd_child_cpu_seconds_total", {{"mode", "system"}}, 1}});
  // NOT_FOUND appears with its first call: absent before means none before.
  const MetricsSnapshot after =
      Snapshot(absl::Seconds(12), {Requests("Execute", "OK", 30),
                                   Requests("Execute", "NOT_FOUND", 3),
                                   Requests("ExecuteBatch", "OK", 8),
                                   Requests("Ping", "OK", 4),
                                   {"process_cpu_seconds_total", {}, 1.5},
                                   {"execd_child_cpu_seconds_total", {{"mode", "user"}}, 3},
                                   {"execd_child_cpu_seconds_total", {{"mode", "system"}}, 2}});
  const TopFigures f = ComputeFigures(before, after);
  EXPECT_EQ(f.interval, absl::Seconds(2));
  EXPECT_FALSE(f.restarted);
  EXPECT_EQ(f.commands[0].name, "Execute");
  EXPECT_THAT(f.commands[0].calls.per_second, Optional(11.5));  // 20 OK + 3 NOT_FOUND in 2 s.
  EXPECT_EQ(f.commands[0].calls.total, 33);
  EXPECT_THAT(f.commands[2].calls.per_second, Optional(4.0));  // Batch items.
  EXPECT_THAT(f.all_commands.calls.per_second, Optional(15.5));
  EXPECT_EQ(f.all_commands.calls.total, 41);
  EXPECT_THAT(f.ping.calls.per_second, Optional(0.0));
  ASSERT_EQ(f.errors.size(), 1u);
  EXPECT_EQ(f.errors[0].first, "NOT_FOUND");
  EXPECT_THAT(f.errors[0].second.per_second, Optional(1.5));
  EXPECT_EQ(f.errors[0].second.total, 3);
  EXPECT_THAT(f.server_cores, Optional(DoubleNear(0.25, 1e-12)));
  EXPECT_THAT(f.command_cores, Optional(DoubleNear(1.0, 1e-12)));
}

TEST(TopFigures, SameSnapshotTwiceGivesTotalsAndGaugesButNoRates) {
  const MetricsSnapshot only = Snapshot(
      absl::Seconds(5), Join({Gauges(2),
                              {Requests("Execute", "OK", 20), Requests("Execute", "NOT_FOUND", 3)},
                              Histogram("Execute", "total", {{"0.01", 23}, {"+Inf", 23}})}));
  const TopFigures f = ComputeFigures(only, only);
  EXPECT_EQ(f.interval, absl::ZeroDuration());
  EXPECT_EQ(f.commands[0].calls.per_second, std::nullopt);
  EXPECT_EQ(f.commands[0].calls.total, 23);
  EXPECT_EQ(f.commands[0].p50, std::nullopt);
  EXPECT_EQ(f.server_cores, std::nullopt);
  EXPECT_EQ(f.errors[0].second.per_second, std::nullopt);
  EXPECT_EQ(f.running, 2);
  const std::string frame = FormatFrame(f, "h:1");
  EXPECT_THAT(frame, HasSubstr("first snapshot"));
  EXPECT_THAT(frame, HasSubstr("NOT_FOUND - (3 total)"));
  EXPECT_THAT(frame, Not(HasSubstr("nan")));
  EXPECT_THAT(frame, Not(HasSubstr("inf")));
}

TEST(TopFigures, AnIntervalWithoutTrafficHasZeroRatesAndNoQuantiles) {
  const std::vector<Sample> quiet = Join({Gauges(0),
                                          {Requests("Execute", "OK", 7)},
                                          Histogram("Execute", "total", {{"0.01", 7}, {"+Inf", 7}}),
                                          {{"execd_cache_requests_total", {{"result", "hit"}}, 1},
                                           {"execd_cache_requests_total", {{"result", "miss"}}, 1},
                                           {"execd_cache_entries", {}, 1},
                                           {"execd_cache_bytes", {}, 10}}});
  const TopFigures f =
      ComputeFigures(Snapshot(absl::Seconds(1), quiet), Snapshot(absl::Seconds(2), quiet));
  EXPECT_THAT(f.commands[0].calls.per_second, Optional(0.0));
  EXPECT_EQ(f.commands[0].p50, std::nullopt);
  EXPECT_EQ(f.commands[0].p99, std::nullopt);
  ASSERT_TRUE(f.cache.has_value());
  EXPECT_EQ(f.cache->lookups, 0);
  EXPECT_EQ(f.cache->hit_ratio, std::nullopt);
  const std::string frame = FormatFrame(f, "h:1");
  EXPECT_THAT(frame, HasSubstr("hits - of 0 lookups"));
  EXPECT_THAT(frame, Not(HasSubstr("nan")));
}

TEST(TopFigures, ACounterThatWentDownMeansARestartCountedFromZero) {
  const MetricsSnapshot before = Snapshot(
      absl::Seconds(10), Join({{Requests("Execute", "OK", 100), Requests("GetStatus", "OK", 9)},
                               Histogram("Execute", "total", {{"0.01", 100}, {"+Inf", 100}})}));
  const MetricsSnapshot after = Snapshot(
      absl::Seconds(12), Join({{Requests("Execute", "OK", 6), Requests("GetStatus", "OK", 1)},
                               Histogram("Execute", "total", {{"0.01", 0}, {"+Inf", 6}})}));
  const TopFigures f = ComputeFigures(before, after);
  EXPECT_TRUE(f.restarted);
  EXPECT_THAT(f.commands[0].calls.per_second, Optional(3.0));  // 6 since the restart, in 2 s.
  EXPECT_THAT(f.commands[0].p50, Optional(0.01));  // All 6 above 10 ms, none of the 100 before.
  EXPECT_THAT(FormatFrame(f, "h:1"), HasSubstr("execd restarted"));
}

TEST(TopFigures, AGrowingServerIsNoRestart) {
  const MetricsSnapshot before = Snapshot(absl::Seconds(1), {Requests("Execute", "OK", 1)});
  const MetricsSnapshot after =
      Snapshot(absl::Seconds(2), {Requests("Execute", "OK", 1), {"execd_running", {}, 0}});
  EXPECT_FALSE(ComputeFigures(before, after).restarted);
  // Gauges may go down.
  EXPECT_FALSE(
      ComputeFigures(Snapshot(absl::Seconds(1), Gauges(5)), Snapshot(absl::Seconds(2), Gauges(1)))
          .restarted);
}

TEST(TopFigures, ShedAndErrorsListOnlyWhatHappenedErrorsByCode) {
  const MetricsSnapshot after =
      Snapshot(absl::Seconds(1), {Requests("Execute", "OK", 5),
                                  Requests("Execute", "RESOURCE_EXHAUSTED", 2),
                                  Requests("Attach", "INVALID_ARGUMENT", 1),
                                  Requests("ExecuteStream", "RESOURCE_EXHAUSTED", 1),
                                  {"execd_shed_total", {{"reason", "queue_full"}}, 3},
                                  {"execd_shed_total", {{"reason", "draining"}}, 0}});
  const TopFigures f = ComputeFigures(Snapshot(absl::ZeroDuration(), {}), after);
  ASSERT_EQ(f.errors.size(), 2u);
  EXPECT_EQ(f.errors[0].first, "INVALID_ARGUMENT");
  EXPECT_EQ(f.errors[1].first, "RESOURCE_EXHAUSTED");
  EXPECT_EQ(f.errors[1].second.total, 3);
  ASSERT_EQ(f.shed.size(), 1u);
  EXPECT_EQ(f.shed[0].first, "queue_full");
  EXPECT_THAT(f.shed[0].second.per_second, Optional(3.0));
}

TEST(TopFigures, TheTunersBoundsAndItsMovesByDirectionAndReason) {
  auto tuner = [](double up, double down) {
    return std::vector<Sample>{
        {"execd_concurrency_limit_bounds", {{"bound", "min"}}, 2},
        {"execd_concurrency_limit_bounds", {{"bound", "max"}}, 128},
        {"execd_tuner_decisions_total", {{"direction", "up"}, {"reason", "queueing"}}, up},
        {"execd_tuner_decisions_total", {{"direction", "down"}, {"reason", "queueing"}}, 0},
        {"execd_tuner_decisions_total",
         {{"direction", "down"}, {"reason", "cpu_saturated"}},
         down}};
  };
  const TopFigures f = ComputeFigures(Snapshot(absl::Seconds(1), tuner(1, 0)),
                                      Snapshot(absl::Seconds(3), tuner(5, 1)));
  ASSERT_TRUE(f.tuner.has_value());
  EXPECT_EQ(f.tuner->min, 2);
  EXPECT_EQ(f.tuner->max, 128);
  ASSERT_EQ(f.tuner->moves.size(), 2u);  // Only the moves that happened.
  std::map<std::string, CounterFigure> moves(f.tuner->moves.begin(), f.tuner->moves.end());
  EXPECT_THAT(moves["up queueing"].per_second, Optional(2.0));
  EXPECT_EQ(moves["up queueing"].total, 5);
  EXPECT_THAT(moves["down cpu_saturated"].per_second, Optional(0.5));
  EXPECT_THAT(FormatFrame(f, "x"), HasSubstr("tuner       limit in [2, 128], moves/s "));
  EXPECT_FALSE(
      ComputeFigures(Snapshot(absl::Seconds(1), Gauges(0)), Snapshot(absl::Seconds(2), Gauges(0)))
          .tuner.has_value());
}

TEST(TopFigures, CacheHitRatioIsOverTheInterval) {
  auto cache = [](double hits, double misses) {
    return std::vector<Sample>{{"execd_cache_requests_total", {{"result", "hit"}}, hits},
                               {"execd_cache_requests_total", {{"result", "miss"}}, misses},
                               {"execd_cache_entries", {}, 4},
                               {"execd_cache_bytes", {}, 2048}};
  };
  // Lifetime: 11 of 20; in the interval, 1 hit of 4 lookups.
  const TopFigures f = ComputeFigures(Snapshot(absl::Seconds(1), cache(10, 6)),
                                      Snapshot(absl::Seconds(2), cache(11, 9)));
  ASSERT_TRUE(f.cache.has_value());
  EXPECT_EQ(f.cache->lookups, 4);
  EXPECT_THAT(f.cache->hit_ratio, Optional(0.25));
  EXPECT_EQ(f.cache->entries, 4);
  EXPECT_EQ(f.cache->bytes, 2048);
  EXPECT_THAT(FormatFrame(f, "h:1"),
              HasSubstr("\ncache       hits 25% of 4 lookups, entries 4 (2.0 KiB)\n"));
  EXPECT_FALSE(ComputeFigures(Snapshot(absl::Seconds(1), {}), Snapshot(absl::Seconds(2), {}))
                   .cache.has_value());
}

TEST(TopFigures, PoolsByStateAndEvents) {
  auto pool = [](double served, double misses, double crashed) {
    const std::string name = "py";
    return std::vector<Sample>{
        {"execd_pool_processes", {{"pool", name}, {"state", "idle"}}, 3},
        {"execd_pool_processes", {{"pool", name}, {"state", "busy"}}, 1},
        {"execd_pool_processes", {{"pool", name}, {"state", "starting"}}, 2},
        {"execd_pool_events_total", {{"pool", name}, {"event", "served"}}, served},
        {"execd_pool_events_total", {{"pool", name}, {"event", "miss"}}, misses},
        {"execd_pool_events_total", {{"pool", name}, {"event", "crashed"}}, crashed}};
  };
  const TopFigures f = ComputeFigures(Snapshot(absl::Seconds(0), pool(10, 1, 0)),
                                      Snapshot(absl::Seconds(2), pool(30, 5, 1)));
  ASSERT_EQ(f.pools.size(), 1u);
  const PoolFigures& p = f.pools[0];
  EXPECT_EQ(p.name, "py");
  EXPECT_EQ(p.idle, 3);
  EXPECT_EQ(p.busy, 1);
  EXPECT_EQ(p.starting, 2);
  EXPECT_THAT(p.served.per_second, Optional(10.0));
  EXPECT_THAT(p.misses.per_second, Optional(2.0));
  EXPECT_EQ(p.crashed.total, 1);
}

TEST(TopFigures, GaugesComeFromTheLaterSnapshot) {
  const TopFigures f =
      ComputeFigures(Snapshot(absl::Seconds(0), Gauges(7)), Snapshot(absl::Seconds(1), Gauges(2)));
  EXPECT_EQ(f.version, "0.20.0");
  EXPECT_EQ(f.running, 2);
  EXPECT_EQ(f.concurrency_limit, 8);
  EXPECT_THAT(f.queued, ElementsAre(Pair("low", 1), Pair("normal", 2), Pair("high", 0)));
  EXPECT_EQ(f.queued_total, 3);
  EXPECT_EQ(f.queue_capacity, 1024);
  EXPECT_EQ(f.server_resident_bytes, 20 << 20);
  EXPECT_THAT(f.command_memory_bytes, Optional(5 << 20));
  EXPECT_EQ(f.budget_used_bytes, 3 << 20);
  EXPECT_EQ(f.budget_bytes, 1 << 30);
}

TEST(TopFrame, ShowsEveryFigureOnItsLine) {
  const MetricsSnapshot before =
      Snapshot(absl::Seconds(10),
               Join({Gauges(2),
                     {Requests("Execute", "OK", 10), {"process_cpu_seconds_total", {}, 1.0}},
                     Histogram("Execute", "total", {{"0.001", 10}, {"0.01", 10}, {"+Inf", 10}})}));
  const MetricsSnapshot after =
      Snapshot(absl::Seconds(12),
               Join({Gauges(2),
                     {Requests("Execute", "OK", 30),
                      Requests("Execute", "NOT_FOUND", 3),
                      {"process_cpu_seconds_total", {}, 1.1},
                      {"execd_pool_processes", {{"pool", "py"}, {"state", "idle"}}, 2},
                      {"execd_pool_events_total", {{"pool", "py"}, {"event", "served"}}, 4}},
                     Histogram("Execute", "total", {{"0.001", 10}, {"0.01", 33}, {"+Inf", 33}})}));
  EXPECT_EQ(FormatFrame(ComputeFigures(before, after), "127.0.0.1:50051"),
            "execd 0.20.0 at 127.0.0.1:50051, over 2.00s\n"
            "RPC                CALLS/S     TOTAL       P50       P99\n"
            "Execute               11.5        33     5.5ms     9.9ms\n"
            "ExecuteStream            0         0         -         -\n"
            "ExecuteBatch             0         0         -         -\n"
            "Attach                   0         0         -         -\n"
            "all commands          11.5        33     5.5ms     9.9ms\n"
            "Ping                     0         0         -         -\n"
            "errors/s    NOT_FOUND 1.50 (3 total)\n"
            "shed/s      none\n"
            "running     2 of 8\n"
            "tuner       off (the limit is pinned)\n"
            "queued      3 of 1024 (low 1, normal 2, high 0)\n"
            "cpu         execd 0.05 cores, commands 0.00 cores\n"
            "memory      execd 20.0 MiB, commands 5.0 MiB, budget 3.0 MiB of 1.0 GiB\n"
            "cache       off\n"
            "POOL              IDLE  BUSY  STARTING  SERVED/S  MISSES/S  CRASHED\n"
            "py                   2     0         0      2.00         0        0\n");
}

TEST(TopFrame, HasNoBlankLineSoPipedFramesStayApart) {
  const MetricsSnapshot s = Snapshot(absl::Seconds(1), Gauges(0));
  const std::string frame = FormatFrame(ComputeFigures(s, s), "h:1");
  EXPECT_THAT(frame, Not(HasSubstr("\n\n")));
  EXPECT_EQ(frame.back(), '\n');
}

TEST(TopFrame, FitToScreenCutsLinesAndKeepsTheLastRowFree) {
  EXPECT_EQ(FitToScreen("abcdef\nghi\njkl\nmno\n", 3, 4), "abcd\nghi\n");
  EXPECT_EQ(FitToScreen("ab\ncd\n", 24, 80), "ab\ncd\n");
}

}  // namespace
}  // namespace execd::execctl
