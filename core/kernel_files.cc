#include "core/kernel_files.h"

#include <fcntl.h>
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "absl/algorithm/container.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "core/unique_fd.h"

namespace execd::core {

std::string ReadAt0(int fd) {
  std::string out;
  char buf[4096];
  for (off_t offset = 0;;) {
    ssize_t n = pread(fd, buf, sizeof(buf), offset);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    out.append(buf, static_cast<size_t>(n));
    offset += n;
  }
  return out;
}

std::string ReadSmallAt0(int fd) {
  char buf[256];
  ssize_t n;
  while ((n = pread(fd, buf, sizeof(buf), 0)) < 0 && errno == EINTR) {
  }
  return n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string();
}

std::string ReadFile(const std::string& path) {
  UniqueFd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC));
  return fd.valid() ? ReadAt0(fd.get()) : std::string();
}

int64_t ResidentBytes(pid_t pid) {
  const std::string text = ReadFile(absl::StrCat("/proc/", pid, "/statm"));
  const std::vector<absl::string_view> statm = absl::StrSplit(text, ' ');
  int64_t pages = 0;
  if (statm.size() < 2 || !absl::SimpleAtoi(statm[1], &pages)) return 0;
  return pages * sysconf(_SC_PAGESIZE);
}

bool WriteFile(const std::string& path, absl::string_view value) {
  int fd = open(path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) return false;
  bool ok = write(fd, value.data(), value.size()) == static_cast<ssize_t>(value.size());
  close(fd);
  return ok;
}

int64_t KeyedValueIn(const std::string& contents, absl::string_view key) {
  for (absl::string_view line : absl::StrSplit(contents, '\n')) {
    std::pair<absl::string_view, absl::string_view> kv = absl::StrSplit(line, ' ');
    int64_t value = 0;
    if (kv.first == key && absl::SimpleAtoi(kv.second, &value)) return value;
  }
  return 0;
}

namespace {

// The first number in the file at `path` ("max", empty or unreadable: 0).
int64_t FirstNumberIn(const std::string& path) {
  const std::string text = ReadFile(path);
  int64_t value = 0;
  const absl::string_view first = absl::string_view(text).substr(0, text.find_first_of(" \n"));
  return absl::SimpleAtoi(first, &value) && value > 0 ? value : 0;
}

// The files `v2_file` or `v1_file` of each cgroup this process is in, per /proc/self/cgroup
// ("0::/path" for v2, "N:controllers:/path" for v1).
std::vector<std::string> SelfCgroupFiles(absl::string_view v2_file, absl::string_view v1_controller,
                                         absl::string_view v1_file) {
  std::vector<std::string> files;
  for (absl::string_view line : absl::StrSplit(ReadFile("/proc/self/cgroup"), '\n')) {
    const std::vector<absl::string_view> parts = absl::StrSplit(line, absl::MaxSplits(':', 2));
    if (parts.size() != 3) continue;
    if (parts[1].empty()) {
      files.push_back(absl::StrCat("/sys/fs/cgroup", parts[2], "/", v2_file));
    } else if (absl::c_linear_search(absl::StrSplit(parts[1], ','), v1_controller)) {
      files.push_back(absl::StrCat("/sys/fs/cgroup/", v1_controller, parts[2], "/", v1_file));
    }
  }
  return files;
}

}  // namespace

int64_t SelfCgroupLimit(absl::string_view v2_file, absl::string_view v1_controller,
                        absl::string_view v1_file) {
  int64_t limit = 0;
  for (const std::string& file : SelfCgroupFiles(v2_file, v1_controller, v1_file)) {
    const int64_t found = FirstNumberIn(file);
    // v1 says "no limit" with a huge number.
    if (found > 0 && found < (int64_t{1} << 60))
      limit = limit == 0 ? found : std::min(limit, found);
  }
  return limit;
}

int64_t SelfCgroupValue(absl::string_view v2_file, absl::string_view v1_controller,
                        absl::string_view v1_file) {
  int64_t value = 0;
  for (const std::string& file : SelfCgroupFiles(v2_file, v1_controller, v1_file)) {
    value = std::max(value, FirstNumberIn(file));
  }
  return value;
}

namespace {

// The "some" total of pressure file contents: "some avg10=0.00 avg60=0.00 avg300=0.00
// total=12345" (microseconds).
std::optional<absl::Duration> SomeStallIn(const std::string& text) {
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (!absl::ConsumePrefix(&line, "some ")) continue;
    for (absl::string_view field : absl::StrSplit(line, ' ')) {
      int64_t us = 0;
      if (absl::ConsumePrefix(&field, "total=") && absl::SimpleAtoi(field, &us)) {
        return absl::Microseconds(us);
      }
    }
  }
  return std::nullopt;
}

}  // namespace

std::optional<absl::Duration> CpuStallTotal() {
  return SomeStallIn(ReadFile("/proc/pressure/cpu"));
}

std::optional<CpuTotals> CgroupCpuTotals(const std::string& dir) {
  const std::optional<absl::Duration> stalled = SomeStallIn(ReadFile(dir + "/cpu.pressure"));
  const std::string stat = ReadFile(dir + "/cpu.stat");
  if (!stalled.has_value() || stat.find("usage_usec ") == std::string::npos) return std::nullopt;
  return CpuTotals{absl::Microseconds(KeyedValueIn(stat, "usage_usec")), *stalled};
}

int UsableCores() {
  cpu_set_t set;
  CPU_ZERO(&set);
  int cores = sched_getaffinity(0, sizeof(set), &set) == 0 ? CPU_COUNT(&set) : 1;
  // v2: "QUOTA PERIOD" or "max PERIOD"; v1: cfs_quota_us (-1 for none) over cfs_period_us.
  double quota = 0;
  for (const std::string& file : SelfCgroupFiles("cpu.max", "cpu", "cpu.cfs_quota_us")) {
    const std::string text = ReadFile(file);
    const std::vector<absl::string_view> v2 = absl::StrSplit(text, absl::ByAnyChar(" \n"));
    double q = 0, period = 0;
    if (v2.size() >= 2 && absl::SimpleAtod(v2[0], &q) && absl::SimpleAtod(v2[1], &period) &&
        q > 0 && period > 0) {
      quota = quota == 0 ? q / period : std::min(quota, q / period);
    } else if (v2.size() >= 1 && absl::SimpleAtod(v2[0], &q) && q > 0) {
      const std::string period_file = file.substr(0, file.rfind('/')) + "/cpu.cfs_period_us";
      if (int64_t p = FirstNumberIn(period_file); p > 0) {
        quota = quota == 0 ? q / p : std::min(quota, q / p);
      }
    }
  }
  if (quota > 0) cores = std::min(cores, static_cast<int>(std::ceil(quota)));
  return std::max(1, cores);
}

}  // namespace execd::core
