#include "core/tuner.h"

#include <algorithm>
#include <cmath>

namespace execd::core {
namespace {

// splitmix64: a small, well-mixed sequence from a seed, the same on every platform.
uint64_t NextRandom(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9;
  z = (z ^ (z >> 27)) * 0x94d049bb133111eb;
  return z ^ (z >> 31);
}

}  // namespace

ProcessLimit::ProcessLimit(Options options)
    : options_(options), limit_(options.start), jitter_state_(options.seed) {
  epoch_length_ = NextEpochLength();
}

int ProcessLimit::Clamp(double limit) const {
  return std::clamp(static_cast<int>(std::floor(limit)), options_.floor, options_.cap);
}

int ProcessLimit::NextEpochLength() {
  const int longest = std::max(1, options_.min_windows);
  const int shortest = std::max(1, longest / 2);
  return shortest + static_cast<int>(NextRandom(jitter_state_) %
                                     static_cast<uint64_t>(longest - shortest + 1));
}

void ProcessLimit::AddServiceTime(absl::Duration rtt) {
  current_min_ = std::min(current_min_, rtt);
  if (++epoch_windows_ < epoch_length_) return;
  previous_min_ = current_min_;
  current_min_ = absl::InfiniteDuration();
  epoch_windows_ = 0;
  epoch_length_ = NextEpochLength();
}

int ProcessLimit::Update(const TunerWindow& w) {
  reason_.clear();
  const double seconds = absl::ToDoubleSeconds(w.length);
  const double cores = std::max(1, w.cores);
  const int before = Clamp(limit_);
  if (hold_ > 0) --hold_;

  if (ceiling_windows_ > 0) --ceiling_windows_;
  if (w.resource_errors > 0) {
    // The machine ran out of processes or memory: back off below what was running, and do
    // not grow past it again for a while (then probe once more).
    // The highest limit the commands reached without an error since the last one is safe;
    // what runs when the window ends may be fewer than ran when the spawn failed.
    const double running = std::min<double>(limit_, w.in_flight);
    const double safe = clean_limit_ < w.limit ? clean_limit_ : 0;
    const bool probing = ceiling_ > 0 && w.limit == static_cast<int>(ceiling_) + 1;
    ceiling_ = std::max<double>(
        {static_cast<double>(options_.floor), safe, running - std::max(1.0, running * 0.1)});
    limit_ = std::min(limit_, ceiling_);
    clean_limit_ = 0;
    // A probe a command past the ceiling failed: the cap is found, and holds a long while.
    // After a larger step the ceiling is an estimate: probe again soon, a command at a time.
    ceiling_windows_ = probing ? options_.ceiling_windows : options_.probe_every;
    hold_ = options_.hold_after_decrease;
    reason_ = "resource_error";
    return Clamp(limit_);
  }
  if (w.in_flight >= w.limit) clean_limit_ = std::max<double>(clean_limit_, w.limit);
  // Past a ceiling a fork error set, only after a while, and a command at a time.
  if (ceiling_ > 0 && ceiling_windows_ == 0 && w.limit > ceiling_ && w.in_flight >= w.limit) {
    ceiling_ = w.limit;  // The probe ran clean: the next may go one further.
    ceiling_windows_ = options_.probe_every;
  }
  const double cap = ceiling_ == 0          ? static_cast<double>(options_.cap)
                     : ceiling_windows_ > 0 ? std::min<double>(ceiling_, options_.cap)
                                            : std::min<double>(ceiling_ + 1, options_.cap);

  const double cpu = seconds > 0 ? w.child_cpu_seconds / seconds : 0;  // cores' worth
  const double utilisation = cpu / cores;
  const double pressure = w.cpu_pressure;
  const bool saturated =
      utilisation >= options_.saturated_utilisation && pressure >= options_.saturated_pressure;
  // Free for the commands when they do not use the cores, whoever else does.
  const bool cpu_free =
      utilisation < options_.free_utilisation || pressure < options_.free_pressure;
  // While a task waited for a CPU the cores were full: what the commands did not use of
  // them, other programs did.
  const double others = std::clamp((pressure * cores - cpu) / cores, 0.0, 1.0);

  double saturating = options_.cap;
  absl::Duration rtt;
  if (w.completions > 0) {
    rtt = w.service_time_sum / w.completions;
    if (others < options_.others_noise) AddServiceTime(rtt);
    const double c = w.child_cpu_seconds / static_cast<double>(w.completions);
    cpu_per_command_ = cpu_per_command_ == 0 ? c : 0.7 * cpu_per_command_ + 0.3 * c;
    const absl::Duration shortest = std::min(previous_min_, current_min_);
    double d = shortest == absl::InfiniteDuration() ? absl::ToDoubleSeconds(rtt)
                                                    : absl::ToDoubleSeconds(shortest);
    const double rtt_s = absl::ToDoubleSeconds(rtt);
    d = std::max(d, cpu_per_command_);
    if (!saturated) {
      // Uncontended, the part of a command's time not spent on a CPU is its own (a sleep,
      // I/O): it belongs to its duration however long the minimum says it was.
      d = std::max(d, rtt_s - std::min(rtt_s, cpu_per_command_));
    }
    no_load_ = absl::Seconds(d);
    if (cpu_per_command_ > 0) saturating = cores * d / cpu_per_command_ * options_.headroom;
  }

  // The service's part of the window's latency p99, against the target.
  bool over_target = false;
  double target_ratio = 0;  // target ÷ that part
  if (options_.target_p99 > absl::ZeroDuration() && w.completions > 0 &&
      w.latency_p99 > absl::ZeroDuration()) {
    const double wait = absl::ToDoubleSeconds(w.queue_wait_sum) / w.completions;
    const double rtt_s = absl::ToDoubleSeconds(rtt);
    const double service_p99 = absl::ToDoubleSeconds(w.latency_p99) * rtt_s / (rtt_s + wait);
    target_ratio = absl::ToDoubleSeconds(options_.target_p99) / service_p99;
    over_target = target_ratio < 1;
  }
  // The commands run slower than alone: fewer at once would run faster.
  const bool contended =
      w.completions > 0 &&
      absl::ToDoubleSeconds(rtt) > absl::ToDoubleSeconds(no_load_) * options_.headroom;

  // With other programs on the cores, the concurrency at which they would keep
  // others_share: the commands' share grows with their number against the others' fixed one.
  // The commands' mean concurrency over the window is their service time in it (Little).
  double win_back = 0;
  if (others >= options_.others_noise && utilisation > 0 && seconds > 0) {
    const double running = absl::ToDoubleSeconds(w.service_time_sum) / seconds;
    win_back = running * (1 - options_.others_share) / options_.others_share * others / utilisation;
  }
  const double bound = std::max(saturating, win_back);

  if (over_target && w.queued > 0 && contended && limit_ > options_.floor) {
    limit_ = std::max({static_cast<double>(options_.floor), limit_ * 0.75, limit_ * target_ratio});
    hold_ = options_.hold_after_decrease;
    reason_ = "latency_target";
  } else if (saturated && limit_ > std::max<double>(options_.floor, bound) *
                                       (win_back > saturating ? options_.headroom : 1)) {
    // Commands wait for the cores and more run than keep them busy (or than win back
    // share from other programs): come down to that at once (those running finish first;
    // the cores stay busy meanwhile), never below it.
    limit_ = std::max<double>(options_.floor, bound);
    hold_ = options_.hold_after_decrease;
    reason_ = "cpu_saturated";
  } else if (w.queued > 0 && hold_ == 0 && !over_target && limit_ < std::min(cap, bound) &&
             w.in_flight >= before && (cpu_free || win_back > limit_)) {
    // Commands queue while the cores have room for them, up to the saturating concurrency,
    // or while more would win back share from other programs.
    // Share is won back at once: the estimate is Little's law and the fair share, not a
    // guess to be tried in steps, and every window at too few slots adds to a backlog that
    // a loaded machine may never work off.
    const bool room = cpu_free && limit_ < saturating;
    double next = std::max(room ? std::max(limit_ + 1, limit_ * 1.5) : limit_, win_back);
    // With a target, past saturating only as far as service time, which grows in
    // proportion to the commands sharing the cores, stays under it.
    if (target_ratio > 0 && limit_ >= saturating) next = std::min(next, limit_ * target_ratio);
    limit_ = std::max(limit_, std::min({bound, cap, next}));
    reason_ = "queueing";
  } else if (limit_ > saturating * 1.5 && utilisation >= options_.free_utilisation &&
             pressure < options_.saturated_pressure) {
    // Far more allowed than the cores can serve and the cores busy: come down to it.
    limit_ = std::max<double>(options_.floor, saturating);
    hold_ = options_.hold_after_decrease;
    reason_ = "over_cpu";
  }
  const int after = Clamp(limit_);
  if (after == before) reason_.clear();
  return after;
}

}  // namespace execd::core
