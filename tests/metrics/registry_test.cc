// The table of families and the Registry without a server: each family declared once and
// well-formed, the duration buckets, every family present after use with exactly its
// declared labels, label values bounded whatever comes in, and histograms filled as
// Prometheus reads them.
#include "metrics/registry.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <map>
#include <regex>
#include <set>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "metrics/families.h"

namespace execd::metrics {
namespace {

using ::testing::ElementsAreArray;

// Label names of a series, in order.
std::vector<std::string> LabelNames(const prometheus::ClientMetric& m) {
  std::vector<std::string> names;
  for (const auto& l : m.label) names.push_back(l.name);
  return names;
}

const prometheus::MetricFamily* Find(const std::vector<prometheus::MetricFamily>& families,
                                     const std::string& name) {
  for (const auto& f : families) {
    if (f.name == name) return &f;
  }
  return nullptr;
}

// The value of the one series of `name` whose labels include all of `labels`.
double Value(const Registry& registry, const std::string& name,
             const std::map<std::string, std::string>& labels = {}) {
  double value = NAN;
  int found = 0;
  for (const Sample& s : registry.Samples()) {
    if (s.name != name) continue;
    std::map<std::string, std::string> have(s.labels.begin(), s.labels.end());
    bool match = true;
    for (const auto& [k, v] : labels) match = match && have.count(k) && have[k] == v;
    if (match) {
      value = s.value;
      ++found;
    }
  }
  EXPECT_EQ(found, 1) << name;
  return value;
}

TEST(FamiliesTest, EachFamilyIsDeclaredOnceWellFormedAndInItsIdsPlace) {
  const std::regex name_syntax("[a-zA-Z_:][a-zA-Z0-9_:]*");
  const std::regex label_syntax("[a-zA-Z_][a-zA-Z0-9_]*");
  std::set<std::string> names;
  ASSERT_EQ(Families().size(), static_cast<size_t>(Family::kCount));
  for (size_t i = 0; i < Families().size(); ++i) {
    const FamilySpec& f = Families()[i];
    SCOPED_TRACE(f.name);
    EXPECT_EQ(static_cast<size_t>(f.id), i);
    EXPECT_EQ(&Spec(f.id), &f);
    EXPECT_TRUE(names.insert(f.name).second) << "declared twice";
    EXPECT_TRUE(std::regex_match(f.name, name_syntax));
    EXPECT_TRUE(f.name.starts_with("execd_") || f.name.starts_with("process_"));
    EXPECT_FALSE(f.help.empty());
    EXPECT_EQ(f.type == Type::kCounter, f.name.ends_with("_total"));
    EXPECT_EQ(f.type == Type::kHistogram, !f.buckets.empty());
    std::set<std::string> labels;
    for (const std::string& l : f.labels) {
      EXPECT_TRUE(std::regex_match(l, label_syntax)) << l;
      EXPECT_FALSE(l.starts_with("__")) << l;
      EXPECT_NE(l, "le");
      EXPECT_TRUE(labels.insert(l).second) << l << " twice";
    }
  }
}

TEST(FamiliesTest, DurationBucketsGrowByTheFourthRootOfTwoFrom100MicrosecondsTo60Seconds) {
  const std::vector<double> b = core::DurationBucketBounds();
  ASSERT_EQ(b.size(), 77u);  // 100 us x 2^(76/4) = 52.4 s; the next, 62.3 s, is past 60 s.
  EXPECT_DOUBLE_EQ(b.front(), 100e-6);
  EXPECT_LE(b.back(), 60.0);
  EXPECT_GT(b.back() * std::exp2(0.25), 60.0);
  for (size_t i = 1; i < b.size(); ++i) EXPECT_NEAR(b[i] / b[i - 1], std::exp2(0.25), 1e-12);
}

// histogram_quantile interpolates linearly inside the bucket that holds the quantile: the
// estimate lies in (lower, upper], and so does the truth, so the error is at most
// upper/lower - 1 = 2^(1/4) - 1 = 19% of the truth.
TEST(FamiliesTest, AnEstimateWithinTheRightBucketIsWithin20PercentOfTheTruth) {
  const std::vector<double> b = core::DurationBucketBounds();
  double worst = 0;
  for (size_t i = 1; i < b.size(); ++i) {
    for (double truth : {b[i - 1] * 1.0000001, (b[i - 1] + b[i]) / 2, b[i]}) {
      for (double estimate : {b[i - 1], b[i]}) {
        worst = std::max(worst, std::abs(estimate - truth) / truth);
      }
    }
  }
  EXPECT_LT(worst, 0.20);
}

Snapshot FullSnapshot() {
  Snapshot s;
  s.stats.engine.running = 3;
  s.stats.engine.queued_by_priority = {1, 2, 0};
  s.stats.engine.queue_capacity = 64;
  s.stats.engine.limit = 8;
  s.limit_bounds = std::make_pair(2, 128);
  s.stats.memory_in_use = 1000;
  s.stats.memory_limit = 5000;
  core::ResultCache::Stats cache;
  cache.hits = 7;
  cache.misses = 2;
  cache.evictions = 1;
  cache.bytes = 4096;
  cache.entries = 3;
  s.stats.cache = cache;
  core::PoolStatus pool;
  pool.name = "python";
  pool.kind = core::PoolSpec::Kind::kPrewarmed;
  pool.stats.idle = 2;
  pool.stats.busy = 1;
  pool.stats.served = 40;
  s.pools.push_back(pool);
  s.child_memory_bytes = 1 << 20;
  return s;
}

// Reports one of every event.
void UseEverything(Registry& r) {
  core::CallTimes times;
  times.ran = true;
  times.queue = absl::Microseconds(10);
  times.spawn = absl::Milliseconds(1);
  times.run = absl::Milliseconds(2);
  times.total = absl::Milliseconds(3);
  r.CallEnded(core::Rpc::kExecute, absl::StatusCode::kOk, times);
  core::Result result;
  result.termination = core::Termination::kTimedOut;
  result.usage.user_cpu = absl::Milliseconds(250);
  result.usage.system_cpu = absl::Milliseconds(125);
  result.queued = times.queue;
  result.spawn = times.spawn;
  result.run = times.run;
  r.CommandEnded(result);
  r.LimitMoved(/*up=*/true, "queueing");
  r.SpawnFailed(ENOENT);
  r.Shed(core::ShedReason::kQueueFull);
  r.Output(core::OutputStream::kStdout, core::OutputEncoding::kRaw, 100);
  r.Output(core::OutputStream::kStdout, core::OutputEncoding::kLz4, 10);
}

TEST(RegistryTest, EveryFamilyIsPresentAfterUseWithExactlyItsDeclaredLabels) {
  Registry r("1.2.3");
  r.SetSource(FullSnapshot);
  UseEverything(r);
  const std::vector<prometheus::MetricFamily> families = r.Collect();
  for (const FamilySpec& spec : Families()) {
    SCOPED_TRACE(spec.name);
    const prometheus::MetricFamily* f = Find(families, spec.name);
    ASSERT_NE(f, nullptr) << "absent";
    EXPECT_EQ(f->help, spec.help);
    EXPECT_FALSE(f->metric.empty());
    for (const prometheus::ClientMetric& m : f->metric) {
      EXPECT_THAT(LabelNames(m), ElementsAreArray(spec.labels));
    }
  }
  EXPECT_EQ(families.size(), Families().size()) << "a family that is not in the table";
}

TEST(RegistryTest, EventsAndCurrentValuesReadBackAsTheyWereGiven) {
  Registry r("1.2.3");
  r.SetSource(FullSnapshot);
  UseEverything(r);
  EXPECT_EQ(Value(r, "execd_requests_total", {{"rpc", "Execute"}, {"code", "OK"}}), 1);
  EXPECT_EQ(Value(r, "execd_terminations_total", {{"kind", "timed_out"}}), 1);
  EXPECT_EQ(Value(r, "execd_terminations_total", {{"kind", "exited"}}), 0);
  EXPECT_DOUBLE_EQ(Value(r, "execd_child_cpu_seconds_total", {{"mode", "user"}}), 0.25);
  EXPECT_DOUBLE_EQ(Value(r, "execd_child_cpu_seconds_total", {{"mode", "system"}}), 0.125);
  EXPECT_EQ(Value(r, "execd_spawn_errors_total", {{"errno", "ENOENT"}}), 1);
  EXPECT_EQ(Value(r, "execd_shed_total", {{"reason", "queue_full"}}), 1);
  EXPECT_EQ(Value(r, "execd_shed_total", {{"reason", "memory_budget"}}), 0);
  EXPECT_EQ(Value(r, "execd_output_bytes_total", {{"stream", "stdout"}, {"encoding", "raw"}}), 100);
  EXPECT_EQ(Value(r, "execd_output_bytes_total", {{"stream", "stdout"}, {"encoding", "lz4"}}), 10);
  EXPECT_EQ(Value(r, "execd_running"), 3);
  EXPECT_EQ(Value(r, "execd_queued", {{"priority", "normal"}}), 2);
  EXPECT_EQ(Value(r, "execd_queue_capacity"), 64);
  EXPECT_EQ(Value(r, "execd_concurrency_limit"), 8);
  EXPECT_EQ(Value(r, "execd_memory_budget_used_bytes"), 1000);
  EXPECT_EQ(Value(r, "execd_cache_requests_total", {{"result", "hit"}}), 7);
  EXPECT_EQ(Value(r, "execd_pool_processes", {{"pool", "python"}, {"state", "busy"}}), 1);
  EXPECT_EQ(Value(r, "execd_pool_events_total", {{"pool", "python"}, {"event", "served"}}), 40);
  EXPECT_EQ(Value(r, "execd_child_memory_bytes"), 1 << 20);
  EXPECT_EQ(Value(r, "execd_build_info", {{"version", "1.2.3"}}), 1);
  EXPECT_GT(Value(r, "process_resident_memory_bytes"), 0);
  EXPECT_GT(Value(r, "process_open_fds"), 2);
  EXPECT_GT(Value(r, "process_threads"), 0);
  EXPECT_GT(Value(r, "process_start_time_seconds"), 1.7e9);  // After 2023.
}

TEST(RegistryTest, EveryRpcHasItsOkSeriesAndHistogramsAtZeroFromStartUp) {
  Registry r("dev");
  const std::vector<prometheus::MetricFamily> families = r.Collect();
  const prometheus::MetricFamily* requests = Find(families, "execd_requests_total");
  const prometheus::MetricFamily* durations = Find(families, "execd_request_duration_seconds");
  ASSERT_NE(requests, nullptr);
  ASSERT_NE(durations, nullptr);
  EXPECT_EQ(requests->metric.size(), static_cast<size_t>(core::kRpcCount));
  for (const auto& m : requests->metric) {
    EXPECT_EQ(m.label[1].value, "OK");
    EXPECT_EQ(m.counter.value, 0);
  }
  // Four stages for the four RPCs that run commands; the total stage for Ping and GetStatus.
  EXPECT_EQ(durations->metric.size(), 4u * 4 + 2);
  for (const auto& m : durations->metric) {
    EXPECT_EQ(m.histogram.sample_count, 0u);
    EXPECT_EQ(m.histogram.bucket.size(), core::DurationBucketBounds().size() + 1);
  }
  // Without a source: nothing current is made up.
  EXPECT_EQ(Find(families, "execd_running"), nullptr);
}

TEST(RegistryTest, LabelValuesStayBoundedWhateverIsReported) {
  Registry r("dev");
  for (int e = -5; e < 5000; ++e) r.SpawnFailed(e);
  for (int c = -3; c < 40; ++c) {
    r.CallEnded(core::Rpc::kExecute, static_cast<absl::StatusCode>(c), core::CallTimes{});
  }
  const std::vector<prometheus::MetricFamily> families = r.Collect();
  const prometheus::MetricFamily* errors = Find(families, "execd_spawn_errors_total");
  ASSERT_NE(errors, nullptr);
  EXPECT_LE(errors->metric.size(), 134u);
  double total = 0;
  for (const auto& m : errors->metric) total += m.counter.value;
  EXPECT_EQ(total, 5005) << "every error counted, the odd ones under \"none\"";
  const prometheus::MetricFamily* requests = Find(families, "execd_requests_total");
  size_t execute = 0;
  for (const auto& m : requests->metric) execute += m.label[0].value == "Execute";
  EXPECT_EQ(execute, 17u) << "the 17 gRPC codes, an unknown one counted as UNKNOWN";
}

// The tuner's view: the same events, summed, from one snapshot to the next.
TEST(RegistryTest, TotalsSumWhatTheTunerReadsAndGrowByWhatHappenedSince) {
  Registry r("dev");
  EXPECT_EQ(r.Totals().completions, 0);
  UseEverything(r);  // One Execute that ran (queue 10 us, spawn 1 ms, run 2 ms).
  core::CallTimes ping;
  ping.total = absl::Milliseconds(1);
  r.CallEnded(core::Rpc::kPing, absl::StatusCode::kOk, ping);  // Ran nothing.
  r.SpawnFailed(EAGAIN);
  r.Shed(core::ShedReason::kQueueTimeout);
  r.Shed(core::ShedReason::kMemoryBudget);  // Not a drop of the queue's.
  const core::MetricsTotals t = r.Totals();
  EXPECT_EQ(t.completions, 1);
  EXPECT_EQ(t.service_time, absl::Milliseconds(3));
  EXPECT_EQ(t.queue_wait, absl::Microseconds(10));
  EXPECT_EQ(t.drops, 2);            // queue_full and queue_timeout.
  EXPECT_EQ(t.resource_errors, 1);  // EAGAIN; the ENOENT of UseEverything is not one.
  EXPECT_DOUBLE_EQ(t.child_cpu_seconds, 0.375);
  // Its latency, 3.01 ms, in the bucket of the first bound that holds it.
  const std::vector<double>& bounds = core::DurationBucketBounds();
  ASSERT_EQ(t.latency_buckets.size(), bounds.size() + 1);
  const size_t b = std::lower_bound(bounds.begin(), bounds.end(), 0.00301) - bounds.begin();
  for (size_t i = 0; i < t.latency_buckets.size(); ++i) {
    EXPECT_EQ(t.latency_buckets[i], i == b ? 1 : 0) << "bucket " << i;
  }
  EXPECT_EQ(core::Metrics::Null().Totals().completions, 0);
}

// A batch is one call but many commands: the tuner's figures are the commands'.
TEST(RegistryTest, TotalsCountEachCommandNotEachCall) {
  Registry r("dev");
  core::Result item;
  item.queued = absl::Milliseconds(1);
  item.spawn = absl::Milliseconds(2);
  item.run = absl::Milliseconds(3);
  for (int i = 0; i < 4; ++i) r.CommandEnded(item);
  const core::MetricsTotals t = r.Totals();
  EXPECT_EQ(t.completions, 4);
  EXPECT_EQ(t.service_time, absl::Milliseconds(20));
  EXPECT_EQ(t.queue_wait, absl::Milliseconds(4));
}

TEST(RegistryTest, TunerDecisionsAreCountedByDirectionAndReasonOnlyWithTheTunerOn) {
  Registry r("dev");
  auto count = [&](absl::string_view direction, absl::string_view reason) {
    double n = NAN;
    for (const Sample& s : r.Samples()) {
      std::map<std::string, std::string> labels(s.labels.begin(), s.labels.end());
      if (s.name == "execd_tuner_decisions_total" && labels["direction"] == direction &&
          labels["reason"] == reason) {
        n = s.value;
      }
    }
    return n;
  };
  r.SetSource([] { return Snapshot{}; });  // Tuner off: no bounds, no decisions family.
  EXPECT_TRUE(std::isnan(count("up", "queueing")));
  r.SetSource([] {
    Snapshot s;
    s.limit_bounds = std::make_pair(2, 128);
    return s;
  });
  EXPECT_EQ(count("up", "queueing"), 0);  // Present before the first decision.
  r.LimitMoved(/*up=*/true, "queueing");
  r.LimitMoved(/*up=*/true, "queueing");
  r.LimitMoved(/*up=*/false, "cpu_saturated");
  r.LimitMoved(/*up=*/false, "not a reason");  // Outside the fixed set: not counted.
  EXPECT_EQ(count("up", "queueing"), 2);
  EXPECT_EQ(count("down", "cpu_saturated"), 1);
  EXPECT_EQ(count("down", "queueing"), 0);
  double bound_min = NAN, bound_max = NAN;
  for (const Sample& s : r.Samples()) {
    if (s.name != "execd_concurrency_limit_bounds") continue;
    (s.labels.at(0).second == "min" ? bound_min : bound_max) = s.value;
  }
  EXPECT_EQ(bound_min, 2);
  EXPECT_EQ(bound_max, 128);
}

TEST(RegistryTest, ADurationCountsInTheFirstBucketWhoseBoundHoldsIt) {
  Registry r("dev");
  core::CallTimes times;
  times.total = absl::Microseconds(100);  // On the first bound: counted in it (le).
  r.CallEnded(core::Rpc::kPing, absl::StatusCode::kOk, times);
  times.total = absl::Microseconds(101);
  r.CallEnded(core::Rpc::kPing, absl::StatusCode::kOk, times);
  times.total = absl::Seconds(100);  // Past the last bound: only +Inf holds it.
  r.CallEnded(core::Rpc::kPing, absl::StatusCode::kOk, times);
  const std::map<std::string, std::string> ping = {{"rpc", "Ping"}, {"stage", "total"}};
  // The cumulative count of the bucket whose bound is `le`, read back from its label.
  auto bucket = [&](double le) {
    double count = NAN;
    for (const Sample& s : r.Samples()) {
      std::map<std::string, std::string> labels(s.labels.begin(), s.labels.end());
      if (s.name == "execd_request_duration_seconds_bucket" && labels["rpc"] == "Ping" &&
          std::strtod(labels["le"].c_str(), nullptr) == le) {
        count = s.value;
      }
    }
    return count;
  };
  EXPECT_EQ(bucket(core::DurationBucketBounds()[0]), 1);
  EXPECT_EQ(bucket(core::DurationBucketBounds()[1]), 2);
  EXPECT_EQ(bucket(core::DurationBucketBounds().back()), 2);
  EXPECT_EQ(bucket(INFINITY), 3);
  EXPECT_EQ(Value(r, "execd_request_duration_seconds_count", ping), 3);
  EXPECT_NEAR(Value(r, "execd_request_duration_seconds_sum", ping), 100.000201, 1e-9);
  EXPECT_EQ(Value(r, "execd_request_duration_seconds_count", {{"rpc", "Ping"}}), 3)
      << "Ping has only the total stage";
}

}  // namespace
}  // namespace execd::metrics
