#include "loadtest/baseline.h"

#include <algorithm>
#include <iterator>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "loadtest/requesters.h"

namespace execd::loadtest {
namespace {

constexpr int kModes = static_cast<int>(std::size(kBaselineModes));
enum ModeIndex { kLocal, kLocalSetsid, kPing, kExecute };

// The targets, declared once: each figure from the four modes' medians, its limit, and the
// runs it is set for. p50 overheads are set at concurrency 1, where no request waits for
// another; at 8 the cores are shared and throughput is the figure.
struct TargetSpec {
  const char* name;
  const char* formula;
  const char* unit;
  bool at_most;
  double limit;
  bool busy;        // Set for a run with background load (else for an idle one).
  int concurrency;  // Set for this concurrency; 0 for any.
  double (*value)(const ModeMedians* m);
};

const TargetSpec kTargets[] = {
    {"idle_p50_overhead_ms", "execute p50 - (local_spawn p50 + ping p50)", "ms", true, 0.1, false,
     1,
     [](const ModeMedians* m) {
       return m[kExecute].p50_ms - (m[kLocal].p50_ms + m[kPing].p50_ms);
     }},
    {"idle_throughput_vs_composite", "execute req/s / (1 / (1/local_spawn + 1/ping) req/s)", "",
     false, 0.95, false, 8,
     [](const ModeMedians* m) {
       const double bound =
           1 / (1 / m[kLocal].requests_per_second + 1 / m[kPing].requests_per_second);
       return m[kExecute].requests_per_second / bound;
     }},
    {"idle_p99_vs_local", "execute p99 / local_spawn p99", "", true, 1.5, false, 8,
     [](const ModeMedians* m) { return m[kExecute].p99_ms / m[kLocal].p99_ms; }},
    {"busy_p50_overhead_ms", "execute p50 - (local_setsid p50 + ping p50)", "ms", true, 0.3, true,
     1,
     [](const ModeMedians* m) {
       return m[kExecute].p50_ms - (m[kLocalSetsid].p50_ms + m[kPing].p50_ms);
     }},
    {"busy_p99_vs_local", "execute p99 / local_spawn p99", "", true, 2, true, 0,
     [](const ModeMedians* m) { return m[kExecute].p99_ms / m[kLocal].p99_ms; }},
};

double Median(std::vector<double> values) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  const size_t n = values.size();
  return n % 2 == 1 ? values[n / 2] : (values[n / 2 - 1] + values[n / 2]) / 2;
}

void TakeMedians(ModeMedians* m) {
  std::vector<double> rps, p50, p90, p99;
  for (const Report& r : m->rounds) {
    m->succeeded += r.succeeded();
    m->errors += r.errors;
    if (r.succeeded() == 0) continue;
    rps.push_back(r.requests_per_second);
    p50.push_back(absl::ToDoubleMilliseconds(r.p50));
    p90.push_back(absl::ToDoubleMilliseconds(r.p90));
    p99.push_back(absl::ToDoubleMilliseconds(r.p99));
  }
  m->measured = !rps.empty();
  m->requests_per_second = Median(rps);
  m->p50_ms = Median(p50);
  m->p90_ms = Median(p90);
  m->p99_ms = Median(p99);
}

std::string Conditions(const TargetSpec& spec) {
  std::string out = spec.busy ? "busy" : "idle";
  if (spec.concurrency > 0) absl::StrAppend(&out, ", concurrency ", spec.concurrency);
  return out;
}

std::string Limit(const TargetCheck& t) {
  return absl::StrCat(t.at_most ? "<= " : ">= ", t.limit, t.unit.empty() ? "" : " ", t.unit);
}

std::string Value(const TargetCheck& t) {
  if (!t.measured) return "n/a";
  return t.unit == "ms" ? absl::StrFormat("%+.3f ms", t.value) : absl::StrFormat("%.3f", t.value);
}

}  // namespace

BaselineReport RunBaseline(const Config& config, int rounds, bool busy,
                           const std::string& background) {
  BaselineReport report;
  report.rounds = rounds;
  report.config = config;
  report.background = background;
  report.busy = busy;
  ChannelPool channels(config.target, config.channels, config.auth);
  // Unmeasured warm-up: every connection made, the command's pages in the cache.
  for (Mode mode : kBaselineModes) {
    Config warm = config;
    warm.mode = mode;
    warm.requests = std::max(config.channels, config.concurrency);
    Run(warm, channels);
  }
  for (Mode mode : kBaselineModes) {
    ModeMedians m;
    m.mode = mode;
    report.modes.push_back(std::move(m));
  }
  for (int round = 0; round < rounds; ++round) {
    for (int i = 0; i < kModes; ++i) {
      const int index = (i + round) % kModes;
      Config measure = config;
      measure.mode = kBaselineModes[index];
      report.modes[index].rounds.push_back(Run(measure, channels));
      const Report& r = report.modes[index].rounds.back();
      report.errors += r.errors;
      if (report.first_error.empty() && !r.first_error.empty()) {
        report.first_error = absl::StrCat(ModeName(r.mode), ": ", r.first_error);
      }
    }
  }
  for (ModeMedians& m : report.modes) TakeMedians(&m);
  for (const TargetSpec& spec : kTargets) {
    TargetCheck t{.name = spec.name,
                  .formula = spec.formula,
                  .unit = spec.unit,
                  .at_most = spec.at_most,
                  .limit = spec.limit,
                  .conditions = Conditions(spec)};
    t.measured = std::all_of(report.modes.begin(), report.modes.end(),
                             [](const ModeMedians& m) { return m.measured; });
    if (t.measured) {
      t.value = spec.value(report.modes.data());
      t.holds = spec.at_most ? t.value <= spec.limit : t.value >= spec.limit;
    }
    t.applies =
        spec.busy == busy && (spec.concurrency == 0 || spec.concurrency == config.concurrency);
    report.targets.push_back(t);
  }
  return report;
}

std::string FormatBaselineText(const BaselineReport& r) {
  const Config& c = r.config;
  std::string out = absl::StrFormat(
      "baseline: command %s, concurrency %d, channels %d, %d rounds of %s per mode\n"
      "background: %s\n",
      absl::StrJoin(c.argv, " "), c.concurrency, c.channels, r.rounds,
      c.requests > 0 ? absl::StrCat(c.requests, " requests") : absl::FormatDuration(c.duration),
      r.background);
  for (int round = 0; round < r.rounds; ++round) {
    for (int i = 0; i < kModes; ++i) {
      const Report& m = r.modes[(i + round) % kModes].rounds[round];
      absl::StrAppend(&out, absl::StrFormat("round %d %-12s ", round + 1, ModeName(m.mode)));
      if (m.succeeded() == 0) {
        absl::StrAppend(&out, "no request succeeded: ", m.errors, " failed\n");
        continue;
      }
      absl::StrAppend(
          &out,
          absl::StrFormat("%9.1f req/s  p50=%.3fms p90=%.3fms p99=%.3fms", m.requests_per_second,
                          absl::ToDoubleMilliseconds(m.p50), absl::ToDoubleMilliseconds(m.p90),
                          absl::ToDoubleMilliseconds(m.p99)));
      absl::StrAppend(&out, m.errors > 0 ? absl::StrCat("  errors=", m.errors) : "", "\n");
    }
  }
  absl::StrAppend(
      &out, absl::StrFormat("medians of %d rounds:\n%-12s %10s %9s %9s %9s %10s %7s\n", r.rounds,
                            "mode", "req/s", "p50_ms", "p90_ms", "p99_ms", "succeeded", "errors"));
  for (const ModeMedians& m : r.modes) {
    if (!m.measured) {
      absl::StrAppend(&out, absl::StrFormat("%-12s no request succeeded: %d failed\n",
                                            ModeName(m.mode), m.errors));
      continue;
    }
    absl::StrAppend(&out, absl::StrFormat("%-12s %10.1f %9.3f %9.3f %9.3f %10d %7d\n",
                                          ModeName(m.mode), m.requests_per_second, m.p50_ms,
                                          m.p90_ms, m.p99_ms, m.succeeded, m.errors));
  }
  absl::StrAppend(&out, absl::StrFormat("targets (this run: %s, concurrency %d):\n",
                                        r.busy ? "busy" : "idle", c.concurrency));
  for (const TargetCheck& t : r.targets) {
    absl::StrAppend(&out, absl::StrFormat("  %-54s %10s  target %-10s %-6s set for %s%s\n",
                                          t.formula, Value(t), Limit(t),
                                          !t.measured ? ""
                                          : t.holds   ? "holds"
                                                      : "misses",
                                          t.conditions, t.applies ? " (this run)" : ""));
  }
  if (!r.first_error.empty()) absl::StrAppend(&out, "first error: ", r.first_error, "\n");
  return out;
}

std::string FormatBaselineJson(const BaselineReport& r) {
  const Config& c = r.config;
  std::vector<std::string> argv;
  for (const std::string& a : c.argv) argv.push_back(absl::StrCat("\"", JsonEscape(a), "\""));
  std::string out = absl::StrFormat(
      "{\"baseline\":{\"command\":[%s],\"concurrency\":%d,\"channels\":%d,\"rounds\":%d,"
      "\"duration_s\":%.3f,\"requests\":%d,\"background\":\"%s\",\"busy\":%s},\"modes\":{",
      absl::StrJoin(argv, ","), c.concurrency, c.channels, r.rounds,
      absl::ToDoubleSeconds(c.duration), c.requests, JsonEscape(r.background),
      r.busy ? "true" : "false");
  for (size_t i = 0; i < r.modes.size(); ++i) {
    const ModeMedians& m = r.modes[i];
    absl::StrAppend(&out, i > 0 ? "," : "", "\"", ModeName(m.mode), "\":{",
                    absl::StrFormat("\"succeeded\":%d,\"errors\":%d,", m.succeeded, m.errors));
    if (m.measured) {
      absl::StrAppend(&out, absl::StrFormat("\"requests_per_second\":%.3f,\"p50_ms\":%.6f,"
                                            "\"p90_ms\":%.6f,\"p99_ms\":%.6f,",
                                            m.requests_per_second, m.p50_ms, m.p90_ms, m.p99_ms));
    }
    std::vector<std::string> rounds;
    for (const Report& round : m.rounds) {
      std::string json = FormatJson(round);
      json.pop_back();  // Its newline.
      rounds.push_back(std::move(json));
    }
    absl::StrAppend(&out, "\"rounds\":[", absl::StrJoin(rounds, ","), "]}");
  }
  absl::StrAppend(&out, "},\"targets\":[");
  for (size_t i = 0; i < r.targets.size(); ++i) {
    const TargetCheck& t = r.targets[i];
    absl::StrAppend(&out, i > 0 ? "," : "",
                    absl::StrFormat("{\"name\":\"%s\",\"formula\":\"%s\",\"target\":\"%s\",",
                                    t.name, t.formula, Limit(t)));
    if (t.measured) {
      absl::StrAppend(&out, absl::StrFormat("\"value\":%.6f,\"holds\":%s,", t.value,
                                            t.holds ? "true" : "false"));
    }
    absl::StrAppend(&out, absl::StrFormat("\"set_for\":\"%s\",\"applies\":%s}", t.conditions,
                                          t.applies ? "true" : "false"));
  }
  absl::StrAppend(&out, absl::StrFormat("],\"errors\":%d,\"first_error\":\"%s\"}\n", r.errors,
                                        JsonEscape(r.first_error)));
  return out;
}

}  // namespace execd::loadtest
