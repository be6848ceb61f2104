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

double Seconds(absl::Duration d) { return absl::ToDoubleSeconds(d); }

}  // namespace

ProcessLimit::ProcessLimit(Options options)
    : options_(options),
      limit_(options.start),
      jitter_state_(options.seed),
      saturating_(options.cap),
      trial_backoff_(options.trial_backoff) {
  epoch_length_ = NextEpochLength();
}

void ProcessLimit::TrialWindow(const TunerWindow& w) {
  if (trial_left_ == 0) return;
  if (limit_ < trial_to_) {  // Brought down meanwhile (saturated, an error): no verdict.
    trial_left_ = 0;
    return;
  }
  if (options_.trial_windows - trial_left_ >= options_.trial_settle) {
    trial_done_ += static_cast<double>(w.completions);
    trial_seconds_ += Seconds(w.length);
  }
  if (--trial_left_ > 0) return;
  const double gained = trial_seconds_ > 0 ? trial_done_ / trial_seconds_ : 0;
  if (gained >= trial_baseline_ * options_.trial_gain) {
    trial_backoff_ = options_.trial_backoff;  // It paid: the next may come as soon as needed.
    won_limit_ = trial_to_;
    return;
  }
  limit_ = std::min(limit_, std::max<double>(options_.floor, trial_from_));
  trial_blocked_ = trial_backoff_;
  trial_backoff_ = std::min(options_.max_trial_backoff, trial_backoff_ * 2);
  hold_ = options_.hold_after_decrease;
  reason_ = "no_gain";
}

double ProcessLimit::Saturating(double cores, double on_cpu) const {
  // Each of n commands is on a CPU a share q of its time, so about n·q of them are, give or
  // take √(n·q·(1 − q)); solve n·q − z·√(n·q·(1 − q)) = cores for √n.
  const double q = std::clamp(on_cpu, 1e-6, 1.0);
  const double spread = options_.slack_deviations * std::sqrt(q * (1 - q));
  const double root = (spread + std::sqrt(spread * spread + 4 * q * cores)) / (2 * q);
  return root * root;
}

int ProcessLimit::Clamp(double limit) const {
  return std::clamp(static_cast<int>(std::floor(limit)), options_.floor, options_.cap);
}

int ProcessLimit::NextEpochLength() {
  const int longest = std::max(1, options_.epoch_windows);
  const int shortest = std::max(1, longest / 2);
  return shortest + static_cast<int>(NextRandom(jitter_state_) %
                                     static_cast<uint64_t>(longest - shortest + 1));
}

void ProcessLimit::AddServiceTime(absl::Duration sum, int64_t completions) {
  epoch_sum_ += sum;
  epoch_completions_ += completions;
  if (epoch_completions_ < options_.sample_completions) return;
  current_epoch_ = epoch_sum_ / epoch_completions_;
}

void ProcessLimit::EndWindowOfEpoch() {
  // Commands that use a very different amount of CPU are another workload: what was
  // measured of the last one says nothing of these.
  if (cpu_at_epoch_ > 0 &&
      (cpu_per_command_ > 2 * cpu_at_epoch_ || cpu_per_command_ < 0.5 * cpu_at_epoch_)) {
    StartEpoch(absl::InfiniteDuration());
    return;
  }
  if (++epoch_windows_ < epoch_length_) return;
  if (current_epoch_ != absl::InfiniteDuration()) {
    StartEpoch(current_epoch_);
  } else {
    // Nothing could be measured all epoch: the last figure may be stale, and the limit it
    // allows keeps the commands too crowded to measure another. Trust it less each epoch:
    // the lower limit that follows makes room for a measurement.
    StartEpoch(previous_epoch_ == absl::InfiniteDuration()
                   ? previous_epoch_
                   : std::max(previous_epoch_ * 0.75, absl::Seconds(cpu_per_command_)));
  }
}

void ProcessLimit::StartEpoch(absl::Duration previous) {
  previous_epoch_ = previous;
  cpu_at_epoch_ = cpu_per_command_;
  current_epoch_ = absl::InfiniteDuration();
  epoch_sum_ = absl::ZeroDuration();
  epoch_completions_ = 0;
  epoch_windows_ = 0;
  epoch_length_ = NextEpochLength();
}

int ProcessLimit::OnResourceError(const TunerWindow& w) {
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

double ProcessLimit::Ceiling(const TunerWindow& w) {
  if (w.in_flight >= w.limit) clean_limit_ = std::max<double>(clean_limit_, w.limit);
  // Past a ceiling a fork error set, only after a while, and a command at a time.
  if (ceiling_ > 0 && ceiling_windows_ == 0 && w.limit > ceiling_ && w.in_flight >= w.limit) {
    ceiling_ = w.limit;  // The probe ran clean: the next may go one further.
    ceiling_windows_ = options_.probe_every;
  }
  if (ceiling_ == 0) return options_.cap;
  return std::min<double>(ceiling_windows_ > 0 ? ceiling_ : ceiling_ + 1, options_.cap);
}

void ProcessLimit::UpdateNoLoad(const TunerWindow& w, bool room) {
  // Weighted by completions: a window of few commands says little.
  cpu_sum_ = options_.cpu_decay * cpu_sum_ + w.child_cpu_seconds;
  cpu_completions_ = options_.cpu_decay * cpu_completions_ + static_cast<double>(w.completions);
  cpu_per_command_ = cpu_sum_ / cpu_completions_;
  if (room) AddServiceTime(w.service_time_sum, w.completions);
  EndWindowOfEpoch();

  const absl::Duration measured = std::min(previous_epoch_, current_epoch_);
  // Never shorter than its CPU; with nothing measured yet, no longer either, until a window
  // with room on the cores shows time off them.
  double d = measured == absl::InfiniteDuration() ? cpu_per_command_ : Seconds(measured);
  d = std::max(d, cpu_per_command_);
  if (room) {
    // With room, the part of a command's time not spent on a CPU is its own (a sleep,
    // I/O): it belongs to its duration whatever the last epochs measured.
    const double rtt = Seconds(w.service_time_sum) / static_cast<double>(w.completions);
    d = std::max(d, rtt - std::min(rtt, cpu_per_command_));
  }
  no_load_ = absl::Seconds(d);
  saturating_ = d > 0 ? Saturating(std::max(1, w.cores), cpu_per_command_ / d) : options_.cap;
}

double ProcessLimit::TargetRatio(const TunerWindow& w) const {
  if (options_.target_p99 <= absl::ZeroDuration() || w.completions <= 0 ||
      w.latency_p99 <= absl::ZeroDuration()) {
    return 0;
  }
  // The service's part of the window's latency p99: its share of the mean.
  const double service = Seconds(w.service_time_sum);
  const double wait = Seconds(w.queue_wait_sum);
  const double service_p99 = Seconds(w.latency_p99) * service / (service + wait);
  return service_p99 > 0 ? Seconds(options_.target_p99) / service_p99 : 0;
}

int ProcessLimit::Update(const TunerWindow& w) {
  reason_.clear();
  const double seconds = Seconds(w.length);
  const double cores = std::max(1, w.cores);
  const int before = Clamp(limit_);
  if (hold_ > 0) --hold_;
  if (ceiling_windows_ > 0) --ceiling_windows_;
  if (w.resource_errors > 0) return OnResourceError(w);
  const double cap = Ceiling(w);

  const double cpu = seconds > 0 ? w.child_cpu_seconds / seconds : 0;  // cores' worth
  if (trial_blocked_ > 0) --trial_blocked_;
  TrialWindow(w);
  if (!reason_.empty()) {
    const int after = Clamp(limit_);
    if (after == before) reason_.clear();
    return after;
  }
  const double utilisation = cpu / cores;
  const double pressure = w.cpu_pressure;
  // While a task waited for a CPU the cores were full: what the commands did not use of
  // them, other programs did.
  const double others = std::clamp((pressure * cores - cpu) / cores, 0.0, 1.0);
  const bool alone = others < options_.others_noise;
  // Once a trial has shown that more commands win no share from the others, the CPU the
  // commands get is all they will: it is their cores (with the limit an earlier trial won
  // at), and they are saturated when they wait for it.
  const bool share_fixed = trial_blocked_ > 0 && !alone;
  if (alone) won_limit_ = 0;  // The others have gone, and with them the share won from them.
  const bool saturated = pressure >= options_.saturated_pressure &&
                         (share_fixed || utilisation >= options_.saturated_utilisation);
  // Free for the commands when they do not use the cores, whoever else does.
  const bool cpu_free = !share_fixed && (utilisation < options_.free_utilisation ||
                                         pressure < options_.free_pressure);

  if (w.completions > 0) UpdateNoLoad(w, alone && !saturated);
  const double saturating =
      share_fixed && no_load_ > absl::ZeroDuration()
          ? std::max(won_limit_,
                     Saturating(std::max(cpu, 0.1), cpu_per_command_ / Seconds(no_load_)))
          : saturating_;
  const double target_ratio = TargetRatio(w);  // 0: no target, or nothing to judge by
  const bool over_target = target_ratio > 0 && target_ratio < 1;
  // The commands run slower than alone: fewer at once would run faster.
  const bool contended =
      w.completions > 0 && w.service_time_sum / w.completions > no_load_ * options_.tolerance;

  // With other programs on the cores, the concurrency at which they would keep
  // others_share: the commands' share grows with their number against the others' fixed
  // one. Their mean concurrency over the window is their service time in it (Little).
  // None while the last failed trial's back-off lasts.
  double win_back = 0;
  if (!alone && utilisation > 0 && seconds > 0 && trial_blocked_ == 0) {
    const double running = Seconds(w.service_time_sum) / seconds;
    win_back = running * (1 - options_.others_share) / options_.others_share * others / utilisation;
  }
  const double bound = std::max(saturating, win_back);

  if (over_target && w.queued > 0 && contended && limit_ > options_.floor) {
    // Service time over the target while commands queue and crowd each other: fewer at
    // once, in proportion to the excess; the rest waits in the queue or is shed by it.
    limit_ = std::max({static_cast<double>(options_.floor), limit_ * 0.75, limit_ * target_ratio});
    hold_ = options_.hold_after_decrease;
    reason_ = "latency_target";
  } else if (saturated && limit_ > std::max<double>(options_.floor, bound) * options_.tolerance) {
    // Commands wait for the cores and more run than keep them busy (or than win back
    // share from other programs): come down to that at once (those running finish first;
    // the cores stay busy meanwhile), never below it.
    limit_ = std::max<double>(options_.floor, bound);
    hold_ = options_.hold_after_decrease;
    reason_ = "cpu_saturated";
  } else if (w.queued > 0 && hold_ == 0 && trial_left_ == 0 && !(over_target && contended) &&
             limit_ < std::min(cap, bound) && w.in_flight >= before &&
             (cpu_free || win_back > limit_ * options_.tolerance)) {
    // Commands queue while the cores have room for them, up to the saturating concurrency,
    // or while more would win back share from other programs. Share is won back at once:
    // the estimate is Little's law and the fair share, not a guess to be tried in steps,
    // and every window at too few slots adds to a backlog a loaded machine may never work
    // off.
    const bool room = cpu_free && limit_ < saturating;
    double next = std::max(room ? std::max(limit_ + 1, limit_ * 1.5) : limit_,
                           win_back > limit_ * options_.tolerance ? win_back : 0);
    // With a target, while they share the cores only as far as service time, which grows
    // in proportion to the commands sharing them, stays under it.
    if (target_ratio > 0 && contended) {
      next = std::min(next, limit_ * target_ratio / options_.tolerance);
    }
    const double from = limit_;
    limit_ = std::max(limit_, std::min({bound, cap, next}));
    reason_ = "queueing";
    // A raise past the saturating concurrency by half again or more is a trial; smaller
    // steps, and those a latency target holds back, would each win too little to judge.
    if (limit_ > std::max(from * 1.5, saturating * options_.tolerance) && win_back > 0 &&
        trial_left_ == 0 && !(target_ratio > 0 && contended)) {
      trial_left_ = options_.trial_windows;
      trial_to_ = limit_;
      trial_from_ = std::max(from, std::min(limit_, saturating));
      trial_baseline_ = static_cast<double>(w.completions) / seconds;
      trial_done_ = 0;
      trial_seconds_ = 0;
    }
  } else if (limit_ > saturating * 1.5 && utilisation >= options_.free_utilisation &&
             pressure < options_.saturated_pressure) {
    // Far more allowed than the cores can serve and the cores busy: come down to it.
    limit_ = std::max<double>(options_.floor, saturating);
    hold_ = options_.hold_after_decrease;
    reason_ = "over_cpu";
  } else if (limit_ > std::max<double>(options_.floor, bound) * 2 && w.queued == 0 &&
             w.completions > 0 && seconds > 0 &&
             Seconds(w.service_time_sum) / seconds < saturating) {
    // Far more allowed than the commands use (Little's law: their mean concurrency) or the
    // cores can serve: a burst would run them all at once, each the slower. Down to a
    // tolerance over the saturating concurrency; a queue raises it again.
    limit_ = std::max<double>(options_.floor, bound * options_.tolerance);
    hold_ = options_.hold_after_decrease;
    reason_ = "over_cpu";
  }
  const int after = Clamp(limit_);
  if (after == before) reason_.clear();
  return after;
}

}  // namespace execd::core
