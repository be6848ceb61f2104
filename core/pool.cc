#include "core/pool.h"

#include <algorithm>
#include <utility>

namespace execd::core {

absl::string_view PoolKindName(PoolSpec::Kind kind) {
  return kind == PoolSpec::Kind::kPrewarmed ? "PREWARMED" : "PERSISTENT";
}

Pool::Pool(std::shared_ptr<const PoolSpec> spec, Deps deps)
    : spec_(std::move(spec)), deps_(std::move(deps)) {}

Pool::~Pool() {
  EXECD_DCHECK_LOOP(*deps_.loop);
  destroying_ = true;
  *alive_ = false;
  if (shrink_timer_ != 0) deps_.loop->CancelTimer(shrink_timer_);
  for (const Dying& d : dying_) deps_.loop->CancelTimer(d.timer);
  // Killed, and untracked once reaped (see DestroyThenUntrack); workers untrack themselves.
  for (Idle& idle : idle_) {
    if (idle.process != nullptr) DestroyThenUntrack(std::move(idle.process), deps_.untrack);
  }
  idle_.clear();
  for (WarmingUp& w : warming_) {
    deps_.loop->CancelTimer(w.startup_timer);
    DestroyThenUntrack(std::move(w.process), deps_.untrack);
  }
  warming_.clear();
  busy_.clear();
  starting_.clear();
}

void Pool::Start() {
  EXECD_DCHECK_LOOP(*deps_.loop);
  const PublishOnExit publish(*this);
  identity_ = FileIdentity::Of(spec_->command.executable);
  Refill();
  ArmShrink();
}

int Pool::Preparing() const {
  return static_cast<int>(starting_.size() + warming_.size()) + spawning_;
}

int Pool::Total() const {
  return static_cast<int>(idle_.size() + busy_.size() + dying_.size()) + Preparing() +
         prewarmed_busy_;
}

PoolStats Pool::stats() const {
  absl::MutexLock lock(&published_mu_);
  return published_;
}

void Pool::Publish() {
  EXECD_DCHECK_LOOP(*deps_.loop);
  PoolStats s = counters_;
  s.idle = static_cast<int>(idle_.size());
  s.busy = static_cast<int>(busy_.size()) + prewarmed_busy_;
  s.starting = Preparing();
  s.generation = generation_;
  absl::MutexLock lock(&published_mu_);
  published_ = s;
}

void Pool::CheckIdentity() {
  const FileIdentity now = FileIdentity::Of(spec_->command.executable);
  if (now == identity_) return;
  // A new binary: nothing started from the old one serves another request.
  identity_ = now;
  RetireGeneration();
}

void Pool::Reconfigure(std::shared_ptr<const PoolSpec> spec) {
  EXECD_DCHECK_LOOP(*deps_.loop);
  const PublishOnExit publish(*this);
  spec_ = std::move(spec);
  identity_ = FileIdentity::Of(spec_->command.executable);
  RetireGeneration();
  Refill();
}

void Pool::RetireGeneration() {
  ++generation_;
  for (Idle& idle : idle_) {
    ++counters_.recycled;
    Destroy(std::move(idle));
  }
  idle_.clear();
  for (Starting& s : starting_) {
    ++counters_.recycled;
    Destroy(std::move(s.worker));
  }
  starting_.clear();
  for (WarmingUp& w : warming_) {
    ++counters_.recycled;
    deps_.loop->CancelTimer(w.startup_timer);
    Destroy(Idle{std::move(w.process), nullptr, {}, w.generation, 0});
  }
  warming_.clear();
  // Busy workers retire when they finish; spawns in flight are dropped when they land.
}

void Pool::Refill() {
  if (destroying_) return;
  const int want_ready = spec_->min_idle + burst_ + static_cast<int>(waiting_.size());
  int have = static_cast<int>(idle_.size()) + Preparing();
  // Refill while none of this pool's requests runs, unless it ran dry: a start-up costs
  // as much CPU as the cold start it saves, and spawned between requests it delays none.
  // Each process taken is replaced at once: the next request then gets one that has just
  // warmed up, and no batch of start-ups holds both CPUs when it comes. Unless the
  // spawns join a cgroup by writing cgroup.procs: that takes the kernel's cgroup
  // threadgroup lock for writing, which stalls every fork and exit on the machine for an
  // RCU grace period (~10 ms here) unless another write just happened. Those refill in
  // batches, from half empty, to share one stall. Release() and the shrink timer come
  // back here.
  const bool in_flight = !busy_.empty() || prewarmed_busy_ > 0;
  const int low_water = joined_by_write_ ? want_ready / 2 : want_ready - 1;
  if (waiting_.empty() && have > 0 && (have > low_water || in_flight)) return;
  while (have < want_ready && Total() < spec_->max_size) {
    StartOne();
    ++have;
  }
}

void Pool::Ready(Idle idle) {
  consecutive_start_failures_ = 0;
  if (consecutive_idle_deaths_ == 0) retry_after_ = absl::InfinitePast();
  if (!waiting_.empty()) {
    Waiting next = std::move(waiting_.front());
    waiting_.pop_front();
    Dispatch(next.request, std::move(next.call), std::move(idle));
    return;
  }
  idle.since = deps_.loop->clock().Now();
  idle_.push_back(std::move(idle));
}

void Pool::Dispatch(Request* request, Call call, Idle idle) {
  ++counters_.served;
  if (idle.process != nullptr) {
    ++prewarmed_busy_;
    Publish();
    request->OnProcess(std::move(idle.process));
    Refill();
    return;
  }
  PersistentWorker* w = idle.worker.get();
  const uint64_t id = next_request_id_++;
  const absl::Duration timeout = std::max(
      absl::Milliseconds(1), std::min(call.timeout, call.deadline - deps_.loop->clock().Now()));
  std::vector<std::string> arguments = std::move(call.arguments);
  std::string stdin_data = std::move(call.stdin_data);
  busy_.push_back(Busy{std::move(idle.worker), request, std::move(call), idle.generation,
                       idle.served, false, deps_.loop->clock().Now()});
  Publish();
  request->OnStarted(w->pid());
  // Last: a worker found dead here reports through OnWorkerFailed, which ends the request.
  w->Send(id, arguments, stdin_data, timeout);
}

void Pool::Acquire(Request* request, Call call) {
  EXECD_DCHECK_LOOP(*deps_.loop);
  const PublishOnExit publish(*this);
  CheckIdentity();
  // The most recent first, its caches warm (and, PERSISTENT, the surplus left to reach its
  // idle_timeout); but a PREWARMED process that cannot say when it is ready (no
  // exit_report) is idle from its spawn, and the oldest is the likeliest to have warmed up.
  const bool oldest_first = spec_->kind == PoolSpec::Kind::kPrewarmed && !spec_->exit_report;
  while (!idle_.empty()) {
    Idle idle = std::move(oldest_first ? idle_.front() : idle_.back());
    if (oldest_first) {
      idle_.pop_front();
    } else {
      idle_.pop_back();
    }
    if (idle.process != nullptr && !idle.process->Alive()) {
      ++counters_.crashed;
      Destroy(std::move(idle));
      continue;
    }
    Dispatch(request, std::move(call), std::move(idle));
    return;
  }
  // None idle: wait for one, and keep more ready next time (doubling up to max_size).
  ++counters_.misses;
  burst_ = std::min(spec_->max_size, burst_ == 0 ? 1 : burst_ * 2);
  last_miss_ = deps_.loop->clock().Now();
  waiting_.push_back(Waiting{request, std::move(call)});
  Refill();
}

bool Pool::Cancel(Request* request) {
  EXECD_DCHECK_LOOP(*deps_.loop);
  const PublishOnExit publish(*this);
  for (auto it = waiting_.begin(); it != waiting_.end(); ++it) {
    if (it->request == request) {
      waiting_.erase(it);
      return true;
    }
  }
  for (Busy& b : busy_) {
    if (b.request == request && !b.cancelled) {
      b.cancelled = true;
      b.worker->Cancel();
      break;
    }
  }
  return false;
}

void Pool::Release() {
  const PublishOnExit publish(*this);
  if (prewarmed_busy_ > 0) --prewarmed_busy_;
  Refill();
}

absl::AnyInvocable<void() &&> Pool::Releaser() {
  EXECD_DCHECK_LOOP(*deps_.loop);
  return [this, alive = alive_]() mutable {
    if (*alive) Release();
  };
}

void Pool::ArmShrink() {
  const absl::Duration period =
      std::clamp(spec_->idle_timeout / 4, absl::Milliseconds(20), absl::Seconds(5));
  shrink_timer_ = deps_.loop->AddTimer(deps_.loop->clock().Now() + period, [this]() mutable {
    shrink_timer_ = 0;
    Shrink();
    ArmShrink();
  });
}

void Pool::Shrink() {
  const PublishOnExit publish(*this);
  const absl::Time now = deps_.loop->clock().Now();
  // The burst reserve halves for each idle_timeout without a miss.
  if (burst_ > 0 && now - last_miss_ >= spec_->idle_timeout) {
    burst_ /= 2;
    last_miss_ = now;
  }
  // Pre-warmed processes that died while waiting are replaced.
  for (auto it = idle_.begin(); it != idle_.end();) {
    if (it->process != nullptr && !it->process->Alive()) {
      ++counters_.crashed;
      Destroy(std::move(*it));
      it = idle_.erase(it);
    } else {
      ++it;
    }
  }
  // The least recently used go first.
  while (static_cast<int>(idle_.size()) > spec_->min_idle + burst_ &&
         now - idle_.front().since >= spec_->idle_timeout) {
    ++counters_.recycled;
    Idle idle = std::move(idle_.front());
    idle_.pop_front();
    Destroy(std::move(idle));
  }
  // Backing off a pool whose workers keep failing: a request that comes still tries (and
  // gets the error), but nothing else does before its time.
  if (waiting_.empty() && now < retry_after_) return;
  Refill();
}

bool Pool::FailedInARow(int failures) {
  constexpr int kAtOnce = 3;  // Replaced at once: a worker that crashes now and then.
  if (failures <= kAtOnce) return false;
  // Then as a crash-looping container is restarted: 1 s, doubling, at most a minute.
  const absl::Duration delay = std::min(
      absl::Seconds(1) * (int64_t{1} << std::min(failures - kAtOnce - 1, 6)), absl::Minutes(1));
  retry_after_ = deps_.loop->clock().Now() + delay;
  return true;
}

}  // namespace execd::core
