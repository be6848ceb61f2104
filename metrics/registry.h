// Registry: execd's metrics for Prometheus. It is the core::Metrics every part of execd
// reports its events to, and the prometheus::Collectable a scrape reads: the events'
// counters and histograms, what is current (read from the components' own stats through a
// Source at each scrape), and the process_* families read from /proc. Every family comes
// from the table in families.h.
//
// Events cost a few relaxed atomic adds into fixed arrays (no locks, no label lookups);
// nothing is windowed: counters and histograms only grow, and a reader takes the
// difference of two snapshots for a rate. Thread-safe.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "core/dispatcher.h"
#include "core/metrics.h"
#include "core/pool_set.h"
#include "core/tuner.h"
#include "metrics/families.h"
#include "prometheus/collectable.h"
#include "prometheus/metric_family.h"

namespace execd::metrics {

// What is current, read at each scrape.
struct Snapshot {
  core::Dispatcher::Stats stats;
  std::vector<core::PoolStatus> pools;
  std::optional<int64_t> child_memory_bytes;  // None: not known.
  // The auto-tuner's bounds on the concurrency limit; none with the tuner off.
  std::optional<std::pair<int, int>> limit_bounds;
};

// One sample as the text format shows it: a histogram gives its _bucket (with "le"), _sum
// and _count samples. For tools that read metrics without parsing the text format.
struct Sample {
  std::string name;
  std::vector<std::pair<std::string, std::string>> labels;
  double value = 0;
};

class Registry final : public core::Metrics, public prometheus::Collectable {
 public:
  using Source = std::function<Snapshot()>;
  explicit Registry(std::string version);
  ~Registry() override;

  // Where current values come from; until it is set, scrapes show only events and process_*.
  void SetSource(Source source);

  // core::Metrics.
  core::MetricsTotals Totals() const override;
  void CallEnded(core::Rpc rpc, absl::StatusCode code, const core::CallTimes& times) override;
  void CommandEnded(const core::Result& result) override;
  void SpawnFailed(int error) override;
  void Shed(core::ShedReason reason) override;
  void LimitMoved(bool up, absl::string_view reason) override;
  void Output(core::OutputStream stream, core::OutputEncoding encoding, int64_t bytes) override;

  // Every family that has series, in the table's order (a scrape).
  std::vector<prometheus::MetricFamily> Collect() const override;
  // The same, flattened.
  std::vector<Sample> Samples() const;
  // The same, in Prometheus' text format.
  std::string Text() const;

 private:
  static constexpr int kCodes = 17;    // absl::StatusCode 0..16, as gRPC's.
  static constexpr int kStages = 4;    // queue, spawn, run, total.
  static constexpr int kErrnos = 134;  // 0 ("none") .. 133; larger ones count as 0's "other".
  static constexpr int kTerminations = 9;
  static constexpr int kLimitReasons = std::size(core::kLimitReasons);

  struct Histogram {
    explicit Histogram(size_t buckets) : counts(buckets + 1) {}  // The last is +Inf.
    std::vector<std::atomic<uint64_t>> counts;
    // Nanoseconds: an integer add is one instruction, where a double's is a compare-and-swap
    // loop that concurrent calls make retry.
    std::atomic<int64_t> sum_ns{0};
  };

  void Observe(Histogram& histogram, absl::Duration duration);
  void AddEvents(std::vector<prometheus::MetricFamily>& out) const;
  void AddCurrent(std::vector<prometheus::MetricFamily>& out) const;
  static void AddProcess(std::vector<prometheus::MetricFamily>& out);

  const std::string version_;
  const std::vector<double> bounds_;  // Of the duration histograms.

  std::array<std::array<std::atomic<uint64_t>, kCodes>, core::kRpcCount> requests_{};
  // Allocated once, with all their buckets, in the constructor: [rpc][stage].
  std::array<std::array<std::unique_ptr<Histogram>, kStages>, core::kRpcCount> durations_;
  std::array<std::atomic<uint64_t>, core::kShedReasonCount> shed_{};
  std::array<std::atomic<uint64_t>, kTerminations> terminations_{};
  std::array<std::atomic<uint64_t>, kErrnos> spawn_errors_{};
  std::array<std::array<std::atomic<uint64_t>, core::kOutputEncodingCount>, 2> output_{};
  std::atomic<int64_t> child_user_ns_{0};
  std::atomic<int64_t> child_system_ns_{0};
  // Of each command that ran, for the tuner (CallEnded's stages count calls: a batch is one).
  std::unique_ptr<Histogram> command_latency_;
  std::atomic<int64_t> command_queue_ns_{0};
  std::atomic<int64_t> command_service_ns_{0};
  std::array<std::array<std::atomic<uint64_t>, kLimitReasons>, 2> limit_moves_{};  // [up][reason]

  mutable absl::Mutex mu_;
  Source source_ ABSL_GUARDED_BY(mu_);
};

}  // namespace execd::metrics
