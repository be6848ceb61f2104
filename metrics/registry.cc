#include "metrics/registry.h"

#include <dirent.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <memory>
#include <sstream>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "core/kernel_files.h"
#include "prometheus/text_serializer.h"

namespace execd::metrics {
namespace {

using prometheus::ClientMetric;
using prometheus::MetricFamily;

constexpr absl::string_view kStageNames[] = {"queue", "spawn", "run", "total"};
constexpr absl::string_view kPriorityNames[] = {"low", "normal", "high"};
constexpr absl::string_view kStreamNames[] = {"stdout", "stderr"};

prometheus::MetricType ToPrometheus(Type type) {
  switch (type) {
    case Type::kCounter:
      return prometheus::MetricType::Counter;
    case Type::kGauge:
      return prometheus::MetricType::Gauge;
    case Type::kHistogram:
      return prometheus::MetricType::Histogram;
  }
  return prometheus::MetricType::Untyped;
}

// Families are built in the table's order: each Add* appends to the family of its id,
// which is created (empty) on first use.
class Builder {
 public:
  explicit Builder(std::vector<MetricFamily>& out) : out_(out) {}

  MetricFamily& Of(Family id) {
    const FamilySpec& spec = Spec(id);
    for (MetricFamily& f : out_) {
      if (f.name == spec.name) return f;
    }
    MetricFamily& f = out_.emplace_back();
    f.name = spec.name;
    f.help = spec.help;
    f.type = ToPrometheus(spec.type);
    return f;
  }
  // A series of `id` with the table's labels, given their values in the table's order.
  ClientMetric& Series(Family id, std::initializer_list<absl::string_view> values) {
    const FamilySpec& spec = Spec(id);
    ClientMetric& m = Of(id).metric.emplace_back();
    size_t i = 0;
    for (absl::string_view v : values) {
      m.label.push_back(
          ClientMetric::Label{i < spec.labels.size() ? spec.labels[i] : "?", std::string(v)});
      ++i;
    }
    return m;
  }
  void Value(Family id, std::initializer_list<absl::string_view> values, double value) {
    ClientMetric& m = Series(id, values);
    if (Spec(id).type == Type::kCounter) {
      m.counter.value = value;
    } else {
      m.gauge.value = value;
    }
  }

 private:
  std::vector<MetricFamily>& out_;
};

std::string ErrnoName(int error) {
  if (error == 0) return "none";
  if (const char* name = strerrorname_np(error); name != nullptr) return name;
  return absl::StrCat("E", error);
}

// The fields of /proc/self/stat after the command name (which may hold spaces).
std::vector<std::string> ProcSelfStat() {
  const std::string stat = core::ReadFile("/proc/self/stat");
  const size_t close = stat.rfind(')');
  if (close == std::string::npos) return {};
  return absl::StrSplit(absl::string_view(stat).substr(close + 2), ' ');
}

}  // namespace

Registry::Registry(std::string version)
    : version_(std::move(version)), bounds_(core::DurationBucketBounds()) {
  for (auto& stages : durations_) {
    for (auto& h : stages) h = std::make_unique<Histogram>(bounds_.size());
  }
  command_latency_ = std::make_unique<Histogram>(bounds_.size());
}

Registry::~Registry() = default;

void Registry::SetSource(Source source) {
  absl::MutexLock lock(&mu_);
  source_ = std::move(source);
}

void Registry::Observe(Histogram& histogram, absl::Duration duration) {
  const double seconds = absl::ToDoubleSeconds(duration);
  const size_t bucket = std::lower_bound(bounds_.begin(), bounds_.end(), seconds) - bounds_.begin();
  histogram.counts[bucket].fetch_add(1, std::memory_order_relaxed);
  histogram.sum_ns.fetch_add(absl::ToInt64Nanoseconds(duration), std::memory_order_relaxed);
}

void Registry::CallEnded(core::Rpc rpc, absl::StatusCode code, const core::CallTimes& times) {
  const int r = static_cast<int>(rpc);
  const int c = static_cast<int>(code);
  requests_[r][c >= 0 && c < kCodes ? c : static_cast<int>(absl::StatusCode::kUnknown)].fetch_add(
      1, std::memory_order_relaxed);
  auto& stages = durations_[r];
  if (times.ran) {
    Observe(*stages[0], times.queue);
    Observe(*stages[1], times.spawn);
    Observe(*stages[2], times.run);
  }
  Observe(*stages[3], times.total);
}

void Registry::CommandEnded(const core::Result& result) {
  const int t = static_cast<int>(result.termination);
  if (t >= 0 && t < kTerminations) terminations_[t].fetch_add(1, std::memory_order_relaxed);
  child_user_ns_.fetch_add(absl::ToInt64Nanoseconds(result.usage.user_cpu),
                           std::memory_order_relaxed);
  child_system_ns_.fetch_add(absl::ToInt64Nanoseconds(result.usage.system_cpu),
                             std::memory_order_relaxed);
  Observe(*command_latency_, result.queued + result.spawn + result.run);
  command_queue_ns_.fetch_add(absl::ToInt64Nanoseconds(result.queued), std::memory_order_relaxed);
  command_service_ns_.fetch_add(absl::ToInt64Nanoseconds(result.spawn + result.run),
                                std::memory_order_relaxed);
}

void Registry::LimitMoved(bool up, absl::string_view reason) {
  const auto* it =
      std::find(std::begin(core::kLimitReasons), std::end(core::kLimitReasons), reason);
  if (it == std::end(core::kLimitReasons)) return;  // Not a reason the table counts.
  limit_moves_[up ? 1 : 0][it - std::begin(core::kLimitReasons)].fetch_add(
      1, std::memory_order_relaxed);
}

void Registry::SpawnFailed(int error) {
  spawn_errors_[error > 0 && error < kErrnos ? error : 0].fetch_add(1, std::memory_order_relaxed);
}

void Registry::Shed(core::ShedReason reason) {
  shed_[static_cast<int>(reason)].fetch_add(1, std::memory_order_relaxed);
}

void Registry::Output(core::OutputStream stream, core::OutputEncoding encoding, int64_t bytes) {
  output_[stream == core::OutputStream::kStdout ? 0 : 1][static_cast<int>(encoding)].fetch_add(
      static_cast<uint64_t>(bytes), std::memory_order_relaxed);
}

core::MetricsTotals Registry::Totals() const {
  core::MetricsTotals totals;
  for (const auto& t : terminations_) totals.completions += t.load(std::memory_order_relaxed);
  totals.service_time = absl::Nanoseconds(command_service_ns_.load(std::memory_order_relaxed));
  totals.queue_wait = absl::Nanoseconds(command_queue_ns_.load(std::memory_order_relaxed));
  totals.latency_buckets.reserve(command_latency_->counts.size());
  for (const auto& count : command_latency_->counts) {
    totals.latency_buckets.push_back(static_cast<int64_t>(count.load(std::memory_order_relaxed)));
  }
  for (core::ShedReason reason : {core::ShedReason::kQueueFull, core::ShedReason::kDisplaced,
                                  core::ShedReason::kQueueTimeout}) {
    totals.drops += shed_[static_cast<int>(reason)].load(std::memory_order_relaxed);
  }
  totals.resource_errors = spawn_errors_[EAGAIN].load(std::memory_order_relaxed) +
                           spawn_errors_[ENOMEM].load(std::memory_order_relaxed);
  totals.child_cpu_seconds = static_cast<double>(child_user_ns_.load(std::memory_order_relaxed) +
                                                 child_system_ns_.load(std::memory_order_relaxed)) /
                             1e9;
  return totals;
}

void Registry::AddEvents(std::vector<MetricFamily>& out) const {
  Builder b(out);
  for (int r = 0; r < core::kRpcCount; ++r) {
    const absl::string_view rpc = core::RpcName(static_cast<core::Rpc>(r));
    for (int c = 0; c < kCodes; ++c) {
      const uint64_t n = requests_[r][c].load(std::memory_order_relaxed);
      // OK exists from start-up, so that a first scrape already has every RPC's series.
      if (n == 0 && c != 0) continue;
      b.Value(Family::kRequests, {rpc, absl::StatusCodeToString(static_cast<absl::StatusCode>(c))},
              static_cast<double>(n));
    }
  }
  // Every histogram exists from start-up too: a series that first appears holding a burst
  // loses that burst to rate() and increase(). Ping and GetStatus run no command, so they
  // have only the total stage.
  for (int r = 0; r < core::kRpcCount; ++r) {
    const auto rpc_id = static_cast<core::Rpc>(r);
    const absl::string_view rpc = core::RpcName(rpc_id);
    const bool runs = rpc_id != core::Rpc::kPing && rpc_id != core::Rpc::kGetStatus;
    for (int s = runs ? 0 : kStages - 1; s < kStages; ++s) {
      const Histogram& h = *durations_[r][s];
      ClientMetric::Histogram out_h;
      uint64_t cumulative = 0;
      for (size_t i = 0; i < h.counts.size(); ++i) {
        cumulative += h.counts[i].load(std::memory_order_relaxed);
        out_h.bucket.push_back(ClientMetric::Bucket{
            cumulative, i < bounds_.size() ? bounds_[i] : std::numeric_limits<double>::infinity()});
      }
      out_h.sample_count = cumulative;
      out_h.sample_sum = static_cast<double>(h.sum_ns.load(std::memory_order_relaxed)) / 1e9;
      b.Series(Family::kRequestDuration, {rpc, kStageNames[s]}).histogram = std::move(out_h);
    }
  }
  for (int i = 0; i < core::kShedReasonCount; ++i) {
    b.Value(Family::kShed, {core::ShedReasonName(static_cast<core::ShedReason>(i))},
            static_cast<double>(shed_[i].load(std::memory_order_relaxed)));
  }
  for (int i = 0; i < kTerminations; ++i) {
    b.Value(Family::kTerminations,
            {absl::AsciiStrToLower(core::TerminationName(static_cast<core::Termination>(i)))},
            static_cast<double>(terminations_[i].load(std::memory_order_relaxed)));
  }
  for (int i = 0; i < kErrnos; ++i) {
    const uint64_t n = spawn_errors_[i].load(std::memory_order_relaxed);
    if (n > 0) b.Value(Family::kSpawnErrors, {ErrnoName(i)}, static_cast<double>(n));
  }
  b.Of(Family::kSpawnErrors);  // Declared even before the first error.
  for (int s = 0; s < 2; ++s) {
    for (int e = 0; e < core::kOutputEncodingCount; ++e) {
      b.Value(Family::kOutputBytes,
              {kStreamNames[s], core::OutputEncodingName(static_cast<core::OutputEncoding>(e))},
              static_cast<double>(output_[s][e].load(std::memory_order_relaxed)));
    }
  }
  b.Value(Family::kChildCpu, {"user"}, child_user_ns_.load(std::memory_order_relaxed) / 1e9);
  b.Value(Family::kChildCpu, {"system"}, child_system_ns_.load(std::memory_order_relaxed) / 1e9);
}

void Registry::AddCurrent(std::vector<MetricFamily>& out) const {
  Builder b(out);
  b.Value(Family::kBuildInfo, {version_}, 1);
  Source source;
  {
    absl::MutexLock lock(&mu_);
    source = source_;
  }
  if (!source) return;
  const Snapshot now = source();
  const core::Engine::Stats& engine = now.stats.engine;
  b.Value(Family::kRunning, {}, engine.running);
  for (int p = 0; p < core::Scheduler::kPriorities; ++p) {
    b.Value(Family::kQueued, {kPriorityNames[p]},
            static_cast<double>(engine.queued_by_priority[p]));
  }
  b.Value(Family::kQueueCapacity, {}, static_cast<double>(engine.queue_capacity));
  b.Value(Family::kConcurrencyLimit, {}, engine.limit);
  if (now.limit_bounds.has_value()) {
    b.Value(Family::kConcurrencyLimitBounds, {"min"}, now.limit_bounds->first);
    b.Value(Family::kConcurrencyLimitBounds, {"max"}, now.limit_bounds->second);
    // Every series from the start, zeros too: a first move is then an increase to rate().
    for (int up = 0; up < 2; ++up) {
      for (int r = 0; r < kLimitReasons; ++r) {
        b.Value(Family::kTunerDecisions, {up ? "up" : "down", core::kLimitReasons[r]},
                static_cast<double>(limit_moves_[up][r].load(std::memory_order_relaxed)));
      }
    }
  }
  b.Value(Family::kMemoryBudgetUsed, {}, static_cast<double>(now.stats.memory_in_use));
  b.Value(Family::kMemoryBudget, {}, static_cast<double>(now.stats.memory_limit));
  if (now.child_memory_bytes.has_value()) {
    b.Value(Family::kChildMemory, {}, static_cast<double>(*now.child_memory_bytes));
  }
  if (now.stats.cache.has_value()) {
    const core::ResultCache::Stats& c = *now.stats.cache;
    b.Value(Family::kCacheRequests, {"hit"}, static_cast<double>(c.hits));
    b.Value(Family::kCacheRequests, {"miss"}, static_cast<double>(c.misses));
    b.Value(Family::kCacheEvictions, {}, static_cast<double>(c.evictions));
    b.Value(Family::kCacheBytes, {}, static_cast<double>(c.bytes));
    b.Value(Family::kCacheEntries, {}, static_cast<double>(c.entries));
  }
  for (const core::PoolStatus& pool : now.pools) {
    const core::PoolStats& s = pool.stats;
    b.Value(Family::kPoolProcesses, {pool.name, "idle"}, s.idle);
    b.Value(Family::kPoolProcesses, {pool.name, "busy"}, s.busy);
    b.Value(Family::kPoolProcesses, {pool.name, "starting"}, s.starting);
    b.Value(Family::kPoolEvents, {pool.name, "started"}, static_cast<double>(s.started));
    b.Value(Family::kPoolEvents, {pool.name, "served"}, static_cast<double>(s.served));
    b.Value(Family::kPoolEvents, {pool.name, "recycled"}, static_cast<double>(s.recycled));
    b.Value(Family::kPoolEvents, {pool.name, "crashed"}, static_cast<double>(s.crashed));
    b.Value(Family::kPoolEvents, {pool.name, "miss"}, static_cast<double>(s.misses));
  }
}

void Registry::AddProcess(std::vector<MetricFamily>& out) {
  Builder b(out);
  const std::vector<std::string> stat = ProcSelfStat();
  // Fields after the name, counted from 0: state is 0, so stat(5)'s field n is n - 3.
  auto field = [&](int n) {
    double v = 0;
    if (static_cast<size_t>(n - 3) < stat.size()) (void)absl::SimpleAtod(stat[n - 3], &v);
    return v;
  };
  const double ticks = static_cast<double>(sysconf(_SC_CLK_TCK));
  b.Value(Family::kProcessCpu, {}, (field(14) + field(15)) / ticks);
  b.Value(Family::kProcessVirtual, {}, field(23));
  b.Value(Family::kProcessResident, {}, field(24) * static_cast<double>(sysconf(_SC_PAGESIZE)));
  b.Value(Family::kProcessThreads, {}, field(20));
  double boot = 0;
  for (absl::string_view line : absl::StrSplit(core::ReadFile("/proc/stat"), '\n')) {
    if (absl::ConsumePrefix(&line, "btime ")) (void)absl::SimpleAtod(line, &boot);
  }
  b.Value(Family::kProcessStartTime, {}, boot + field(22) / ticks);
  int fds = 0;
  if (std::unique_ptr<DIR, int (*)(DIR*)> dir(opendir("/proc/self/fd"), closedir); dir != nullptr) {
    while (dirent* e = readdir(dir.get())) fds += e->d_name[0] != '.';
    --fds;  // The directory's own descriptor.
  }
  b.Value(Family::kProcessOpenFds, {}, fds);
  rlimit nofile{};
  getrlimit(RLIMIT_NOFILE, &nofile);
  b.Value(Family::kProcessMaxFds, {}, static_cast<double>(nofile.rlim_cur));
}

std::vector<MetricFamily> Registry::Collect() const {
  // Created in the table's order, then filled: a scrape lists families as the table does.
  std::vector<MetricFamily> out;
  Builder b(out);
  for (const FamilySpec& spec : Families()) b.Of(spec.id);
  AddEvents(out);
  AddCurrent(out);
  AddProcess(out);
  // A family with no series (no cache, no pools, no spawn error yet) is left out, as
  // Prometheus' own clients do, except the one declared for its first error.
  std::erase_if(out, [](const MetricFamily& f) {
    return f.metric.empty() && f.name != Spec(Family::kSpawnErrors).name;
  });
  return out;
}

std::vector<Sample> Registry::Samples() const {
  std::vector<Sample> samples;
  for (const MetricFamily& f : Collect()) {
    for (const ClientMetric& m : f.metric) {
      Sample base;
      for (const ClientMetric::Label& l : m.label) base.labels.emplace_back(l.name, l.value);
      switch (f.type) {
        case prometheus::MetricType::Histogram: {
          for (const ClientMetric::Bucket& bucket : m.histogram.bucket) {
            Sample s = base;
            s.name = f.name + "_bucket";
            s.labels.emplace_back("le", std::isinf(bucket.upper_bound)
                                            ? std::string("+Inf")
                                            : absl::StrFormat("%.16g", bucket.upper_bound));
            s.value = static_cast<double>(bucket.cumulative_count);
            samples.push_back(std::move(s));
          }
          Sample sum = base;
          sum.name = f.name + "_sum";
          sum.value = m.histogram.sample_sum;
          samples.push_back(std::move(sum));
          Sample count = std::move(base);
          count.name = f.name + "_count";
          count.value = static_cast<double>(m.histogram.sample_count);
          samples.push_back(std::move(count));
          break;
        }
        case prometheus::MetricType::Counter:
          base.name = f.name;
          base.value = m.counter.value;
          samples.push_back(std::move(base));
          break;
        default:
          base.name = f.name;
          base.value = m.gauge.value;
          samples.push_back(std::move(base));
          break;
      }
    }
  }
  return samples;
}

std::string Registry::Text() const {
  std::ostringstream out;
  prometheus::TextSerializer().Serialize(out, Collect());
  return out.str();
}

}  // namespace execd::metrics
