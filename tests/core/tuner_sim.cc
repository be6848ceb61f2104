#include "tests/core/tuner_sim.h"

#include <algorithm>
#include <cmath>
#include <deque>
#include <functional>
#include <limits>
#include <queue>
#include <random>

#include "core/metrics.h"

namespace execd::testing {
namespace {

using core::ConcurrencyController;
using core::TunerWindow;

constexpr double kNever = std::numeric_limits<double>::infinity();

double Seconds(absl::Duration d) { return absl::ToDoubleSeconds(d); }

// Everything the service counted since the start; a window is the difference of two.
struct Counters {
  int64_t completions = 0;
  double service_time = 0;
  double queue_wait = 0;
  int64_t drops = 0;
  int64_t resource_errors = 0;
  double child_cpu = 0;
  double pressure_time = 0;  // time with more runnable tasks than cores
};

struct Command {
  double arrival = 0;
  double cpu = 0;  // seconds of CPU, spawning included
  double sleep = 0;
  double start = 0;
};

// (time or virtual time, command index), earliest first.
using Timeline = std::priority_queue<std::pair<double, size_t>,
                                     std::vector<std::pair<double, size_t>>, std::greater<>>;

class Model {
 public:
  Model(const Scenario& s, ConcurrencyController& controller)
      : s_(s), controller_(controller), rng_(s.seed), limit_(s.start_limit) {
    for (const LoadPhase& phase : s.load) {
      std::vector<double> weights;
      for (const CommandKind& kind : phase.mix) weights.push_back(kind.weight);
      pick_kind_.emplace_back(weights.begin(), weights.end());
    }
    result_.scenario = s.name;
    result_.controller = std::string(controller.name());
  }

  ScenarioResult Run() {
    const double end = Seconds(s_.length);
    double next_window = Seconds(s_.window);
    double next_arrival = NextArrival(0);
    for (;;) {
      const double cpu_end = NextCpuEnd();
      const double sleep_end = sleepers_.empty() ? kNever : sleepers_.top().first;
      const double expiry = queue_.empty() ? kNever : Expiry(queue_.front());
      const double hog_change = NextHogChange();
      const double next =
          std::min({next_arrival, next_window, cpu_end, sleep_end, expiry, hog_change});
      if (next > end) break;
      AdvanceTo(next);
      if (next == cpu_end) {
        EndCpuWork();
      } else if (next == sleep_end) {
        EndSleeps();
      } else if (next == expiry) {
        ExpireQueued();
      } else if (next == hog_change) {
        // Nothing to do: Runnable() tells whether the hog runs from the clock.
      } else if (next == next_window) {
        EndWindow();
        next_window += Seconds(s_.window);
      } else {
        Arrive();
        next_arrival = NextArrival(now_);
      }
    }
    AdvanceTo(end);
    return Finish();
  }

 private:
  size_t PhaseAt(double t) const {
    size_t i = 0;
    while (i + 1 < s_.load.size() && Seconds(s_.load[i + 1].from) <= t) ++i;
    return i;
  }
  double PhaseEnd(double t) const {
    for (const LoadPhase& phase : s_.load) {
      if (Seconds(phase.from) > t) return Seconds(phase.from);
    }
    return kNever;
  }

  // Poisson arrivals at a rate that changes by phase: a gap that crosses into the next phase is
  // drawn again from its start, which memorylessness makes exact.
  double NextArrival(double after) {
    if (!s_.arrivals.empty()) {
      return next_fixed_arrival_ < s_.arrivals.size() ? Seconds(s_.arrivals[next_fixed_arrival_])
                                                      : kNever;
    }
    double t = after;
    while (t != kNever) {
      const double rate = s_.load[PhaseAt(t)].rate;
      const double phase_end = PhaseEnd(t);
      if (rate > 0) {
        const double candidate = t + std::exponential_distribution<>(rate)(rng_);
        if (candidate < phase_end) return candidate;
      }
      t = phase_end;
    }
    return kNever;
  }

  double Draw(absl::Duration mean, double cv) {
    const double m = Seconds(mean);
    if (m <= 0 || cv <= 0) return m;
    const double shape = 1 / (cv * cv);
    return std::gamma_distribution<>(shape, m / shape)(rng_);
  }

  bool HogRuns() const { return Seconds(s_.hog_from) <= now_ && now_ < Seconds(s_.hog_until); }
  double NextHogChange() const {
    if (now_ < Seconds(s_.hog_from)) return Seconds(s_.hog_from);
    if (now_ < Seconds(s_.hog_until)) return Seconds(s_.hog_until);
    return kNever;
  }

  int Runnable() const { return static_cast<int>(on_cpu_.size()) + (HogRuns() ? 1 : 0); }

  // The share of the cores each runnable task is charged per second.
  double SharePerTask(int runnable) const {
    return static_cast<double>(std::min(runnable, s_.cores)) / runnable;
  }
  // The work each runnable task gets done per second: its share, less what switching among
  // more tasks than cores costs.
  double RatePerTask(int runnable) const {
    const int excess = std::max(0, runnable - s_.cores);
    return SharePerTask(runnable) / (1 + s_.oversubscription_cost * excess);
  }

  double NextCpuEnd() const {
    if (on_cpu_.empty()) return kNever;
    return now_ + std::max(0.0, on_cpu_.top().first - cpu_done_) / RatePerTask(Runnable());
  }

  void AdvanceTo(double t) {
    const double dt = t - now_;
    const int runnable = Runnable();
    if (dt > 0 && runnable > 0) {
      const double rate = RatePerTask(runnable);
      cpu_done_ += rate * dt;
      totals_.child_cpu += SharePerTask(runnable) * static_cast<double>(on_cpu_.size()) * dt;
      if (runnable > s_.cores) totals_.pressure_time += dt;
    }
    now_ = t;
  }

  void Arrive() {
    if (!s_.arrivals.empty()) ++next_fixed_arrival_;
    if (now_ >= Seconds(s_.measure_from)) ++arrived_measured_;
    const size_t phase = PhaseAt(now_);
    const CommandKind& kind = s_.load[phase].mix[pick_kind_[phase](rng_)];
    Command c;
    c.arrival = now_;
    c.cpu = Seconds(s_.spawn_cpu) + Draw(kind.cpu, kind.cpu_cv);
    c.sleep = Draw(kind.sleep, kind.sleep_cv);
    commands_.push_back(c);
    if (running_ >= limit_ && queue_.size() >= s_.max_queue) {
      Drop();
      return;
    }
    queue_.push_back(commands_.size() - 1);
    StartQueued();
  }

  void Drop() {
    ++totals_.drops;
    if (now_ >= Seconds(s_.measure_from)) ++result_.drops;
  }

  double Expiry(size_t i) const { return commands_[i].arrival + Seconds(s_.max_queue_time); }

  void ExpireQueued() {
    while (!queue_.empty() && Expiry(queue_.front()) <= now_) {
      queue_.pop_front();
      Drop();
    }
  }

  void StartQueued() {
    while (running_ < limit_ && !queue_.empty()) {
      const size_t i = queue_.front();
      queue_.pop_front();
      if (s_.max_processes > 0 && running_ >= s_.max_processes) {
        ++totals_.resource_errors;
        if (now_ >= Seconds(s_.measure_from)) ++result_.resource_errors;
        continue;
      }
      Command& c = commands_[i];
      c.start = now_;
      ++running_;
      on_cpu_.emplace(cpu_done_ + c.cpu, i);
    }
  }

  // Ends the task the event was for, and any whose remaining work rounds to nothing.
  void EndCpuWork() {
    constexpr double kEpsilon = 1e-12;
    cpu_done_ = std::max(cpu_done_, on_cpu_.top().first);
    while (!on_cpu_.empty() && on_cpu_.top().first <= cpu_done_ + kEpsilon) {
      const size_t i = on_cpu_.top().second;
      on_cpu_.pop();
      if (commands_[i].sleep > 0) {
        sleepers_.emplace(now_ + commands_[i].sleep, i);
      } else {
        Exit(i);
      }
    }
    StartQueued();
  }

  void EndSleeps() {
    while (!sleepers_.empty() && sleepers_.top().first <= now_) {
      const size_t i = sleepers_.top().second;
      sleepers_.pop();
      Exit(i);
    }
    StartQueued();
  }

  void Exit(size_t i) {
    const Command& c = commands_[i];
    --running_;
    ++totals_.completions;
    totals_.service_time += now_ - c.start;
    totals_.queue_wait += c.start - c.arrival;
    window_latencies_.push_back(now_ - c.arrival);
    if (now_ >= Seconds(s_.measure_from)) {
      latencies_.push_back(now_ - c.arrival);
      service_times_.push_back(now_ - c.start);
    }
  }

  void EndWindow() {
    TunerWindow w;
    w.now = absl::UnixEpoch() + absl::Seconds(now_);
    w.length = s_.window;
    w.limit = limit_;
    w.in_flight = running_;
    w.queued = static_cast<int>(queue_.size());
    w.completions = totals_.completions - last_.completions;
    w.service_time_sum = absl::Seconds(totals_.service_time - last_.service_time);
    w.queue_wait_sum = absl::Seconds(totals_.queue_wait - last_.queue_wait);
    w.drops = totals_.drops - last_.drops;
    w.resource_errors = totals_.resource_errors - last_.resource_errors;
    w.child_cpu_seconds = totals_.child_cpu - last_.child_cpu;
    w.cpu_pressure = (totals_.pressure_time - last_.pressure_time) / Seconds(s_.window);
    w.cores = s_.cores;
    if (!window_latencies_.empty()) {
      w.latency_p99 = BucketBound(absl::Seconds(Quantile(window_latencies_, 0.99)));
    }
    window_latencies_.clear();
    last_ = totals_;
    result_.windows.push_back(w);
    limit_ = controller_.Update(w);
    result_.limits.emplace_back(absl::Seconds(now_), limit_);
    StartQueued();
  }

  ScenarioResult Finish() {
    const double measured = Seconds(s_.length - s_.measure_from);
    result_.offered = static_cast<double>(arrived_measured_) / measured;
    result_.throughput = static_cast<double>(latencies_.size()) / measured;
    result_.p50 = absl::Seconds(Quantile(latencies_, 0.50));
    result_.p99 = absl::Seconds(Quantile(latencies_, 0.99));
    result_.service_p99 = absl::Seconds(Quantile(service_times_, 0.99));
    const double p99 = Seconds(result_.p99);
    result_.power = p99 > 0 ? result_.throughput / p99 : 0;
    SummarizeLimits();
    result_.final_limit = limit_;
    result_.arrived = static_cast<int64_t>(commands_.size());
    result_.completed = totals_.completions;
    result_.dropped = totals_.drops;
    result_.failed = totals_.resource_errors;
    result_.running_at_end = running_;
    result_.queued_at_end = static_cast<int64_t>(queue_.size());
    return std::move(result_);
  }

  // Nearest rank; reorders `values`.
  static double Quantile(std::vector<double>& values, double q) {
    if (values.empty()) return 0;
    const size_t rank = static_cast<size_t>(std::ceil(q * static_cast<double>(values.size())));
    const auto nth = values.begin() + static_cast<std::ptrdiff_t>(std::max<size_t>(rank, 1) - 1);
    std::nth_element(values.begin(), nth, values.end());
    return *nth;
  }

  void SummarizeLimits() {
    int windows = 0;
    double sum = 0;
    int changes = 0;
    int direction = 0;
    int previous = s_.start_limit;
    for (const auto& [at, limit] : result_.limits) {
      if (at >= s_.measure_from) {
        ++windows;
        sum += limit;
        const int step = (limit > previous) - (limit < previous);
        if (step != 0 && direction != 0 && step != direction) ++changes;
        if (step != 0) direction = step;
      }
      previous = limit;
    }
    result_.mean_limit = windows > 0 ? sum / windows : 0;
    result_.direction_changes_per_minute = changes / (Seconds(s_.length - s_.measure_from) / 60);
  }

  const Scenario& s_;
  ConcurrencyController& controller_;
  std::mt19937_64 rng_;
  std::vector<std::discrete_distribution<size_t>> pick_kind_;  // by phase
  size_t next_fixed_arrival_ = 0;

  double now_ = 0;
  int limit_;
  int running_ = 0;
  std::vector<Command> commands_;  // every arrival, by index
  std::deque<size_t> queue_;
  // Processor sharing: every runnable task gets the same CPU, so one clock of CPU received per
  // task (cpu_done_) tells when each ends: at the CPU clock it started at plus its work.
  double cpu_done_ = 0;
  Timeline on_cpu_;
  Timeline sleepers_;

  Counters totals_;
  Counters last_;  // at the previous window's end
  int64_t arrived_measured_ = 0;
  std::vector<double> window_latencies_;  // of commands that ended in the current window
  std::vector<double> latencies_;         // of commands that ended in the steady-state window
  std::vector<double> service_times_;     // theirs, spawn to exit
  ScenarioResult result_;
};

}  // namespace

ScenarioResult RunScenario(const Scenario& scenario, ConcurrencyController& controller) {
  return Model(scenario, controller).Run();
}

absl::Duration BucketBound(absl::Duration latency) {
  // As the server's tuner reads a p99 from its histogram (AutoTuner::Percentile99).
  const std::vector<double>& bounds = core::DurationBucketBounds();
  auto it = std::lower_bound(bounds.begin(), bounds.end(), Seconds(latency));
  return absl::Seconds(it == bounds.end() ? bounds.back() : *it);
}

}  // namespace execd::testing
