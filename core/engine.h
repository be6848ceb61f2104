// Engine: the core's front door. It admits commands under a concurrency limit (a bounded FIFO
// queue behind it), runs them on an event loop, and reports each one's life to an Observer.
//
// Thread-safety: all public methods may be called from any thread. Observer callbacks run
// on the engine's loop thread, except OnFinished for a request cancelled while queued,
// which runs on the thread that called Cancel.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <deque>
#include <memory>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "core/child_process.h"
#include "core/clock.h"
#include "core/command.h"
#include "core/event_loop.h"
#include "core/spawn.h"

namespace execd::core {

class Engine {
 public:
  struct Options {
    int max_concurrency = 8;
    size_t max_queue = 1024;
    absl::Duration kill_grace = absl::Milliseconds(500);
    ProcessOs* os = &SystemProcessOs();
    const Clock* clock = &MonotonicClock::Get();
  };

  class Observer {
   public:
    virtual ~Observer() = default;
    virtual void OnStarted(pid_t pid, absl::Duration queued) {
      (void)pid;
      (void)queued;
    }
    virtual void OnOutput(OutputStream stream, absl::string_view data) {
      (void)stream;
      (void)data;
    }
    // Exactly once, last: the result, or why the command never started (spawn error,
    // cancelled or deadline passed while queued, server shutting down).
    virtual void OnFinished(absl::StatusOr<Result> result) = 0;
  };

  class Execution;

  static absl::StatusOr<std::unique_ptr<Engine>> Create(const Options& options);
  // Cancels whatever still runs and waits for it.
  ~Engine();

  // Queues `command`. Rejects at once (the observer is not called) with RESOURCE_EXHAUSTED
  // when the queue is full and UNAVAILABLE while draining. `observer` must stay alive until
  // its OnFinished.
  absl::StatusOr<std::shared_ptr<Execution>> Submit(Command command, Observer* observer);
  // Stops the execution: a queued one finishes with CANCELLED, a running one is terminated.
  void Cancel(const std::shared_ptr<Execution>& execution);

  void SetConcurrencyLimit(int limit);
  // Refuses new work from now on, waits up to `drain` for admitted and queued work to end,
  // then cancels the rest and waits for it to be reaped.
  void Shutdown(absl::Duration drain);

  struct Stats {
    int running = 0;
    size_t queued = 0;
    int limit = 0;
  };
  Stats stats() const;
  const Clock& clock() const { return *options_.clock; }

 private:
  Engine(const Options& options, std::unique_ptr<EventLoop> loop);
  void StartOnLoop(std::shared_ptr<Execution> execution);
  void Finish(Execution& execution, absl::StatusOr<Result> result);
  void AdmitQueuedLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const Options options_;
  std::unique_ptr<EventLoop> loop_;

  mutable absl::Mutex mu_;
  int limit_ ABSL_GUARDED_BY(mu_);
  int running_ ABSL_GUARDED_BY(mu_) = 0;
  bool draining_ ABSL_GUARDED_BY(mu_) = false;
  std::deque<std::shared_ptr<Execution>> queue_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<Execution*, std::shared_ptr<Execution>> live_ ABSL_GUARDED_BY(mu_);
};

}  // namespace execd::core
