// ProcessTree: the processes of one command. Its programs (one, or a pipeline's in order)
// each lead a process group of their own and are watched through their pidfds; the
// containment group holds whatever they start, wherever it goes. The tree signals them,
// stops them (SIGTERM, then SIGKILL once the grace is over), reaps them, and waits, on the
// loop's timers, for the group to empty. A program that exits before the others is not
// reaped until they all have, so its pid (its process group id) cannot be reused while
// execd may signal it. Destroyed before they are reaped, it kills them and reaps them: at
// once, or through reap_later for one that does not die at once.
//
// Thread-safety: spawned on any thread; from Watch() on, used and destroyed on the loop
// thread only.
#pragma once

#include <sys/types.h>

#include <memory>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/time/time.h"
#include "core/command.h"
#include "core/containment.h"
#include "core/event_loop.h"
#include "core/reaper.h"
#include "core/spawn.h"
#include "core/unique_fd.h"

namespace execd::core {

class ProcessTree final : public EventLoop::FdHandler {
 public:
  struct Program {
    pid_t pid = -1;
    UniqueFd pidfd;  // Closed once the program has exited (a pipeline's) or is reaped.
    ExitStatus status;
    absl::Duration cpu;
  };
  class Listener {
   public:
    virtual ~Listener() = default;
    // Every program has exited and is reaped; the group may still hold other processes.
    virtual void OnProgramsExited() = 0;
  };

  ProcessTree(EventLoop& loop, std::unique_ptr<Containment::Group> group, ReapLaterFn reap_later)
      : loop_(loop), group_(std::move(group)), reap_later_(std::move(reap_later)) {}
  ~ProcessTree() override;
  ProcessTree(const ProcessTree&) = delete;
  ProcessTree& operator=(const ProcessTree&) = delete;

  // Spawns `command`'s programs in the group, each from `spec` (filled in but for stdin and
  // stdout): the first reads `first_stdin`, each the next through a pipe from `os`, the
  // last writes `last_stdout`. On error those started are killed and reaped with the tree.
  absl::Status Spawn(ProcessOs& os, const Command& command, SpawnSpec spec, int first_stdin,
                     int last_stdout);
  // What to run once every program is reaped, and the group gone: at the tree's
  // destruction, or later through reap_later.
  void OnReaped(absl::AnyInvocable<void() &&> reaped) { on_reaped_ = std::move(reaped); }
  absl::Status Watch(Listener* listener);
  // No program's exit is wanted any more (the command was answered from its report).
  void Unwatch();

  pid_t pid() const { return programs_.front().pid; }
  std::vector<pid_t> pids() const;
  bool joined_by_write() const { return joined_by_write_; }
  // Whether the first program is still running.
  bool Alive() const;
  // Every program has exited and is reaped.
  bool reaped() const { return reaped_; }
  const std::vector<Program>& programs() const { return programs_; }
  // The reaped programs' CPU times and largest RSS.
  const ResourceUsage& usage() const { return usage_; }
  // The first program's exit, as it reported it itself (ReportChannel).
  void SetReportedExit(const ExitStatus& status, absl::Duration cpu);

  // Sends `signal` to each program's process group, a pipeline's last first.
  void Signal(int signal);
  // SIGKILLs every process of the command, wherever it went.
  void KillAll();
  // SIGTERM (and SIGCONT: a stopped process acts on it only once continued), then KillAll
  // after `grace` unless CancelKill() comes first.
  void StopGracefully(absl::Duration grace);
  void CancelKill();
  // Once the programs are reaped: runs `done` when no process of the group is left (at
  // once, if none is), or at `deadline`, giving up on those that cannot die yet.
  void AwaitEmpty(absl::Time deadline, absl::AnyInvocable<void() &&> done);
  LimitHits Hits() { return group_->Hits(); }
  int64_t PeakMemoryBytes() { return group_->PeakMemoryBytes(); }

  void OnFdReady(int fd, uint32_t events) override;

 private:
  // A program's pidfd is readable.
  void OnProgramExited(size_t index);
  // The last running program, `last`, exited: reaps them all, unless it is not yet
  // reapable (false).
  bool ReapAll(size_t last);
  void CheckEmpty(absl::Duration backoff);
  void Close(UniqueFd& pidfd);

  EventLoop& loop_;
  std::unique_ptr<Containment::Group> group_;
  ReapLaterFn reap_later_;
  absl::AnyInvocable<void() &&> on_reaped_;
  Listener* listener_ = nullptr;
  std::vector<Program> programs_;
  size_t running_ = 0;  // Programs whose pidfd is open.
  bool joined_by_write_ = false;
  bool watched_ = false;
  bool reaped_ = false;
  ResourceUsage usage_;
  EventLoop::TimerId kill_timer_ = 0;
  EventLoop::TimerId empty_timer_ = 0;
  absl::Time empty_deadline_;
  absl::AnyInvocable<void() &&> on_empty_;
};

}  // namespace execd::core
