// TunerSim: a discrete-event model of a process-execution service, for comparing concurrency
// controllers (core/tuner_controller.h) on the same load. Commands arrive open-loop (Poisson,
// so latency counts from arrival), wait in a bounded FIFO queue and run while fewer than the
// controller's limit are running. A running command first needs CPU (its own work plus the cost
// of spawning it), shared equally among every runnable task and the machine's cores, then
// waits without CPU (sleep, I/O) and exits. Its CPU time is what the kernel would charge it:
// its share of the cores while runnable, the part lost to switching among more tasks than
// cores included (that time is spent on its behalf, in its context). Every control window the
// controller gets a TunerWindow from the model's cumulative counters and the window's
// latencies, and its answer is the limit from then on.
//
// Deterministic: a run is a function of the scenario (its seed included) and the controller.
// All random draws happen on arrival, so every controller sees the same commands at the same
// times. No wall clock, no threads; a simulated minute takes milliseconds.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/time/time.h"
#include "core/tuner_controller.h"
#include "tests/core/tuner_reference.h"

namespace execd::testing {

// One kind of command: `cpu` of CPU work, then `sleep` of waiting that needs no CPU. Each is
// drawn from a gamma distribution with that mean and coefficient of variation (0: exact).
struct CommandKind {
  double weight = 1;
  absl::Duration cpu = absl::ZeroDuration();
  double cpu_cv = 0;
  absl::Duration sleep = absl::ZeroDuration();
  double sleep_cv = 0;
};

// From `from` on (until the next phase), `rate` arrivals a second, of the kinds in `mix` in
// proportion to their weights.
struct LoadPhase {
  absl::Duration from = absl::ZeroDuration();
  double rate = 0;
  std::vector<CommandKind> mix;
};

struct Scenario {
  std::string name;
  int cores = 2;
  int start_limit = 8;  // every controller starts here; its floor is `cores`
  int cap = 64;
  std::vector<LoadPhase> load;  // ordered by `from`; the first from zero
  // Arrival times to use instead of Poisson ones, with the kinds of the phase in force.
  std::vector<absl::Duration> arrivals;
  absl::Duration length = absl::Seconds(120);
  // The steady-state window, [measure_from, length): what the result's figures describe.
  absl::Duration measure_from = absl::Seconds(60);
  absl::Duration window = absl::Milliseconds(500);  // between controller updates
  absl::Duration spawn_cpu = absl::Milliseconds(2);
  // The share of the cores lost to context switches and cache refills, per runnable task
  // beyond the cores.
  double oversubscription_cost = 0.005;
  size_t max_queue = 1024;
  absl::Duration max_queue_time = absl::Seconds(5);
  // Running commands past which a spawn fails (a pids or memory limit); 0 for none.
  int max_processes = 0;
  // Another task that wants a whole core during [hog_from, hog_until).
  absl::Duration hog_from;
  absl::Duration hog_until;
  uint64_t seed = 1;

  LimitBounds bounds() const { return {start_limit, cores, cap}; }
};

struct ScenarioResult {
  std::string scenario;
  std::string controller;
  // In the steady-state window:
  double offered = 0;     // arrivals a second
  double throughput = 0;  // completions a second
  absl::Duration p50;     // arrival-to-exit latency of those completions
  absl::Duration p99;
  absl::Duration service_p99;  // their spawn-to-exit time
  double power = 0;            // throughput ÷ p99 in seconds; 0 without completions
  int64_t drops = 0;
  int64_t resource_errors = 0;
  double mean_limit = 0;
  double direction_changes_per_minute = 0;  // the limit turning from rising to falling or back
  int final_limit = 0;
  // The whole run: the limit each window ended with, what the controller was shown at each
  // window's end, and where every command went.
  std::vector<std::pair<absl::Duration, int>> limits;
  std::vector<core::TunerWindow> windows;
  int64_t arrived = 0;
  int64_t completed = 0;
  int64_t dropped = 0;
  int64_t failed = 0;  // spawns refused for lack of resources
  int64_t running_at_end = 0;
  int64_t queued_at_end = 0;
};

// Runs `scenario` with `controller` deciding the limit after every window.
ScenarioResult RunScenario(const Scenario& scenario, core::ConcurrencyController& controller);

// A latency as execd's duration histograms report it: the upper bound of its bucket,
// 100 µs × 2^(k/4) for the smallest k that holds it.
absl::Duration BucketBound(absl::Duration latency);

}  // namespace execd::testing
