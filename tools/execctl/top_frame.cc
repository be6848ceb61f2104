#include "tools/execctl/top_frame.h"

#include <algorithm>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"

namespace execd::execctl {
namespace {

constexpr char kNone[] = "-";

std::string Rate(std::optional<double> per_second) {
  if (!per_second.has_value()) return kNone;
  const double v = *per_second;
  if (v == 0) return "0";
  return absl::StrFormat(v < 10 ? "%.2f" : v < 1000 ? "%.1f" : "%.0f", v);
}

std::string Count(double n) { return absl::StrFormat("%.0f", n); }

std::string Seconds(std::optional<double> seconds) {
  if (!seconds.has_value()) return kNone;
  const double s = *seconds;
  if (s < 1e-3) return absl::StrFormat("%.0fus", s * 1e6);
  if (s < 1) return absl::StrFormat("%.1fms", s * 1e3);
  return absl::StrFormat("%.2fs", s);
}

std::string Bytes(double bytes) {
  constexpr const char* kUnits[] = {"KiB", "MiB", "GiB", "TiB"};
  if (bytes < 1024) return absl::StrFormat("%.0f B", bytes);
  int unit = -1;
  while (bytes >= 1024 && unit < 3) {
    bytes /= 1024;
    ++unit;
  }
  return absl::StrFormat("%.1f %s", bytes, kUnits[unit]);
}

std::string Cores(std::optional<double> cores) {
  if (!cores.has_value()) return kNone;
  return absl::StrFormat("%.2f", *cores);
}

// "NAME RATE (TOTAL total), ..." or "none".
std::string Named(const std::vector<NamedCounter>& counters) {
  if (counters.empty()) return "none";
  return absl::StrJoin(counters, ", ", [](std::string* out, const NamedCounter& c) {
    absl::StrAppend(out, c.first, " ", Rate(c.second.per_second), " (", Count(c.second.total),
                    " total)");
  });
}

void AddLine(std::string* frame, absl::string_view label, absl::string_view text) {
  absl::StrAppend(frame, absl::StrFormat("%-12s%s\n", label, text));
}

void AddRpc(std::string* frame, const RpcFigures& rpc) {
  absl::StrAppend(frame,
                  absl::StrFormat("%-16s%10s%10s%10s%10s\n", rpc.name, Rate(rpc.calls.per_second),
                                  Count(rpc.calls.total), Seconds(rpc.p50), Seconds(rpc.p99)));
}

std::string Header(const TopFigures& f, absl::string_view target) {
  std::string header = absl::StrCat("execd ", f.version.empty() ? "?" : f.version, " at ", target);
  if (f.interval <= absl::ZeroDuration()) {
    return absl::StrCat(header, ": first snapshot, rates from the next one");
  }
  absl::StrAppend(&header, absl::StrFormat(", over %.2fs", absl::ToDoubleSeconds(f.interval)));
  if (f.restarted) absl::StrAppend(&header, " (execd restarted: counted from zero)");
  return header;
}

}  // namespace

std::string FormatFrame(const TopFigures& f, absl::string_view target) {
  std::string frame = absl::StrCat(Header(f, target), "\n");
  absl::StrAppend(
      &frame, absl::StrFormat("%-16s%10s%10s%10s%10s\n", "RPC", "CALLS/S", "TOTAL", "P50", "P99"));
  for (const RpcFigures& rpc : f.commands) AddRpc(&frame, rpc);
  AddRpc(&frame, f.all_commands);
  AddRpc(&frame, f.ping);
  AddLine(&frame, "errors/s", Named(f.errors));
  AddLine(&frame, "shed/s", Named(f.shed));
  AddLine(&frame, "running", absl::StrCat(Count(f.running), " of ", Count(f.concurrency_limit)));
  AddLine(&frame, "tuner",
          f.tuner.has_value()
              ? absl::StrCat("limit in [", Count(f.tuner->min), ", ", Count(f.tuner->max),
                             "], moves/s ", Named(f.tuner->moves))
              : "off (the limit is pinned)");
  AddLine(&frame, "queued",
          absl::StrCat(Count(f.queued_total), " of ", Count(f.queue_capacity), " (",
                       absl::StrJoin(f.queued, ", ",
                                     [](std::string* out, const auto& q) {
                                       absl::StrAppend(out, q.first, " ", Count(q.second));
                                     }),
                       ")"));
  AddLine(&frame, "cpu",
          absl::StrCat("execd ", Cores(f.server_cores), " cores, commands ", Cores(f.command_cores),
                       " cores"));
  AddLine(&frame, "memory",
          absl::StrCat("execd ", Bytes(f.server_resident_bytes), ", commands ",
                       f.command_memory_bytes.has_value() ? Bytes(*f.command_memory_bytes) : kNone,
                       ", budget ", Bytes(f.budget_used_bytes), " of ", Bytes(f.budget_bytes)));
  if (!f.cache.has_value()) {
    AddLine(&frame, "cache", "off");
  } else {
    const CacheFigures& c = *f.cache;
    const std::string hits =
        c.hit_ratio.has_value() ? absl::StrFormat("%.0f%%", *c.hit_ratio * 100) : kNone;
    AddLine(&frame, "cache",
            absl::StrCat("hits ", hits, " of ", Count(c.lookups), " lookups, entries ",
                         Count(c.entries), " (", Bytes(c.bytes), ")"));
  }
  if (f.pools.empty()) {
    AddLine(&frame, "pools", "none");
    return frame;
  }
  absl::StrAppend(&frame, absl::StrFormat("%-16s%6s%6s%10s%10s%10s%9s\n", "POOL", "IDLE", "BUSY",
                                          "STARTING", "SERVED/S", "MISSES/S", "CRASHED"));
  for (const PoolFigures& p : f.pools) {
    absl::StrAppend(&frame,
                    absl::StrFormat("%-16s%6s%6s%10s%10s%10s%9s\n", p.name, Count(p.idle),
                                    Count(p.busy), Count(p.starting), Rate(p.served.per_second),
                                    Rate(p.misses.per_second), Count(p.crashed.total)));
  }
  return frame;
}

std::string FitToScreen(absl::string_view frame, int rows, int columns) {
  std::string out;
  int row = 0;
  for (absl::string_view line : absl::StrSplit(frame, '\n', absl::SkipEmpty())) {
    if (++row >= rows) break;
    absl::StrAppend(&out, line.substr(0, static_cast<size_t>(std::max(columns, 0))), "\n");
  }
  return out;
}

}  // namespace execd::execctl
