// Worker pools: processes started ahead of demand, so a request does not pay for an
// interpreter's or a compiler's start-up.
//   PREWARMED   one-shot processes wait with their pipes attached; a request takes one, its
//               stdin is written, and it runs to its exit like a cold command (the engine
//               drives it as a ChildProcess). Never reused. With exit_report a process is
//               idle only once it has said "ready" (ChildProcess::AwaitReady); without,
//               from its spawn, and then the oldest is handed out first.
//   PERSISTENT  long-lived workers serve requests one at a time over the framed protocol
//               (PersistentWorker); recycled after max_requests.
// The pool keeps min_idle workers ready, plus a burst reserve that doubles each time a
// request finds none idle and halves after an idle_timeout without such a miss (PHP-FPM's
// dynamic spawn rate), refilled between requests: each worker taken is replaced at once,
// or in batches when spawns join a cgroup by a write (see Refill). Idle workers above the
// reserve exit after idle_timeout. When the executable's identity (FileIdentity: device,
// inode, size, modification and change times) changes, every worker of the old generation
// is retired: idle ones at once, busy ones when they finish.
//
// The engine admits at most max_size requests of a pool at once (its scheduler group), so
// a request that reaches the pool always gets a worker: an idle one, one already starting,
// or a new one, started at once or as soon as a killed worker is gone.
//
// A worker the pool killed (crashed, hung, retired) still counts toward max_size until it
// is reaped: a replacement never runs beside a process that can still run. Killing is
// never waited for (the loop waits for nothing); the reaping is an event, and the refill
// follows from it. One that has not died within kill_grace is stuck in the kernel
// (uninterruptible sleep): it can run no code of its own any more, so it stops counting
// then, and one hung filesystem cannot take the pool's whole capacity.
//
// Thread-safety: everything runs on the loop thread, except the spawns, which go through
// `run_blocking` and come back by Post, and stats(), which any thread may read.
#pragma once

#include <sys/stat.h>

#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "core/child_process.h"
#include "core/command.h"
#include "core/containment.h"
#include "core/event_loop.h"
#include "core/persistent_worker.h"
#include "core/spawn.h"
#include "core/stats.h"

namespace execd::core {

struct PoolSpec {
  enum class Kind { kPrewarmed, kPersistent };
  std::string name;
  Kind kind = Kind::kPrewarmed;
  // The worker's validated command (stdin empty); its limits are each worker's.
  Command command;
  int min_idle = 0;
  int max_size = 1;
  absl::Duration idle_timeout = absl::Seconds(60);
  int max_requests = 0;  // PERSISTENT: 0 is unlimited.
  // PREWARMED: each process may report its program's exit on descriptor kExitReportFd
  // (ReportChannel); its command's env says which (kExitReportFdVariable).
  bool exit_report = false;
  absl::Duration startup_timeout = absl::Seconds(10);
  // Per-request default (and maximum) timeout and output cap.
  absl::Duration timeout = absl::Seconds(60);
  int64_t max_output_bytes = 1 << 20;
  // Identifies the configuration this spec came from (its serialised text); a reload that
  // changes it retires the pool's workers.
  std::string fingerprint;
};

absl::string_view PoolKindName(PoolSpec::Kind kind);

// A pool's stats, each once: X(type, name, what); see core/stats.h.
#define EXECD_POOL_STATS(X)                                                             \
  X(int, idle, "workers waiting for a request")                                         \
  X(int, busy, "workers serving a request")                                             \
  X(int, starting, "workers spawned, not yet ready")                                    \
  X(int64_t, started, "workers started")                                                \
  X(int64_t, recycled, "workers retired: max_requests, idle_timeout, a new executable") \
  X(int64_t, crashed, "workers that died, hung, broke the protocol or failed to start") \
  X(int64_t, served, "requests served")                                                 \
  X(int64_t, misses, "requests that found no idle worker")                              \
  X(int64_t, generation, "times the workers were retired for a new configuration or executable")

struct PoolStats {
  EXECD_POOL_STATS(EXECD_STAT_FIELD)
};

class Pool final : public PersistentWorker::Listener {
 public:
  // An admitted request of this pool, as the engine sees it.
  class Request {
   public:
    virtual ~Request() = default;
    // PREWARMED: the process to run the request in; spawned with a stdin pipe, not yet
    // watched. Run Pool::Releaser()'s task once it is destroyed and reaped.
    virtual void OnProcess(std::unique_ptr<ChildProcess> child) = 0;
    // PERSISTENT: the request went to worker `pid`.
    virtual void OnStarted(pid_t pid) = 0;
    // PERSISTENT: the request's result or error; PREWARMED: no process could be had.
    virtual void OnDone(absl::StatusOr<Result> result) = 0;
  };
  // What a PERSISTENT request sends to its worker.
  struct Call {
    std::vector<std::string> arguments;
    std::string stdin_data;
    int64_t max_output_bytes = 0;
    absl::Duration timeout;
    absl::Time deadline = absl::InfiniteFuture();  // The caller's: caps the timeout.
  };

  struct Deps {
    EventLoop* loop = nullptr;
    ProcessOs* os = nullptr;
    Containment* containment = nullptr;
    // Runs a blocking task (a spawn) off the loop thread, on a thread that outlives the
    // processes it starts.
    std::function<void(absl::AnyInvocable<void() &&>)> run_blocking;
    absl::Duration kill_grace = absl::Milliseconds(500);
    absl::Duration empty_wait = absl::Seconds(5);  // As Engine::Options'.
    // Every worker's pid, from its spawn until it is gone, so the engine's orphan sweep
    // (process-group containment) leaves it alone.
    std::function<void(pid_t)> track;
    std::function<void(pid_t)> untrack;
    // Reaps a killed process, given its pidfd, once it dies, then runs `reaped` (see
    // Reaper; Engine::ReapLater).
    ReapLaterFn reap_later;
  };

  Pool(std::shared_ptr<const PoolSpec> spec, Deps deps);
  ~Pool() override;  // Kills every worker. Loop thread, after every request is done.

  const PoolSpec& spec() const { return *spec_; }  // Loop thread.
  // Loop thread: a new configuration, of the same kind. Every worker of the old one is
  // retired (idle ones at once, busy ones when they finish); the pool refills under the new
  // one.
  void Reconfigure(std::shared_ptr<const PoolSpec> spec);
  // Loop thread: fills the pool to min_idle.
  void Start();
  // Loop thread. Finds `request` a worker; the answer comes through its callbacks, maybe
  // later (the worker is starting). `call` is used by PERSISTENT pools.
  void Acquire(Request* request, Call call);
  // Loop thread. A request still waiting for a worker is withdrawn (true; no callback
  // follows). One in a persistent worker has its cancel sent (false; OnDone follows).
  // PREWARMED requests that have their process are cancelled through it instead.
  bool Cancel(Request* request);
  // Loop thread: a task to run once a PREWARMED request's process has been destroyed and
  // reaped, which frees its place in the pool (a process answered from its exit report
  // counts until then). It may outlive the pool, and then does nothing.
  absl::AnyInvocable<void() &&> Releaser();
  // Any thread: the stats as of the pool's last change, without a round trip to the loop
  // (the loop publishes them before it tells a request anything, and after each event).
  PoolStats stats() const;

  // PersistentWorker::Listener.
  void OnWorkerReady(PersistentWorker* worker) override;
  void OnWorkerResponse(PersistentWorker* worker, worker::v1::WorkResponse response) override;
  void OnWorkerFailed(PersistentWorker* worker, absl::Status why) override;

 private:
  struct Idle {
    std::unique_ptr<ChildProcess> process;     // PREWARMED
    std::unique_ptr<PersistentWorker> worker;  // PERSISTENT
    absl::Time since;
    int64_t generation = 0;
    int served = 0;
  };
  struct Busy {  // PERSISTENT
    std::unique_ptr<PersistentWorker> worker;
    Request* request = nullptr;
    Call call;
    int64_t generation = 0;
    int served = 0;
    bool cancelled = false;
    absl::Time sent;
  };
  struct Starting {  // PERSISTENT, spawned, health check in flight.
    std::unique_ptr<PersistentWorker> worker;
    int64_t generation = 0;
  };
  struct WarmingUp {  // PREWARMED with exit_report: spawned, its "ready" not yet in.
    std::unique_ptr<ChildProcess> process;
    int64_t generation = 0;
    EventLoop::TimerId startup_timer = 0;
  };

  // Publishes the pool's stats for stats() when it goes out of scope: opens each entry
  // from the loop (a call, a timer, a posted task) that may change them.
  class PublishOnExit {
   public:
    explicit PublishOnExit(Pool& pool) : pool_(pool) {}
    ~PublishOnExit() { pool_.Publish(); }

   private:
    Pool& pool_;
  };
  // Loop thread: makes stats() return the pool's stats as they are now.
  void Publish();

  // A PREWARMED request's process is gone: one place fewer in use (Releaser).
  void Release();
  void CheckIdentity();
  // Starts a new generation: idle and starting workers go now, busy ones when done.
  void RetireGeneration();
  void Refill();
  void StartOne();
  void OnSpawned(int64_t generation, absl::StatusOr<std::unique_ptr<ChildProcess>> process,
                 absl::StatusOr<std::unique_ptr<PersistentWorker>> worker);
  void Ready(Idle idle);
  // A warming-up process reported ready (OK), or will not be.
  void OnWarmedUp(const ChildProcess* process, absl::Status status);
  // A worker that failed its start (`message` says why) is gone: the oldest waiter gets
  // the error unless enough others are on their way, and the pool refills.
  void StartFailed(const std::string& message);
  int Preparing() const;  // Workers on their way: spawning, starting, warming up.
  void Dispatch(Request* request, Call call, Idle idle);
  void ArmShrink();
  void Shrink();
  // Counts a failed start (or an idle death before serving): true, and the next refill by
  // the shrink timer delayed, once there have been more than a few in a row.
  bool FailedInARow(int failures);
  // Every process of the pool: idle, busy, on its way, or killed and counted (dying_).
  int Total() const;
  // Kills `worker` without waiting; one not dead yet counts in Total() as dying.
  void Destroy(std::unique_ptr<PersistentWorker> worker);
  // An idle entry of either kind: its process is killed and reaped off this call stack,
  // and counted as dying until then.
  void Destroy(Idle idle);
  // `pid`, killed by the pool and not reaped yet, counts in Total() until Reaped(pid), or
  // for kill_grace at most (see the top of this file).
  void CountDying(pid_t pid);
  // `pid` no longer counts: reaped (or presumed stuck in the kernel). A worker may start in
  // its place.
  void StopCountingDying(pid_t pid);
  // What to run once a process of this pool is reaped (on any thread; it may outlive the
  // pool): the orphan sweep's tracking of it ends, and it stops counting as dying.
  std::function<void(pid_t)> OnReaped();
  std::string Describe(const PersistentWorker* worker, const absl::Status& why) const;
  // A pool's process leaves the orphan sweep's care only once it is killed and reaped (by
  // its destructor, or later by the engine's Reaper when it does not die at once):
  // untracked any earlier, a sweep in between could reap it, and its own kill would then
  // aim at a pid free for reuse. (A persistent worker untracks itself when it is reaped:
  // Options::on_reaped.)
  static void DestroyThenUntrack(std::unique_ptr<ChildProcess> process,
                                 const std::function<void(pid_t)>& untrack);

  std::shared_ptr<const PoolSpec> spec_;
  Deps deps_;
  FileIdentity identity_;
  int64_t generation_ = 0;

  std::deque<Idle> idle_;
  std::vector<Busy> busy_;
  std::vector<Starting> starting_;  // PERSISTENT workers in their health check.
  std::vector<WarmingUp> warming_;  // PREWARMED processes yet to report "ready".
  int spawning_ = 0;                // Spawns in flight on run_blocking.
  int prewarmed_busy_ = 0;          // PREWARMED processes handed to requests.
  struct Dying {
    pid_t pid;
    EventLoop::TimerId timer;  // Ends the count at kill_grace.
  };
  std::vector<Dying> dying_;  // Killed by the pool and not reaped yet (CountDying).
  struct Waiting {
    Request* request;
    Call call;
  };
  std::deque<Waiting> waiting_;  // Admitted requests that found no idle worker.

  int burst_ = 0;                 // Extra idle workers kept beyond min_idle after misses.
  bool joined_by_write_ = false;  // The last spawn joined its cgroup by a write: see Refill().
  absl::Time last_miss_ = absl::InfinitePast();
  EventLoop::TimerId shrink_timer_ = 0;
  int consecutive_start_failures_ = 0;
  int consecutive_idle_deaths_ = 0;  // PERSISTENT workers that died idle before serving.
  // After a few failures in a row the shrink timer refills no sooner than this.
  absl::Time retry_after_ = absl::InfinitePast();
  std::string last_start_error_;
  PoolStats counters_;  // The totals; the rest of PoolStats is counted from the lists above.
  mutable absl::Mutex published_mu_;
  PoolStats published_ ABSL_GUARDED_BY(published_mu_);
  uint64_t next_request_id_ = 1;
  bool destroying_ = false;
  // Set while a spawn is in flight, so its completion can tell the pool is gone.
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

}  // namespace execd::core
