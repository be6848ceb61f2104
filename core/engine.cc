#include "core/engine.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"

namespace execd::core {

// One command's passage through the engine. Fields marked "loop" are touched only on the
// loop thread; `state` is guarded by the engine's mutex.
class Engine::Execution final : public ChildProcess::Observer {
 public:
  enum class State { kQueued, kAdmitted, kDone };

  Execution(Engine& engine, Command command, Engine::Observer* observer)
      : engine_(engine), command_(std::move(command)), observer_(observer) {}

  void OnOutput(OutputStream stream, absl::string_view data) override {
    observer_->OnOutput(stream, data);
  }
  void OnExit(Result result) override {
    result.queued = admitted_ - submitted_;
    result.spawn = spawn_done_ - admitted_;
    engine_.Finish(*this, std::move(result));
  }

  Engine& engine_;
  Command command_;
  Engine::Observer* observer_;
  absl::Time submitted_;
  absl::Time admitted_;    // loop
  absl::Time spawn_done_;  // loop
  State state_ = State::kQueued;
  bool cancel_requested_ = false;        // loop
  std::unique_ptr<ChildProcess> child_;  // loop
};

absl::StatusOr<std::unique_ptr<Engine>> Engine::Create(const Options& options) {
  if (options.max_concurrency < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_concurrency must be at least 1, got ", options.max_concurrency));
  }
  EnsureStandardDescriptorsOpen();
  auto loop = EventLoop::Start(*options.clock);
  if (!loop.ok()) return loop.status();
  return std::unique_ptr<Engine>(new Engine(options, *std::move(loop)));
}

Engine::Engine(const Options& options, std::unique_ptr<EventLoop> loop)
    : options_(options), loop_(std::move(loop)), limit_(options.max_concurrency) {}

Engine::~Engine() { Shutdown(absl::ZeroDuration()); }

absl::StatusOr<std::shared_ptr<Engine::Execution>> Engine::Submit(Command command,
                                                                  Observer* observer) {
  auto execution = std::make_shared<Execution>(*this, std::move(command), observer);
  execution->submitted_ = options_.clock->Now();
  absl::MutexLock lock(&mu_);
  if (draining_) {
    return absl::UnavailableError("the server is shutting down; retry on another replica");
  }
  if (running_ < limit_) {
    ++running_;
    execution->state_ = Execution::State::kAdmitted;
    loop_->Post([this, execution]() mutable { StartOnLoop(std::move(execution)); });
  } else if (queue_.size() < options_.max_queue) {
    queue_.push_back(execution);
  } else {
    return absl::ResourceExhaustedError(absl::StrCat("the server is at capacity: ", running_,
                                                     " commands running and ", queue_.size(),
                                                     " queued (the queue limit); retry later"));
  }
  live_.emplace(execution.get(), execution);
  return execution;
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
  child_options.kill_grace = options_.kill_grace;
  auto child = ChildProcess::Start(*loop_, *options_.os, e.command_, child_options, &e);
  e.spawn_done_ = options_.clock->Now();
  if (!child.ok()) {
    Finish(e, child.status());
    return;
  }
  e.child_ = *std::move(child);
  e.observer_->OnStarted(e.child_->pid(), e.admitted_ - e.submitted_);
}

void Engine::Finish(Execution& execution, absl::StatusOr<Result> result) {
  std::shared_ptr<Execution> keep;
  {
    absl::MutexLock lock(&mu_);
    auto it = live_.find(&execution);
    if (it == live_.end()) return;
    keep = std::move(it->second);
    live_.erase(it);
    bool was_admitted = execution.state_ == Execution::State::kAdmitted;
    execution.state_ = Execution::State::kDone;
    if (was_admitted) {
      --running_;
      AdmitQueuedLocked();
    }
  }
  execution.observer_->OnFinished(std::move(result));
  // The child is destroyed outside its own callback.
  if (execution.child_ != nullptr) {
    loop_->Post([keep = std::move(keep)]() mutable { keep->child_.reset(); });
  }
}

void Engine::AdmitQueuedLocked() {
  while (running_ < limit_ && !queue_.empty()) {
    std::shared_ptr<Execution> next = std::move(queue_.front());
    queue_.pop_front();
    ++running_;
    next->state_ = Execution::State::kAdmitted;
    loop_->Post([this, next = std::move(next)]() mutable { StartOnLoop(std::move(next)); });
  }
}

void Engine::Cancel(const std::shared_ptr<Execution>& execution) {
  {
    absl::MutexLock lock(&mu_);
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
    auto it = std::find(queue_.begin(), queue_.end(), execution);
    if (it != queue_.end()) queue_.erase(it);
  }
  Finish(*execution, absl::CancelledError("cancelled while queued"));
}

void Engine::SetConcurrencyLimit(int limit) {
  absl::MutexLock lock(&mu_);
  limit_ = std::max(1, limit);
  AdmitQueuedLocked();
}

void Engine::Shutdown(absl::Duration drain) {
  std::vector<std::shared_ptr<Execution>> rest;
  {
    absl::MutexLock lock(&mu_);
    draining_ = true;
    auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return live_.empty(); };
    mu_.AwaitWithTimeout(absl::Condition(&idle), drain);
    for (auto& [ptr, execution] : live_) rest.push_back(execution);
  }
  for (auto& execution : rest) Cancel(execution);
  {
    absl::MutexLock lock(&mu_);
    auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return live_.empty(); };
    mu_.Await(absl::Condition(&idle));
  }
  // Children are destroyed by tasks Finish() posted; let them run before returning.
  absl::Notification flushed;
  loop_->Post([&flushed]() mutable { flushed.Notify(); });
  flushed.WaitForNotification();
}

Engine::Stats Engine::stats() const {
  absl::MutexLock lock(&mu_);
  return Stats{running_, queue_.size(), limit_};
}

}  // namespace execd::core
