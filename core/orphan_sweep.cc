#include "core/orphan_sweep.h"

#include <algorithm>
#include <utility>

namespace execd::core {

void OrphanSweeper::Track(const std::vector<pid_t>& pids) {
  absl::MutexLock lock(&tracked_mu_);
  tracked_.insert(pids.begin(), pids.end());
}

void OrphanSweeper::Untrack(const std::vector<pid_t>& pids) {
  absl::MutexLock lock(&tracked_mu_);
  for (pid_t pid : pids) tracked_.erase(pid);
}

bool OrphanSweeper::Tracks(pid_t pid) const {
  absl::MutexLock lock(&tracked_mu_);
  return tracked_.contains(pid);
}

std::vector<pid_t> OrphanSweeper::Tracked() const {
  absl::MutexLock lock(&tracked_mu_);
  return std::vector<pid_t>(tracked_.begin(), tracked_.end());
}

bool OrphanSweeper::Sweep() {
  if (!containment_.sweeps_orphans()) return true;
  Containment::OrphanSweep sweep;
  {
    absl::WriterMutexLock gate(&spawn_gate_);
    absl::flat_hash_set<pid_t> tracked;
    {
      absl::MutexLock lock(&tracked_mu_);
      tracked = tracked_;
    }
    sweep = containment_.SweepOrphans(tracked);
  }
  const bool retry = sweep.retry;
  if (retry || !sweep.dying.empty()) {
    loop_.RunOnLoop([this, sweep = std::move(sweep)]() mutable { Await(std::move(sweep)); });
  }
  return !retry;
}

void OrphanSweeper::Stop() {
  EXECD_DCHECK_LOOP(loop_);
  stopped_ = true;
  if (timer_ != 0) loop_.CancelTimer(timer_);
  timer_ = 0;
}

void OrphanSweeper::Await(Containment::OrphanSweep sweep) {
  EXECD_DCHECK_LOOP(loop_);
  // Stopped: the orphans were killed, and what is not reaped by then goes to init when
  // execd exits.
  if (stopped_) return;
  for (UniqueFd& pidfd : sweep.dying) {
    // Reaped once it dies, and what it left is swept then, from the loop.
    reaper_.Adopt(std::move(pidfd), [this]() { ArmTimer(absl::ZeroDuration()); });
  }
  if (sweep.retry) {
    ArmTimer(retry_);
    retry_ = std::min(retry_ * 2, absl::Seconds(1));
  }
}

void OrphanSweeper::ArmTimer(absl::Duration after) {
  EXECD_DCHECK_LOOP(loop_);
  if (stopped_) return;
  const absl::Time when = loop_.clock().Now() + after;
  if (timer_ != 0) {
    if (timer_at_ <= when) return;
    loop_.CancelTimer(timer_);
  }
  timer_at_ = when;
  timer_ = loop_.AddTimer(when, [this]() mutable {
    timer_ = 0;
    if (Sweep()) retry_ = kFirstRetry;
  });
}

}  // namespace execd::core
