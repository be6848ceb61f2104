#include "core/tuner.h"

#include <algorithm>
#include <cmath>

namespace execd::core {

ProcessLimit::ProcessLimit(Options options) : options_(options), limit_(options.start) {}

int ProcessLimit::Clamp(double limit) const {
  return std::clamp(static_cast<int>(std::floor(limit)), options_.floor, options_.cap);
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

  const double utilisation = seconds > 0 ? w.child_cpu_seconds / (seconds * cores) : 0;
  const bool saturated = utilisation >= options_.saturated_utilisation &&
                         w.cpu_pressure >= options_.saturated_pressure;
  // Free for the commands when they do not use the cores, whoever else does: under a fair
  // scheduler more of them win a larger share back from another load.
  const bool cpu_free =
      utilisation < options_.free_utilisation || w.cpu_pressure < options_.free_pressure;

  double saturating = options_.cap;
  if (w.completions > 0) {
    const absl::Duration rtt = w.service_time_sum / w.completions;
    recent_rtt_.push_back(rtt);
    if (static_cast<int>(recent_rtt_.size()) > options_.min_windows) recent_rtt_.pop_front();
    const double c = w.child_cpu_seconds / static_cast<double>(w.completions);
    cpu_per_command_ = cpu_per_command_ == 0 ? c : 0.7 * cpu_per_command_ + 0.3 * c;
    double d = absl::ToDoubleSeconds(*std::min_element(recent_rtt_.begin(), recent_rtt_.end()));
    if (!saturated) {
      // Uncontended, the part of a command's time not spent on a CPU is its own (a sleep,
      // I/O): it belongs to its duration however long the minimum says it was.
      const double rtt_s = absl::ToDoubleSeconds(rtt);
      d = std::max(d, rtt_s - std::min(rtt_s, cpu_per_command_));
    }
    if (cpu_per_command_ > 0) saturating = cores * d / cpu_per_command_ * options_.headroom;
  }

  if (saturated && limit_ > std::max<double>(options_.floor, saturating)) {
    // Commands wait for the cores and more run than keep them busy: step down towards
    // that, never below it.
    limit_ = std::max({static_cast<double>(options_.floor), saturating, limit_ * 0.75});
    hold_ = options_.hold_after_decrease;
    reason_ = "cpu_saturated";
  } else if (w.queued > 0 && cpu_free && hold_ == 0 && limit_ < cap && w.in_flight >= before) {
    // Commands queue while the cores have room for them. Up to the saturating concurrency
    // fast; past it only while something else holds the cores (the commands use less than
    // they have), and a step at a time: under a fair scheduler more of them win back share.
    const bool others = w.cpu_pressure >= options_.saturated_pressure;
    if (limit_ < saturating) {
      limit_ = std::min({saturating, cap, std::max(limit_ + 1, limit_ * 1.5)});
    } else if (others) {
      limit_ = std::min(cap, limit_ + std::max(1.0, limit_ * 0.25));
    }
    reason_ = "queueing";
  } else if (limit_ > saturating * 1.5 && utilisation >= options_.free_utilisation &&
             w.cpu_pressure < options_.saturated_pressure) {
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
