// MemoryBudget: one server-wide bound on the bytes held for calls (stdin received, output
// collected or queued for a slow reader, batch results not yet written, cache hits being
// replayed, identical requests waiting on a leader). Each call reserves its worst case
// before it is admitted and gives it back when it is over, so what was admitted never
// fails for memory, and past the budget new work is refused with a retry pushback.
//
// Thread-safe: reservations are one atomic exchange.
#pragma once

#include <atomic>
#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "core/metrics.h"

namespace execd::core {

class MemoryBudget;

// Bytes held from a MemoryBudget until this is destroyed or reset. Move-only.
class MemoryGrant {
 public:
  MemoryGrant() = default;
  MemoryGrant(MemoryGrant&& other) noexcept { *this = std::move(other); }
  MemoryGrant& operator=(MemoryGrant&& other) noexcept;
  MemoryGrant(const MemoryGrant&) = delete;
  MemoryGrant& operator=(const MemoryGrant&) = delete;
  ~MemoryGrant() { Reset(); }

  // Gives the bytes back now.
  void Reset();
  int64_t bytes() const { return bytes_; }

 private:
  friend class MemoryBudget;
  MemoryGrant(MemoryBudget* budget, int64_t bytes) : budget_(budget), bytes_(bytes) {}
  MemoryBudget* budget_ = nullptr;
  int64_t bytes_ = 0;
};

class MemoryBudget {
 public:
  // `limit_bytes` <= 0: no bound (every reservation is granted, and still counted).
  // Refusals by Reserve are reported to `metrics` as sheds.
  explicit MemoryBudget(int64_t limit_bytes, Metrics* metrics = &Metrics::Null())
      : limit_(limit_bytes), metrics_(metrics) {}

  // `bytes` for `what` (named in the refusal), or RESOURCE_EXHAUSTED with a retry pushback
  // when they would take the budget past its limit. A single reservation larger than the
  // whole budget is refused too: waiting would never help it, which the message says.
  absl::StatusOr<MemoryGrant> Reserve(int64_t bytes, const std::string& what);
  // Reserve without a message: none when refused.
  std::optional<MemoryGrant> TryReserve(int64_t bytes);

  int64_t limit() const { return limit_; }
  int64_t in_use() const { return in_use_.load(std::memory_order_relaxed); }

  // The default budget: half of the smaller of the machine's memory and the memory limit
  // of the cgroup this process runs in (cgroup v2 memory.max, or v1 limit_in_bytes).
  static int64_t DefaultLimit();

 private:
  friend class MemoryGrant;
  void Release(int64_t bytes) { in_use_.fetch_sub(bytes, std::memory_order_relaxed); }

  const int64_t limit_;
  Metrics* const metrics_;
  std::atomic<int64_t> in_use_{0};
};

}  // namespace execd::core
