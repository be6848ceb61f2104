// What `execctl top` shows, computed from two snapshots of the same server's metrics and
// nothing else: a counter's rate is its increase between them over the time between them,
// a quantile comes from the increase of each histogram bucket, and gauges are read from the
// later snapshot. Pure functions, testable without a server.
#pragma once

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/time/time.h"
#include "tools/execctl/metrics_snapshot.h"

namespace execd::execctl {

// One bucket of a Prometheus histogram: how many observations were at most `upper_bound`.
// Counts are cumulative; the last bucket's bound is +Inf.
struct Bucket {
  double upper_bound = 0;
  double count = 0;
};

// The q-quantile (0 <= q <= 1) of the observations `buckets` counts, as Prometheus'
// histogram_quantile() computes it: found in the first bucket whose count reaches q × the
// total, interpolated linearly between that bucket's lower and upper bound (the first
// bucket's lower bound is 0), and reported as the highest finite bound when it falls in the
// +Inf bucket. None when nothing was observed or there is no +Inf bucket.
std::optional<double> HistogramQuantile(double q, std::vector<Bucket> buckets);

// A counter: its increase per second between the snapshots (none when no time passed
// between them, as for the first frame), and its value in the later one (since the server
// started).
struct CounterFigure {
  std::optional<double> per_second;
  double total = 0;
};

// A named counter of a set (an error code, a shed reason).
using NamedCounter = std::pair<std::string, CounterFigure>;

struct RpcFigures {
  std::string name;
  CounterFigure calls;
  // Quantiles of the total stage (received to answered), in seconds, of the calls that ended
  // between the snapshots; none when no call did.
  std::optional<double> p50;
  std::optional<double> p99;
};

struct PoolFigures {
  std::string name;
  double idle = 0;
  double busy = 0;
  double starting = 0;
  CounterFigure served;
  CounterFigure misses;  // Requests that found no idle worker.
  CounterFigure crashed;
};

struct CacheFigures {
  std::optional<double> hit_ratio;  // Hits over lookups between the snapshots; none if none.
  double lookups = 0;               // Between the snapshots.
  double entries = 0;
  double bytes = 0;
};

// The auto-tuner: its bounds, and the moves it made by direction and reason ("up queueing").
struct TunerFigures {
  double min = 0;
  double max = 0;
  std::vector<NamedCounter> moves;  // Only those that happened since the server started.
};

struct TopFigures {
  std::string version;
  absl::Duration interval;  // Between the snapshots.
  // A counter went down between the snapshots: the server restarted, and every increase is
  // counted from zero (the later snapshot's values), never negative.
  bool restarted = false;

  // The command-running RPCs, in the order of kCommandRpcs, then all of them together.
  std::vector<RpcFigures> commands;
  RpcFigures all_commands;
  RpcFigures ping;
  // Calls of any RPC that ended with a code other than OK, by code; and requests refused
  // before they ran, by reason. Only those that happened since the server started.
  std::vector<NamedCounter> errors;
  std::vector<NamedCounter> shed;

  double running = 0;
  double concurrency_limit = 0;
  std::optional<TunerFigures> tuner;  // None: the tuner is off (the limit is pinned).
  std::vector<std::pair<std::string, double>> queued;  // By priority, as the server lists them.
  double queued_total = 0;
  double queue_capacity = 0;

  // CPU seconds used per second: execd's own, and its commands' (counted as each ends).
  std::optional<double> server_cores;
  std::optional<double> command_cores;
  double server_resident_bytes = 0;
  std::optional<double> command_memory_bytes;  // None: the server's containment cannot tell.
  double budget_used_bytes = 0;
  double budget_bytes = 0;

  std::optional<CacheFigures> cache;  // None: the server runs without a result cache.
  std::vector<PoolFigures> pools;
};

// The RPCs that run commands (ExecuteBatch counts each item as a call).
inline constexpr const char* kCommandRpcs[] = {"Execute", "ExecuteStream", "ExecuteBatch",
                                               "Attach"};

// The figures between two snapshots of one server; `before` == `after` gives the gauges and
// totals with no rates (the first frame).
TopFigures ComputeFigures(const MetricsSnapshot& before, const MetricsSnapshot& after);

}  // namespace execd::execctl
