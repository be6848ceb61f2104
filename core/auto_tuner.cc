#include "core/auto_tuner.h"

#include <sys/sysinfo.h>
#include <unistd.h>

#include <algorithm>
#include <utility>

#include "core/kernel_files.h"

namespace execd::core {

namespace {

ProcessLimit::Options ControllerOptions(const AutoTuner::Options& o, int start) {
  ProcessLimit::Options c;
  c.start = start;
  c.floor = o.min;
  c.cap = o.max;
  c.target_p99 = o.target_p99;
  return c;
}

int Clamp(int limit, const AutoTuner::Options& o) { return std::clamp(limit, o.min, o.max); }

}  // namespace

AutoTuner::AutoTuner(Options options, Plant& plant, Metrics& metrics, const Clock& clock,
                     CpuSource cpu, DecisionSink sink)
    : options_(options),
      plant_(plant),
      metrics_(metrics),
      clock_(clock),
      cpu_(std::move(cpu)),
      sink_(std::move(sink)),
      controller_(ControllerOptions(options, Clamp(plant.load().limit, options))) {
  plant_.SetLimit(Clamp(plant_.load().limit, options_));
}

AutoTuner::~AutoTuner() { Stop(); }

AutoTuner::Snapshot AutoTuner::Take() const {
  return Snapshot{clock_.Now(), metrics_.Totals(), cpu_ ? cpu_() : CpuReading{}};
}

absl::Duration AutoTuner::Percentile99(const std::vector<int64_t>& buckets) {
  int64_t total = 0;
  for (int64_t n : buckets) total += n;
  if (total == 0) return absl::ZeroDuration();
  const std::vector<double>& bounds = DurationBucketBounds();
  // The smallest bucket holding at least 99% of the latencies at or below its bound.
  const int64_t rank = total - total / 100;
  int64_t seen = 0;
  for (size_t i = 0; i < buckets.size(); ++i) {
    seen += buckets[i];
    if (seen >= rank) return absl::Seconds(bounds[std::min(i, bounds.size() - 1)]);
  }
  return absl::Seconds(bounds.back());
}

std::optional<AutoTuner::Decision> AutoTuner::Step() {
  Snapshot now = Take();
  if (!last_.has_value() || now.at <= last_->at) {
    last_ = std::move(now);
    return std::nullopt;
  }
  const Snapshot& then = *last_;
  const Plant::Load load = plant_.load();
  TunerWindow w;
  w.now = now.at;
  w.length = now.at - then.at;
  w.limit = load.limit;
  w.in_flight = load.running;
  w.queued = load.queued;
  w.completions = now.totals.completions - then.totals.completions;
  w.service_time_sum = now.totals.service_time - then.totals.service_time;
  w.queue_wait_sum = now.totals.queue_wait - then.totals.queue_wait;
  w.drops = now.totals.drops - then.totals.drops;
  w.resource_errors = now.totals.resource_errors - then.totals.resource_errors;
  w.child_cpu_seconds =
      now.cpu.commands_used.has_value() && then.cpu.commands_used.has_value()
          ? absl::ToDoubleSeconds(*now.cpu.commands_used - *then.cpu.commands_used)
          : now.totals.child_cpu_seconds - then.totals.child_cpu_seconds;
  if (now.cpu.stalled.has_value() && then.cpu.stalled.has_value()) {
    w.cpu_pressure =
        std::clamp(absl::FDivDuration(*now.cpu.stalled - *then.cpu.stalled, w.length), 0.0, 1.0);
  }
  w.cores = options_.cores;
  std::vector<int64_t> latencies = now.totals.latency_buckets;
  for (size_t i = 0; i < latencies.size() && i < then.totals.latency_buckets.size(); ++i) {
    latencies[i] -= then.totals.latency_buckets[i];
  }
  w.latency_p99 = Percentile99(latencies);
  last_ = std::move(now);

  const int limit = Clamp(controller_.Update(w), options_);
  if (limit == load.limit) return std::nullopt;
  plant_.SetLimit(limit);
  Decision decision{load.limit, limit, std::string(controller_.last_reason()), w};
  metrics_.LimitMoved(limit > load.limit, decision.reason);
  {
    absl::MutexLock lock(&mu_);
    last_decision_ = decision;
  }
  if (sink_) sink_(decision);
  return decision;
}

void AutoTuner::Start() {
  if (thread_.joinable()) return;
  thread_ = std::thread([this] {
    Step();
    while (!stop_.WaitForNotificationWithTimeout(options_.window)) Step();
  });
}

void AutoTuner::Stop() {
  if (!thread_.joinable()) return;
  stop_.Notify();
  thread_.join();
}

std::optional<AutoTuner::Decision> AutoTuner::last_decision() const {
  absl::MutexLock lock(&mu_);
  return last_decision_;
}

std::optional<CommandCeiling> MachineCommandCeiling(int64_t memory_per_command) {
  std::optional<CommandCeiling> ceiling;
  auto lower = [&](int64_t commands, const char* why) {
    commands = std::max<int64_t>(1, commands);
    if (!ceiling.has_value() || commands < ceiling->commands) {
      ceiling = CommandCeiling{static_cast<int>(std::min<int64_t>(commands, 1 << 20)), why};
    }
  };
  // Each command is a process at least; execd's own threads count in the cgroup too.
  if (const int64_t pids = SelfCgroupLimit("pids.max", "pids", "pids.max"); pids > 0) {
    lower(pids - SelfCgroupValue("pids.current", "pids", "pids.current"), "pids");
  }
  if (memory_per_command > 0) {
    struct sysinfo info {};
    int64_t memory = sysinfo(&info) == 0 ? static_cast<int64_t>(info.totalram) * info.mem_unit : 0;
    if (const int64_t cgroup = SelfCgroupLimit("memory.max", "memory", "memory.limit_in_bytes");
        cgroup > 0 && (memory == 0 || cgroup < memory)) {
      memory = cgroup;
    }
    if (memory > 0) lower(memory / memory_per_command, "memory");
  }
  return ceiling;
}

}  // namespace execd::core
