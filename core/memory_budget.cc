#include "core/memory_budget.h"

#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <sstream>
#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "core/retry.h"

namespace execd::core {

MemoryGrant& MemoryGrant::operator=(MemoryGrant&& other) noexcept {
  if (this != &other) {
    Reset();
    budget_ = other.budget_;
    bytes_ = other.bytes_;
    other.budget_ = nullptr;
    other.bytes_ = 0;
  }
  return *this;
}

void MemoryGrant::Reset() {
  if (budget_ != nullptr) budget_->Release(bytes_);
  budget_ = nullptr;
  bytes_ = 0;
}

std::optional<MemoryGrant> MemoryBudget::TryReserve(int64_t bytes) {
  bytes = std::max<int64_t>(0, bytes);
  int64_t used = in_use_.load(std::memory_order_relaxed);
  do {
    if (limit_ > 0 && used + bytes > limit_) return std::nullopt;
  } while (!in_use_.compare_exchange_weak(used, used + bytes, std::memory_order_relaxed));
  return MemoryGrant(this, bytes);
}

absl::StatusOr<MemoryGrant> MemoryBudget::Reserve(int64_t bytes, const std::string& what) {
  std::optional<MemoryGrant> grant = TryReserve(bytes);
  if (grant.has_value()) return *std::move(grant);
  metrics_->Shed(ShedReason::kMemoryBudget);
  if (bytes > limit_) {
    return absl::ResourceExhaustedError(absl::StrCat(
        what, " needs up to ", bytes, " bytes of server memory, more than the whole budget of ",
        limit_, " (--memory_budget_bytes); ask for less (max_output_bytes, stdin) or raise it"));
  }
  // Memory comes back as calls end; a second is a fair guess without knowing which will.
  constexpr int kPushbackMs = 1000;
  return OverloadedError(
      absl::StrCat("the server's memory budget is in use: ", what, " needs up to ", bytes,
                   " bytes, ", in_use(), " of ", limit_,
                   " are held for other calls (--memory_budget_bytes); retry after ", kPushbackMs,
                   " ms"),
      kPushbackMs);
}

namespace {

// The first number in `path` ("max" or an unreadable file: none).
int64_t ReadLimit(const std::string& path) {
  std::ifstream in(path);
  std::string text;
  if (!(in >> text)) return 0;
  int64_t value = 0;
  return absl::SimpleAtoi(text, &value) && value > 0 ? value : 0;
}

// The memory limit of the cgroup this process is in, or 0 for none known.
int64_t CgroupLimit() {
  std::ifstream in("/proc/self/cgroup");
  std::string line;
  int64_t limit = 0;
  while (std::getline(in, line)) {
    // "0::/path" (v2) or "N:memory:/path" (v1).
    const size_t a = line.find(':');
    const size_t b = a == std::string::npos ? a : line.find(':', a + 1);
    if (b == std::string::npos) continue;
    const std::string controllers = line.substr(a + 1, b - a - 1);
    const std::string path = line.substr(b + 1);
    int64_t found = 0;
    if (controllers.empty()) {
      found = ReadLimit("/sys/fs/cgroup" + path + "/memory.max");
    } else if (controllers.find("memory") != std::string::npos) {
      found = ReadLimit("/sys/fs/cgroup/memory" + path + "/memory.limit_in_bytes");
    }
    // v1 reports "no limit" as a huge page-aligned number.
    if (found > 0 && found < (int64_t{1} << 60))
      limit = limit == 0 ? found : std::min(limit, found);
  }
  return limit;
}

}  // namespace

int64_t MemoryBudget::DefaultLimit() {
  const int64_t pages = sysconf(_SC_PHYS_PAGES);
  const int64_t page = sysconf(_SC_PAGESIZE);
  int64_t memory = pages > 0 && page > 0 ? pages * page : int64_t{1} << 30;
  if (int64_t cgroup = CgroupLimit(); cgroup > 0) memory = std::min(memory, cgroup);
  return memory / 2;
}

}  // namespace execd::core
