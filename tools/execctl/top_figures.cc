#include "tools/execctl/top_figures.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>

#include "absl/strings/numbers.h"

namespace execd::execctl {
namespace {

constexpr char kRequests[] = "execd_requests_total";
constexpr char kDurationBuckets[] = "execd_request_duration_seconds_bucket";

// A bucket's bound as the text format writes it ("+Inf" for the last).
double UpperBound(const Labels& labels) {
  auto le = labels.find("le");
  if (le == labels.end() || le->second == "+Inf") return std::numeric_limits<double>::infinity();
  double bound = std::numeric_limits<double>::infinity();
  (void)absl::SimpleAtod(le->second, &bound);
  return bound;
}

// Increases between two snapshots of one server: `base` is the earlier snapshot, or an empty
// one when the server restarted in between (its counters started again from zero).
class Increases {
 public:
  Increases(const MetricsSnapshot& base, const MetricsSnapshot& after, absl::Duration interval)
      : base_(base), after_(after), seconds_(absl::ToDoubleSeconds(interval)) {}

  double Of(absl::string_view name, const Labels& match = {}) const {
    return std::max(0.0, after_.Sum(name, match) - base_.Sum(name, match));
  }
  std::optional<double> PerSecond(double increase) const {
    if (seconds_ <= 0) return std::nullopt;
    return increase / seconds_;
  }
  CounterFigure Counter(absl::string_view name, const Labels& match = {}) const {
    return CounterFigure{PerSecond(Of(name, match)), after_.Sum(name, match)};
  }
  // The buckets of histogram series matching `match`, summed by bound, as increases.
  std::map<double, double> Buckets(const Labels& match) const {
    std::map<double, double> by_bound;
    for (const MetricsSnapshot::Series& s : after_.Of(kDurationBuckets)) {
      if (Includes(s.labels, match)) by_bound[UpperBound(s.labels)] += s.value;
    }
    for (const MetricsSnapshot::Series& s : base_.Of(kDurationBuckets)) {
      if (Includes(s.labels, match)) by_bound[UpperBound(s.labels)] -= s.value;
    }
    return by_bound;
  }

 private:
  const MetricsSnapshot& base_;
  const MetricsSnapshot& after_;
  const double seconds_;
};

std::optional<double> Quantile(double q, const std::map<double, double>& by_bound) {
  std::vector<Bucket> buckets;
  for (const auto& [bound, count] : by_bound) buckets.push_back(Bucket{bound, count});
  return HistogramQuantile(q, std::move(buckets));
}

RpcFigures Rpc(const Increases& increases, const std::vector<std::string>& rpcs, std::string name) {
  RpcFigures figures;
  figures.name = std::move(name);
  std::map<double, double> buckets;
  for (const std::string& rpc : rpcs) {
    const CounterFigure calls = increases.Counter(kRequests, {{"rpc", rpc}});
    figures.calls.total += calls.total;
    if (calls.per_second.has_value()) {
      figures.calls.per_second = figures.calls.per_second.value_or(0) + *calls.per_second;
    }
    for (const auto& [bound, count] : increases.Buckets({{"rpc", rpc}, {"stage", "total"}})) {
      buckets[bound] += count;
    }
  }
  figures.p50 = Quantile(0.5, buckets);
  figures.p99 = Quantile(0.99, buckets);
  return figures;
}

// The counters of `name` by the values of `label`, leaving out `except` and those still 0.
std::vector<NamedCounter> ByLabel(const Increases& increases, const MetricsSnapshot& after,
                                  absl::string_view name, const std::string& label,
                                  absl::string_view except = "") {
  std::vector<NamedCounter> out;
  for (const std::string& value : after.LabelValues(name, label)) {
    if (value == except) continue;
    CounterFigure figure = increases.Counter(name, {{label, value}});
    if (figure.total > 0) out.emplace_back(value, figure);
  }
  return out;
}

}  // namespace

std::optional<double> HistogramQuantile(double q, std::vector<Bucket> buckets) {
  std::sort(buckets.begin(), buckets.end(),
            [](const Bucket& a, const Bucket& b) { return a.upper_bound < b.upper_bound; });
  if (buckets.size() < 2 || !std::isinf(buckets.back().upper_bound)) return std::nullopt;
  // Counts read at slightly different times may dip; as Prometheus does, never let them.
  for (size_t i = 1; i < buckets.size(); ++i) {
    buckets[i].count = std::max(buckets[i].count, buckets[i - 1].count);
  }
  const double total = buckets.back().count;
  if (total <= 0) return std::nullopt;
  const double rank = std::clamp(q, 0.0, 1.0) * total;
  size_t b = 0;
  while (b + 1 < buckets.size() && buckets[b].count < rank) ++b;
  if (b == buckets.size() - 1) return buckets[b - 1].upper_bound;
  if (b == 0 && buckets[0].upper_bound <= 0) return buckets[0].upper_bound;
  const double lower = b == 0 ? 0 : buckets[b - 1].upper_bound;
  const double below = b == 0 ? 0 : buckets[b - 1].count;
  const double in_bucket = buckets[b].count - below;
  return lower + (buckets[b].upper_bound - lower) * ((rank - below) / in_bucket);
}

TopFigures ComputeFigures(const MetricsSnapshot& before, const MetricsSnapshot& after) {
  TopFigures f;
  const std::vector<std::string> versions = after.LabelValues("execd_build_info", "version");
  if (!versions.empty()) f.version = versions.front();
  f.interval = std::max(absl::ZeroDuration(), after.taken() - before.taken());
  f.restarted = after.CounterWentDownSince(before);
  const MetricsSnapshot none;
  const Increases increases(f.restarted ? none : before, after, f.interval);

  std::vector<std::string> all;
  for (const char* rpc : kCommandRpcs) {
    f.commands.push_back(Rpc(increases, {rpc}, rpc));
    all.push_back(rpc);
  }
  f.all_commands = Rpc(increases, all, "all commands");
  f.ping = Rpc(increases, {"Ping"}, "Ping");
  f.errors = ByLabel(increases, after, kRequests, "code", "OK");
  std::sort(f.errors.begin(), f.errors.end(),
            [](const NamedCounter& a, const NamedCounter& b) { return a.first < b.first; });
  f.shed = ByLabel(increases, after, "execd_shed_total", "reason");

  f.running = after.Sum("execd_running");
  f.concurrency_limit = after.Sum("execd_concurrency_limit");
  if (after.Has("execd_concurrency_limit_bounds")) {
    TunerFigures& tuner = f.tuner.emplace();
    tuner.min = after.Sum("execd_concurrency_limit_bounds", {{"bound", "min"}});
    tuner.max = after.Sum("execd_concurrency_limit_bounds", {{"bound", "max"}});
    for (const std::string& direction :
         after.LabelValues("execd_tuner_decisions_total", "direction")) {
      for (const std::string& reason : after.LabelValues("execd_tuner_decisions_total", "reason")) {
        CounterFigure moves = increases.Counter("execd_tuner_decisions_total",
                                                {{"direction", direction}, {"reason", reason}});
        if (moves.total > 0) tuner.moves.emplace_back(absl::StrCat(direction, " ", reason), moves);
      }
    }
  }
  for (const std::string& priority : after.LabelValues("execd_queued", "priority")) {
    f.queued.emplace_back(priority, after.Sum("execd_queued", {{"priority", priority}}));
  }
  f.queued_total = after.Sum("execd_queued");
  f.queue_capacity = after.Sum("execd_queue_capacity");

  f.server_cores = increases.PerSecond(increases.Of("process_cpu_seconds_total"));
  f.command_cores = increases.PerSecond(increases.Of("execd_child_cpu_seconds_total"));
  f.server_resident_bytes = after.Sum("process_resident_memory_bytes");
  if (after.Has("execd_child_memory_bytes")) {
    f.command_memory_bytes = after.Sum("execd_child_memory_bytes");
  }
  f.budget_used_bytes = after.Sum("execd_memory_budget_used_bytes");
  f.budget_bytes = after.Sum("execd_memory_budget_bytes");

  if (after.Has("execd_cache_entries")) {
    CacheFigures& cache = f.cache.emplace();
    const double hits = increases.Of("execd_cache_requests_total", {{"result", "hit"}});
    cache.lookups = increases.Of("execd_cache_requests_total");
    if (cache.lookups > 0) cache.hit_ratio = hits / cache.lookups;
    cache.entries = after.Sum("execd_cache_entries");
    cache.bytes = after.Sum("execd_cache_bytes");
  }
  for (const std::string& name : after.LabelValues("execd_pool_processes", "pool")) {
    PoolFigures& pool = f.pools.emplace_back();
    pool.name = name;
    pool.idle = after.Sum("execd_pool_processes", {{"pool", name}, {"state", "idle"}});
    pool.busy = after.Sum("execd_pool_processes", {{"pool", name}, {"state", "busy"}});
    pool.starting = after.Sum("execd_pool_processes", {{"pool", name}, {"state", "starting"}});
    pool.served =
        increases.Counter("execd_pool_events_total", {{"pool", name}, {"event", "served"}});
    pool.misses = increases.Counter("execd_pool_events_total", {{"pool", name}, {"event", "miss"}});
    pool.crashed =
        increases.Counter("execd_pool_events_total", {{"pool", name}, {"event", "crashed"}});
  }
  return f;
}

}  // namespace execd::execctl
