// ChildProcess: one running child driven by an EventLoop. It feeds stdin, reads stdout and
// stderr without blocking, caps captured output, enforces the timeout, and when the child
// ends for any reason kills its whole process group and reaps it.
//
// Thread-safety: Spawn() may run on any thread; from Watch() on, the object is used and
// destroyed on the loop thread only.
#pragma once

#include <sys/types.h>

#include <array>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "core/command.h"
#include "core/containment.h"
#include "core/event_loop.h"
#include "core/reaper.h"
#include "core/spawn.h"
#include "core/unique_fd.h"

namespace execd::core {

class ChildProcess final : public EventLoop::FdHandler {
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
    // A single program, not on a terminal, may report its own exit on its descriptor 3: one
    // line "exit CODE USER_US SYSTEM_US MAX_RSS_KIB\n", written after it closed its stdout
    // and stderr, just before it exits (a PREWARMED pool's exit_report). Once the report
    // and the end of both outputs are in, the command is over: the rest of its processes
    // are killed and the result is reported without waiting for the kernel to tear the
    // process down (half a millisecond or more for an interpreter). Anything else on the
    // descriptor is ignored, and the exit is waited for as without it. Before that, a
    // pre-warmed process says it has warmed up with a line "ready\n" (AwaitReady).
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
  bool Alive() const;
  // Loop thread, before Watch(), for a child spawned with Options::exit_report: waits for
  // its line "ready\n" on the report descriptor, then runs `done` with OK, or with why the
  // child will not be ready (it wrote something else, or closed the descriptor, as it
  // does when it dies). `done` runs on the loop as a task of its own (it may destroy this
  // object), and not at all if this object is destroyed first.
  absl::Status AwaitReady(absl::AnyInvocable<void(absl::Status) &&> done);
  // AwaitReady's line (or the end of the descriptor) has not come yet: once it has, its
  // `done` is on its way.
  bool awaiting_ready() const { return static_cast<bool>(on_ready_); }
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
  pid_t pid() const { return programs_.front().pid; }
  // A program joined its cgroup by a cgroup.procs write (SpawnedProcess::joined_by_write).
  bool joined_by_write() const { return joined_by_write_; }
  // Every program's pid, a pipeline's in order.
  std::vector<pid_t> pids() const;
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

  void OnFdReady(int fd, uint32_t events) override;

 private:
  ChildProcess(EventLoop& loop, const Command& command, const Options& options, Observer* observer);
  void ReadOutput(int index, bool drain);
  void Deliver(int index, const char* data, size_t size);
  // Streamed output: hands on batch_[index] in chunks while the output is not paused, the
  // last one short too if `partial`.
  void HandOn(int index, bool partial);
  void ArmFlush(absl::Duration after);
  // Hands on all it can; then, if the exit waits for that, reports it.
  void FlushBatches();
  // Writes queued stdin until it is all written or the pipe is full; sets *broken when
  // the child has closed its stdin. Returns the bytes written.
  size_t WriteQueuedStdin(bool* broken);
  void WriteStdin();
  // WriteStdin for keep_stdin_open: the pipe stays open (and unwatched) when it drains.
  void WriteSessionStdin(bool reader_gone);
  void CloseStream(UniqueFd& fd);
  // Reads what the report descriptor has into report_line_: false while a line may still
  // come; true once it has one (`*end`, its newline's index) or never will: the
  // descriptor ended (`*closed`; or failed), or the line grew too long (`*end` npos).
  bool ReadReportLine(size_t* end, bool* closed);
  void ReadExitReport();  // The exit report's descriptor is readable.
  void ReadReadyLine();   // The same, before Watch(): AwaitReady().
  // With an exit report and both outputs at their end: the command is over.
  void FinishIfReported();
  // A program's pidfd is readable.
  void OnProgramExited(size_t index);
  // The last running program has exited: the command is over.
  void OnExited(size_t last);
  // The command's run is over (its programs reaped, or its exit reported): stdin closes,
  // the timeout and the kill grace stop, and the run time is taken.
  void EndRun();
  // Reports once every process of the command is gone (or `empty_wait` has passed).
  void FinishWhenEmpty(absl::Duration backoff);
  void Finish();
  void KillGroup(int signal);
  void KillAll();
  Termination DecideTermination(const LimitHits& hits) const;

  EventLoop& loop_;
  Observer* observer_;
  bool stream_output_;
  int64_t max_output_bytes_;
  absl::Duration kill_grace_;
  absl::Duration empty_wait_;
  const absl::Duration cpu_limit_;
  std::unique_ptr<Containment::Group> group_;

  // The command's programs: one, or a pipeline's in order, each the leader of its own
  // process group. A program that exits before the others is not reaped until they all
  // have, so its pid (its process group id) cannot be reused while execd may signal it.
  struct Program {
    pid_t pid = -1;
    UniqueFd pidfd;
    ExitStatus status;
    absl::Duration cpu;
  };
  std::vector<Program> programs_;
  size_t running_ = 0;
  ReapLaterFn reap_later_;
  absl::AnyInvocable<void() &&> on_reaped_;  // From Destroy().

  UniqueFd stdin_;
  std::array<UniqueFd, 2> output_;  // stdout, stderr read ends.
  UniqueFd exit_report_;            // Options::exit_report: read end, until a line came.
  std::string report_line_;
  absl::AnyInvocable<void(absl::Status) &&> on_ready_;          // AwaitReady(), until its line.
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);  // Expires with this object.
  bool joined_by_write_ = false;
  struct {
    ExitStatus status;
    ResourceUsage usage;
  } report_;
  bool reported_ = false;              // report_ holds a valid report.
  bool answered_from_report_ = false;  // OnExit came from the report; not yet reaped.
  std::array<int64_t, 2> captured_{0, 0};
  std::string stdin_data_;
  size_t stdin_offset_ = 0;
  bool keep_stdin_open_ = false;
  bool terminal_ = false;       // stdin_ and output_[0] are the master side of a pseudo-terminal.
  bool stdin_closing_ = false;  // keep_stdin_open: CloseStdin() was called.

  EventLoop::TimerId timeout_timer_ = 0;
  EventLoop::TimerId kill_timer_ = 0;
  EventLoop::TimerId empty_timer_ = 0;
  EventLoop::TimerId flush_timer_ = 0;
  std::array<std::string, 2> batch_;  // Streamed output not yet handed on.
  int64_t stream_chunk_bytes_ = 64 << 10;
  absl::Duration stream_flush_interval_ = absl::Milliseconds(10);
  bool output_paused_ = false;
  bool exit_held_ = false;  // The command is over; OnExit waits for batch_ to be handed on.
  absl::Duration timeout_;
  absl::Time deadline_ = absl::InfiniteFuture();
  bool watched_ = false;
  absl::Time empty_deadline_;
  bool terminating_ = false;
  bool exited_ = false;
  Result result_;
  absl::Time exec_done_;
};

}  // namespace execd::core
