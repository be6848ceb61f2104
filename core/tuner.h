// ProcessLimit: execd's own concurrency controller. A process-execution service is not an
// RPC proxy: a CPU-bound command gains nothing from running past the core count (its
// throughput is flat, its latency grows with every extra command), while a command that
// mostly waits (sleeps, I/O, a network call) needs as many running as the offered rate
// times its duration. So the limit follows the commands' own CPU demand: the saturating
// concurrency is the n at which the cores are just busy,
//
//   n·q − ½·√(n·q·(1 − q)) = cores,   q = c / d,
//
// from c, the CPU a command uses, and d, its duration without contention: each running
// command is on a CPU a share q of its time, so about n·q of n are, give or take the square
// root term, and half a deviation of slack keeps the cores busy through the usual dips
// without crowding them (for CPU-bound commands, q = 1, it is the core count).
//
// d is the mean service time of windows in which the commands had the cores to themselves
// (they did not saturate them, and no other program held them): a window in which they
// crowded each other off the cores says how many ran, not how long one takes. It is never
// shorter than c, nor, in such a window, than the part of today's duration spent off a
// CPU. It is re-measured: taken afresh every epoch of a jittered number of
// windows (seeded, so runs repeat), the lower of the last epoch's and this one's, so a
// workload whose commands became slower has its new duration within two epochs; commands
// using twice or half the CPU are another workload and start over from c; and an epoch
// without a window to measure trusts the old figure a quarter less, so the lower limit that
// follows makes room to measure again.
//
// Within that bound the limit grows, fast, only while commands queue. Past it, only while
// other programs hold the cores: under a fair scheduler k of them against n runnable
// commands keep k/(n+k), so more commands win back share. What others hold is known from
// pressure: while a task waits for a CPU the cores are full, so what the commands did not
// use of them others did; the limit goes at once to where they would keep a sixteenth,
// scaling the commands' mean concurrency (Little's law) by the shares. It comes down at once
// to the bound when the commands keep the cores busy, tasks wait for them and it is well
// past it; on a fork or memory error it drops at once to just below what was running and
// stays under it for a while. Hysteresis (saturated and free thresholds, a tolerance on
// every estimate) and a hold after every decrease keep it from chasing noise.
//
// The server runs it through AutoTuner (core/auto_tuner.h) with --tuner; the simulator
// (tests/core/tuner_test.cc) compares it with the reference controllers.
#pragma once

#include <cstdint>
#include <string>

#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "core/tuner_controller.h"

namespace execd::core {

// Why ProcessLimit moved the limit: a fixed set, since decisions are counted by reason.
inline constexpr absl::string_view kLimitReasons[] = {
    "queueing",        // commands queue while the cores have room, or others' share to win: up
    "cpu_saturated",   // the commands keep the cores busy and tasks wait for them: down
    "over_cpu",        // far more allowed than the cores can serve: down
    "resource_error",  // a spawn failed for lack of processes or memory: down
    "latency_target",  // the commands' service-time p99 is above --tuner_target_p99: down
    "no_gain",         // a raise to win share back completed no more commands: back down
};

class ProcessLimit final : public ConcurrencyController {
 public:
  struct Options {
    int start = 8;
    int floor = 1;
    int cap = 64;
    // Windows with completions an epoch of the no-load duration d lasts at most; each lasts
    // between half and all of it, drawn afresh. Long enough to span a burst of contention,
    // short enough to forget a workload that has gone.
    int epoch_windows = 40;
    uint64_t seed = 1;  // of the epochs' jitter
    // Completions an epoch's measurement of d needs before it counts: the mean of a few
    // commands is the luck of which ones ended.
    int64_t sample_completions = 100;
    // Standard deviations of slack in the saturating concurrency (see Saturating).
    double slack_deviations = 0.5;
    // Each window's weight in the CPU a command uses, relative to the next one's.
    double cpu_decay = 0.85;
    // How far past an estimate a figure must be to count: a service time longer than the
    // no-load one, a concurrency beyond the one that wins share back.
    double tolerance = 1.25;
    // CPU counted as saturated at this utilisation of the cores with this much pressure,
    // and free below the lower pair.
    double saturated_utilisation = 0.9;
    double saturated_pressure = 0.3;
    double free_utilisation = 0.8;
    double free_pressure = 0.1;
    // Past the saturating concurrency, while other programs hold the cores, the limit aims
    // where they keep this share of them: under a fair scheduler k of them against n
    // runnable commands keep k/(n+k), so each command added wins less while making every
    // command run longer. Below `others_noise` they are not worth winning from.
    double others_share = 1.0 / 16;
    double others_noise = 0.03;
    // Such a raise is a trial, since whether more commands win share depends on how the
    // machine's scheduler weighs them against the others (autogroups, cgroups, nice), and
    // every extra command makes each run longer and costs the cores switching between
    // them: kept only when the commands completed a second over the trial's windows, the
    // first `trial_settle` left out, are `trial_gain` times as many as in the window before
    // (CPU is no judge: what the switching costs is charged to the commands too); else the
    // limit goes back and the next trial waits `trial_backoff` windows, twice as long after
    // each failure in a row. No other raise during a trial.
    int trial_windows = 8;
    int trial_settle = 2;
    double trial_gain = 1.1;
    int trial_backoff = 120;
    int max_trial_backoff = 1200;
    // Windows without an increase after a decrease.
    int hold_after_decrease = 6;
    // Windows a fork or memory error keeps the limit below what was running then (two
    // minutes: such caps seldom move; each probe past one costs a few failed spawns).
    int ceiling_windows = 240;
    // Windows between probes a command past an estimated ceiling.
    int probe_every = 6;
    // The p99 the commands' service time (spawn to exit) should stay under; zero for none.
    // The limit only governs that part of latency: fewer commands at once share the machine,
    // so each runs faster. How long commands wait for a slot is the queue's to bound
    // (max_queue_time, its length), and a lower limit only lengthens it, so a target on
    // latency with the wait in it would drive the limit down for nothing; Netflix's and
    // Envoy's limiters likewise act on the protected service's own round trip, not on a
    // queue in front of it. The window brings the p99 of latency, wait included; the
    // service's part of it is taken as its share of the mean (exact when nothing waits,
    // shrinking as the wait grows, so the wait a lower limit causes cannot push it lower
    // still; under a deep queue it reads the tail of the whole, a little short of the
    // service's own). While the commands run slower than alone (so fewer at once would run
    // faster): the limit does not grow while that part is above the target, grows only as
    // far as service time, in proportion to the commands sharing the cores, stays a
    // tolerance under it, and, while it stays above and commands queue, comes down towards
    // the floor in proportion to the excess, a quarter at most a window; the extra demand
    // waits in the queue or is shed by it. A target below the commands' own duration is out
    // of reach: it takes the limit only as far down as that makes them faster, to where they
    // run about as fast as alone, and changes nothing for commands that already do.
    absl::Duration target_p99 = absl::ZeroDuration();
  };
  explicit ProcessLimit(Options options);

  absl::string_view name() const override { return "execd"; }
  int Update(const TunerWindow& window) override;

  // Why the last Update moved the limit ("" when it did not).
  absl::string_view last_reason() const { return reason_; }
  // The commands' duration without contention as the limit last used it (d above); zero
  // before the first completion.
  absl::Duration no_load_service_time() const { return no_load_; }

 private:
  int Clamp(double limit) const;
  // The concurrency at which the commands keep `cores` busy, when each is on a CPU a share
  // `on_cpu` of its time, with slack for how that share varies among those running.
  double Saturating(double cores, double on_cpu) const;
  // Takes the service times of a window in which the commands had the cores to themselves
  // into the epoch's measurement of d.
  void AddServiceTime(absl::Duration sum, int64_t completions);
  // Counts a window with completions, ending the epoch when it is full.
  void EndWindowOfEpoch();
  // Starts an epoch of d after one that measured `previous`.
  void StartEpoch(absl::Duration previous);
  int NextEpochLength();
  int OnResourceError(const TunerWindow& w);
  // The highest limit fork or memory errors allow now.
  double Ceiling(const TunerWindow& w);
  // Updates c, d and the saturating concurrency from a window with completions; `room`:
  // the commands had the cores to themselves in it.
  void UpdateNoLoad(const TunerWindow& w, bool room);
  // The target over the service's part of the window's latency p99; 0 without a target
  // or a p99 to judge by.
  double TargetRatio(const TunerWindow& w) const;
  // Counts a window of a running trial; at its end, whether the raise is kept. A limit
  // brought down meanwhile ends the trial.
  void TrialWindow(const TunerWindow& w);

  const Options options_;
  double limit_;
  double cpu_per_command_ = 0;  // Seconds: cpu_sum_ ÷ cpu_completions_, each decayed.
  double cpu_sum_ = 0;
  double cpu_completions_ = 0;
  // d as the previous epoch measured it, and as this one has so far (infinite: not yet).
  absl::Duration previous_epoch_ = absl::InfiniteDuration();
  absl::Duration current_epoch_ = absl::InfiniteDuration();
  absl::Duration epoch_sum_;  // this epoch's measurement
  int64_t epoch_completions_ = 0;
  int epoch_windows_ = 0;
  int epoch_length_ = 0;
  uint64_t jitter_state_;
  double cpu_at_epoch_ = 0;  // cpu_per_command_ when the epoch started
  absl::Duration no_load_;
  double saturating_;  // the concurrency the last window with completions gave
  int hold_ = 0;
  double ceiling_ = 0;      // 0: no fork or memory error yet.
  double clean_limit_ = 0;  // The highest limit reached without an error since the last.
  int ceiling_windows_ = 0;
  // A raise to win share back on trial (trial_left_ > 0): the limit before it, the
  // commands' CPU (cores' worth) before it, and their CPU and time in it so far.
  int trial_left_ = 0;
  double trial_from_ = 0;
  double trial_to_ = 0;
  double trial_baseline_ = 0;
  double trial_done_ = 0;
  double trial_seconds_ = 0;
  int trial_blocked_ = 0;  // windows before another trial may start
  double won_limit_ = 0;   // the last limit a trial kept, while the others stay
  int trial_backoff_;
  std::string reason_;
};

}  // namespace execd::core
