// The scenarios concurrency controllers are compared on in the simulator (tuner_sim.h), the
// sweep of static limits each is judged against, and the table that shows the comparison.
//
// A controller's figure of merit on a scenario is its power: throughput ÷ p99 latency over
// the scenario's steady-state window.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "tests/core/tuner_sim.h"

namespace execd::testing {

// The commands of the measurements: about 15 ms of CPU, and `sleep 0.2`.
CommandKind CpuCommand();
CommandKind SleepCommand();

// cpu_bound, sleep_bound, mixed, cpu_to_sleep, sleep_to_cpu, noise (a CPU hog appearing),
// noisy_durations and pids_cap; see the .cc.
// Where CPU bounds the load, it is offered at 90% of the best static limit's peak.
std::vector<Scenario> Scenarios();

// Whether `a` did better than `b` on the same scenario: a run without failed spawns in the
// steady-state window first (power sees no failed command, only the throughput it did not
// add), then the higher power.
bool Outranks(const ScenarioResult& a, const ScenarioResult& b);

// The limits a static sweep tries.
std::vector<int> StaticLimits();

struct StaticSweep {
  std::vector<ScenarioResult> results;  // by limit
  size_t best = 0;                      // the one that outranks the others
};
// StaticLimits(), and the scenario's process cap where it has one.
StaticSweep SweepStaticLimits(const Scenario& scenario);

// The most completions a second a static limit sustains on `base`'s machine with commands of
// `mix` offered at twice what its cores could do with no limit at all.
struct Peak {
  int limit = 0;
  double throughput = 0;
};
Peak PeakThroughput(const Scenario& base, const std::vector<CommandKind>& mix);

// A fixed-width table, one line per result: throughput, latency, power, limits, drops.
std::string FormatTable(const std::vector<ScenarioResult>& results);
// Power alone: a line per controller, a column per scenario.
std::string FormatPowerTable(const std::vector<ScenarioResult>& results);

}  // namespace execd::testing
