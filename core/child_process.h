// ChildProcess: one running command driven by an EventLoop. Its parts, each on its own
// descriptors: the stdio plan decides the child's descriptors before any exists; a
// StdinFeeder writes its stdin; an OutputCollector reads, caps and batches its output; a
// ReportChannel reads its own report of its exit (pre-warmed processes); the ProcessTree
// holds its processes and ends them. This class runs the command's story across them: the
// timeout, termination, the exit, and the one result.
//
// Thread-safety: Spawn() may run on any thread; from Watch() on, the object is used and
// destroyed on the loop thread only.
#pragma once

#include <sys/types.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "core/command.h"
#include "core/containment.h"
#include "core/event_loop.h"
#include "core/output_collector.h"
#include "core/process_tree.h"
#include "core/reaper.h"
#include "core/report_channel.h"
#include "core/spawn.h"
#include "core/stdin_feeder.h"

namespace execd::core {

class ChildProcess final : private ProcessTree::Listener,
                           private OutputCollector::Listener,
                           private ReportChannel::Listener,
                           private StdinFeeder::Listener {
 public:
  class Observer {
   public:
    virtual ~Observer() = default;
    // Only when the command has stream_output set; `data` is valid for the call only.
    virtual void OnOutput(OutputStream stream, absl::string_view data) = 0;
    // Exactly once, last. The observer may destroy the ChildProcess afterwards, but not from
    // inside this call.
    virtual void OnExit(Result result) = 0;
    // Only when the command has keep_stdin_open: `bytes` of its stdin left execd, written
    // to the child or dropped because the child closed its stdin. Never after OnExit.
    virtual void OnStdinWritten(size_t bytes) { (void)bytes; }
  };

  struct Options {
    absl::Duration timeout = absl::Seconds(60);
    // Time between SIGTERM and SIGKILL when the child is stopped for a timeout or cancel.
    absl::Duration kill_grace = absl::Milliseconds(500);
    // RLIMIT_AS for the child, where the containment cannot limit memory (0: none).
    int64_t address_space_bytes = 0;
    // How long to wait, after the leader exited and the group was killed, for the rest of
    // the command's processes to be gone before reporting anyway.
    absl::Duration empty_wait = absl::Seconds(5);
    // The caller's deadline, on the loop's clock: when it comes before the timeout (which
    // counts from the exec, however long the spawn took), nobody waits for the result any
    // more, so the child is killed at once instead of SIGTERM first.
    absl::Time deadline = absl::InfiniteFuture();
    // Give the child a stdin pipe even though the command has no stdin data yet: a
    // pre-warmed process gets its request's stdin later, through Assign().
    bool stdin_pipe = false;
    // A single program, not on a terminal, may report its own exit on its descriptor 3
    // (ReportChannel): once the report and the end of both outputs are in, the command is
    // over: the rest of its processes are killed and the result is reported without
    // waiting for the kernel to tear the process down (half a millisecond or more for an
    // interpreter). Anything else on the descriptor is ignored, and the exit is waited for
    // as without it. Before that, a pre-warmed process says it has warmed up with a line
    // "ready\n" (AwaitReady).
    bool exit_report = false;
    // Streamed output is batched per stream and handed on when a batch reaches
    // stream_chunk_bytes or its first byte is stream_flush_interval old, whichever comes
    // first; everything is handed on before OnExit.
    int64_t stream_chunk_bytes = 64 << 10;
    // stdin of at least this many bytes goes to the child as a sealed memfd rather than
    // through a pipe (0: always a pipe).
    int64_t memfd_stdin_bytes = 1 << 20;
    absl::Duration stream_flush_interval = absl::Milliseconds(10);
    // Takes the pidfd of a program that was still running when the object was destroyed
    // and did not die of its SIGKILL at once (stuck in the kernel), reaps it later, then
    // runs `reaped`; called on the loop, or on a spawn thread for a start that failed.
    // Without it, the destructor waits in waitpid.
    ReapLaterFn reap_later;
  };

  // Spawns `command` (its stdin_data is moved out) inside `group`, on the calling thread,
  // which must outlive the child (it is the parent-death signal's reference). Nothing is
  // watched yet. On error nothing is left running.
  static absl::StatusOr<std::unique_ptr<ChildProcess>> Spawn(
      EventLoop& loop, ProcessOs& os, Command& command, const Options& options,
      std::unique_ptr<Containment::Group> group, Observer* observer);
  // Loop thread: starts watching the child's descriptors and its timeout. On error the
  // caller destroys the object, which kills the child.
  absl::Status Watch();
  // Before Watch(), for a pre-warmed child spawned with Options::stdin_pipe: hands it to a
  // request. The request's stdin is written, its caps apply, and its timeout and run time
  // count from now.
  void Assign(Observer* observer, std::string stdin_data, const Limits& limits, bool stream_output,
              const Options& options);
  // Before Watch(): whether the process is still running (a pre-warmed child may have
  // died while it waited).
  bool Alive() const { return tree_.Alive(); }
  // Loop thread, before Watch(), for a child spawned with Options::exit_report: waits for
  // its line "ready\n" (ReportChannel::AwaitReady), then runs `done` with OK, or with why
  // the child will not be ready. `done` runs on the loop as a task of its own (it may
  // destroy this object), and not at all if this object is destroyed first.
  absl::Status AwaitReady(absl::AnyInvocable<void(absl::Status) &&> done);
  // AwaitReady's line (or the end of the descriptor) has not come yet: once it has, its
  // `done` is on its way.
  bool awaiting_ready() const { return report_.awaiting_ready(); }
  // Kills and reaps the process group if it is still running (server shutdown).
  ~ChildProcess() override;
  // Destroys `child` and runs `reaped` once every one of its programs has been reaped: at
  // once, or later for one handed to Options::reap_later.
  static void Destroy(std::unique_ptr<ChildProcess> child, absl::AnyInvocable<void() &&> reaped);

  // Stops the child for `reason`. A timeout sends SIGTERM to the group and SIGKILL after
  // the grace; a cancel (the caller is gone), an expired caller deadline or an output cap
  // SIGKILLs everything at once. The first reason given is the one reported. No-op once the
  // child has exited.
  void Terminate(Termination reason, bool immediately = false);

  // The first program's pid (the only one unless the command is a pipeline).
  pid_t pid() const { return tree_.pid(); }
  // A program joined its cgroup by a cgroup.procs write (SpawnedProcess::joined_by_write).
  bool joined_by_write() const { return tree_.joined_by_write(); }
  // Every program's pid, a pipeline's in order.
  std::vector<pid_t> pids() const { return tree_.pids(); }
  // Loop thread, after Watch(): stops (or resumes) reading the child's output, so a child
  // that writes faster than its caller reads blocks on its full pipe instead of execd
  // buffering without bound.
  void SetOutputPaused(bool paused);

  // Loop thread, after Watch(), for a command with keep_stdin_open (an interactive session):
  // queues `data` for the child's stdin, written without blocking as the child reads.
  // Dropped (and reported written) once the child closed its stdin; ignored after the exit.
  void AppendStdin(std::string data);
  // The child reads end of file once the queued bytes are written.
  void CloseStdin();
  // Sends `signal` to the command's process group, unless it has exited.
  void Signal(int signal);
  // For a command on a pseudo-terminal: its new size (the kernel sends SIGWINCH).
  void ResizeTerminal(TerminalSize size);

 private:
  ChildProcess(EventLoop& loop, const Command& command, const Options& options,
               std::unique_ptr<Containment::Group> group, Observer* observer);
  static OutputCollector::Settings OutputSettings(const Limits& limits, bool stream_output,
                                                  const Options& options);

  // ProcessTree::Listener: the command is over once the group is empty (or empty_wait
  // has passed).
  void OnProgramsExited() override;
  // OutputCollector::Listener.
  void OnOutput(OutputStream stream, absl::string_view data) override;
  void OnOutputCapped() override { Terminate(Termination::kOutputLimitExceeded); }
  void OnOutputRead() override { FinishIfReported(); }
  void OnExitReleased() override;
  // ReportChannel::Listener.
  void OnReportEnded(std::optional<ExitReport> report) override;
  // StdinFeeder::Listener.
  void OnStdinWritten(size_t bytes) override { observer_->OnStdinWritten(bytes); }

  // With an exit report and both outputs at their end: the command is over.
  void FinishIfReported();
  // The command's run is over (its programs reaped, or its exit reported): stdin closes,
  // the timeout and the kill grace stop, and the run time is taken.
  void EndRun();
  void Finish();
  Termination DecideTermination(const LimitHits& hits) const;

  EventLoop& loop_;
  Observer* observer_;
  absl::Duration kill_grace_;
  absl::Duration empty_wait_;
  const absl::Duration cpu_limit_;
  bool terminal_ = false;  // stdin and stdout are the master side of a pseudo-terminal.

  // Declared first, so destroyed last: the descriptors close before the kill.
  ProcessTree tree_;
  OutputCollector collector_{loop_, this};
  StdinFeeder stdin_{loop_, this};
  ReportChannel report_{loop_};
  std::optional<ExitReport> reported_;  // The report, while it counts.
  bool answered_from_report_ = false;   // OnExit came from the report; not yet reaped.

  EventLoop::TimerId timeout_timer_ = 0;  // The timeout; then the exit held for the output.
  absl::Duration timeout_;
  absl::Time deadline_ = absl::InfiniteFuture();
  bool watched_ = false;
  bool terminating_ = false;
  bool exited_ = false;
  Result result_;
  absl::Time exec_done_;
};

}  // namespace execd::core
