#include "core/execution.h"

#include <algorithm>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/status_macros.h"

namespace execd::core {

void Engine::Execution::Stamp(Result& result) const {
  result.queued = admitted_ - submitted_;
  result.spawn = spawn_done_ == absl::Time() ? absl::ZeroDuration() : spawn_done_ - admitted_;
  result.thread_handoffs = handoffs_;
}

void Engine::Execution::OnOutput(OutputStream stream, absl::string_view data) {
  observer_->OnOutput(stream, data);
}

void Engine::Execution::OnStdinWritten(size_t bytes) { observer_->OnStdinWritten(bytes); }

void Engine::Execution::OnExit(Result result) {
  Stamp(result);
  engine_.Finish(*this, std::move(result));
}

void Engine::Execution::OnProcess(std::unique_ptr<ChildProcess> child) {
  LeavePool();
  const absl::Time now = engine_.options_.clock->Now();
  spawn_done_ = now;
  ChildProcess::Options options = child_options_;
  const absl::Duration left = command_.deadline - now;
  options.timeout = std::max(absl::Milliseconds(1), std::min(command_.limits.timeout, left));
  child->Assign(this, std::move(command_.stdin_data), command_.limits, command_.stream_output,
                options);
  Run(std::move(child));
}

void Engine::Execution::OnStarted(pid_t pid) {
  StopDeadlineTimer();  // The worker enforces the rest of the deadline now.
  spawn_done_ = engine_.options_.clock->Now();
  observer_->OnStarted(pid, admitted_ - submitted_);
}

void Engine::Execution::OnDone(absl::StatusOr<Result> result) {
  LeavePool();
  if (result.ok()) Stamp(*result);
  engine_.Finish(*this, std::move(result));
}

absl::StatusOr<std::unique_ptr<ChildProcess>> Engine::Execution::SpawnChild(
    const ChildProcess::Options& options) {
  ASSIGN_OR_RETURN(
      std::unique_ptr<Containment::Group> group,
      engine_.containment_->NewGroup(command_.limits.memory_bytes, command_.limits.max_processes));
  return ChildProcess::Spawn(*engine_.loop_, *engine_.options_.os, command_, options,
                             std::move(group), this);
}

void Engine::Execution::Run(std::unique_ptr<ChildProcess> child) {
  EXECD_DCHECK_LOOP(*engine_.loop_);
  child_ = std::move(child);
  if (absl::Status watched = child_->Watch(); !watched.ok()) {
    DestroyChild();
    engine_.Finish(*this, std::move(watched));
    return;
  }
  ApplyOutputPaused();
  observer_->OnStarted(child_->pid(), admitted_ - submitted_);
  if (cancel_requested_) child_->Terminate(Termination::kCancelled);
}

void Engine::Execution::EnterPool(ChildProcess::Options options) {
  EXECD_DCHECK_LOOP(*engine_.loop_);
  child_options_ = std::move(options);
  in_pool_ = true;
  Pool::Call call;
  call.max_output_bytes = command_.limits.max_output_bytes;
  call.timeout = command_.limits.timeout;
  call.deadline = command_.deadline;
  if (pool_->spec().kind == PoolSpec::Kind::kPersistent) {
    call.arguments = std::move(command_.argv);
    command_.argv.clear();
    call.stdin_data = std::move(command_.stdin_data);
  }
  // A worker may take a while to start; the call's deadline still holds meanwhile.
  if (command_.deadline != absl::InfiniteFuture()) {
    deadline_timer_ = engine_.loop_->AddTimer(command_.deadline, [this]() mutable {
      deadline_timer_ = 0;
      if (!in_pool_ || !pool_->Cancel(this)) return;
      LeavePool();
      engine_.Finish(*this, absl::DeadlineExceededError(absl::StrCat(
                                "the call's deadline passed while waiting for a worker of pool \"",
                                pool_->spec().name, "\"")));
    });
  }
  pool_->Acquire(this, std::move(call));
}

void Engine::Execution::CancelOnLoop() {
  EXECD_DCHECK_LOOP(*engine_.loop_);
  if (child_ != nullptr) {
    child_->Terminate(Termination::kCancelled);
  } else if (in_pool_) {
    if (pool_->Cancel(this)) {
      LeavePool();
      engine_.Finish(
          *this, absl::CancelledError(absl::StrCat(
                     "cancelled while waiting for a worker of pool \"", pool_->spec().name, "\"")));
    }
  } else {
    cancel_requested_ = true;
  }
}

void Engine::Execution::DestroyChild() {
  EXECD_DCHECK_LOOP(*engine_.loop_);
  // Its pids stay tracked until they are reaped: at once, or later by the engine's
  // ReapLater (one that did not die at once, or one answered from its exit report and
  // still being torn down). Untracked first, the sweep would reap them, and the child's
  // own kill then aim at pids free for reuse. What it started outside its groups is swept
  // then: only once a leader is gone do the processes it orphaned come to execd. A
  // pre-warmed process holds its place in its pool as long; the refill its release may
  // start runs as a task of its own, after the caller has its answer, which it would
  // otherwise compete with for the CPU.
  const std::vector<pid_t> pids = child_->pids();
  absl::AnyInvocable<void() &&> release_pool;
  if (pool_ != nullptr) release_pool = pool_->Releaser();
  ChildProcess::Destroy(std::move(child_), [&engine = engine_, pids,
                                            release_pool = std::move(release_pool)]() mutable {
    engine.orphans_->Untrack(pids);
    engine.orphans_->Sweep();
    if (release_pool) engine.loop_->Post(std::move(release_pool));
  });
}

void Engine::Execution::WriteStdin(std::string data) {
  EXECD_DCHECK_LOOP(*engine_.loop_);
  if (child_ != nullptr) child_->AppendStdin(std::move(data));
}

void Engine::Execution::CloseStdin() {
  EXECD_DCHECK_LOOP(*engine_.loop_);
  if (child_ != nullptr) child_->CloseStdin();
}

void Engine::Execution::ResizeTerminal(TerminalSize size) {
  EXECD_DCHECK_LOOP(*engine_.loop_);
  if (child_ != nullptr) child_->ResizeTerminal(size);
}

void Engine::Execution::Signal(int signal) {
  EXECD_DCHECK_LOOP(*engine_.loop_);
  if (child_ != nullptr) child_->Signal(signal);
}

void Engine::Execution::ApplyOutputPaused() {
  EXECD_DCHECK_LOOP(*engine_.loop_);
  if (child_ != nullptr) child_->SetOutputPaused(output_paused_.load(std::memory_order_relaxed));
}

void Engine::Execution::StopDeadlineTimer() {
  if (deadline_timer_ != 0) engine_.loop_->CancelTimer(deadline_timer_);
  deadline_timer_ = 0;
}

void Engine::Execution::LeavePool() {
  in_pool_ = false;
  StopDeadlineTimer();
}

}  // namespace execd::core
