#include "core/scheduler.h"

#include <algorithm>

namespace execd::core {

Scheduler::Scheduler(int limit, size_t max_queue)
    : limit_(std::max(1, limit)), max_queue_(max_queue) {}

Scheduler::Admission Scheduler::Submit(Id id, int priority, absl::Time expiry) {
  priority = std::clamp(priority, 0, kPriorities - 1);
  Admission admission;
  if (running_ < limit_ && index_.empty()) {
    ++running_;
    admission.kind = Admission::Kind::kRunNow;
    return admission;
  }
  if (index_.size() >= max_queue_) {
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
  Enqueue(id, priority, expiry);
  admission.kind = Admission::Kind::kQueued;
  return admission;
}

void Scheduler::Enqueue(Id id, int priority, absl::Time expiry) {
  std::list<Entry>& queue = queues_[priority];
  queue.push_back(Entry{id, expiry});
  index_[id] = Position{priority, std::prev(queue.end())};
  if (expiry != absl::InfiniteFuture()) expiries_.emplace(expiry, id);
}

void Scheduler::Erase(Id id) {
  auto it = index_.find(id);
  if (it == index_.end()) return;
  const Entry& entry = *it->second.it;
  if (entry.expiry != absl::InfiniteFuture()) expiries_.erase({entry.expiry, id});
  queues_[it->second.priority].erase(it->second.it);
  index_.erase(it);
}

void Scheduler::Release() {
  if (running_ > 0) --running_;
}

std::vector<Scheduler::Id> Scheduler::TakeRunnable() {
  std::vector<Id> out;
  for (int p = kPriorities - 1; p >= 0 && running_ < limit_; --p) {
    while (!queues_[p].empty() && running_ < limit_) {
      Id id = queues_[p].front().id;
      Erase(id);
      ++running_;
      out.push_back(id);
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
