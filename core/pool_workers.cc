// Pool: a worker's life in its pool, from its spawn and warm-up through the persistent
// protocol's answers to its kill and reaping. The pool's books (idle, waiting, refill,
// shrink) are in pool.cc.
#include <signal.h>

#include <algorithm>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/pool.h"

namespace execd::core {

void Pool::DestroyThenUntrack(std::unique_ptr<ChildProcess> process,
                              const std::function<void(pid_t)>& untrack) {
  const pid_t pid = process->pid();
  ChildProcess::Destroy(std::move(process), [untrack, pid]() { untrack(pid); });
}

void Pool::StartOne() {
  ++spawning_;
  Command command = spec_->command;
  const int64_t generation = generation_;
  const bool prewarmed = spec_->kind == PoolSpec::Kind::kPrewarmed;
  const int64_t address_space =
      deps_.containment->limits_memory() ? 0 : spec_->command.limits.memory_bytes;
  PersistentWorker::Options worker_options;
  worker_options.startup_timeout = spec_->startup_timeout;
  worker_options.kill_grace = deps_.kill_grace;
  // Room for both outputs and the rest of the message, within what protobuf parses.
  worker_options.max_frame_bytes =
      std::min<int64_t>(2 * spec_->max_output_bytes + (1 << 20), std::numeric_limits<int>::max());
  worker_options.address_space_bytes = address_space;
  worker_options.on_reaped = OnReaped();
  worker_options.reap_later = deps_.reap_later;
  ChildProcess::Options child_options;
  child_options.stdin_pipe = true;
  child_options.exit_report = spec_->exit_report;
  child_options.reap_later = deps_.reap_later;
  child_options.address_space_bytes = address_space;
  child_options.kill_grace = deps_.kill_grace;
  child_options.empty_wait = deps_.empty_wait;
  // The spawn may finish after the pool is gone (engine shutdown): it works from a copy
  // of the dependencies (owned by the engine, which outlives its spawn threads), and
  // touches the pool only on the loop, after checking it is still alive.
  deps_.run_blocking([this, deps = deps_, alive = alive_, command = std::move(command), generation,
                      prewarmed, worker_options, child_options]() mutable {
    absl::StatusOr<std::unique_ptr<ChildProcess>> process = absl::UnknownError("unused");
    absl::StatusOr<std::unique_ptr<PersistentWorker>> worker = absl::UnknownError("unused");
    auto group =
        deps.containment->NewGroup(command.limits.memory_bytes, command.limits.max_processes);
    if (!group.ok()) {
      if (prewarmed) {
        process = group.status();
      } else {
        worker = group.status();
      }
    } else if (prewarmed) {
      process = ChildProcess::Spawn(*deps.loop, *deps.os, command, child_options, *std::move(group),
                                    nullptr);
      if (process.ok()) deps.track((*process)->pid());
    } else {
      worker = PersistentWorker::Spawn(*deps.loop, *deps.os, command, worker_options,
                                       *std::move(group), this);
      if (worker.ok()) deps.track((*worker)->pid());
    }
    deps.loop->Post([this, deps, alive = std::move(alive), generation, process = std::move(process),
                     worker = std::move(worker)]() mutable {
      if (!*alive) {  // The pool is gone: killed and reaped here, then untracked.
        if (process.ok()) DestroyThenUntrack(*std::move(process), deps.untrack);
        return;
      }
      OnSpawned(generation, std::move(process), std::move(worker));
    });
  });
}

void Pool::OnSpawned(int64_t generation, absl::StatusOr<std::unique_ptr<ChildProcess>> process,
                     absl::StatusOr<std::unique_ptr<PersistentWorker>> worker) {
  const PublishOnExit publish(*this);
  --spawning_;
  const bool prewarmed = spec_->kind == PoolSpec::Kind::kPrewarmed;
  absl::Status status = prewarmed ? process.status() : worker.status();
  if (status.ok()) {
    ++counters_.started;
    joined_by_write_ = prewarmed ? (*process)->joined_by_write() : (*worker)->joined_by_write();
  }
  if (generation != generation_) {  // Started, or failed, under a retired configuration.
    if (status.ok()) {
      ++counters_.recycled;
      if (prewarmed) {
        Destroy(Idle{*std::move(process), nullptr, {}, generation, 0});
      } else {
        Destroy(*std::move(worker));
      }
    }
    Refill();
    return;
  }
  if (status.ok() && !prewarmed) {
    // In starting_ before Start(): a worker that is already dead fails inside it.
    PersistentWorker* w = worker->get();
    starting_.push_back(Starting{*std::move(worker), generation});
    if (absl::Status started = w->Start(); !started.ok()) w->Kill(started);
    return;
  }
  if (!status.ok()) {
    ++counters_.crashed;
    last_start_error_ = std::string(status.message());
    // Never leave a request waiting on workers that cannot start: the oldest waiter gets
    // the error; the pool tries again for the rest.
    if (!waiting_.empty()) {
      Request* request = waiting_.front().request;
      waiting_.pop_front();
      Publish();
      request->OnDone(absl::Status(
          status.code() == absl::StatusCode::kResourceExhausted ? status.code()
                                                                : absl::StatusCode::kUnavailable,
          absl::StrCat("pool \"", spec_->name, "\" could not start a worker: ", status.message())));
    }
    if (!FailedInARow(++consecutive_start_failures_) || !waiting_.empty()) Refill();
    return;
  }
  if (!spec_->exit_report) {  // Ready once running: nothing tells when it has warmed up.
    Ready(Idle{*std::move(process), nullptr, deps_.loop->clock().Now(), generation, 0});
    return;
  }
  // Its "ready" line is its start-up check: handed out earlier, a process still importing
  // its modules would make its request wait as long as a cold start. (Most recent first,
  // the idle stack would hand out just that one.)
  ChildProcess* p = process->get();
  absl::Status awaited = p->AwaitReady([this, alive = alive_, p](absl::Status ready) mutable {
    if (*alive) OnWarmedUp(p, std::move(ready));
  });
  EventLoop::TimerId timer = 0;
  if (awaited.ok()) {
    timer = deps_.loop->AddTimer(deps_.loop->clock().Now() + spec_->startup_timeout, [this, p]() {
      // Its line may have come in this same turn of the loop, its answer posted after the
      // timers: that answer decides.
      if (!p->awaiting_ready()) return;
      OnWarmedUp(p, absl::DeadlineExceededError(
                        absl::StrCat("it did not report \"ready\" within the startup_timeout of ",
                                     absl::FormatDuration(spec_->startup_timeout))));
    });
  }
  warming_.push_back(WarmingUp{*std::move(process), generation, timer});
  if (!awaited.ok()) OnWarmedUp(p, awaited);
}

void Pool::OnWarmedUp(const ChildProcess* process, absl::Status status) {
  const PublishOnExit publish(*this);
  auto it = std::find_if(warming_.begin(), warming_.end(),
                         [process](const WarmingUp& w) { return w.process.get() == process; });
  if (it == warming_.end()) return;  // Retired meanwhile, or the other of timer and line.
  WarmingUp w = std::move(*it);
  warming_.erase(it);
  if (w.startup_timer != 0) deps_.loop->CancelTimer(w.startup_timer);
  if (status.ok()) {
    Ready(Idle{std::move(w.process), nullptr, deps_.loop->clock().Now(), w.generation, 0});
    return;
  }
  ++counters_.crashed;
  const std::string message = absl::StrCat("pid ", w.process->pid(), ": ", status.message());
  Destroy(Idle{std::move(w.process), nullptr, {}, w.generation, 0});
  StartFailed(message);
}

void Pool::StartFailed(const std::string& message) {
  last_start_error_ = message;
  // The oldest waiter gets the error unless enough other workers are on their way; not
  // after a failure in a row, though: each failure starts a replacement, which would
  // count as on its way for ever.
  if (!waiting_.empty() &&
      (consecutive_start_failures_ > 0 ||
       static_cast<int>(waiting_.size()) > static_cast<int>(idle_.size()) + Preparing())) {
    Request* request = waiting_.front().request;
    waiting_.pop_front();
    Publish();
    request->OnDone(absl::UnavailableError(
        absl::StrCat("pool \"", spec_->name, "\" could not start a worker: ", message)));
  }
  if (!FailedInARow(++consecutive_start_failures_) || !waiting_.empty()) Refill();
}

void Pool::OnWorkerReady(PersistentWorker* worker) {
  EXECD_DCHECK_LOOP(*deps_.loop);
  const PublishOnExit publish(*this);
  for (auto it = starting_.begin(); it != starting_.end(); ++it) {
    if (it->worker.get() != worker) continue;
    Idle idle{nullptr, std::move(it->worker), deps_.loop->clock().Now(), it->generation, 0};
    starting_.erase(it);
    Ready(std::move(idle));
    return;
  }
}

void Pool::OnWorkerResponse(PersistentWorker* worker, worker::v1::WorkResponse response) {
  EXECD_DCHECK_LOOP(*deps_.loop);
  const PublishOnExit publish(*this);
  auto it = std::find_if(busy_.begin(), busy_.end(),
                         [worker](const Busy& b) { return b.worker.get() == worker; });
  if (it == busy_.end()) return;
  consecutive_idle_deaths_ = 0;
  retry_after_ = absl::InfinitePast();
  Busy b = std::move(*it);
  busy_.erase(it);
  Result result;
  result.pid = worker->pid();
  result.status.exited = true;
  result.status.code = response.exit_code();
  result.termination = Termination::kExited;
  const size_t cap = static_cast<size_t>(b.call.max_output_bytes);
  result.stdout_data = std::move(*response.mutable_stdout());
  result.stderr_data = std::move(*response.mutable_stderr());
  for (auto [data, truncated] : {std::pair{&result.stdout_data, &result.stdout_truncated},
                                 std::pair{&result.stderr_data, &result.stderr_truncated}}) {
    if (data->size() > cap) {
      data->resize(cap);
      *truncated = true;
      result.termination = Termination::kOutputLimitExceeded;
    }
  }
  if (b.cancelled || response.was_cancelled()) {
    result.termination = Termination::kCancelled;
    result.status = ExitStatus{};
  }
  result.run = deps_.loop->clock().Now() - b.sent;
  ++b.served;
  if (b.generation != generation_ || (spec_->max_requests > 0 && b.served >= spec_->max_requests)) {
    ++counters_.recycled;
    Destroy(std::move(b.worker));
    Refill();
  } else {
    Ready(Idle{nullptr, std::move(b.worker), {}, b.generation, b.served});
  }
  Publish();
  b.request->OnDone(std::move(result));
}

void Pool::OnWorkerFailed(PersistentWorker* worker, absl::Status why) {
  EXECD_DCHECK_LOOP(*deps_.loop);
  const PublishOnExit publish(*this);
  ++counters_.crashed;
  for (auto it = starting_.begin(); it != starting_.end(); ++it) {
    if (it->worker.get() != worker) continue;
    std::unique_ptr<PersistentWorker> w = std::move(it->worker);
    starting_.erase(it);
    std::string message = Describe(w.get(), why);
    Destroy(std::move(w));
    StartFailed(message);
    return;
  }
  for (auto it = idle_.begin(); it != idle_.end(); ++it) {
    if (it->worker.get() != worker) continue;
    // One that dies before it has served anything, as one that crashes at start-up (right
    // after its health check), is replaced at once only a few times in a row; then at the
    // shrink timer's pace.
    const bool served = it->served > 0;
    Destroy(std::move(it->worker));
    idle_.erase(it);
    if (served || !FailedInARow(++consecutive_idle_deaths_) || !waiting_.empty()) Refill();
    return;
  }
  auto it = std::find_if(busy_.begin(), busy_.end(),
                         [worker](const Busy& b) { return b.worker.get() == worker; });
  if (it == busy_.end()) return;
  Busy b = std::move(*it);
  busy_.erase(it);
  std::string message = Describe(b.worker.get(), why);
  Destroy(std::move(b.worker));
  Refill();
  Publish();
  if (b.cancelled || why.code() == absl::StatusCode::kDeadlineExceeded) {
    // Stopped by execd for the request's own reasons: reported as a command's would be.
    Result result;
    result.pid = worker->pid();
    result.status.signal = SIGKILL;
    result.termination = b.cancelled ? Termination::kCancelled : Termination::kTimedOut;
    result.run = deps_.loop->clock().Now() - b.sent;
    b.request->OnDone(std::move(result));
    return;
  }
  b.request->OnDone(absl::Status(why.code(), message));
}

std::string Pool::Describe(const PersistentWorker* worker, const absl::Status& why) const {
  std::string message = absl::StrCat("worker ", worker->pid(), " of pool \"", spec_->name, "\" ",
                                     why.message(), "; it was killed and is being replaced");
  std::string tail = worker->stderr_tail();
  if (!tail.empty()) {
    if (tail.size() > 512) tail = tail.substr(tail.size() - 512);
    absl::StrAppend(&message, ". Its last stderr: ", tail);
  }
  return message;
}

void Pool::Destroy(std::unique_ptr<PersistentWorker> worker) {
  if (worker == nullptr) return;
  // Dead now, so it calls nothing more: its events may come before the posted destruction
  // (it is the next turn's), when the worker is no longer the pool's, or the pool is gone.
  worker->Kill(absl::CancelledError("retired"), /*quiet=*/true);
  if (!worker->reaped()) CountDying(worker->pid());  // Until Options::on_reaped.
  // Not from inside the worker's own callback.
  deps_.loop->Post([w = std::move(worker)]() mutable { w.reset(); });
}

void Pool::Destroy(Idle idle) {
  Destroy(std::move(idle.worker));
  if (idle.process != nullptr) {
    const pid_t pid = idle.process->pid();
    CountDying(pid);
    deps_.loop->Post([p = std::move(idle.process), pid, on_reaped = OnReaped()]() mutable {
      ChildProcess::Destroy(std::move(p), [on_reaped, pid]() { on_reaped(pid); });
    });
  }
}

void Pool::CountDying(pid_t pid) {
  const EventLoop::TimerId timer = deps_.loop->AddTimer(
      deps_.loop->clock().Now() + deps_.kill_grace, [this, pid]() { StopCountingDying(pid); });
  dying_.push_back(Dying{pid, timer});
}

void Pool::StopCountingDying(pid_t pid) {
  const PublishOnExit publish(*this);
  auto it =
      std::find_if(dying_.begin(), dying_.end(), [pid](const Dying& d) { return d.pid == pid; });
  if (it == dying_.end()) return;      // Reaped before it was counted, or counted out already.
  deps_.loop->CancelTimer(it->timer);  // A no-op when this is the timer.
  dying_.erase(it);
  Refill();
}

std::function<void(pid_t)> Pool::OnReaped() {
  return [this, untrack = deps_.untrack, loop = deps_.loop, alive = alive_](pid_t pid) {
    untrack(pid);
    loop->RunOnLoop([this, alive, pid]() {
      if (*alive) StopCountingDying(pid);
    });
  };
}

}  // namespace execd::core
