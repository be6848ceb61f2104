#include "tests/core/tuner_scenarios.h"

#include <algorithm>
#include <memory>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_format.h"

namespace execd::testing {
namespace {

// A 2-core machine, every controller starting at 8 within [2, 64], two minutes simulated, the
// second one measured.
Scenario Base(std::string name) {
  Scenario s;
  s.name = std::move(name);
  s.cores = 2;
  s.start_limit = 8;
  s.cap = 64;
  s.length = absl::Seconds(120);
  s.measure_from = absl::Seconds(60);
  return s;
}

// A workload shift at 60 s, measured from 75 s: time to adapt, then a minute of steady state.
Scenario Shift(std::string name, LoadPhase before, LoadPhase after) {
  Scenario s = Base(std::move(name));
  after.from = absl::Seconds(60);
  s.load = {std::move(before), std::move(after)};
  s.length = absl::Seconds(135);
  s.measure_from = absl::Seconds(75);
  return s;
}

}  // namespace

CommandKind CpuCommand() { return {.weight = 1, .cpu = absl::Milliseconds(15), .cpu_cv = 0.25}; }
// `sleep` itself needs a little CPU to start, and wakes a little late, by a varying amount.
CommandKind SleepCommand() {
  return {.weight = 1,
          .cpu = absl::Milliseconds(1),
          .sleep = absl::Milliseconds(200),
          .sleep_cv = 0.02};
}

std::vector<Scenario> Scenarios() {
  const std::vector<CommandKind> cpu = {CpuCommand()};
  const std::vector<CommandKind> sleep = {SleepCommand()};
  const std::vector<CommandKind> mixed = {CpuCommand(), SleepCommand()};
  const double cpu_rate = 0.9 * PeakThroughput(Base(""), cpu).throughput;
  const LoadPhase cpu_load{.rate = cpu_rate, .mix = cpu};
  const LoadPhase sleep_load{.rate = 150, .mix = sleep};

  std::vector<Scenario> all;
  // CPU-bound: the cores are the bottleneck; running more than a few only adds latency.
  all.push_back(Base("cpu_bound"));
  all.back().load = {cpu_load};
  // Sleep-bound: the limit is the bottleneck; 150/s of 0.2 s needs 30 running.
  all.push_back(Base("sleep_bound"));
  all.back().load = {sleep_load};
  // Half of each: the limit has to leave room for sleepers without overloading the cores.
  all.push_back(Base("mixed"));
  all.back().load = {{.rate = 0.9 * PeakThroughput(Base(""), mixed).throughput, .mix = mixed}};
  all.push_back(Shift("cpu_to_sleep", cpu_load, sleep_load));
  all.push_back(Shift("sleep_to_cpu", sleep_load, cpu_load));
  // CPU-bound with another program taking a core for 40 s of the measured 90.
  all.push_back(Base("noise"));
  all.back().load = {cpu_load};
  all.back().measure_from = absl::Seconds(30);
  all.back().hog_from = absl::Seconds(40);
  all.back().hog_until = absl::Seconds(80);
  // Commands of widely varying length (CPU and waiting each with a coefficient of
  // variation of 1.5, as in a build or a test suite): every window's figures are noisy.
  const std::vector<CommandKind> varied = {{.cpu = absl::Milliseconds(10),
                                            .cpu_cv = 1.5,
                                            .sleep = absl::Milliseconds(40),
                                            .sleep_cv = 1.5}};
  all.push_back(Base("noisy_durations"));
  all.back().load = {{.rate = 0.9 * PeakThroughput(Base(""), varied).throughput, .mix = varied}};
  // Sleep-bound where spawning a 37th command fails (a pids or memory limit).
  all.push_back(Base("pids_cap"));
  all.back().load = {sleep_load};
  all.back().max_processes = 36;
  return all;
}

bool Outranks(const ScenarioResult& a, const ScenarioResult& b) {
  if ((a.resource_errors == 0) != (b.resource_errors == 0)) return a.resource_errors == 0;
  return a.power > b.power;
}

std::vector<int> StaticLimits() { return {1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64}; }

StaticSweep SweepStaticLimits(const Scenario& scenario) {
  std::vector<int> limits = StaticLimits();
  if (scenario.max_processes > 0) {
    limits.insert(std::upper_bound(limits.begin(), limits.end(), scenario.max_processes),
                  scenario.max_processes);
    limits.erase(std::unique(limits.begin(), limits.end()), limits.end());
  }
  StaticSweep sweep;
  for (int limit : limits) {
    const std::unique_ptr<core::ConcurrencyController> controller = MakeStaticLimit(limit);
    sweep.results.push_back(RunScenario(scenario, *controller));
  }
  for (size_t i = 1; i < sweep.results.size(); ++i) {
    if (Outranks(sweep.results[i], sweep.results[sweep.best])) sweep.best = i;
  }
  return sweep;
}

Peak PeakThroughput(const Scenario& base, const std::vector<CommandKind>& mix) {
  double weight = 0;
  double cpu = 0;
  for (const CommandKind& kind : mix) {
    weight += kind.weight;
    cpu += kind.weight * absl::ToDoubleSeconds(kind.cpu + base.spawn_cpu);
  }
  Scenario overload = base;
  overload.load = {{.rate = 2 * base.cores / (cpu / weight), .mix = mix}};
  overload.length = absl::Seconds(60);
  overload.measure_from = absl::Seconds(20);
  Peak peak;
  for (int limit : StaticLimits()) {
    const std::unique_ptr<core::ConcurrencyController> controller = MakeStaticLimit(limit);
    const double throughput = RunScenario(overload, *controller).throughput;
    if (throughput > peak.throughput) peak = {limit, throughput};
  }
  return peak;
}

std::string FormatPowerTable(const std::vector<ScenarioResult>& results) {
  std::vector<std::string> scenarios;
  std::vector<std::string> controllers;
  absl::flat_hash_map<std::pair<std::string, std::string>, double> power;
  for (const ScenarioResult& r : results) {
    if (std::find(scenarios.begin(), scenarios.end(), r.scenario) == scenarios.end()) {
      scenarios.push_back(r.scenario);
    }
    if (std::find(controllers.begin(), controllers.end(), r.controller) == controllers.end()) {
      controllers.push_back(r.controller);
    }
    power[{r.controller, r.scenario}] = r.power;
  }
  std::string out = absl::StrFormat("%-10s", "power");
  for (const std::string& s : scenarios) absl::StrAppendFormat(&out, " %13s", s);
  out += "\n";
  for (const std::string& c : controllers) {
    absl::StrAppendFormat(&out, "%-10s", c);
    for (const std::string& s : scenarios) {
      const auto it = power.find({c, s});
      if (it == power.end()) {
        absl::StrAppendFormat(&out, " %13s", "-");
      } else {
        absl::StrAppendFormat(&out, " %13.0f", it->second);
      }
    }
    out += "\n";
  }
  return out;
}

std::string FormatTable(const std::vector<ScenarioResult>& results) {
  std::string out = absl::StrFormat(
      "%-13s %-10s %8s %8s %8s %9s %6s %6s %7s %7s %7s %7s\n", "scenario", "controller", "offered",
      "thr/s", "p50 ms", "p99 ms", "power", "L end", "L mean", "dir/min", "drops", "errors");
  for (const ScenarioResult& r : results) {
    absl::StrAppendFormat(
        &out, "%-13s %-10s %8.1f %8.1f %8.1f %9.1f %6.0f %6d %7.1f %7.1f %7d %7d\n", r.scenario,
        r.controller, r.offered, r.throughput, absl::ToDoubleMilliseconds(r.p50),
        absl::ToDoubleMilliseconds(r.p99), r.power, r.final_limit, r.mean_limit,
        r.direction_changes_per_minute, r.drops, r.resource_errors);
  }
  return out;
}

}  // namespace execd::testing
