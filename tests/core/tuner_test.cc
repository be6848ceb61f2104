// execd's own concurrency controller (core/tuner.h) in the simulator, against the
// reference controllers users know, on the scenarios of tuner_scenarios.h: each run's
// power (throughput ÷ p99 over the steady-state window), failed spawns ranking first.
//
// It outranks every reference on every scenario but one pairing, matching the best (all
// at the cap) where the load wants the cap. The exception is noise against gradient2:
// there a one-core hog leaves the commands less CPU than they are offered whatever the
// limit (their best share, at about 14, is 1.754 cores against 1.768), so p99 is the
// backlog at the hog's end, and the only difference between controllers near that best
// share is how many slots the hog found. Gradient2 always runs 13 to 17 (which costs it
// half its power on cpu_bound); execd runs the cores' count until the hog shows, a window
// later, and so trails it by the commands that window queued; no controller told of the
// hog a window late does better (DoesAsWellOnNoiseAsAnyControllerThatSeesTheHogAWindowLate).
#include "core/tuner.h"

#include <algorithm>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "tests/core/tuner_reference.h"
#include "tests/core/tuner_scenarios.h"
#include "tests/core/tuner_sim.h"

namespace execd::testing {
namespace {

core::ProcessLimit::Options OptionsFor(const Scenario& s) {
  core::ProcessLimit::Options o;
  o.start = s.start_limit;
  o.floor = s.cores;
  o.cap = s.cap;
  return o;
}

std::unique_ptr<core::ProcessLimit> Ours(const Scenario& s) {
  return std::make_unique<core::ProcessLimit>(OptionsFor(s));
}

// Scenarios() finds each CPU-bound rate by a sweep: once per test binary is enough.
const std::vector<Scenario>& AllScenarios() {
  static const std::vector<Scenario>* const all = new std::vector<Scenario>(Scenarios());
  return *all;
}

Scenario Named(const std::string& name) {
  for (const Scenario& s : AllScenarios()) {
    if (s.name == name) return s;
  }
  ADD_FAILURE() << "no scenario " << name;
  return {};
}

// Records, for every window, the limit ProcessLimit chose and the reason it gave.
class Decisions final : public core::ConcurrencyController {
 public:
  explicit Decisions(core::ProcessLimit& inner) : inner_(inner) {}
  absl::string_view name() const override { return inner_.name(); }
  int Update(const core::TunerWindow& w) override {
    const int limit = inner_.Update(w);
    moves.push_back({w.limit, limit, std::string(inner_.last_reason())});
    return limit;
  }
  struct Move {
    int before;
    int after;
    std::string reason;
  };
  std::vector<Move> moves;

 private:
  core::ProcessLimit& inner_;
};

TEST(ProcessLimitTest, OutranksEveryReferenceControllerOnEveryScenario) {
  // Where the load wants every slot the cap allows, the best can only be matched.
  const std::vector<std::string> matches = {"sleep_bound", "cpu_to_sleep"};
  std::vector<ScenarioResult> table;
  for (const Scenario& s : AllScenarios()) {
    auto ours = Ours(s);
    const ScenarioResult mine = RunScenario(s, *ours);
    table.push_back(mine);
    for (const auto& [at, limit] : mine.limits) {
      ASSERT_GE(limit, s.cores) << s.name << " at " << at;
      ASSERT_LE(limit, s.cap) << s.name << " at " << at;
    }
    for (const auto& reference : ReferenceControllers(s.bounds(), s.seed)) {
      const ScenarioResult theirs = RunScenario(s, *reference);
      table.push_back(theirs);
      if (s.name == "noise" && theirs.controller == "gradient2") {
        EXPECT_GE(mine.power, 0.95 * theirs.power) << "noise against gradient2";  // see above
      } else if (std::count(matches.begin(), matches.end(), s.name) > 0) {
        EXPECT_FALSE(Outranks(theirs, mine)) << s.name << ": execd power " << mine.power << ", "
                                             << theirs.controller << " " << theirs.power;
        EXPECT_GE(mine.power, 0.99 * theirs.power) << s.name << " against " << theirs.controller;
      } else {
        EXPECT_TRUE(Outranks(mine, theirs)) << s.name << ": execd power " << mine.power << ", "
                                            << theirs.controller << " " << theirs.power;
      }
    }
  }
  std::fputs(FormatTable(table).c_str(), stdout);
  std::fputs("\n", stdout);
  std::fputs(FormatPowerTable(table).c_str(), stdout);
}

TEST(ProcessLimitTest, HoldsStillOnASteadyLoad) {
  for (const std::string name : {"cpu_bound", "sleep_bound", "mixed", "noisy_durations"}) {
    const Scenario s = Named(name);
    auto ours = Ours(s);
    const ScenarioResult r = RunScenario(s, *ours);
    EXPECT_LE(r.direction_changes_per_minute, 4) << s.name;
    EXPECT_EQ(r.drops, 0) << s.name;
  }
}

// Completions in [from, from + span) of a run, from the windows the controller saw.
int64_t CompletionsIn(const ScenarioResult& r, absl::Duration from, absl::Duration span) {
  int64_t n = 0;
  for (const core::TunerWindow& w : r.windows) {
    const absl::Duration end = w.now - absl::UnixEpoch();
    if (end - w.length >= from && end <= from + span) n += w.completions;
  }
  return n;
}

// The issue's noise target: at most 4 direction changes a minute at steady state, never
// below the floor, and throughput back to 95% of the best static limit's within 15 s after
// the hog stops: from then to the end, against that limit's over the same time (each drains
// what the hog left queued at its own pace, so a span-by-span comparison would fault
// whichever finished first).
TEST(ProcessLimitTest, MeetsTheIssuesNoiseTarget) {
  const Scenario s = Named("noise");
  auto ours = Ours(s);
  const ScenarioResult r = RunScenario(s, *ours);
  const StaticSweep sweep = SweepStaticLimits(s);
  const ScenarioResult& best = sweep.results[sweep.best];

  EXPECT_LE(r.direction_changes_per_minute, 4);
  int lowest = s.cap;
  for (const auto& [at, limit] : r.limits) lowest = std::min(lowest, limit);
  EXPECT_GE(lowest, s.cores);

  // The earliest time after the hog from which execd keeps up with that limit.
  absl::Duration recovered = s.length;
  for (absl::Duration from = s.length - absl::Seconds(5); from >= s.hog_until; from -= s.window) {
    const absl::Duration rest = s.length - from;
    if (CompletionsIn(r, from, rest) >= 0.95 * CompletionsIn(best, from, rest)) recovered = from;
  }
  EXPECT_LE(recovered - s.hog_until, absl::Seconds(15));
  std::printf(
      "noise: %.1f direction changes a minute, lowest limit %d, 95%% of %s's throughput "
      "from %.1f s after the hog\n",
      r.direction_changes_per_minute, lowest, best.controller.c_str(),
      absl::ToDoubleSeconds(recovered - s.hog_until));
}

// The limit in force at `t` seconds into a run.
int LimitAt(const ScenarioResult& r, double t) {
  int limit = 0;
  for (const auto& [at, l] : r.limits) {
    if (at <= absl::Seconds(t)) limit = l;
  }
  return limit;
}

// Knows when the hog comes and goes and learns of each a window late, as a controller that
// reads windows must: the cores' count without the hog, `during` with it.
class Hindsight final : public core::ConcurrencyController {
 public:
  Hindsight(const Scenario& s, int during) : s_(s), during_(during) {}
  absl::string_view name() const override { return "hindsight"; }
  int Update(const core::TunerWindow& w) override {
    const absl::Duration end = w.now - absl::UnixEpoch();
    const bool hog = end > s_.hog_from && end - w.length < s_.hog_until;
    return hog ? during_ : s_.cores;
  }

 private:
  const Scenario s_;
  const int during_;
};

TEST(ProcessLimitTest, DoesAsWellOnNoiseAsAnyControllerThatSeesTheHogAWindowLate) {
  const Scenario s = Named("noise");
  auto ours = Ours(s);
  const ScenarioResult mine = RunScenario(s, *ours);
  ScenarioResult best;
  for (const int during : {8, 10, 12, 14, 16, 20, 24}) {
    Hindsight hindsight(s, during);
    const ScenarioResult r = RunScenario(s, hindsight);
    if (r.power > best.power) best = r;
  }
  EXPECT_GE(mine.power, 0.99 * best.power);
  std::printf(
      "noise: execd power %.1f, the best controller a window late %.1f (%d during the hog)\n",
      mine.power, best.power, LimitAt(best, 60));
}

TEST(ProcessLimitTest, WinsTheCoresBackFromAHogAtOnceAndGivesThemUpWhenItGoes) {
  const Scenario s = Named("noise");  // a hog on one of two cores from 40 s to 80 s
  auto ours = Ours(s);
  const ScenarioResult r = RunScenario(s, *ours);
  EXPECT_EQ(LimitAt(r, 39.9), s.cores);
  // Against one hog, a sixteenth of two cores is left to it with 15 commands running.
  EXPECT_GE(LimitAt(r, 40.5), 12);
  EXPECT_LE(LimitAt(r, 40.5), 18);
  EXPECT_EQ(LimitAt(r, 79.9), LimitAt(r, 40.5));
  EXPECT_EQ(LimitAt(r, 80.5), s.cores);
}

TEST(ProcessLimitTest, EveryMoveHasAReasonFromTheFixedSet) {
  for (const Scenario& s : AllScenarios()) {
    auto ours = Ours(s);
    Decisions decisions(*ours);
    RunScenario(s, decisions);
    for (const Decisions::Move& m : decisions.moves) {
      if (m.after == m.before) {
        EXPECT_EQ(m.reason, "") << s.name;
        continue;
      }
      EXPECT_NE(std::find(std::begin(core::kLimitReasons), std::end(core::kLimitReasons), m.reason),
                std::end(core::kLimitReasons))
          << s.name << ": \"" << m.reason << "\"";
    }
  }
}

// The service's part of a window's latency p99, as core/tuner.h documents it: its share of
// the mean.
absl::Duration ServiceP99(const core::TunerWindow& w) {
  const absl::Duration service = w.service_time_sum / w.completions;
  const absl::Duration wait = w.queue_wait_sum / w.completions;
  return w.latency_p99 * absl::FDivDuration(service, service + wait);
}

TEST(ProcessLimitTest, ATargetHoldsTheServiceTimeP99NearIt) {
  // The hog makes the commands share the cores: without a target the limit wins share back
  // at the cost of every command's service time.
  const Scenario s = Named("noise");
  auto free = Ours(s);
  const ScenarioResult unbounded = RunScenario(s, *free);
  for (const absl::Duration target : {absl::Milliseconds(80), absl::Milliseconds(120)}) {
    core::ProcessLimit::Options o = OptionsFor(s);
    o.target_p99 = target;
    core::ProcessLimit ours(o);
    Decisions decisions(ours);
    const ScenarioResult r = RunScenario(s, decisions);
    EXPECT_GT(unbounded.service_p99, 1.5 * target);
    EXPECT_LE(r.service_p99, 1.25 * target) << target;
    EXPECT_GE(r.service_p99, 0.75 * target) << target;
    // The rest of the demand waits (or, past max_queue_time, would be shed).
    EXPECT_GT(r.p99, unbounded.p99) << target;
    EXPECT_LE(r.direction_changes_per_minute, 4) << target;
    // Never up while the window's figure is above the target.
    int down = 0;
    for (size_t i = 0; i < r.windows.size(); ++i) {
      const core::TunerWindow& w = r.windows[i];
      if (w.completions > 0 && w.latency_p99 > absl::ZeroDuration() && ServiceP99(w) > target) {
        EXPECT_LE(r.limits[i].second, w.limit) << target << " at " << r.limits[i].first;
      }
      if (decisions.moves[i].reason == "latency_target") ++down;
    }
    EXPECT_GT(down, 0) << target;
  }
}

TEST(ProcessLimitTest, ATargetOutOfReachChangesNothingForCommandsRunningAsFastAsAlone) {
  // `sleep 0.2` cannot end within 100 ms, and no limit makes it faster.
  const Scenario s = Named("sleep_bound");
  auto free = Ours(s);
  const ScenarioResult unbounded = RunScenario(s, *free);
  core::ProcessLimit::Options o = OptionsFor(s);
  o.target_p99 = absl::Milliseconds(100);
  core::ProcessLimit ours(o);
  const ScenarioResult r = RunScenario(s, ours);
  EXPECT_EQ(r.limits, unbounded.limits);
  EXPECT_EQ(r.p99, unbounded.p99);
}

// Windows of 500 ms on 2 cores, from figures a test gives: commands of `cpu` each, `rtt`
// from spawn to exit, enough of them to use `utilisation` of the cores.
core::TunerWindow Window(double utilisation, double pressure, absl::Duration rtt,
                         absl::Duration cpu, int limit) {
  core::TunerWindow w;
  w.length = absl::Milliseconds(500);
  w.cores = 2;
  w.limit = limit;
  w.in_flight = limit;
  w.child_cpu_seconds = utilisation * 2 * 0.5;
  w.completions = static_cast<int64_t>(w.child_cpu_seconds / absl::ToDoubleSeconds(cpu));
  w.service_time_sum = rtt * w.completions;
  w.cpu_pressure = pressure;
  return w;
}

// The first of `windows` after which no_load_service_time() stays at least `at_least` in
// every saturated window, or windows.size() if it never does.
size_t SettlesAt(core::ProcessLimit& tuner, const std::vector<core::TunerWindow>& windows,
                 absl::Duration at_least) {
  size_t settled = windows.size();
  for (size_t i = 0; i < windows.size(); ++i) {
    tuner.Update(windows[i]);
    const bool saturated = windows[i].cpu_pressure >= 0.3;
    if (!saturated) continue;
    if (tuner.no_load_service_time() < at_least) {
      settled = windows.size();
    } else if (settled == windows.size()) {
      settled = i;
    }
  }
  return settled;
}

TEST(ProcessLimitTest, ReMeasuresTheNoLoadDurationOfCommandsThatBecameSlower) {
  const absl::Duration cpu = absl::Milliseconds(6);
  // Commands of 20 ms with the cores to themselves; then they take 60 ms, the cores
  // saturated every other window (where only what was measured before tells d).
  std::vector<core::TunerWindow> before(60, Window(0.3, 0, absl::Milliseconds(20), cpu, 8));
  std::vector<core::TunerWindow> after;
  for (int i = 0; i < 200; ++i) {
    after.push_back(i % 2 ? Window(0.95, 0.9, absl::Milliseconds(60), cpu, 8)
                          : Window(0.5, 0, absl::Milliseconds(60), cpu, 8));
  }
  core::ProcessLimit::Options o;
  o.start = 8;
  o.floor = 2;
  o.epoch_windows = 40;
  std::vector<size_t> settled;
  for (const uint64_t seed : {1, 1, 2, 3}) {
    o.seed = seed;
    core::ProcessLimit tuner(o);
    for (const core::TunerWindow& w : before) tuner.Update(w);
    EXPECT_EQ(tuner.no_load_service_time(), absl::Milliseconds(20));
    settled.push_back(SettlesAt(tuner, after, absl::Milliseconds(60)));
    // Within two epochs, never before the one under way ends.
    EXPECT_GT(settled.back(), 0u) << seed;
    EXPECT_LE(settled.back(), 2u * o.epoch_windows) << seed;
  }
  EXPECT_EQ(settled[0], settled[1]);  // the jitter is the seed's
  EXPECT_TRUE(settled[1] != settled[2] || settled[1] != settled[3]);
  std::printf("re-measured after %zu, %zu, %zu windows (seeds 1, 2, 3)\n", settled[1], settled[2],
              settled[3]);
}

TEST(ProcessLimitTest, TrustsLessEachEpochAFigureNothingCouldMeasure) {
  const absl::Duration cpu = absl::Milliseconds(6);
  core::ProcessLimit::Options o;
  o.start = 8;
  o.floor = 2;
  o.epoch_windows = 40;
  core::ProcessLimit tuner(o);
  for (int i = 0; i < 60; ++i) tuner.Update(Window(0.3, 0, absl::Milliseconds(40), cpu, 8));
  EXPECT_EQ(tuner.no_load_service_time(), absl::Milliseconds(40));
  // Saturated from then on: the commands crowd each other and nothing is measured.
  const core::TunerWindow crowded = Window(1, 1, absl::Milliseconds(200), cpu, 8);
  for (int i = 0; i < 2 * o.epoch_windows; ++i) tuner.Update(crowded);
  EXPECT_LE(tuner.no_load_service_time(), absl::Milliseconds(30));
  // Never below the CPU a command uses.
  for (int i = 0; i < 20 * o.epoch_windows; ++i) tuner.Update(crowded);
  EXPECT_NEAR(absl::ToDoubleMilliseconds(tuner.no_load_service_time()), 6, 0.1);
}

TEST(ProcessLimitTest, CommandsUsingTwiceTheCpuAreAnotherWorkload) {
  core::ProcessLimit::Options o;
  o.start = 8;
  o.floor = 2;
  core::ProcessLimit tuner(o);
  for (int i = 0; i < 60; ++i) {
    tuner.Update(Window(0.3, 0, absl::Milliseconds(200), absl::Milliseconds(3), 30));
  }
  EXPECT_EQ(tuner.no_load_service_time(), absl::Milliseconds(200));
  // Sleeping commands give way to CPU-bound ones crowding the cores: 17 ms each, 30 at
  // once taking 255 ms. What the sleepers measured goes; their CPU is all that is known.
  int limit = 30;
  for (int i = 0; i < 10; ++i) {
    limit = tuner.Update(Window(1, 1, absl::Milliseconds(255), absl::Milliseconds(17), limit));
  }
  EXPECT_LE(tuner.no_load_service_time(), absl::Milliseconds(18));
  EXPECT_EQ(limit, 2);
}

// Other programs hold a core. Whether more commands win it back depends on how the machine's
// scheduler weighs them (autogroups, cgroups, nice): a raise is a trial, kept only when the
// commands completed a second grew with it.
TEST(ProcessLimitTest, ARaiseToWinShareBackIsKeptOnlyWhenItWinsCpu) {
  core::ProcessLimit::Options o;
  o.start = 2;
  o.floor = 2;
  o.cap = 64;
  core::ProcessLimit tuner(o);
  const absl::Duration cpu = absl::Milliseconds(15);
  // The commands use one core of two while some of them always wait for a CPU.
  auto held = [&](int limit, double utilisation) {
    core::TunerWindow w = Window(utilisation, 1.0, cpu * limit, cpu, limit);
    w.queued = 20;
    return w;
  };
  int limit = tuner.Update(held(2, 0.5));
  ASSERT_GT(limit, 4) << "no raise to win share back";
  EXPECT_EQ(tuner.last_reason(), "queueing");
  const int raised = limit;
  // It won nothing (completions track the CPU the commands get here): after the trial's
  // windows, back down, with the reason.
  int windows = 0;
  while (tuner.last_reason() != "no_gain" && windows < 20) {
    limit = tuner.Update(held(limit, 0.5));
    ++windows;
  }
  EXPECT_EQ(tuner.last_reason(), "no_gain");
  EXPECT_EQ(windows, o.trial_windows);
  EXPECT_LE(limit, 3);
  // No new trial while the back-off lasts, then one; a second failure doubles the back-off.
  int next_trial = 0;
  for (int i = 1; i <= 3 * o.trial_backoff && next_trial == 0; ++i) {
    const int before = limit;
    limit = tuner.Update(held(limit, 0.5));
    if (limit > before * 2) next_trial = i;
  }
  EXPECT_GE(next_trial, o.trial_backoff - o.hold_after_decrease);
  EXPECT_LE(next_trial, o.trial_backoff + o.hold_after_decrease + 1);
  for (int i = 0; i < o.trial_windows; ++i) limit = tuner.Update(held(limit, 0.5));
  EXPECT_EQ(tuner.last_reason(), "no_gain");
  for (int i = 0; i < 2 * o.trial_backoff - o.hold_after_decrease - 2; ++i) {
    limit = tuner.Update(held(limit, 0.5));
    ASSERT_LE(limit, 3) << "a trial " << i << " windows into a doubled back-off";
  }

  // From a limit far too high, a failed trial leaves it at the commands' share: they wait
  // for the CPU they get, and that is all they will get.
  o.start = 32;
  core::ProcessLimit high(o);
  limit = high.Update(held(32, 0.5));
  ASSERT_EQ(high.last_reason(), "queueing");
  for (int i = 0; i < o.trial_windows; ++i) limit = high.Update(held(limit, 0.5));
  ASSERT_EQ(high.last_reason(), "no_gain");
  for (int i = 0; i < 2 * o.hold_after_decrease; ++i) limit = high.Update(held(limit, 0.5));
  EXPECT_LE(limit, 3);
  o.start = 2;

  // Where the raise does complete more commands, it stays.
  core::ProcessLimit winner(o);
  limit = winner.Update(held(2, 0.5));
  ASSERT_EQ(limit, raised);
  for (int i = 0; i < o.trial_windows; ++i) {
    limit = winner.Update(held(limit, 0.8));
    EXPECT_NE(winner.last_reason(), "no_gain");
  }
  EXPECT_GE(limit, raised);
  // A further trial that completes no more comes back to the limit the first one won.
  for (int i = 0; i < 3 * o.trial_windows; ++i) {
    limit = winner.Update(held(limit, 0.8));
    ASSERT_GE(limit, raised) << "window " << i << ", " << winner.last_reason();
  }
}

// Started far too high for CPU-bound commands offered less than the cores serve: nothing
// queues, so nothing says "up", but a burst would run them all at once, each the slower.
TEST(ProcessLimitTest, ComesDownFromFarTooHighWithoutAQueue) {
  core::ProcessLimit::Options o;
  o.start = 32;
  o.floor = 2;
  o.cap = 64;
  core::ProcessLimit tuner(o);
  const absl::Duration cpu = absl::Milliseconds(15);
  int limit = 32;
  for (int i = 0; i < 4; ++i) limit = tuner.Update(Window(0.3, 0.05, cpu, cpu, limit));
  EXPECT_LE(limit, 3);
  EXPECT_GE(limit, 2);
  // Commands that mostly sleep use their slots: 30 running on average, far under what the
  // cores could serve of them. Nothing to cut.
  core::ProcessLimit sleepers(o);
  const absl::Duration sleep_rtt = absl::Milliseconds(200);
  core::TunerWindow w = Window(0.05, 0, sleep_rtt, absl::Milliseconds(1), 32);
  w.service_time_sum = sleep_rtt * 75;  // 150/s for half a second: 30 running on average.
  w.completions = 75;
  for (int i = 0; i < 10; ++i) EXPECT_EQ(sleepers.Update(w), 32) << "window " << i;
}

TEST(ProcessLimitTest, AForkErrorBringsTheLimitBelowWhatRanAtOnce) {
  core::ProcessLimit::Options o;
  o.start = 40;
  o.floor = 2;
  o.cap = 64;
  o.probe_every = 10;
  core::ProcessLimit tuner(o);
  core::TunerWindow w;
  w.length = absl::Milliseconds(500);
  w.cores = 2;
  w.limit = 40;
  w.in_flight = 40;
  w.queued = 10;
  w.resource_errors = 3;
  const int after = tuner.Update(w);
  EXPECT_LT(after, 40);
  EXPECT_GE(after, 2);
  EXPECT_EQ(tuner.last_reason(), "resource_error");
  // Commands still queue, and the cores are idle: it does not grow past it for a while,
  // then probes one command further at a time.
  w.resource_errors = 0;
  w.limit = after;
  w.in_flight = after;
  w.completions = 20;
  w.service_time_sum = absl::Seconds(4);
  w.child_cpu_seconds = 0.02;
  for (int i = 0; i < 9; ++i) EXPECT_LE(tuner.Update(w), after) << "window " << i;
  EXPECT_LE(tuner.Update(w), after + 1);
}

}  // namespace
}  // namespace execd::testing
