// Scheduler: admission control in front of the spawner. A limit on running commands
// (changeable at run time, for the auto-tuner), and a bounded wait queue ordered by
// priority. Queued entries can expire (max queue time, call deadline) or be removed
// (cancel). When the queue is full, a newcomer displaces the newest entry of a lower
// priority, if any; else the newest entry of its own priority of the tenant with the most
// entries queued there for its share, if that tenant has more than the newcomer's would;
// otherwise it is rejected. So a tenant that fills the queue cannot keep others out of it.
//
// Fair between tenants (callers' identities) inside a priority: the next entry to run is
// the oldest of the tenant whose running entries divided by its share are fewest. Ties go
// to the tenant that started an entry least recently, then to the oldest entry: ties by
// age alone would be first come, first served whenever the running counts are equal, as
// they always are (at zero) under a limit of one. With one tenant this is first come, first
// served. A tenant that floods the queue takes its share of the slots that free up, not all
// of them. Shares are weights (SetShares), 1 by default.
//
// Entries may belong to a group (a worker pool) with its own limit on running entries: an
// entry whose group is full waits without holding up entries of other groups behind it.
//
// Costs: submitting, removing and expiring an entry are O(log n); picking the next entry
// is O(log t) for t tenants waiting, plus the entries passed over for their full groups.
//
// Not thread-safe: the engine calls it under its own lock. Time is passed in by the caller,
// so tests drive it with plain values.
#pragma once

#include <cstddef>
#include <cstdint>
#include <list>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/node_hash_map.h"
#include "absl/strings/string_view.h"
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
    // An entry that was queued and has been dropped to make room for this one: for its
    // higher priority, or (`for_fairness`) for its tenant's having fewer queued.
    std::optional<Id> displaced;
    bool for_fairness = false;
  };
  // `expiry`: when a still-queued entry is dropped (InfiniteFuture for never).
  // `group`: 0 for none, else a group made with SetGroupLimit.
  // `tenant`: who asked; entries of one tenant share its slots (see above).
  Admission Submit(Id id, int priority, absl::Time expiry, int group = 0,
                   absl::string_view tenant = {});

  // A running entry (of `group`, submitted by `tenant`) ended and frees its slot.
  void Release(int group = 0, absl::string_view tenant = {});
  // Creates or resizes group `group` (1, 2, ...): at most `limit` of its entries run.
  void SetGroupLimit(int group, int limit);
  // Tenants' shares of the slots; one not named has `default_share`. Each at least 1.
  void SetShares(absl::flat_hash_map<std::string, int> shares, int default_share = 1);
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
  // Running entries of `tenant`.
  int running(absl::string_view tenant) const;
  // Queued entries and held places.
  size_t queued() const { return index_.size() + held_total_; }
  // Queued entries and held places of `priority`.
  size_t queued(int priority) const { return queues_[priority].size() + held_[priority]; }
  size_t max_queue() const { return max_queue_; }

 private:
  struct Tenant;
  struct Entry {
    Id id;
    absl::Time expiry;
    int group;
    uint64_t seq;  // Arrival order, unique.
    Tenant* tenant;
  };
  using Queue = std::list<Entry>;  // One priority's entries in arrival order.
  struct Tenant {
    std::string name;
    int share = 1;
    int running = 0;
    uint64_t last_admitted = 0;  // When it last started an entry (Scheduler::admissions_).
    size_t queued = 0;
    std::list<Queue::iterator> waiting[kPriorities];  // Its entries, oldest first.
  };
  // A tenant's place among those waiting at one priority: fewest running per share first,
  // then least recently started, then oldest entry first. Computed from the tenant's state,
  // so a tenant leaves its sets (Unlist) before that state changes and comes back after
  // (Relist).
  struct TenantKey {
    int64_t running;
    int64_t share;
    uint64_t last_admitted;
    uint64_t oldest;
    Tenant* tenant;
    bool operator<(const TenantKey& o) const {
      const int64_t mine = running * o.share, theirs = o.running * share;
      if (mine != theirs) return mine < theirs;
      if (last_admitted != o.last_admitted) return last_admitted < o.last_admitted;
      return oldest < o.oldest;
    }
  };
  struct Position {
    int priority;
    Queue::iterator it;
    std::list<Queue::iterator>::iterator mine;  // In its tenant's waiting list.
  };

  bool GroupFree(int group) const {
    return group == 0 || group_running_[group] < group_limits_[group];
  }
  void Enqueue(Id id, int priority, absl::Time expiry, int group, Tenant& tenant);
  // The entry a newcomer of `priority` and `tenant` displaces from a full queue, if any;
  // `for_fairness` tells which kind (see Admission).
  std::optional<Id> Victim(int priority, absl::string_view tenant, bool* for_fairness) const;
  bool AnyRunnableQueued() const;
  void Erase(Id id);
  // Counts an admitted entry of `tenant` in `group` as running.
  void Admit(Tenant& tenant, int group);
  Tenant& TenantNamed(absl::string_view name);
  int ShareOf(absl::string_view name) const;
  static TenantKey KeyOf(Tenant& tenant, int priority);
  void Unlist(Tenant& tenant, int priority);
  void Relist(Tenant& tenant, int priority);
  // Drops an idle tenant's state once many are kept.
  void MaybeForget(Tenant& tenant);

  int limit_;
  int running_ = 0;
  std::vector<int> group_limits_{0};  // Indexed by group; 0 is "no group".
  std::vector<int> group_running_{0};
  std::vector<int> group_queued_{0};
  const size_t max_queue_;
  size_t held_[kPriorities] = {};  // Places held (HoldPlace), by priority.
  size_t held_total_ = 0;
  uint64_t next_seq_ = 0;
  uint64_t admissions_ = 0;
  Queue queues_[kPriorities];
  absl::flat_hash_map<Id, Position> index_;
  std::set<std::pair<absl::Time, Id>> expiries_;  // Finite expiries only.
  // Tenants with running or queued entries (and idle ones, up to a bound); stable nodes,
  // which entries and keys point to.
  absl::node_hash_map<std::string, Tenant> tenants_;
  std::set<TenantKey> waiting_[kPriorities];  // Tenants with entries queued at a priority.
  absl::flat_hash_map<std::string, int> shares_;
  int default_share_ = 1;
};

}  // namespace execd::core
