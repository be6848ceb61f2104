#include "core/engine.h"

#include <pthread.h>

#include <algorithm>
#include <deque>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"

namespace execd::core {

// One command's passage through the engine. Fields marked "loop" are touched only on the
// loop thread; `state_` is guarded by the engine's mutex.
class Engine::Execution final : public ChildProcess::Observer {
 public:
  enum class State { kQueued, kAdmitted, kDone };

  Execution(Engine& engine, Id id, Command command, Engine::Observer* observer)
      : engine_(engine), id_(id), command_(std::move(command)), observer_(observer) {}

  void OnOutput(OutputStream stream, absl::string_view data) override {
    observer_->OnOutput(stream, data);
  }
  void OnExit(Result result) override {
    result.queued = admitted_ - submitted_;
    result.spawn = spawn_done_ - admitted_;
    engine_.Finish(*this, std::move(result));
  }

  Engine& engine_;
  const Id id_;
  Command command_;
  Engine::Observer* observer_;
  absl::Time submitted_;
  absl::Time admitted_;                  // loop
  absl::Time spawn_done_;                // loop
  State state_ = State::kQueued;         // Guarded by engine.mu_.
  bool cancel_requested_ = false;        // loop
  std::unique_ptr<ChildProcess> child_;  // loop
};

// Long-lived threads for spawning: a child's parent-death signal follows the thread that
// spawned it, so these threads live as long as the engine.
class Engine::SpawnThreads {
 public:
  explicit SpawnThreads(int n) {
    for (int i = 0; i < std::max(1, n); ++i) {
      threads_.emplace_back([this] {
        pthread_setname_np(pthread_self(), "execd-spawn");
        Run();
      });
    }
  }
  ~SpawnThreads() {
    {
      absl::MutexLock lock(&mu_);
      stopping_ = true;
    }
    for (std::thread& t : threads_) t.join();
  }
  void Submit(absl::AnyInvocable<void() &&> task) {
    absl::MutexLock lock(&mu_);
    tasks_.push_back(std::move(task));
  }

 private:
  void Run() {
    for (;;) {
      absl::AnyInvocable<void() &&> task;
      {
        absl::MutexLock lock(&mu_);
        auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
          return stopping_ || !tasks_.empty();
        };
        mu_.Await(absl::Condition(&ready));
        if (tasks_.empty()) return;
        task = std::move(tasks_.front());
        tasks_.pop_front();
      }
      std::move(task)();
    }
  }

  absl::Mutex mu_;
  std::deque<absl::AnyInvocable<void() &&>> tasks_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;
};

absl::StatusOr<std::unique_ptr<Engine>> Engine::Create(const Options& options) {
  if (options.max_concurrency < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_concurrency must be at least 1, got ", options.max_concurrency));
  }
  EnsureStandardDescriptorsOpen();
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
      spawn_threads_(std::make_unique<SpawnThreads>(options.spawn_threads)) {}

Engine::~Engine() {
  Shutdown(absl::ZeroDuration());
  spawn_threads_.reset();  // Before the loop they post to goes away.
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
  absl::Status status = absl::ResourceExhaustedError(
      absl::StrCat("the server is at capacity: ", scheduler_.running(), " commands running and ",
                   scheduler_.queued(), " queued (the queue limit); retry after ", ms, " ms"));
  status.SetPayload(kRetryPushbackPayload, absl::Cord(absl::StrCat(ms)));
  return status;
}

absl::StatusOr<std::shared_ptr<Engine::Execution>> Engine::Submit(Command command,
                                                                  Observer* observer) {
  if (absl::Status s = CheckEnforceable(command); !s.ok()) return s;
  const absl::Time now = options_.clock->Now();
  if (command.deadline <= now) {
    return absl::DeadlineExceededError("the call's deadline had passed before it was queued");
  }
  absl::Time expiry = std::min(command.deadline, now + command.max_queue_time);
  int priority = command.priority;
  std::shared_ptr<Execution> displaced;
  std::shared_ptr<Execution> execution;
  {
    absl::MutexLock lock(&mu_);
    if (draining_) {
      return absl::UnavailableError("the server is shutting down; retry on another replica");
    }
    Id id = next_id_++;
    Scheduler::Admission admission = scheduler_.Submit(id, priority, expiry);
    if (admission.kind == Scheduler::Admission::Kind::kRejected) return Overloaded();
    execution = std::make_shared<Execution>(*this, id, std::move(command), observer);
    execution->submitted_ = now;
    live_.emplace(id, execution);
    if (admission.kind == Scheduler::Admission::Kind::kRunNow) {
      execution->state_ = Execution::State::kAdmitted;
      loop_->Post([this, execution]() mutable { StartOnLoop(std::move(execution)); });
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
  Execution& e = *execution;
  e.admitted_ = options_.clock->Now();
  if (e.cancel_requested_) {
    Finish(e, absl::CancelledError("cancelled before the command started"));
    return;
  }
  absl::Duration left = e.command_.deadline - e.admitted_;
  if (left <= absl::ZeroDuration()) {
    Finish(e, absl::DeadlineExceededError("the call's deadline passed before the command started"));
    return;
  }
  ChildProcess::Options child_options;
  child_options.timeout = std::min(e.command_.limits.timeout, left);
  child_options.timeout_is_deadline = left < e.command_.limits.timeout;
  child_options.kill_grace = options_.kill_grace;
  if (!containment_->limits_memory()) {
    child_options.address_space_bytes = e.command_.limits.memory_bytes;
  }
  spawn_threads_->Submit([this, execution = std::move(execution), child_options]() mutable {
    Spawn(std::move(execution), child_options);
  });
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
    if (child.ok()) {
      absl::MutexLock lock(&leaders_mu_);
      leaders_.insert((*child)->pid());
    }
  }
  e.spawn_done_ = options_.clock->Now();
  loop_->Post([this, execution = std::move(execution), child = std::move(child)]() mutable {
    OnSpawned(std::move(execution), std::move(child));
  });
}

void Engine::OnSpawned(std::shared_ptr<Execution> execution,
                       absl::StatusOr<std::unique_ptr<ChildProcess>> child) {
  Execution& e = *execution;
  if (!child.ok()) {
    Finish(e, child.status());
    return;
  }
  e.child_ = *std::move(child);
  if (absl::Status watched = e.child_->Watch(); !watched.ok()) {
    Finish(e, watched);  // Destroying the child kills it.
    return;
  }
  e.observer_->OnStarted(e.child_->pid(), e.admitted_ - e.submitted_);
  if (e.cancel_requested_) e.child_->Terminate(Termination::kCancelled);
}

void Engine::SweepOrphans() {
  if (!containment_->sweeps_orphans()) return;
  absl::WriterMutexLock gate(&spawn_gate_);
  absl::flat_hash_set<pid_t> leaders;
  {
    absl::MutexLock lock(&leaders_mu_);
    leaders = leaders_;
  }
  containment_->SweepOrphans(leaders);
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
      scheduler_.Release();
      StartRunnableLocked();
    }
  }
  if (execution.child_ != nullptr) {
    {
      absl::MutexLock lock(&leaders_mu_);
      leaders_.erase(execution.child_->pid());
    }
    SweepOrphans();
  }
  if (execution.child_ == nullptr) {
    execution.observer_->OnFinished(std::move(result));
    return;
  }
  // The child is destroyed outside its own callback, and before the caller hears the
  // result: by then its descriptors are closed and its cgroup is gone.
  loop_->Post([this, keep = std::move(keep), result = std::move(result)]() mutable {
    keep->child_.reset();
    keep->observer_->OnFinished(std::move(result));
    absl::MutexLock lock(&mu_);
    --finishing_;
  });
}

void Engine::StartRunnableLocked() {
  for (Id id : scheduler_.TakeRunnable()) {
    std::shared_ptr<Execution> next = live_.at(id);
    next->state_ = Execution::State::kAdmitted;
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
      loop_->Post([execution]() mutable {
        if (execution->child_ != nullptr) {
          execution->child_->Terminate(Termination::kCancelled);
        } else {
          execution->cancel_requested_ = true;
        }
      });
      return;
    }
    scheduler_.Remove(execution->id_);
  }
  Finish(*execution,
         absl::CancelledError(draining ? "the server is shutting down" : "cancelled while queued"));
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
    auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return live_.empty(); };
    mu_.AwaitWithTimeout(absl::Condition(&idle), drain);
    for (auto& [id, execution] : live_) rest.push_back(execution);
  }
  for (auto& execution : rest) Cancel(execution);
  // Finish() posts the last step of a started command; wait for those tasks too.
  absl::MutexLock lock(&mu_);
  auto finished = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return live_.empty() && finishing_ == 0;
  };
  mu_.Await(absl::Condition(&finished));
}

Engine::Stats Engine::stats() const {
  absl::MutexLock lock(&mu_);
  return Stats{scheduler_.running(), scheduler_.queued(), scheduler_.limit()};
}

}  // namespace execd::core
