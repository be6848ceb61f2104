// Engine::Execution: one command's passage through the engine, from Submit to its
// observer's OnFinished. Callers hold it as a handle (Engine::Cancel and the like take
// it); the engine moves it along through the methods below, and it drives its own child
// (a spawned one, or a pool's process or worker) once it has one.
//
// Thread-safety: methods marked "loop" run on the engine's loop thread only; state() and
// set_state() need the engine's mutex. The rest may run on any thread, but only on the
// one that holds the execution at that stage (a hand-off to another thread is a post,
// which orders them).
#pragma once

#include <atomic>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "core/child_process.h"
#include "core/command.h"
#include "core/engine.h"
#include "core/event_loop.h"
#include "core/pool.h"

namespace execd::core {

class Engine::Execution final : public ChildProcess::Observer, public Pool::Request {
 public:
  enum class State { kQueued, kAdmitted, kDone };

  // `pool` is null for a fresh spawn; `group` is its scheduler group (pool index + 1, or 0).
  Execution(Engine& engine, Id id, Command command, Engine::Observer* observer, int group,
            Pool* pool, absl::Time submitted)
      : engine_(engine),
        id_(id),
        command_(std::move(command)),
        observer_(observer),
        group_(group),
        pool_(pool),
        submitted_(submitted) {}

  Id id() const { return id_; }
  const Command& command() const { return command_; }
  Engine::Observer& observer() const { return *observer_; }
  int group() const { return group_; }
  Pool* pool() const { return pool_; }
  absl::Time submitted() const { return submitted_; }

  State state() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(engine_.mu_) { return state_; }
  void set_state(State state) ABSL_EXCLUSIVE_LOCKS_REQUIRED(engine_.mu_) { state_ = state; }

  // The thread handing it to another counts the hand-off, before it does (each is a
  // wake-up; Result::thread_handoffs).
  void CountHandoff() { ++handoffs_; }
  // It was admitted at `now`, and its child exists from `now` (spawned, or a pool's).
  void MarkAdmitted(absl::Time now) { admitted_ = now; }
  void MarkSpawned(absl::Time now) { spawn_done_ = now; }
  absl::Time admitted() const { return admitted_; }

  // Loop: whether it has a child (from Run until it is destroyed).
  bool has_child() const { return child_ != nullptr; }
  // Loop: a cancel that came before it had a child or a worker, for Run to act on.
  bool cancel_requested() const { return cancel_requested_; }

  // A spawn thread: creates the command's group and spawns its child into it, which takes
  // the command's stdin.
  absl::StatusOr<std::unique_ptr<ChildProcess>> SpawnChild(const ChildProcess::Options& options);
  // Loop: runs `child` (spawned for it, or a pool's process assigned to it): watches it,
  // tells the observer, and stops it at once if a cancel came first. One that cannot be
  // watched is killed, reaped and reported.
  void Run(std::unique_ptr<ChildProcess> child);
  // Loop: asks its pool for a worker; `options` are for a pre-warmed process. The call's
  // deadline holds while it waits.
  void EnterPool(ChildProcess::Options options);
  // Loop: stops it at the stage it has reached: its child is terminated, its wait for a
  // worker ends with CANCELLED, or (not started yet) Run stops it at once.
  void CancelOnLoop();
  // Loop: destroys its child (see the definition for what waits for its reaping).
  void DestroyChild();

  // Loop: interactive sessions; each does nothing without a child.
  void WriteStdin(std::string data);
  void CloseStdin();
  void ResizeTerminal(TerminalSize size);
  void Signal(int signal);

  // Any thread: what output pausing the caller wants; ApplyOutputPaused (loop) makes the
  // child follow the latest wish, whatever order the two run in.
  void set_output_paused(bool paused) { output_paused_.store(paused, std::memory_order_relaxed); }
  void ApplyOutputPaused();

  // ChildProcess::Observer.
  void OnOutput(OutputStream stream, absl::string_view data) override;
  void OnStdinWritten(size_t bytes) override;
  void OnExit(Result result) override;

  // Pool::Request.
  void OnProcess(std::unique_ptr<ChildProcess> child) override;
  void OnStarted(pid_t pid) override;
  void OnDone(absl::StatusOr<Result> result) override;

 private:
  // The engine's timings of the command, into its result.
  void Stamp(Result& result) const;
  void StopDeadlineTimer();
  void LeavePool();

  Engine& engine_;
  const Id id_;
  Command command_;
  Engine::Observer* const observer_;
  const int group_;
  Pool* const pool_;
  const absl::Time submitted_;
  absl::Time admitted_;
  absl::Time spawn_done_;
  State state_ ABSL_GUARDED_BY(engine_.mu_) = State::kQueued;
  int handoffs_ = 0;
  std::atomic<bool> output_paused_{false};
  // Loop thread only.
  bool cancel_requested_ = false;
  std::unique_ptr<ChildProcess> child_;
  bool in_pool_ = false;                   // Waiting for or using a worker.
  ChildProcess::Options child_options_;    // For a pre-warmed process.
  EventLoop::TimerId deadline_timer_ = 0;  // While waiting for a worker.
};

}  // namespace execd::core
