// Scheduler: admission control in front of the spawner. A limit on running commands
// (changeable at run time, for the auto-tuner), and a bounded wait queue ordered by
// priority, FIFO within a priority. Queued entries can expire (max queue time, call
// deadline) or be removed (cancel). When the queue is full, a newcomer displaces the newest
// entry of a lower priority, if any; otherwise it is rejected.
//
// Entries may belong to a group (a worker pool) with its own limit on running entries: an
// entry whose group is full waits without holding up entries of other groups behind it.
//
// Not thread-safe: the engine calls it under its own lock. Time is passed in by the caller,
// so tests drive it with plain values.
#pragma once

#include <cstddef>
#include <cstdint>
#include <list>
#include <optional>
#include <set>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/time/time.h"

namespace execd::core {

class Scheduler {
 public:
  using Id = uint64_t;
  // Priorities are 0 (lowest) .. kPriorities-1 (highest).
  static constexpr int kPriorities = 3;

  Scheduler(int limit, size_t max_queue);

  struct Admission {
    enum class Kind { kRunNow, kQueued, kRejected };
    Kind kind = Kind::kRejected;
    // An entry that was queued and has been dropped to make room for this one.
    std::optional<Id> displaced;
  };
  // `expiry`: when a still-queued entry is dropped (InfiniteFuture for never).
  // `group`: 0 for none, else a group made with SetGroupLimit.
  Admission Submit(Id id, int priority, absl::Time expiry, int group = 0);

  // A running entry (of `group`) ended and frees its slot.
  void Release(int group = 0);
  // Creates or resizes group `group` (1, 2, ...): at most `limit` of its entries run.
  void SetGroupLimit(int group, int limit);
  // Queued entries that may start now, best first; each now counts as running.
  std::vector<Id> TakeRunnable();
  // Removes a queued entry; false when it is not queued.
  bool Remove(Id id);
  // Queued entries whose expiry is at or before `now`; they are removed.
  std::vector<Id> TakeExpired(absl::Time now);
  // The earliest expiry among queued entries, or InfiniteFuture.
  absl::Time NextExpiry() const;
  // Queued entries, all removed (for shutdown).
  std::vector<Id> TakeAllQueued();

  // A place in the queue held by a request of `priority` that waits outside the scheduler
  // (an identical request's result): it counts towards max_queue like a queued entry, and
  // under its priority. False when full.
  bool HoldPlace(int priority);
  void ReleasePlace(int priority);

  void SetLimit(int limit);
  int limit() const { return limit_; }
  int running() const { return running_; }
  // Queued entries and held places.
  size_t queued() const { return index_.size() + held_total_; }
  // Queued entries and held places of `priority`.
  size_t queued(int priority) const { return queues_[priority].size() + held_[priority]; }
  size_t max_queue() const { return max_queue_; }

 private:
  struct Entry {
    Id id;
    absl::Time expiry;
    int group;
  };
  bool GroupFree(int group) const {
    return group == 0 || group_running_[group] < group_limits_[group];
  }
  struct Position {
    int priority;
    std::list<Entry>::iterator it;
  };
  void Enqueue(Id id, int priority, absl::Time expiry, int group);
  bool AnyRunnableQueued() const;
  void Erase(Id id);

  int limit_;
  int running_ = 0;
  std::vector<int> group_limits_{0};  // Indexed by group; 0 is "no group".
  std::vector<int> group_running_{0};
  std::vector<int> group_queued_{0};
  const size_t max_queue_;
  size_t held_[kPriorities] = {};  // Places held (HoldPlace), by priority.
  size_t held_total_ = 0;
  std::list<Entry> queues_[kPriorities];
  absl::flat_hash_map<Id, Position> index_;
  std::set<std::pair<absl::Time, Id>> expiries_;  // Finite expiries only.
};

}  // namespace execd::core
