#include "core/scheduler.h"

#include <algorithm>

namespace execd::core {
namespace {

// Idle tenants are remembered (saving an allocation per request of a returning caller)
// until there are this many tenants; past it, each is forgotten as it goes idle.
constexpr size_t kMaxRememberedTenants = 1024;

}  // namespace

Scheduler::Scheduler(int limit, size_t max_queue)
    : limit_(std::max(1, limit)), max_queue_(max_queue) {}

Scheduler::Admission Scheduler::Submit(Id id, int priority, absl::Time expiry, int group,
                                       absl::string_view tenant_name) {
  priority = std::clamp(priority, 0, kPriorities - 1);
  if (group < 0 || group >= static_cast<int>(group_limits_.size())) group = 0;
  Admission admission;
  // A newcomer never overtakes a queued entry that could run now; entries held back only
  // by their full group do not hold it back.
  if (running_ < limit_ && GroupFree(group) && !AnyRunnableQueued()) {
    Admit(TenantNamed(tenant_name), group);
    admission.kind = Admission::Kind::kRunNow;
    return admission;
  }
  if (queued() >= max_queue_) {
    admission.displaced = Victim(priority, tenant_name, &admission.for_fairness);
    if (!admission.displaced.has_value()) return admission;  // kRejected.
    Erase(*admission.displaced);
  }
  Enqueue(id, priority, expiry, group, TenantNamed(tenant_name));
  admission.kind = Admission::Kind::kQueued;
  return admission;
}

std::optional<Scheduler::Id> Scheduler::Victim(int priority, absl::string_view tenant_name,
                                               bool* for_fairness) const {
  // The newest entry of the lowest priority below this one, if there is one.
  for (int p = 0; p < priority; ++p) {
    if (!queues_[p].empty()) return queues_[p].back().id;
  }
  // Else the newest of this priority's tenant with the most queued for its share (m / s),
  // if that is more than the newcomer's tenant would have (n / t): m * t > n * s.
  auto it = tenants_.find(tenant_name);
  const Tenant* newcomer = it == tenants_.end() ? nullptr : &it->second;
  const int64_t n = newcomer == nullptr ? 1 : newcomer->waiting[priority].size() + 1;
  const int64_t t = newcomer == nullptr ? ShareOf(tenant_name) : newcomer->share;
  const Tenant* most = nullptr;
  for (const TenantKey& key : waiting_[priority]) {
    const Tenant* other = key.tenant;
    if (other == newcomer) continue;
    const int64_t m = other->waiting[priority].size();
    if (m * t <= n * other->share) continue;
    if (most == nullptr ||
        m * most->share > static_cast<int64_t>(most->waiting[priority].size()) * other->share) {
      most = other;
    }
  }
  if (most == nullptr) return std::nullopt;
  *for_fairness = true;
  return most->waiting[priority].back()->id;
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

int Scheduler::ShareOf(absl::string_view name) const {
  auto it = shares_.find(name);
  return it == shares_.end() ? default_share_ : it->second;
}

Scheduler::Tenant& Scheduler::TenantNamed(absl::string_view name) {
  auto it = tenants_.find(name);
  if (it != tenants_.end()) return it->second;
  Tenant& tenant = tenants_[name];
  tenant.name = std::string(name);
  tenant.share = ShareOf(name);
  return tenant;
}

Scheduler::TenantKey Scheduler::KeyOf(Tenant& tenant, int priority) {
  return TenantKey{tenant.running, tenant.share, tenant.last_admitted,
                   tenant.waiting[priority].front()->seq, &tenant};
}

void Scheduler::Unlist(Tenant& tenant, int priority) {
  if (!tenant.waiting[priority].empty()) waiting_[priority].erase(KeyOf(tenant, priority));
}

void Scheduler::Relist(Tenant& tenant, int priority) {
  if (!tenant.waiting[priority].empty()) waiting_[priority].insert(KeyOf(tenant, priority));
}

void Scheduler::MaybeForget(Tenant& tenant) {
  if (tenant.running > 0 || tenant.queued > 0 || tenants_.size() <= kMaxRememberedTenants) return;
  tenants_.erase(tenants_.find(tenant.name));
}

void Scheduler::Admit(Tenant& tenant, int group) {
  for (int p = 0; p < kPriorities; ++p) Unlist(tenant, p);
  ++tenant.running;
  tenant.last_admitted = ++admissions_;
  for (int p = 0; p < kPriorities; ++p) Relist(tenant, p);
  ++running_;
  ++group_running_[group];
}

void Scheduler::Enqueue(Id id, int priority, absl::Time expiry, int group, Tenant& tenant) {
  Queue& queue = queues_[priority];
  queue.push_back(Entry{id, expiry, group, next_seq_++, &tenant});
  Unlist(tenant, priority);
  tenant.waiting[priority].push_back(std::prev(queue.end()));
  Relist(tenant, priority);
  ++tenant.queued;
  ++group_queued_[group];
  index_[id] =
      Position{priority, std::prev(queue.end()), std::prev(tenant.waiting[priority].end())};
  if (expiry != absl::InfiniteFuture()) expiries_.emplace(expiry, id);
}

void Scheduler::Erase(Id id) {
  auto it = index_.find(id);
  if (it == index_.end()) return;
  const Position pos = it->second;
  const Entry& entry = *pos.it;
  Tenant& tenant = *entry.tenant;
  if (entry.expiry != absl::InfiniteFuture()) expiries_.erase({entry.expiry, id});
  --group_queued_[entry.group];
  Unlist(tenant, pos.priority);
  tenant.waiting[pos.priority].erase(pos.mine);
  Relist(tenant, pos.priority);
  --tenant.queued;
  queues_[pos.priority].erase(pos.it);
  index_.erase(it);
  MaybeForget(tenant);
}

bool Scheduler::AnyRunnableQueued() const {
  for (size_t g = 0; g < group_queued_.size(); ++g) {
    if (group_queued_[g] > 0 && GroupFree(static_cast<int>(g))) return true;
  }
  return false;
}

void Scheduler::Release(int group, absl::string_view tenant_name) {
  if (running_ > 0) --running_;
  if (group > 0 && group < static_cast<int>(group_running_.size()) && group_running_[group] > 0) {
    --group_running_[group];
  }
  auto it = tenants_.find(tenant_name);
  if (it == tenants_.end() || it->second.running == 0) return;
  Tenant& tenant = it->second;
  for (int p = 0; p < kPriorities; ++p) Unlist(tenant, p);
  --tenant.running;
  for (int p = 0; p < kPriorities; ++p) Relist(tenant, p);
  MaybeForget(tenant);
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

void Scheduler::SetShares(absl::flat_hash_map<std::string, int> shares, int default_share) {
  shares_ = std::move(shares);
  for (auto& [name, share] : shares_) share = std::max(1, share);
  default_share_ = std::max(1, default_share);
  for (auto& [name, tenant] : tenants_) {
    for (int p = 0; p < kPriorities; ++p) Unlist(tenant, p);
    tenant.share = ShareOf(name);
    for (int p = 0; p < kPriorities; ++p) Relist(tenant, p);
  }
}

int Scheduler::running(absl::string_view tenant) const {
  auto it = tenants_.find(tenant);
  return it == tenants_.end() ? 0 : it->second.running;
}

std::vector<Scheduler::Id> Scheduler::TakeRunnable() {
  std::vector<Id> out;
  for (int p = kPriorities - 1; p >= 0 && running_ < limit_; --p) {
    while (running_ < limit_) {
      // The first tenant in fair order with an entry whose group has room; entries of a
      // full group are passed over, not waited behind.
      const Entry* next = nullptr;
      for (const TenantKey& key : waiting_[p]) {
        for (Queue::iterator it : key.tenant->waiting[p]) {
          if (GroupFree(it->group)) {
            next = &*it;
            break;
          }
        }
        if (next != nullptr) break;
      }
      if (next == nullptr) break;
      const Id id = next->id;
      const int group = next->group;
      // Counted as running before it leaves the queue, so its tenant is not forgotten.
      Admit(*next->tenant, group);
      Erase(id);
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
