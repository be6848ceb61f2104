// ProcessLimit: execd's own concurrency controller. A process-execution service is not an
// RPC proxy: a CPU-bound command gains nothing from running past the core count (its
// throughput is flat, its latency grows with every extra command), while a command that
// mostly waits (sleeps, I/O, a network call) needs as many running as the offered rate
// times its duration. So the limit follows the commands' own CPU demand:
//
//   saturating = cores × d / c × headroom
//
// the concurrency at which the cores are just busy, from c, the CPU a command uses, and d,
// its duration without contention (the shortest recent mean service time, or, when the CPU
// is not contended, the part of today's duration not spent on a CPU). Within that bound the
// limit grows, fast, only while commands queue; past it, a step at a time, only while
// something else holds the cores (under a fair scheduler more commands win back share). It
// steps down towards that bound, never below, when the commands keep the cores busy and
// tasks wait for them (CPU pressure), and on a fork or memory error it drops at once to just
// below what was running and stays under it for a while. Hysteresis between the saturated
// and free thresholds and a hold after every decrease keep it from chasing noise.
//
// Not wired into the server yet: it is compared with the reference controllers in the
// simulator (tests/core/tuner_test.cc).
#pragma once

#include <deque>
#include <string>

#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "core/tuner_controller.h"

namespace execd::core {

// Why ProcessLimit moved the limit: a fixed set, since decisions are counted by reason.
inline constexpr absl::string_view kLimitReasons[] = {
    "queueing",        // commands queue while the cores have room: up
    "cpu_saturated",   // the commands keep the cores busy and tasks wait for them: down
    "over_cpu",        // far more allowed than the cores can serve: down
    "resource_error",  // a spawn failed for lack of processes or memory: down
    "latency_target",  // the window's p99 is above --tuner_target_p99: down
};

class ProcessLimit final : public ConcurrencyController {
 public:
  struct Options {
    int start = 8;
    int floor = 1;
    int cap = 64;
    // Windows of the service-time minimum (d's lower bound): long enough to span a burst
    // of contention, short enough to forget a workload that has gone.
    int min_windows = 40;
    double headroom = 1.25;
    // CPU counted as saturated at this utilisation of the cores with this much pressure,
    // and free below the lower pair.
    double saturated_utilisation = 0.9;
    double saturated_pressure = 0.3;
    double free_utilisation = 0.8;
    double free_pressure = 0.1;
    // Windows without an increase after a decrease.
    int hold_after_decrease = 6;
    // Windows a fork or memory error keeps the limit below what was running then (two
    // minutes: such caps seldom move; each probe past one costs a few failed spawns).
    int ceiling_windows = 240;
    // Windows between probes a command past an estimated ceiling.
    int probe_every = 10;
    // When set, the limit does not grow while a window's latency p99 is above it, and comes
    // down (not below the floor) while it stays there and commands queue: a caller who
    // prefers shedding to waiting. Zero for none.
    absl::Duration target_p99 = absl::ZeroDuration();
  };
  explicit ProcessLimit(Options options);

  absl::string_view name() const override { return "execd"; }
  int Update(const TunerWindow& window) override;

  // Why the last Update moved the limit ("" when it did not).
  absl::string_view last_reason() const { return reason_; }

 private:
  int Clamp(double limit) const;

  const Options options_;
  double limit_;
  std::deque<absl::Duration> recent_rtt_;  // Per window with completions, newest last.
  double cpu_per_command_ = 0;             // Seconds, smoothed.
  int hold_ = 0;
  double ceiling_ = 0;      // 0: no fork or memory error yet.
  double clean_limit_ = 0;  // The highest limit reached without an error since the last.
  int ceiling_windows_ = 0;
  std::string reason_;
};

}  // namespace execd::core
