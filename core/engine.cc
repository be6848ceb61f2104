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
#include "core/status_macros.h"

namespace execd::core {

// One command's passage through the engine. Fields marked "loop" are touched only on the
// loop thread; `state_` is guarded by the engine's mutex.
class Engine::Execution final : public ChildProcess::Observer, public Pool::Request {
 public:
  enum class State { kQueued, kAdmitted, kDone };

  Execution(Engine& engine, Id id, Command command, Engine::Observer* observer)
      : engine_(engine), id_(id), command_(std::move(command)), observer_(observer) {}

  void OnOutput(OutputStream stream, absl::string_view data) override {
    observer_->OnOutput(stream, data);
  }
  void OnStdinWritten(size_t bytes) override { observer_->OnStdinWritten(bytes); }
  void OnExit(Result result) override {
    result.queued = admitted_ - submitted_;
    result.spawn = spawn_done_ - admitted_;
    result.thread_handoffs = handoffs_;
    engine_.Finish(*this, std::move(result));
  }

  // Pool::Request.
  void OnProcess(std::unique_ptr<ChildProcess> child) override {
    LeavePool();
    engine_.OnPooledProcess(*this, std::move(child));
  }
  void OnStarted(pid_t pid) override {
    StopDeadlineTimer();  // The worker enforces the rest of the deadline now.
    spawn_done_ = engine_.options_.clock->Now();
    observer_->OnStarted(pid, admitted_ - submitted_);
  }
  void OnDone(absl::StatusOr<Result> result) override {
    LeavePool();
    if (result.ok()) {
      result->queued = admitted_ - submitted_;
      result->spawn = spawn_done_ == absl::Time() ? absl::ZeroDuration() : spawn_done_ - admitted_;
      result->thread_handoffs = handoffs_;
    }
    engine_.Finish(*this, std::move(result));
  }

  // Loop thread: the child's output follows the last SetOutputPaused.
  void ApplyOutputPaused() {
    EXECD_DCHECK_LOOP(*engine_.loop_);
    if (child_ != nullptr) child_->SetOutputPaused(output_paused_.load(std::memory_order_relaxed));
  }

  void StopDeadlineTimer() {
    if (deadline_timer_ != 0) engine_.loop_->CancelTimer(deadline_timer_);
    deadline_timer_ = 0;
  }
  void LeavePool() {
    in_pool_ = false;
    StopDeadlineTimer();
  }

  Engine& engine_;
  const Id id_;
  Command command_;
  Engine::Observer* observer_;
  absl::Time submitted_;
  absl::Time admitted_;            // loop
  absl::Time spawn_done_;          // loop
  State state_ = State::kQueued;   // Guarded by engine.mu_.
  bool cancel_requested_ = false;  // loop
  // Threads the command was handed between (each a wake-up); written by whichever thread
  // hands it on, before it does.
  int handoffs_ = 0;
  std::unique_ptr<ChildProcess> child_;     // loop
  std::atomic<bool> output_paused_{false};  // What SetOutputPaused last asked for.
  // Pooled commands.
  int group_ = 0;  // Scheduler group: pool index + 1.
  Pool* pool_ = nullptr;
  bool in_pool_ = false;                   // loop: waiting for or using a worker
  ChildProcess::Options child_options_;    // loop: for a pre-warmed process
  EventLoop::TimerId deadline_timer_ = 0;  // loop: while waiting for a worker
};

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
      absl::ReaderMutexLock gate(&spawn_gate_);  // Not swept for an orphan mid-spawn.
      std::move(task)();
    });
  };
  deps.track = [this](pid_t pid) { TrackLeaders({pid}, true); };
  deps.untrack = [this](pid_t pid) { TrackLeaders({pid}, false); };
  reaper_ = std::make_unique<Reaper>(*loop_);
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

Engine::~Engine() {
  Shutdown(absl::ZeroDuration());
  pools_.reset();
  spawn_threads_.reset();  // Before the loop they post to goes away.
  // Workers' deferred destructions were posted to the loop; run them before it stops. No
  // orphan sweep is left armed to run on a half-destroyed engine.
  absl::Notification flushed;
  loop_->Post([this, &flushed]() mutable {
    orphan_sweeps_stopped_ = true;
    if (orphan_timer_ != 0) loop_->CancelTimer(orphan_timer_);
    orphan_timer_ = 0;
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

absl::Status Engine::Overloaded() const {
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
  std::shared_ptr<Execution> execution;
  bool start_now = false;
  {
    absl::MutexLock lock(&mu_);
    if (draining_) {
      return absl::UnavailableError("the server is shutting down; retry on another replica");
    }
    Id id = next_id_++;
    int group = 0;
    if (!command.pool.empty()) {
      const int index = pools_->IndexOf(command.pool);
      if (index < 0) {
        return absl::NotFoundError(absl::StrCat("no worker pool named \"", command.pool, "\""));
      }
      group = index + 1;
    }
    Scheduler::Admission admission = scheduler_.Submit(id, priority, expiry, group);
    if (admission.kind == Scheduler::Admission::Kind::kRejected) return Overloaded();
    execution = std::make_shared<Execution>(*this, id, std::move(command), observer);
    execution->group_ = group;
    if (group > 0) execution->pool_ = pools_->at(group - 1);
    execution->submitted_ = now;
    live_.emplace(id, execution);
    if (admission.kind == Scheduler::Admission::Kind::kRunNow) {
      execution->state_ = Execution::State::kAdmitted;
      start_now = true;
    } else {
      ArmExpiryLocked();
    }
    if (admission.displaced.has_value()) {
      auto it = live_.find(*admission.displaced);
      displaced = std::move(it->second);
      live_.erase(it);
      displaced->state_ = Execution::State::kDone;
    }
  }
  if (displaced != nullptr) {
    displaced->observer_->OnFinished(absl::ResourceExhaustedError(
        "shed from a full queue for a higher-priority request; retry later"));
  }
  if (start_now) {
    // A fresh spawn goes from this thread straight to a spawn thread: the loop has nothing
    // to do for it until the child exists, and every hand-off is a wake-up.
    if (execution->pool_ == nullptr) {
      StartFresh(execution);
    } else {
      ++execution->handoffs_;
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
      it->second->state_ = Execution::State::kDone;
      expired.push_back(std::move(it->second));
      live_.erase(it);
    }
    ArmExpiryLocked();
  }
  for (auto& e : expired) {
    absl::Duration waited = options_.clock->Now() - e->submitted_;
    bool by_deadline = e->command_.deadline <= options_.clock->Now();
    e->observer_->OnFinished(absl::DeadlineExceededError(absl::StrCat(
        "dropped after ", absl::FormatDuration(absl::Trunc(waited, absl::Milliseconds(1))),
        " in the queue: ",
        by_deadline ? "the call's deadline passed"
                    : absl::StrCat("max_queue_time ",
                                   absl::FormatDuration(e->command_.max_queue_time), " passed"),
        " before a slot was free")));
  }
}

void Engine::StartOnLoop(std::shared_ptr<Execution> execution) {
  EXECD_DCHECK_LOOP(*loop_);
  if (execution->cancel_requested_) {
    Finish(*execution, absl::CancelledError("cancelled before the command started"));
    return;
  }
  if (execution->pool_ == nullptr) {
    StartFresh(std::move(execution));
    return;
  }
  std::optional<ChildProcess::Options> options = Admit(*execution);
  if (options.has_value()) StartPooled(std::move(execution), *std::move(options));
}

void Engine::StartFresh(std::shared_ptr<Execution> execution) {
  std::optional<ChildProcess::Options> options = Admit(*execution);
  if (!options.has_value()) return;
  ++execution->handoffs_;
  spawn_threads_->Submit([this, execution = std::move(execution), options]() mutable {
    Spawn(std::move(execution), *std::move(options));
  });
}

std::optional<ChildProcess::Options> Engine::Admit(Execution& e) {
  e.admitted_ = options_.clock->Now();
  absl::Duration left = e.command_.deadline - e.admitted_;
  if (left <= absl::ZeroDuration()) {
    Finish(e, absl::DeadlineExceededError("the call's deadline passed before the command started"));
    return std::nullopt;
  }
  ChildProcess::Options child_options;
  child_options.timeout = std::min(e.command_.limits.timeout, left);
  child_options.deadline = e.command_.deadline;
  child_options.kill_grace = options_.kill_grace;
  child_options.empty_wait = options_.empty_wait;
  child_options.stream_chunk_bytes = e.command_.stream_chunk_bytes;
  child_options.memfd_stdin_bytes = options_.memfd_stdin_bytes;
  child_options.stream_flush_interval = e.command_.stream_flush_interval;
  child_options.stdin_pipe = e.command_.keep_stdin_open;
  child_options.reap_later = reap_later_;
  if (!containment_->limits_memory()) {
    child_options.address_space_bytes = e.command_.limits.memory_bytes;
  }
  return child_options;
}

void Engine::Spawn(std::shared_ptr<Execution> execution, ChildProcess::Options options) {
  Execution& e = *execution;
  absl::StatusOr<std::unique_ptr<ChildProcess>> child;
  {
    absl::ReaderMutexLock gate(&spawn_gate_);
    auto group =
        containment_->NewGroup(e.command_.limits.memory_bytes, e.command_.limits.max_processes);
    if (group.ok()) {
      child = ChildProcess::Spawn(*loop_, *options_.os, e.command_, options, *std::move(group), &e);
    } else {
      child = group.status();
    }
    if (child.ok()) TrackLeaders((*child)->pids(), true);
  }
  // A pipeline whose later program failed to spawn has had its earlier ones killed and
  // reaped; what they started outside their process groups came to execd meanwhile.
  if (!child.ok()) SweepOrphans();
  e.spawn_done_ = options_.clock->Now();
  ++e.handoffs_;
  loop_->Post([this, execution = std::move(execution), child = std::move(child)]() mutable {
    OnSpawned(std::move(execution), std::move(child));
  });
}

void Engine::StartPooled(std::shared_ptr<Execution> execution, ChildProcess::Options options) {
  EXECD_DCHECK_LOOP(*loop_);
  Execution& e = *execution;
  e.child_options_ = options;
  e.in_pool_ = true;
  Pool::Call call;
  call.max_output_bytes = e.command_.limits.max_output_bytes;
  call.timeout = e.command_.limits.timeout;
  call.deadline = e.command_.deadline;
  if (e.pool_->spec().kind == PoolSpec::Kind::kPersistent) {
    call.arguments = std::move(e.command_.argv);
    e.command_.argv.clear();
    call.stdin_data = std::move(e.command_.stdin_data);
  }
  // A worker may take a while to start; the call's deadline still holds meanwhile.
  if (e.command_.deadline != absl::InfiniteFuture()) {
    e.deadline_timer_ = loop_->AddTimer(e.command_.deadline, [this, &e]() mutable {
      e.deadline_timer_ = 0;
      if (!e.in_pool_ || !e.pool_->Cancel(&e)) return;
      e.LeavePool();
      Finish(e, absl::DeadlineExceededError(
                    absl::StrCat("the call's deadline passed while waiting for a worker of pool \"",
                                 e.pool_->spec().name, "\"")));
    });
  }
  e.pool_->Acquire(&e, std::move(call));
}

void Engine::OnPooledProcess(Execution& e, std::unique_ptr<ChildProcess> child) {
  EXECD_DCHECK_LOOP(*loop_);
  const absl::Time now = options_.clock->Now();
  e.spawn_done_ = now;
  ChildProcess::Options options = e.child_options_;
  const absl::Duration left = e.command_.deadline - now;
  options.timeout = std::max(absl::Milliseconds(1), std::min(e.command_.limits.timeout, left));
  child->Assign(&e, std::move(e.command_.stdin_data), e.command_.limits, e.command_.stream_output,
                options);
  e.child_ = std::move(child);
  if (absl::Status watched = e.child_->Watch(); !watched.ok()) {
    FailUnwatched(e, watched);
    return;
  }
  e.ApplyOutputPaused();
  e.observer_->OnStarted(e.child_->pid(), e.admitted_ - e.submitted_);
  if (e.cancel_requested_) e.child_->Terminate(Termination::kCancelled);
}

void Engine::OnSpawned(std::shared_ptr<Execution> execution,
                       absl::StatusOr<std::unique_ptr<ChildProcess>> child) {
  EXECD_DCHECK_LOOP(*loop_);
  Execution& e = *execution;
  if (!child.ok()) {
    Finish(e, child.status());
    return;
  }
  e.child_ = *std::move(child);
  if (absl::Status watched = e.child_->Watch(); !watched.ok()) {
    FailUnwatched(e, watched);
    return;
  }
  e.ApplyOutputPaused();
  e.observer_->OnStarted(e.child_->pid(), e.admitted_ - e.submitted_);
  if (e.cancel_requested_) e.child_->Terminate(Termination::kCancelled);
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

void Engine::FailUnwatched(Execution& e, absl::Status why) {
  EXECD_DCHECK_LOOP(*loop_);
  DestroyChild(e);
  Finish(e, std::move(why));
}

void Engine::DestroyChild(Execution& e) {
  EXECD_DCHECK_LOOP(*loop_);
  // Its pids stay leaders until they are reaped: at once, or later by reap_later_ (one that
  // did not die at once, or one answered from its exit report and still being torn down).
  // Untracked first, the sweep would reap them, and the child's own kill then aim at pids
  // free for reuse. What it started outside its groups is swept then: only once a leader
  // is gone do the processes it orphaned come to execd. A pre-warmed process holds its
  // place in its pool as long; the refill its release may start runs as a task of its
  // own, after the caller has its answer, which it would otherwise compete with for the
  // CPU.
  const std::vector<pid_t> pids = e.child_->pids();
  absl::AnyInvocable<void() &&> release_pool;
  if (e.pool_ != nullptr) release_pool = e.pool_->Releaser();
  ChildProcess::Destroy(std::move(e.child_),
                        [this, pids, release_pool = std::move(release_pool)]() mutable {
                          TrackLeaders(pids, false);
                          SweepOrphans();
                          if (release_pool) loop_->Post(std::move(release_pool));
                        });
}

void Engine::TrackLeaders(const std::vector<pid_t>& pids, bool running) {
  absl::MutexLock lock(&leaders_mu_);
  for (pid_t pid : pids) {
    if (running) {
      leaders_.insert(pid);
    } else {
      leaders_.erase(pid);
    }
  }
}

bool Engine::Tracks(pid_t pid) const {
  absl::MutexLock lock(&leaders_mu_);
  return leaders_.contains(pid);
}

bool Engine::SweepOrphans() {
  if (!containment_->sweeps_orphans()) return true;
  Containment::OrphanSweep sweep;
  {
    absl::WriterMutexLock gate(&spawn_gate_);
    absl::flat_hash_set<pid_t> leaders;
    {
      absl::MutexLock lock(&leaders_mu_);
      leaders = leaders_;
    }
    sweep = containment_->SweepOrphans(leaders);
  }
  const bool retry = sweep.retry;
  if (retry || !sweep.dying.empty()) {
    loop_->RunOnLoop(
        [this, sweep = std::move(sweep)]() mutable { AwaitOrphans(std::move(sweep)); });
  }
  return !retry;
}

void Engine::AwaitOrphans(Containment::OrphanSweep sweep) {
  EXECD_DCHECK_LOOP(*loop_);
  // The engine is going away: the orphans were killed, and what is not reaped by then
  // goes to init when execd exits.
  if (orphan_sweeps_stopped_ || reaper_ == nullptr) return;
  for (UniqueFd& pidfd : sweep.dying) {
    // Reaped once it dies, and what it left is swept then, from the loop.
    reaper_->Adopt(std::move(pidfd), [this]() { ArmOrphanSweep(absl::ZeroDuration()); });
  }
  if (sweep.retry) {
    ArmOrphanSweep(orphan_retry_);
    orphan_retry_ = std::min(orphan_retry_ * 2, absl::Seconds(1));
  }
}

void Engine::ArmOrphanSweep(absl::Duration after) {
  EXECD_DCHECK_LOOP(*loop_);
  if (orphan_sweeps_stopped_) return;
  const absl::Time when = options_.clock->Now() + after;
  if (orphan_timer_ != 0) {
    if (orphan_timer_at_ <= when) return;
    loop_->CancelTimer(orphan_timer_);
  }
  orphan_timer_at_ = when;
  orphan_timer_ = loop_->AddTimer(when, [this]() mutable {
    orphan_timer_ = 0;
    if (SweepOrphans()) orphan_retry_ = kFirstOrphanRetry;
  });
}

void Engine::Finish(Execution& execution, absl::StatusOr<Result> result) {
  std::shared_ptr<Execution> keep;
  {
    absl::MutexLock lock(&mu_);
    auto it = live_.find(execution.id_);
    if (it == live_.end()) return;
    keep = std::move(it->second);
    live_.erase(it);
    if (execution.child_ != nullptr) ++finishing_;
    bool was_admitted = execution.state_ == Execution::State::kAdmitted;
    execution.state_ = Execution::State::kDone;
    if (was_admitted) {
      if (result.ok()) mean_run_ = (mean_run_ * 7 + result->run) / 8;
      scheduler_.Release(execution.group_);
      StartRunnableLocked();
    }
  }
  if (execution.child_ == nullptr) {
    execution.observer_->OnFinished(std::move(result));
    return;
  }
  // The child is destroyed outside its own callback, and before the caller hears the
  // result: by then its descriptors are closed and its cgroup is gone (or, for a command
  // whose processes could not all die, or one answered from its exit report, left to be
  // removed once they have).
  loop_->Post([this, keep = std::move(keep), result = std::move(result)]() mutable {
    DestroyChild(*keep);
    keep->observer_->OnFinished(std::move(result));
    absl::MutexLock lock(&mu_);
    --finishing_;
  });
}

void Engine::StartRunnableLocked() {
  for (Id id : scheduler_.TakeRunnable()) {
    std::shared_ptr<Execution> next = live_.at(id);
    next->state_ = Execution::State::kAdmitted;
    ++next->handoffs_;
    loop_->Post([this, next = std::move(next)]() mutable { StartOnLoop(std::move(next)); });
  }
}

void Engine::Cancel(const std::shared_ptr<Execution>& execution) {
  bool draining;
  {
    absl::MutexLock lock(&mu_);
    draining = draining_;
    if (execution->state_ == Execution::State::kDone) return;
    if (execution->state_ == Execution::State::kAdmitted) {
      loop_->Post([this, execution]() mutable {
        Execution& e = *execution;
        if (e.child_ != nullptr) {
          e.child_->Terminate(Termination::kCancelled);
        } else if (e.in_pool_) {
          if (e.pool_->Cancel(&e)) {
            e.LeavePool();
            Finish(e, absl::CancelledError(
                          absl::StrCat("cancelled while waiting for a worker of pool \"",
                                       e.pool_->spec().name, "\"")));
          }
        } else {
          e.cancel_requested_ = true;
        }
      });
      return;
    }
    scheduler_.Remove(execution->id_);
  }
  Finish(*execution,
         absl::CancelledError(draining ? "the server is shutting down" : "cancelled while queued"));
}

void Engine::SetOutputPaused(const std::shared_ptr<Execution>& execution, bool paused) {
  // The latest wish wins whatever order the tasks run in; on the loop thread (a reader
  // falling behind while output is handed on) it takes effect before the next chunk.
  execution->output_paused_.store(paused, std::memory_order_relaxed);
  loop_->RunOnLoop([execution]() mutable { execution->ApplyOutputPaused(); });
}

void Engine::WriteStdin(const std::shared_ptr<Execution>& execution, std::string data) {
  loop_->Post([execution, data = std::move(data)]() mutable {
    if (execution->child_ != nullptr) execution->child_->AppendStdin(std::move(data));
  });
}

void Engine::CloseStdin(const std::shared_ptr<Execution>& execution) {
  loop_->Post([execution]() mutable {
    if (execution->child_ != nullptr) execution->child_->CloseStdin();
  });
}

void Engine::ResizeTerminal(const std::shared_ptr<Execution>& execution, TerminalSize size) {
  loop_->Post([execution, size]() mutable {
    if (execution->child_ != nullptr) execution->child_->ResizeTerminal(size);
  });
}

absl::Status Engine::Signal(const std::shared_ptr<Execution>& execution, int signal) {
  static constexpr int kAllowed[] = {SIGHUP,  SIGINT,  SIGQUIT, SIGKILL,
                                     SIGUSR1, SIGUSR2, SIGTERM, SIGWINCH};
  if (std::find(std::begin(kAllowed), std::end(kAllowed), signal) == std::end(kAllowed)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "signal ", signal, " may not be sent; allowed: SIGHUP (1), SIGINT (2), SIGQUIT (3), ",
        "SIGKILL (9), SIGUSR1 (10), SIGUSR2 (12), SIGTERM (15), SIGWINCH (28)"));
  }
  loop_->Post([execution, signal]() mutable {
    if (execution->child_ != nullptr) execution->child_->Signal(signal);
  });
  return absl::OkStatus();
}

absl::Status Engine::HoldQueuePlace() {
  absl::MutexLock lock(&mu_);
  if (draining_)
    return absl::UnavailableError("the server is shutting down; retry on another replica");
  if (!scheduler_.HoldPlace()) return Overloaded();
  return absl::OkStatus();
}

void Engine::ReleaseQueuePlace() {
  absl::MutexLock lock(&mu_);
  scheduler_.ReleasePlace();
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
      if (execution->state_ == Execution::State::kQueued) rest.push_back(execution);
    }
    for (auto& [id, execution] : live_) {
      if (execution->state_ != Execution::State::kQueued) rest.push_back(execution);
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
  return Stats{scheduler_.running(), scheduler_.queued(), scheduler_.limit()};
}

}  // namespace execd::core
