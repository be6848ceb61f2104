// The cost execd adds, against baselines measured in the same run: rounds of the command
// spawned locally (without and with a session of its own), the Ping RPC and Execute, one
// after the other at the same concurrency, each round in a rotated order so that drift (a
// warming cache, a neighbour's load) spreads over all four. Per mode the medians over the
// rounds, and the overhead figures with their targets.
#pragma once

#include <string>
#include <vector>

#include "loadtest/loadtest.h"

namespace execd::loadtest {

// The four measured modes, in the order of the first round.
inline constexpr Mode kBaselineModes[] = {Mode::kLocalSpawn, Mode::kLocalSetsid, Mode::kPing,
                                          Mode::kExecute};

struct ModeMedians {
  Mode mode;
  std::vector<Report> rounds;  // In round order.
  int64_t succeeded = 0;       // Over all rounds.
  int64_t errors = 0;
  // Medians over the rounds with at least one success; `measured` is false if none had.
  bool measured = false;
  double requests_per_second = 0;
  double p50_ms = 0, p90_ms = 0, p99_ms = 0;
};

// One overhead figure against its target. `applies` says whether this run is one the
// target is set for (idle or busy, and the concurrency); `holds` is computed regardless.
struct TargetCheck {
  std::string name;     // Snake case, for JSON.
  std::string formula;  // For people.
  std::string unit;     // "ms" or "" for a ratio.
  bool at_most;         // The figure must be <= limit (else >=).
  double limit;
  std::string conditions;  // "idle, concurrency 1"
  bool measured = false;   // False when a mode it needs had no success.
  double value = 0;
  bool holds = false;
  bool applies = false;
};

struct BaselineReport {
  int rounds = 0;
  Config config;           // As measured (mode aside).
  std::string background;  // BackgroundLoad::Describe().
  bool busy = false;
  std::vector<ModeMedians> modes;  // As kBaselineModes.
  std::vector<TargetCheck> targets;
  int64_t errors = 0;
  std::string first_error;
};

// `rounds` rounds of kBaselineModes, each measurement as `config` says (duration or
// requests, concurrency, channels); `busy` and `background` describe the background load.
BaselineReport RunBaseline(const Config& config, int rounds, bool busy,
                           const std::string& background);
std::string FormatBaselineText(const BaselineReport& report);
std::string FormatBaselineJson(const BaselineReport& report);

}  // namespace execd::loadtest
