// Metrics: the one interface through which every part of execd reports what it did. The
// Prometheus exporter (metrics/) implements it; core never sees a Prometheus type. The base
// class records nothing: tests and embedders that want no metrics use Metrics::Null().
//
// What is current (running, queued, pools, cache, budget) is not reported here: the
// exporter reads it from the components' own stats when it is scraped. Only events are
// reported, each as it happens, and every method is thread-safe and costs a few atomic
// adds: they run on the request path.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "core/command.h"

namespace execd::core {

// The RPCs a call is counted under (a fixed set: metric labels stay bounded).
enum class Rpc { kExecute, kExecuteStream, kExecuteBatch, kAttach, kPing, kGetStatus };
inline constexpr int kRpcCount = 6;
absl::string_view RpcName(Rpc rpc);

// Why a request was refused before it ran.
enum class ShedReason {
  kQueueFull,     // The queue was full (RESOURCE_EXHAUSTED).
  kDisplaced,     // Dropped from a full queue for a higher-priority or fairer request.
  kQueueTimeout,  // Its deadline or max_queue_time passed while queued.
  kMemoryBudget,  // The server's memory budget could not hold its worst case.
  kDraining,      // The server was shutting down.
};
inline constexpr int kShedReasonCount = 5;
absl::string_view ShedReasonName(ShedReason reason);

// Output bytes, counted before and after compression: kRaw is what commands wrote and
// execd passed on; each byte of it then left as kIdentity (as is) or inside kLz4 (which
// counts the compressed bytes).
enum class OutputEncoding { kRaw, kIdentity, kLz4 };
inline constexpr int kOutputEncodingCount = 3;
absl::string_view OutputEncodingName(OutputEncoding encoding);

// Where a call's time went, as its log line shows it.
struct CallTimes {
  absl::Duration queue;  // Submit to admission.
  absl::Duration spawn;  // Admission to the program running.
  absl::Duration run;    // Running to exit and output drained.
  absl::Duration total;  // The server received the call to its answer.
  bool ran = false;      // Whether queue, spawn and run mean anything (a command ran).
};

// The upper bounds, in seconds, of execd's duration histograms: 100 µs × 2^(k/4) up to 60 s
// (each about 19% above the last, so a quantile interpolated within a bucket is within 20%
// of the truth), and a last bucket past them. The Prometheus histograms and the tuner's
// latency percentile share them.
const std::vector<double>& DurationBucketBounds();

// What the tuner reads of the metrics: cumulative since start-up, so that the difference of
// two snapshots is what happened between them. Only commands that ran count (not cache
// hits, not refusals).
struct MetricsTotals {
  int64_t completions = 0;      // Commands that ended.
  absl::Duration service_time;  // Their spawn-to-exit times (spawn + run stages), summed.
  absl::Duration queue_wait;    // Their waits for a slot, summed.
  // Their latencies (queue wait and service), counted by DurationBucketBounds() bucket,
  // the one past the last bound included; empty when not recorded.
  std::vector<int64_t> latency_buckets;
  int64_t drops = 0;             // Requests shed from a full queue or expired in it.
  int64_t resource_errors = 0;   // Spawns that failed with EAGAIN or ENOMEM.
  double child_cpu_seconds = 0;  // CPU the commands used.
};

class Metrics {
 public:
  virtual ~Metrics() = default;
  // Records nothing.
  static Metrics& Null();

  // The totals so far (all zero from Null()).
  virtual MetricsTotals Totals() const { return {}; }

  // A call ended with `code` (the status its caller gets).
  virtual void CallEnded(Rpc rpc, absl::StatusCode code, const CallTimes& times) {
    (void)rpc, (void)code, (void)times;
  }
  // A command that ran has ended (a cache hit is not a run): how, and what it used.
  virtual void CommandEnded(const Result& result) { (void)result; }
  // A command could not be started; `error` is the errno, 0 when there was none.
  virtual void SpawnFailed(int error) { (void)error; }
  virtual void Shed(ShedReason reason) { (void)reason; }
  // The auto-tuner moved the concurrency limit, for `reason` (one of kLimitReasons in
  // core/tuner.h).
  virtual void LimitMoved(bool up, absl::string_view reason) { (void)up, (void)reason; }
  virtual void Output(OutputStream stream, OutputEncoding encoding, int64_t bytes) {
    (void)stream, (void)encoding, (void)bytes;
  }
};

}  // namespace execd::core
