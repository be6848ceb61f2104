#include "core/pool_set.h"

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/notification.h"

namespace execd::core {

PoolSet::PoolSet(EventLoop& loop, const std::vector<PoolSpec>& specs, const Pool::Deps& deps)
    : loop_(loop) {
  absl::MutexLock lock(&specs_mu_);
  for (size_t i = 0; i < specs.size(); ++i) {
    auto spec = std::make_shared<const PoolSpec>(specs[i]);
    index_[spec->name] = static_cast<int>(i);
    specs_.push_back(spec);
    pools_.push_back(std::make_unique<Pool>(spec, deps));
  }
  loop_.Post([this]() mutable {
    for (auto& pool : pools_) pool->Start();
  });
}

PoolSet::~PoolSet() {
  // Idle workers die with their pools, on the loop that watches them.
  absl::Notification gone;
  loop_.Post([this, &gone]() mutable {
    pools_.clear();
    gone.Notify();
  });
  gone.WaitForNotification();
}

int PoolSet::IndexOf(absl::string_view name) const {
  auto it = index_.find(name);
  return it == index_.end() ? -1 : it->second;
}

std::shared_ptr<const PoolSpec> PoolSet::Find(absl::string_view name) const {
  const int index = IndexOf(name);
  if (index < 0) return nullptr;
  absl::MutexLock lock(&specs_mu_);
  return specs_[index];
}

std::vector<std::string> PoolSet::Names() const {
  std::vector<std::string> names;
  absl::MutexLock lock(&specs_mu_);
  for (const auto& spec : specs_) names.push_back(spec->name);
  return names;
}

absl::StatusOr<std::vector<std::pair<int, std::shared_ptr<const PoolSpec>>>> PoolSet::Update(
    std::vector<PoolSpec> specs) {
  std::vector<std::string> added, removed;
  absl::flat_hash_set<std::string> names;
  for (const PoolSpec& p : specs) {
    names.insert(p.name);
    if (!index_.contains(p.name)) added.push_back(p.name);
  }
  for (const auto& [name, index] : index_) {
    if (!names.contains(name)) removed.push_back(name);
  }
  if (!added.empty() || !removed.empty()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "a reload can change pools but not add or remove them (added: ",
        added.empty() ? "none" : absl::StrJoin(added, ", "), "; removed: ",
        removed.empty() ? "none" : absl::StrJoin(removed, ", "), "); restart execd for that"));
  }
  // Requests were checked against, and wait in, a pool of its kind.
  for (const PoolSpec& p : specs) {
    std::shared_ptr<const PoolSpec> now = Find(p.name);
    if (now->kind != p.kind) {
      return absl::FailedPreconditionError(absl::StrCat(
          "a reload cannot change the kind of pool \"", p.name, "\" (", PoolKindName(now->kind),
          " to ", PoolKindName(p.kind), "); restart execd for that"));
    }
  }
  std::vector<std::pair<int, std::shared_ptr<const PoolSpec>>> changed;
  for (PoolSpec& p : specs) {
    const int index = index_.at(p.name);
    auto spec = std::make_shared<const PoolSpec>(std::move(p));
    {
      absl::MutexLock lock(&specs_mu_);
      if (specs_[index]->fingerprint == spec->fingerprint) continue;
      specs_[index] = spec;
    }
    changed.emplace_back(index, std::move(spec));
  }
  // Once this returns, the pools' stats show the new generations.
  absl::Notification reconfigured;
  loop_.Post([this, &changed, &reconfigured]() mutable {
    for (const auto& [index, spec] : changed) pools_[index]->Reconfigure(spec);
    reconfigured.Notify();
  });
  reconfigured.WaitForNotification();
  return changed;
}

std::vector<PoolStatus> PoolSet::Statuses() const {
  std::vector<PoolStatus> out;
  absl::MutexLock lock(&specs_mu_);
  for (size_t i = 0; i < specs_.size(); ++i) {
    out.push_back(PoolStatus{specs_[i]->name, specs_[i]->kind, pools_[i]->stats()});
  }
  return out;
}

}  // namespace execd::core
