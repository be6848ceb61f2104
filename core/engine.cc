#include "core/engine.h"

#include <pthread.h>
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <deque>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/notification.h"
#include "core/errno_status.h"
#include "core/execution.h"
#include "core/kernel_files.h"
#include "core/status_macros.h"

namespace execd::core {

absl::StatusOr<std::unique_ptr<Engine>> Engine::Create(const Options& options) {
  if (options.max_concurrency < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_concurrency must be at least 1, got ", options.max_concurrency));
  }
  EnsureStandardDescriptorsOpen();
  DetachControllingTerminal();
  RaiseDescriptorLimit();
  auto containment = Containment::Create(options.containment);
  if (!containment.ok()) return containment.status();
  auto loop = EventLoop::Start(*options.clock);
  if (!loop.ok()) return loop.status();
  return std::unique_ptr<Engine>(new Engine(options, *std::move(loop), *std::move(containment)));
}

Engine::Engine(const Options& options, std::unique_ptr<EventLoop> loop,
               std::unique_ptr<Containment> containment)
    : options_(options),
      loop_(std::move(loop)),
      containment_(std::move(containment)),
      scheduler_(options.max_concurrency, options.max_queue),
      spawn_threads_(std::make_unique<SpawnThreads>(options.spawn_threads)) {
  Pool::Deps deps;
  deps.loop = loop_.get();
  deps.os = options_.os;
  deps.containment = containment_.get();
  deps.kill_grace = options_.kill_grace;
  deps.empty_wait = options_.empty_wait;
  deps.run_blocking = [this](absl::AnyInvocable<void() &&> task) {
    spawn_threads_->Submit([this, task = std::move(task)]() mutable {
      OrphanSweeper::SpawnGuard guard(*orphans_);  // Not swept for an orphan mid-spawn.
      std::move(task)();
    });
  };
  deps.track = [this](pid_t pid) { orphans_->Track({pid}); };
  deps.untrack = [this](pid_t pid) { orphans_->Untrack({pid}); };
  reaper_ = std::make_unique<Reaper>(*loop_);
  orphans_ = std::make_unique<OrphanSweeper>(*loop_, *containment_, *reaper_);
  reap_later_ = [this](UniqueFd pidfd, absl::AnyInvocable<void() &&> reaped) {
    ReapLater(std::move(pidfd), std::move(reaped));
  };
  deps.reap_later = reap_later_;
  pools_ = std::make_unique<PoolSet>(*loop_, options_.pools, deps);
  absl::MutexLock lock(&mu_);
  for (int i = 0; i < pools_->size(); ++i) {
    scheduler_.SetGroupLimit(i + 1, options_.pools[i].max_size);
  }
}

std::shared_ptr<const PoolSpec> Engine::FindPool(absl::string_view name) const {
  return pools_->Find(name);
}

std::vector<std::string> Engine::PoolNames() const { return pools_->Names(); }

absl::StatusOr<std::vector<std::string>> Engine::ReloadPools(std::vector<PoolSpec> pools) {
  ASSIGN_OR_RETURN(auto changed, pools_->Update(std::move(pools)));
  std::vector<std::string> names;
  absl::MutexLock lock(&mu_);
  for (const auto& [index, spec] : changed) {
    scheduler_.SetGroupLimit(index + 1, spec->max_size);
    names.push_back(spec->name);
  }
  StartRunnableLocked();  // A larger max_size may let queued requests start.
  return names;
}

std::vector<PoolStatus> Engine::PoolStatuses() const { return pools_->Statuses(); }

void Engine::AwaitLoop() {
  absl::Notification ran;
  loop_->Post([&ran]() mutable { ran.Notify(); });
  ran.WaitForNotification();
}

Engine::~Engine() {
  Shutdown(absl::ZeroDuration());
  pools_.reset();
  spawn_threads_.reset();  // Before the loop they post to goes away.
  // Workers' deferred destructions were posted to the loop; run them before it stops. No
  // orphan sweep is left armed to run on a half-destroyed engine.
  absl::Notification flushed;
  loop_->Post([this, &flushed]() mutable {
    orphans_->Stop();
    // Killed pool processes still dying get a moment to be reaped; only those stuck in the
    // kernel are left (to init, when execd exits). On the loop, which it unwatches from.
    reaper_->Drain(absl::Milliseconds(500));
    reaper_.reset();
    flushed.Notify();
  });
  flushed.WaitForNotification();
}

absl::Status Engine::CheckEnforceable(const Command& command) const {
  if (command.limits.max_processes > 0 && !containment_->limits_processes()) {
    return absl::FailedPreconditionError(
        "limits.max_processes cannot be enforced on this server (no pids cgroup); leave it "
        "unset or run execd where it can create cgroups");
  }
  return absl::OkStatus();
}

absl::Status Engine::Draining() const {
  options_.metrics->Shed(ShedReason::kDraining);
  return absl::UnavailableError("the server is shutting down; retry on another replica");
}

absl::Status Engine::Overloaded() const {
  options_.metrics->Shed(ShedReason::kQueueFull);
  // The time for the queue ahead to drain, roughly: how long a retry should wait.
  absl::Duration wait = mean_run_ * static_cast<double>(scheduler_.queued() + 1) /
                        static_cast<double>(scheduler_.limit());
  int64_t ms = std::clamp<int64_t>(absl::ToInt64Milliseconds(wait), 10, 60'000);
  return OverloadedError(
      absl::StrCat("the server is at capacity: ", scheduler_.running(), " commands running and ",
                   scheduler_.queued(), " queued (the queue limit); retry after ", ms, " ms"),
      ms);
}

absl::StatusOr<std::shared_ptr<Engine::Execution>> Engine::Submit(Command command,
                                                                  Observer* observer) {
  if (absl::Status s = CheckEnforceable(command); !s.ok()) return s;
  if (command.keep_stdin_open && !command.pool.empty()) {
    return absl::InvalidArgumentError(
        "an interactive session cannot run in a worker pool; leave pool unset");
  }
  const absl::Time now = options_.clock->Now();
  if (command.deadline <= now) {
    return absl::DeadlineExceededError("the call's deadline had passed before it was queued");
  }
  absl::Time expiry = std::min(command.deadline, now + command.max_queue_time);
  int priority = command.priority;
  std::shared_ptr<Execution> displaced;
  bool displaced_for_fairness = false;
  std::shared_ptr<Execution> execution;
  bool start_now = false;
  {
    absl::MutexLock lock(&mu_);
    if (draining_) return Draining();
    Id id = next_id_++;
    int group = 0;
    if (!command.pool.empty()) {
      const int index = pools_->IndexOf(command.pool);
      if (index < 0) {
        return absl::NotFoundError(absl::StrCat("no worker pool named \"", command.pool, "\""));
      }
      group = index + 1;
    }
    Scheduler::Admission admission = scheduler_.Submit(id, priority, expiry, group, command.caller);
    if (admission.kind == Scheduler::Admission::Kind::kRejected) return Overloaded();
    execution = std::make_shared<Execution>(*this, id, std::move(command), observer, group,
                                            group > 0 ? pools_->at(group - 1) : nullptr, now);
    live_.emplace(id, execution);
    if (admission.kind == Scheduler::Admission::Kind::kRunNow) {
      execution->set_state(Execution::State::kAdmitted);
      start_now = true;
    } else {
      ArmExpiryLocked();
    }
    if (admission.displaced.has_value()) {
      displaced_for_fairness = admission.for_fairness;
      auto it = live_.find(*admission.displaced);
      displaced = std::move(it->second);
      live_.erase(it);
      displaced->set_state(Execution::State::kDone);
    }
  }
  if (displaced != nullptr) {
    options_.metrics->Shed(ShedReason::kDisplaced);
    displaced->observer().OnFinished(absl::ResourceExhaustedError(
        displaced_for_fairness
            ? "shed from a full queue for another caller's request: this caller had the most "
              "queued; retry later"
            : "shed from a full queue for a higher-priority request; retry later"));
  }
  if (start_now) {
    // A fresh spawn goes from this thread straight to a spawn thread: the loop has nothing
    // to do for it until the child exists, and every hand-off is a wake-up.
    if (execution->pool() == nullptr) {
      StartFresh(execution);
    } else {
      execution->CountHandoff();
      loop_->Post([this, e = execution]() mutable { StartOnLoop(std::move(e)); });
    }
  }
  return execution;
}

void Engine::ArmExpiryLocked() {
  absl::Time next = scheduler_.NextExpiry();
  if (next >= armed_expiry_) return;  // The armed timer fires first and re-arms.
  armed_expiry_ = next;
  loop_->Post([this, next]() mutable {
    if (expiry_timer_ != 0) loop_->CancelTimer(expiry_timer_);
    expiry_timer_ = loop_->AddTimer(next, [this]() mutable {
      expiry_timer_ = 0;
      ExpireQueued();
    });
  });
}

void Engine::ExpireQueued() {
  std::vector<std::shared_ptr<Execution>> expired;
  {
    absl::MutexLock lock(&mu_);
    armed_expiry_ = absl::InfiniteFuture();
    for (Id id : scheduler_.TakeExpired(options_.clock->Now())) {
      auto it = live_.find(id);
      it->second->set_state(Execution::State::kDone);
      expired.push_back(std::move(it->second));
      live_.erase(it);
    }
    ArmExpiryLocked();
  }
  for (auto& e : expired) {
    options_.metrics->Shed(ShedReason::kQueueTimeout);
    absl::Duration waited = options_.clock->Now() - e->submitted();
    bool by_deadline = e->command().deadline <= options_.clock->Now();
    e->observer().OnFinished(absl::DeadlineExceededError(absl::StrCat(
        "dropped after ", absl::FormatDuration(absl::Trunc(waited, absl::Milliseconds(1))),
        " in the queue: ",
        by_deadline ? "the call's deadline passed"
                    : absl::StrCat("max_queue_time ",
                                   absl::FormatDuration(e->command().max_queue_time), " passed"),
        " before a slot was free")));
  }
}

void Engine::StartOnLoop(std::shared_ptr<Execution> execution) {
  EXECD_DCHECK_LOOP(*loop_);
  if (execution->cancel_requested()) {
    Finish(*execution, absl::CancelledError("cancelled before the command started"));
    return;
  }
  if (execution->pool() == nullptr) {
    StartFresh(std::move(execution));
    return;
  }
  std::optional<ChildProcess::Options> options = Admit(*execution);
  if (options.has_value()) execution->EnterPool(*std::move(options));
}

void Engine::StartFresh(std::shared_ptr<Execution> execution) {
  std::optional<ChildProcess::Options> options = Admit(*execution);
  if (!options.has_value()) return;
  execution->CountHandoff();
  spawn_threads_->Submit([this, execution = std::move(execution), options]() mutable {
    Spawn(std::move(execution), *std::move(options));
  });
}

std::optional<ChildProcess::Options> Engine::Admit(Execution& e) {
  const absl::Time now = options_.clock->Now();
  e.MarkAdmitted(now);
  const Command& command = e.command();
  absl::Duration left = command.deadline - now;
  if (left <= absl::ZeroDuration()) {
    Finish(e, absl::DeadlineExceededError("the call's deadline passed before the command started"));
    return std::nullopt;
  }
  ChildProcess::Options child_options;
  child_options.timeout = std::min(command.limits.timeout, left);
  child_options.deadline = command.deadline;
  child_options.kill_grace = options_.kill_grace;
  child_options.empty_wait = options_.empty_wait;
  child_options.stream_chunk_bytes = command.stream_chunk_bytes;
  child_options.memfd_stdin_bytes = options_.memfd_stdin_bytes;
  child_options.stream_flush_interval = command.stream_flush_interval;
  child_options.stdin_pipe = command.keep_stdin_open;
  child_options.reap_later = reap_later_;
  if (!containment_->limits_memory()) {
    child_options.address_space_bytes = command.limits.memory_bytes;
  }
  return child_options;
}

void Engine::Spawn(std::shared_ptr<Execution> execution, ChildProcess::Options options) {
  Execution& e = *execution;
  absl::StatusOr<std::unique_ptr<ChildProcess>> child;
  {
    OrphanSweeper::SpawnGuard guard(*orphans_);
    child = e.SpawnChild(options);
    if (child.ok()) orphans_->Track((*child)->pids());
  }
  // A pipeline whose later program failed to spawn has had its earlier ones killed and
  // reaped; what they started outside their process groups came to execd meanwhile.
  if (!child.ok()) {
    orphans_->Sweep();
    options_.metrics->SpawnFailed(ErrnoOf(child.status()));
  }
  e.MarkSpawned(options_.clock->Now());
  e.CountHandoff();
  loop_->Post([this, execution = std::move(execution), child = std::move(child)]() mutable {
    if (child.ok()) {
      execution->Run(*std::move(child));
    } else {
      Finish(*execution, child.status());
    }
  });
}

void Engine::ReapLater(UniqueFd pidfd, absl::AnyInvocable<void() &&> reaped) {
  // Off the loop: a spawn thread's, for a pipeline that failed to start.
  loop_->RunOnLoop([this, pidfd = std::move(pidfd), reaped = std::move(reaped)]() mutable {
    if (reaper_ != nullptr) {
      reaper_->Adopt(std::move(pidfd), std::move(reaped));
    } else {
      std::move(reaped)();  // The engine is going away: no more sweeps to keep off it.
    }
  });
}

bool Engine::Tracks(pid_t pid) const { return orphans_->Tracks(pid); }

int64_t Engine::CommandsMemoryBytes() const {
  if (std::optional<int64_t> all = containment_->CommandsMemoryBytes()) return *all;
  // Not the commands' cgroups' member lists: reading cgroup.procs contends with the clone3
  // of every spawn for the kernel's cgroup locks (measured: 4% of Execute throughput when
  // scraped once a second).
  int64_t bytes = 0;
  for (pid_t pid : orphans_->Tracked()) bytes += ResidentBytes(pid);
  return bytes;
}

void Engine::Finish(Execution& execution, absl::StatusOr<Result> result) {
  std::shared_ptr<Execution> keep;
  {
    absl::MutexLock lock(&mu_);
    auto it = live_.find(execution.id());
    if (it == live_.end()) return;
    keep = std::move(it->second);
    live_.erase(it);
    if (execution.has_child()) ++finishing_;
    bool was_admitted = execution.state() == Execution::State::kAdmitted;
    execution.set_state(Execution::State::kDone);
    if (was_admitted) {
      if (result.ok()) {
        mean_run_ = (mean_run_ * 7 + result->run) / 8;
        options_.metrics->CommandEnded(*result);
      }
      scheduler_.Release(execution.group(), execution.command().caller);
      StartRunnableLocked();
    }
  }
  if (!execution.has_child()) {
    execution.observer().OnFinished(std::move(result));
    return;
  }
  // The child is destroyed outside its own callback, and before the caller hears the
  // result: by then its descriptors are closed and its cgroup is gone (or, for a command
  // whose processes could not all die, or one answered from its exit report, left to be
  // removed once they have).
  loop_->Post([this, keep = std::move(keep), result = std::move(result)]() mutable {
    keep->DestroyChild();
    keep->observer().OnFinished(std::move(result));
    absl::MutexLock lock(&mu_);
    --finishing_;
  });
}

void Engine::StartRunnableLocked() {
  for (Id id : scheduler_.TakeRunnable()) {
    std::shared_ptr<Execution> next = live_.at(id);
    next->set_state(Execution::State::kAdmitted);
    next->CountHandoff();
    loop_->Post([this, next = std::move(next)]() mutable { StartOnLoop(std::move(next)); });
  }
}

void Engine::Cancel(const std::shared_ptr<Execution>& execution) {
  bool draining;
  {
    absl::MutexLock lock(&mu_);
    draining = draining_;
    if (execution->state() == Execution::State::kDone) return;
    if (execution->state() == Execution::State::kAdmitted) {
      loop_->Post([execution]() mutable { execution->CancelOnLoop(); });
      return;
    }
    scheduler_.Remove(execution->id());
  }
  if (draining) options_.metrics->Shed(ShedReason::kDraining);
  Finish(*execution,
         absl::CancelledError(draining ? "the server is shutting down" : "cancelled while queued"));
}

void Engine::SetOutputPaused(const std::shared_ptr<Execution>& execution, bool paused) {
  // The latest wish wins whatever order the tasks run in; on the loop thread (a reader
  // falling behind while output is handed on) it takes effect before the next chunk.
  execution->set_output_paused(paused);
  loop_->RunOnLoop([execution]() mutable { execution->ApplyOutputPaused(); });
}

void Engine::WriteStdin(const std::shared_ptr<Execution>& execution, std::string data) {
  loop_->Post(
      [execution, data = std::move(data)]() mutable { execution->WriteStdin(std::move(data)); });
}

void Engine::CloseStdin(const std::shared_ptr<Execution>& execution) {
  loop_->Post([execution]() mutable { execution->CloseStdin(); });
}

void Engine::ResizeTerminal(const std::shared_ptr<Execution>& execution, TerminalSize size) {
  loop_->Post([execution, size]() mutable { execution->ResizeTerminal(size); });
}

absl::Status Engine::Signal(const std::shared_ptr<Execution>& execution, int signal) {
  RETURN_IF_ERROR(CheckSignal(signal));
  loop_->Post([execution, signal]() mutable { execution->Signal(signal); });
  return absl::OkStatus();
}

absl::Status Engine::CheckSignal(int signal) {
  static constexpr int kAllowed[] = {SIGHUP,  SIGINT,  SIGQUIT, SIGKILL,
                                     SIGUSR1, SIGUSR2, SIGTERM, SIGWINCH};
  if (std::find(std::begin(kAllowed), std::end(kAllowed), signal) == std::end(kAllowed)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "signal ", signal, " may not be sent; allowed: SIGHUP (1), SIGINT (2), SIGQUIT (3), ",
        "SIGKILL (9), SIGUSR1 (10), SIGUSR2 (12), SIGTERM (15), SIGWINCH (28)"));
  }
  return absl::OkStatus();
}

absl::Status Engine::HoldQueuePlace(int priority) {
  absl::MutexLock lock(&mu_);
  if (draining_) return Draining();
  if (!scheduler_.HoldPlace(priority)) return Overloaded();
  return absl::OkStatus();
}

void Engine::SetShares(absl::flat_hash_map<std::string, int> shares, int default_share) {
  absl::MutexLock lock(&mu_);
  scheduler_.SetShares(std::move(shares), default_share);
}

void Engine::ReleaseQueuePlace(int priority) {
  absl::MutexLock lock(&mu_);
  scheduler_.ReleasePlace(priority);
}

void Engine::SetConcurrencyLimit(int limit) {
  absl::MutexLock lock(&mu_);
  scheduler_.SetLimit(limit);
  StartRunnableLocked();
}

void Engine::StopAccepting() {
  absl::MutexLock lock(&mu_);
  draining_ = true;
}

void Engine::Shutdown(absl::Duration drain) {
  std::vector<std::shared_ptr<Execution>> rest;
  {
    absl::MutexLock lock(&mu_);
    draining_ = true;
    auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return live_.empty() || drain_cut_; };
    mu_.AwaitWithTimeout(absl::Condition(&idle), drain);
    // Queued work first: cancelled running work frees slots, which must not start it.
    for (auto& [id, execution] : live_) {
      if (execution->state() == Execution::State::kQueued) rest.push_back(execution);
    }
    for (auto& [id, execution] : live_) {
      if (execution->state() != Execution::State::kQueued) rest.push_back(execution);
    }
  }
  for (auto& execution : rest) Cancel(execution);
  // Finish() posts the last step of a started command; wait for those tasks too.
  absl::MutexLock lock(&mu_);
  auto finished = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return live_.empty() && finishing_ == 0;
  };
  mu_.Await(absl::Condition(&finished));
}

void Engine::CutDrainShort() {
  absl::MutexLock lock(&mu_);
  drain_cut_ = true;
}

Engine::Stats Engine::stats() const {
  absl::MutexLock lock(&mu_);
  Stats stats;
  stats.running = scheduler_.running();
  stats.queued = scheduler_.queued();
  for (int p = 0; p < Scheduler::kPriorities; ++p) {
    stats.queued_by_priority[p] = scheduler_.queued(p);
  }
  stats.queue_capacity = scheduler_.max_queue();
  stats.limit = scheduler_.limit();
  return stats;
}

}  // namespace execd::core
