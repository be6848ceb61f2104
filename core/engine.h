// Engine: runs commands. It admits them through the Scheduler (a concurrency limit, a
// priority queue with expiry, load shedding), runs each inside its own Containment group
// on an event loop, and reports each one's life to an Observer. core::Dispatcher is the
// request path in front of it.
//
// Threading rules (the README's "Threads" table says the same for the whole server):
// - The loop thread multiplexes I/O (pipes, pidfds, timers) and keeps books. It never
//   waits (no sleeps, no polling waits) and does no CPU work that grows with output size;
//   methods documented "loop thread" run only there.
// - Spawn threads create a command's cgroup and spawn it; a spawn blocks its thread until
//   the child has exec'd (CLONE_VFORK), so it never runs on the loop.
// - Callers' threads (gRPC's) never wait for the loop: Submit hands a command admitted at
//   once straight to a spawn thread (two hand-offs to its result: spawn thread, loop).
//
// Thread-safety: all public methods may be called from any thread. Observer callbacks run
// on the engine's loop thread, except OnFinished for a request ended before it ran: one
// cancelled while queued runs on the thread that called Cancel, one displaced from a full
// queue on the thread of the Submit that displaced it, one whose deadline passed as it was
// admitted on the thread that admitted it. None is called with an engine lock held.
#pragma once

#include <sys/types.h>

#include <array>
#include <cstddef>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "core/child_process.h"
#include "core/clock.h"
#include "core/command.h"
#include "core/containment.h"
#include "core/event_loop.h"
#include "core/metrics.h"
#include "core/orphan_sweep.h"
#include "core/pool.h"
#include "core/pool_set.h"
#include "core/reaper.h"
#include "core/retry.h"
#include "core/scheduler.h"
#include "core/spawn.h"
#include "core/spawn_threads.h"

namespace execd::core {

class Engine {
 public:
  struct Options {
    int max_concurrency = 8;
    size_t max_queue = 1024;
    absl::Duration kill_grace = absl::Milliseconds(500);
    // After a command's leader exited and its processes were killed: how long to wait for
    // them all to be gone before answering anyway (one stuck in the kernel cannot die yet).
    absl::Duration empty_wait = absl::Seconds(5);
    Containment::Mode containment = Containment::Mode::kAuto;
    // Threads that spawn children. A spawn blocks its thread until the child has exec'd
    // (CLONE_VFORK), so spawns run here, in parallel, and not on the event loop.
    int spawn_threads = 2;
    // stdin of at least this many bytes goes to the child as a sealed memfd instead of
    // through a pipe (0: always a pipe).
    int64_t memfd_stdin_bytes = 1 << 20;
    ProcessOs* os = &SystemProcessOs();
    const Clock* clock = &MonotonicClock::Get();
    // Worker pools, validated (names unique).
    std::vector<PoolSpec> pools;
    // Where the engine reports sheds, spawn errors and commands' ends.
    Metrics* metrics = &Metrics::Null();
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
    // cancelled, expired or shed while queued, server shutting down).
    virtual void OnFinished(absl::StatusOr<Result> result) = 0;
    // Commands with keep_stdin_open: `bytes` given to WriteStdin (or the command's own
    // stdin_data) have left execd: written to the child, or dropped because it closed its
    // stdin. Lets a caller bound what it queues. Never after the command has exited.
    virtual void OnStdinWritten(size_t bytes) { (void)bytes; }
  };

  // A submitted command, as its caller holds it (core/execution.h).
  class Execution;

  static absl::StatusOr<std::unique_ptr<Engine>> Create(const Options& options);
  // Cancels whatever still runs and waits for it.
  ~Engine();

  // Queues `command`. Rejects at once (the observer is not called) with RESOURCE_EXHAUSTED
  // (and a retry pushback payload) when the queue is full, DEADLINE_EXCEEDED when its
  // deadline has already passed, FAILED_PRECONDITION when it asks for a limit this host
  // cannot enforce, and UNAVAILABLE while draining. `observer` must stay alive until its
  // OnFinished.
  absl::StatusOr<std::shared_ptr<Execution>> Submit(Command command, Observer* observer);
  // Stops the execution: a queued one finishes with CANCELLED, a running one is terminated.
  void Cancel(const std::shared_ptr<Execution>& execution);

  // Back-pressure for streamed output: while paused, the child's output is not read, so
  // it blocks on its pipe once that is full.
  void SetOutputPaused(const std::shared_ptr<Execution>& execution, bool paused);

  // Interactive sessions (commands with keep_stdin_open), once the observer has seen
  // OnStarted. WriteStdin queues more bytes for the child's stdin, written in order without
  // blocking (see Observer::OnStdinWritten); CloseStdin gives the child end of file after
  // them. Signal sends `signal` to the command's process group: only SIGHUP, SIGINT,
  // SIGQUIT, SIGKILL, SIGUSR1, SIGUSR2, SIGTERM and SIGWINCH (INVALID_ARGUMENT otherwise).
  // ResizeTerminal sets the size of a command's pseudo-terminal (Command::terminal); its
  // foreground process group gets SIGWINCH. All do nothing once the command has ended.
  void WriteStdin(const std::shared_ptr<Execution>& execution, std::string data);
  void CloseStdin(const std::shared_ptr<Execution>& execution);
  absl::Status Signal(const std::shared_ptr<Execution>& execution, int signal);
  // Whether Signal may send `signal`, with the INVALID_ARGUMENT it would return.
  static absl::Status CheckSignal(int signal);
  void ResizeTerminal(const std::shared_ptr<Execution>& execution, TerminalSize size);

  // A queue place for a request that waits outside the engine (for an identical request's
  // result): it counts in max_queue and in stats().queued until released. The refusal
  // when the queue is full, or UNAVAILABLE while draining.
  absl::Status HoldQueuePlace(int priority);
  void ReleaseQueuePlace(int priority);

  void SetConcurrencyLimit(int limit);
  // Callers' shares of the concurrency limit, by Command::caller; one not named has
  // `default_share` (Scheduler::SetShares).
  void SetShares(absl::flat_hash_map<std::string, int> shares, int default_share);
  // Refuses new work from now on (UNAVAILABLE); queued and running work goes on.
  void StopAccepting();
  // StopAccepting, then waits up to `drain` for admitted and queued work to end, then
  // cancels the rest and waits for it to be reaped.
  void Shutdown(absl::Duration drain);
  // Any thread: a Shutdown waiting out its drain (now or later) cancels the rest at once.
  void CutDrainShort();

  struct Stats {
    int running = 0;
    size_t queued = 0;  // Queued commands and held queue places,
    std::array<size_t, Scheduler::kPriorities> queued_by_priority = {};  // by priority.
    size_t queue_capacity = 0;
    int limit = 0;
  };
  Stats stats() const;

  // The current configuration of the pool named `name`, or null.
  std::shared_ptr<const PoolSpec> FindPool(absl::string_view name) const;
  // The pools' names, in configuration order.
  std::vector<std::string> PoolNames() const;
  // Applies a new configuration of the same pools (same names): each pool whose
  // configuration changed retires its workers and refills under the new one. Returns the
  // names of the pools that changed, once their stats show the new generation;
  // FAILED_PRECONDITION (and no change) if pools were added or removed, or a pool's kind
  // changed, which takes a restart. It waits for the loop: not from a gRPC thread.
  absl::StatusOr<std::vector<std::string>> ReloadPools(std::vector<PoolSpec> pools);
  using PoolStatus = core::PoolStatus;
  // The pools' stats as the loop last published them; no round trip to the loop.
  std::vector<PoolStatus> PoolStatuses() const;
  // Returns once the loop has run every task handed to it before the call, so that what a
  // caller asked for has reached it. It waits for the loop: not from a gRPC thread.
  void AwaitLoop();
  const Clock& clock() const { return *options_.clock; }
  Metrics& metrics() const { return *options_.metrics; }
  const Containment& containment() const { return *containment_; }
  // Memory the running commands and pool workers use now: all of it where a memory
  // controller over them tells (Containment::CommandsMemoryBytes); else the resident
  // memory of their programs (each of a pipeline's), without what those fork. Reads
  // /proc: for a scrape now and then.
  int64_t CommandsMemoryBytes() const;
  // The commands' CPU use and stall so far, where the containment tells them
  // (Containment::CommandsCpu); none otherwise.
  std::optional<CpuTotals> CommandsCpu() const { return containment_->CommandsCpu(); }
  // Whether the orphan sweep counts `pid` as one of execd's own (a running command's
  // program or a pool's process, not yet reaped) and so leaves it alone.
  bool Tracks(pid_t pid) const;

 private:
  using Id = Scheduler::Id;
  Engine(const Options& options, std::unique_ptr<EventLoop> loop,
         std::unique_ptr<Containment> containment);
  // Starts an admitted command: on the loop (a pooled one, or one started from the queue).
  void StartOnLoop(std::shared_ptr<Execution> execution);
  // Any thread: hands an admitted fresh command to a spawn thread.
  void StartFresh(std::shared_ptr<Execution> execution);
  // Marks `e` admitted and gives its child's options, or finishes it (deadline passed).
  std::optional<ChildProcess::Options> Admit(Execution& e);
  // On a spawn thread: creates the command's group and spawns it, then has the loop run it.
  void Spawn(std::shared_ptr<Execution> execution, ChildProcess::Options options);
  // Any thread (the work is the loop's): a killed child not dead at once is reaped by
  // reaper_, then `reaped` runs.
  void ReapLater(UniqueFd pidfd, absl::AnyInvocable<void() &&> reaped);
  // Ends `execution`: its scheduler slot goes to the next, and its observer hears `result`
  // (after its child is destroyed, on the loop).
  void Finish(Execution& execution, absl::StatusOr<Result> result);
  // Posts StartOnLoop for every entry the scheduler lets run now.
  void StartRunnableLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // (Re)arms the loop timer for the scheduler's next queue expiry.
  void ArmExpiryLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ExpireQueued();
  // The refusals of a new request, each counted as a shed: the queue is full (with a retry
  // pushback), or the server is draining.
  absl::Status Overloaded() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status Draining() const;
  absl::Status CheckEnforceable(const Command& command) const;

  const Options options_;
  std::unique_ptr<EventLoop> loop_;
  std::unique_ptr<Containment> containment_;

  mutable absl::Mutex mu_;
  Scheduler scheduler_ ABSL_GUARDED_BY(mu_);
  bool draining_ ABSL_GUARDED_BY(mu_) = false;
  bool drain_cut_ ABSL_GUARDED_BY(mu_) = false;
  Id next_id_ ABSL_GUARDED_BY(mu_) = 1;
  absl::flat_hash_map<Id, std::shared_ptr<Execution>> live_ ABSL_GUARDED_BY(mu_);
  // Started commands that have left live_ but whose child and observer are still being
  // finished on the loop thread.
  int finishing_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Time armed_expiry_ ABSL_GUARDED_BY(mu_) = absl::InfiniteFuture();
  // Mean run time of recent commands, for the retry pushback estimate.
  absl::Duration mean_run_ ABSL_GUARDED_BY(mu_) = absl::Milliseconds(100);

  // Loop thread only.
  EventLoop::TimerId expiry_timer_ = 0;

  std::unique_ptr<SpawnThreads> spawn_threads_;

  // Loop thread only: reaps killed children (pool processes, a command's that could not be
  // watched, orphans the sweep killed) that do not die at once; reap_later_ hands them to
  // it, for ChildProcess and the pools.
  std::unique_ptr<Reaper> reaper_;
  ReapLaterFn reap_later_;
  // Every running command's programs and every pool process are tracked here, so that the
  // orphan sweep (process-group containment) leaves them alone.
  std::unique_ptr<OrphanSweeper> orphans_;

  std::unique_ptr<PoolSet> pools_;
};

}  // namespace execd::core
