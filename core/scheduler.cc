#include "core/scheduler.h"

#include <algorithm>

namespace execd::core {

Scheduler::Scheduler(int limit, size_t max_queue)
    : limit_(std::max(1, limit)), max_queue_(max_queue) {}

Scheduler::Admission Scheduler::Submit(Id id, int priority, absl::Time expiry, int group) {
  priority = std::clamp(priority, 0, kPriorities - 1);
  if (group < 0 || group >= static_cast<int>(group_limits_.size())) group = 0;
  Admission admission;
  // A newcomer never overtakes a queued entry that could run now; entries held back only
  // by their full group do not hold it back.
  if (running_ < limit_ && GroupFree(group) && !AnyRunnableQueued()) {
    ++running_;
    ++group_running_[group];
    admission.kind = Admission::Kind::kRunNow;
    return admission;
  }
  if (queued() >= max_queue_) {
    // Shed the newest entry of the lowest priority below this one, if there is one.
    int victim_priority = -1;
    for (int p = 0; p < priority; ++p) {
      if (!queues_[p].empty()) {
        victim_priority = p;
        break;
      }
    }
    if (victim_priority < 0) return admission;  // kRejected.
    admission.displaced = queues_[victim_priority].back().id;
    Erase(*admission.displaced);
  }
  Enqueue(id, priority, expiry, group);
  admission.kind = Admission::Kind::kQueued;
  return admission;
}

bool Scheduler::HoldPlace(int priority) {
  if (queued() >= max_queue_) return false;
  ++held_[priority];
  ++held_total_;
  return true;
}

void Scheduler::ReleasePlace(int priority) {
  if (held_[priority] == 0) return;
  --held_[priority];
  --held_total_;
}

void Scheduler::Enqueue(Id id, int priority, absl::Time expiry, int group) {
  std::list<Entry>& queue = queues_[priority];
  queue.push_back(Entry{id, expiry, group});
  ++group_queued_[group];
  index_[id] = Position{priority, std::prev(queue.end())};
  if (expiry != absl::InfiniteFuture()) expiries_.emplace(expiry, id);
}

void Scheduler::Erase(Id id) {
  auto it = index_.find(id);
  if (it == index_.end()) return;
  const Entry& entry = *it->second.it;
  if (entry.expiry != absl::InfiniteFuture()) expiries_.erase({entry.expiry, id});
  --group_queued_[entry.group];
  queues_[it->second.priority].erase(it->second.it);
  index_.erase(it);
}

bool Scheduler::AnyRunnableQueued() const {
  for (size_t g = 0; g < group_queued_.size(); ++g) {
    if (group_queued_[g] > 0 && GroupFree(static_cast<int>(g))) return true;
  }
  return false;
}

void Scheduler::Release(int group) {
  if (running_ > 0) --running_;
  if (group > 0 && group < static_cast<int>(group_running_.size()) && group_running_[group] > 0) {
    --group_running_[group];
  }
}

void Scheduler::SetGroupLimit(int group, int limit) {
  if (group <= 0) return;
  if (group >= static_cast<int>(group_limits_.size())) {
    group_limits_.resize(group + 1, 0);
    group_running_.resize(group + 1, 0);
    group_queued_.resize(group + 1, 0);
  }
  group_limits_[group] = std::max(1, limit);
}

std::vector<Scheduler::Id> Scheduler::TakeRunnable() {
  std::vector<Id> out;
  for (int p = kPriorities - 1; p >= 0 && running_ < limit_; --p) {
    // Entries of a full group are passed over, not waited behind.
    for (auto it = queues_[p].begin(); it != queues_[p].end() && running_ < limit_;) {
      const Entry entry = *it++;
      if (!GroupFree(entry.group)) continue;
      Erase(entry.id);
      ++running_;
      ++group_running_[entry.group];
      out.push_back(entry.id);
    }
  }
  return out;
}

bool Scheduler::Remove(Id id) {
  if (!index_.contains(id)) return false;
  Erase(id);
  return true;
}

std::vector<Scheduler::Id> Scheduler::TakeExpired(absl::Time now) {
  std::vector<Id> out;
  while (!expiries_.empty() && expiries_.begin()->first <= now) {
    Id id = expiries_.begin()->second;
    Erase(id);
    out.push_back(id);
  }
  return out;
}

absl::Time Scheduler::NextExpiry() const {
  return expiries_.empty() ? absl::InfiniteFuture() : expiries_.begin()->first;
}

std::vector<Scheduler::Id> Scheduler::TakeAllQueued() {
  std::vector<Id> out;
  for (int p = kPriorities - 1; p >= 0; --p) {
    for (const Entry& e : queues_[p]) out.push_back(e.id);
  }
  for (Id id : out) Erase(id);
  return out;
}

void Scheduler::SetLimit(int limit) { limit_ = std::max(1, limit); }

}  // namespace execd::core
