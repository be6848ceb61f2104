#include "core/memory_budget.h"

#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <sstream>
#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "core/kernel_files.h"
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

int64_t MemoryBudget::DefaultLimit() {
  const int64_t pages = sysconf(_SC_PHYS_PAGES);
  const int64_t page = sysconf(_SC_PAGESIZE);
  int64_t memory = pages > 0 && page > 0 ? pages * page : int64_t{1} << 30;
  if (int64_t cgroup = SelfCgroupLimit("memory.max", "memory", "memory.limit_in_bytes"); cgroup > 0)
    memory = std::min(memory, cgroup);
  return memory / 2;
}

}  // namespace execd::core
