// Every metric family execd exports, each declared once, here: name, type, labels, help and
// (histograms) buckets. The README's Metrics section lists the same families; later
// features add theirs to this table. Plain data: no Prometheus types.
#pragma once

#include <string>
#include <vector>

#include "absl/strings/string_view.h"

namespace execd::metrics {

enum class Type { kCounter, kGauge, kHistogram };
enum class Buckets { kNone, kDuration };

// X(id, name, type, buckets, "label,label", help). Labels take only values from fixed sets
// (RPC names, status codes, enums) or the pools' configured names: never argv, paths or ids.
#define EXECD_METRIC_FAMILIES(X)                                                                   \
  X(kRequests, "execd_requests_total", kCounter, kNone, "rpc,code",                                \
    "Calls ended, by RPC and the gRPC status code the caller got (ExecuteBatch: each item).")      \
  X(kRequestDuration, "execd_request_duration_seconds", kHistogram, kDuration, "rpc,stage",        \
    "Where calls' time went: queue (waiting for a slot), spawn (admission to running), run "       \
    "(running to exit and output drained), total (received to answered).")                         \
  X(kRunning, "execd_running", kGauge, kNone, "", "Commands running now.")                         \
  X(kQueued, "execd_queued", kGauge, kNone, "priority",                                            \
    "Commands waiting for a slot, and calls waiting for an identical call's result.")              \
  X(kQueueCapacity, "execd_queue_capacity", kGauge, kNone, "",                                     \
    "How many may wait at most (--max_queue); past it requests are shed.")                         \
  X(kShed, "execd_shed_total", kCounter, kNone, "reason",                                          \
    "Requests refused before they ran, by why.")                                                   \
  X(kConcurrencyLimit, "execd_concurrency_limit", kGauge, kNone, "",                               \
    "Commands allowed to run at once now.")                                                        \
  X(kConcurrencyLimitBounds, "execd_concurrency_limit_bounds", kGauge, kNone, "bound",             \
    "The auto-tuner's bounds on the limit (--tuner_min, and --tuner_max or a pids or memory "      \
    "cap); absent with the tuner off.")                                                            \
  X(kTunerDecisions, "execd_tuner_decisions_total", kCounter, kNone, "direction,reason",           \
    "Times the auto-tuner moved the limit, up or down, by why.")                                   \
  X(kTerminations, "execd_terminations_total", kCounter, kNone, "kind",                            \
    "Commands that ran, by how they ended.")                                                       \
  X(kSpawnErrors, "execd_spawn_errors_total", kCounter, kNone, "errno",                            \
    "Commands that could not be started, by the error (errno name, or none).")                     \
  X(kMemoryBudgetUsed, "execd_memory_budget_used_bytes", kGauge, kNone, "",                        \
    "Server memory reserved for calls in progress (each call's worst case).")                      \
  X(kMemoryBudget, "execd_memory_budget_bytes", kGauge, kNone, "",                                 \
    "The memory budget calls may reserve (--memory_budget_bytes).")                                \
  X(kOutputBytes, "execd_output_bytes_total", kCounter, kNone, "stream,encoding",                  \
    "Output passed on to callers: raw is what the commands wrote; identity what was sent as "      \
    "is; lz4 the compressed bytes the rest became.")                                               \
  X(kChildCpu, "execd_child_cpu_seconds_total", kCounter, kNone, "mode",                           \
    "CPU time the commands used, counted as each ends (user, system).")                            \
  X(kChildMemory, "execd_child_memory_bytes", kGauge, kNone, "",                                   \
    "Memory the running commands and pool workers use now.")                                       \
  X(kCacheRequests, "execd_cache_requests_total", kCounter, kNone, "result",                       \
    "Result cache lookups: hit or miss.")                                                          \
  X(kCacheEvictions, "execd_cache_evictions_total", kCounter, kNone, "",                           \
    "Cache entries evicted to make room.")                                                         \
  X(kCacheBytes, "execd_cache_bytes", kGauge, kNone, "", "Bytes the result cache holds.")          \
  X(kCacheEntries, "execd_cache_entries", kGauge, kNone, "", "Entries the result cache holds.")    \
  X(kPoolProcesses, "execd_pool_processes", kGauge, kNone, "pool,state",                           \
    "Worker pools' processes by state (idle, busy, starting).")                                    \
  X(kPoolEvents, "execd_pool_events_total", kCounter, kNone, "pool,event",                         \
    "Worker pools' events: started, served, recycled, crashed, miss (no idle worker).")            \
  X(kBuildInfo, "execd_build_info", kGauge, kNone, "version",                                      \
    "Always 1; the version of the execd binary.")                                                  \
  X(kProcessCpu, "process_cpu_seconds_total", kCounter, kNone, "",                                 \
    "CPU time execd itself used (user and system).")                                               \
  X(kProcessResident, "process_resident_memory_bytes", kGauge, kNone, "",                          \
    "execd's resident memory.")                                                                    \
  X(kProcessVirtual, "process_virtual_memory_bytes", kGauge, kNone, "", "execd's virtual memory.") \
  X(kProcessOpenFds, "process_open_fds", kGauge, kNone, "", "execd's open descriptors.")           \
  X(kProcessMaxFds, "process_max_fds", kGauge, kNone, "",                                          \
    "execd's descriptor limit (RLIMIT_NOFILE).")                                                   \
  X(kProcessThreads, "process_threads", kGauge, kNone, "", "execd's threads.")                     \
  X(kProcessStartTime, "process_start_time_seconds", kGauge, kNone, "",                            \
    "When execd started, in seconds since the Unix epoch.")

#define EXECD_METRIC_ID(id, name, type, buckets, labels, help) id,
enum class Family { EXECD_METRIC_FAMILIES(EXECD_METRIC_ID) kCount };
#undef EXECD_METRIC_ID

struct FamilySpec {
  Family id;
  std::string name;
  Type type;
  std::vector<std::string> labels;
  std::string help;
  std::vector<double> buckets;  // Histograms: upper bounds, increasing; +Inf is implied.
};

// The table, in declaration order; Spec(id) is its row.
const std::vector<FamilySpec>& Families();
const FamilySpec& Spec(Family id);

}  // namespace execd::metrics
