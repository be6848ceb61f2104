// Reads and writes of small kernel files (cgroupfs, procfs) with raw calls rather than
// streams: some are read at every command's end.
//
// Thread-safety: free functions with no state of their own.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace execd::core {

// The contents of `fd` from offset 0: a cgroup file re-read gives its current state.
std::string ReadAt0(int fd);
// A cgroup file of a line or two (cgroup.events, memory.peak), read with one call: a
// read from offset 0 returns all of a file that fits the buffer. (Not for lists such as
// cgroup.procs, whose reads can stop short of the end at a record boundary.)
std::string ReadSmallAt0(int fd);
// The contents of the file at `path`, or "" when it cannot be opened.
std::string ReadFile(const std::string& path);

// The resident memory of process `pid` (/proc/PID/statm); 0 when it cannot be read.
int64_t ResidentBytes(pid_t pid);
// Writes `value` to the file at `path` in one call; whether all of it was written.
bool WriteFile(const std::string& path, absl::string_view value);
// The value of `key` in flat-keyed cgroup file contents ("oom_kill 3\nmax 0\n"), or 0.
int64_t KeyedValueIn(const std::string& contents, absl::string_view key);

// The smallest limit the cgroups this process is in set in `v2_file` (cgroup v2) or in
// `v1_file` of the `v1_controller` hierarchy (v1); 0 when none is known ("max", unreadable).
int64_t SelfCgroupLimit(absl::string_view v2_file, absl::string_view v1_controller,
                        absl::string_view v1_file);
// The same cgroups' current value of `v2_file` or `v1_file` (the largest), or 0.
int64_t SelfCgroupValue(absl::string_view v2_file, absl::string_view v1_controller,
                        absl::string_view v1_file);

// What a cgroup v2's cpu.stat and cpu.pressure say of the tasks in it and below.
struct CpuTotals {
  absl::Duration used;     // cpu.stat usage_usec
  absl::Duration stalled;  // cpu.pressure "some" total: at least one waited for a CPU
};
// None when `dir` has not both files (not a cgroup v2, or no pressure stall information).
std::optional<CpuTotals> CgroupCpuTotals(const std::string& dir);

// How long, in all, at least one task on the machine has waited for a CPU
// (/proc/pressure/cpu, "some"); none where the kernel has no pressure stall information.
std::optional<absl::Duration> CpuStallTotal();

// CPUs this process may use: its affinity, lowered to its cgroup's CPU quota (cpu.max,
// cpu.cfs_quota_us) rounded up; at least 1.
int UsableCores();

}  // namespace execd::core
