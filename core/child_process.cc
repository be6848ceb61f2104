#include "core/child_process.h"

#include <signal.h>

#include <algorithm>
#include <utility>

#include "core/status_macros.h"
#include "core/stdio_plan.h"

namespace execd::core {

ChildProcess::ChildProcess(EventLoop& loop, const Command& command, const Options& options,
                           std::unique_ptr<Containment::Group> group, Observer* observer)
    : loop_(loop),
      observer_(observer),
      kill_grace_(options.kill_grace),
      empty_wait_(options.empty_wait),
      cpu_limit_(command.limits.cpu_time),
      tree_(loop, std::move(group), options.reap_later) {
  collector_.Configure(OutputSettings(command.limits, command.stream_output, options));
}

OutputCollector::Settings ChildProcess::OutputSettings(const Limits& limits, bool stream_output,
                                                       const Options& options) {
  OutputCollector::Settings settings;
  settings.max_bytes = limits.max_output_bytes;
  settings.stream = stream_output;
  settings.chunk_bytes = options.stream_chunk_bytes;
  settings.flush_interval = options.stream_flush_interval;
  return settings;
}

absl::StatusOr<std::unique_ptr<ChildProcess>> ChildProcess::Spawn(
    EventLoop& loop, ProcessOs& os, Command& command, const Options& options,
    std::unique_ptr<Containment::Group> group, Observer* observer) {
  // The tree gets reap_later before any spawn: a failed start uses it.
  std::unique_ptr<ChildProcess> child(
      new ChildProcess(loop, command, options, std::move(group), observer));
  ASSIGN_OR_RETURN(const StdioPlan plan,
                   PlanStdio(command, StdioWants{.stdin_pipe = options.stdin_pipe,
                                                 .memfd_stdin_bytes = options.memfd_stdin_bytes,
                                                 .exit_report = options.exit_report}));
  ASSIGN_OR_RETURN(Stdio stdio, OpenStdio(plan, os, command));
  child->terminal_ = plan.input == StdioPlan::Input::kTerminal;
  // The memfd holds its own copy; a pipe's (or terminal's) data goes through the feeder.
  std::string stdin_data = std::exchange(command.stdin_data, std::string());
  if (plan.input != StdioPlan::Input::kPipe && plan.input != StdioPlan::Input::kTerminal) {
    std::string().swap(stdin_data);
  }
  child->stdin_.Adopt(std::move(stdio.stdin_write), std::move(stdin_data), command.keep_stdin_open);
  child->collector_.Adopt(std::move(stdio.stdout_read), std::move(stdio.stderr_read));
  child->report_.Adopt(std::move(stdio.report_read));

  SpawnSpec spec = SpecFor(command, options.address_space_bytes);
  spec.stderr_fd = stdio.child_stderr;
  spec.controlling_terminal = child->terminal_;
  spec.fd3 = stdio.child_fd3;  // -1 without a report pipe.
  RETURN_IF_ERROR(child->tree_.Spawn(os, command, spec, stdio.child_stdin, stdio.child_stdout));
  child->exec_done_ = loop.clock().Now();
  child->result_.pid = child->pid();
  child->timeout_ = options.timeout;
  child->deadline_ = options.deadline;
  stdio.child_ends.clear();  // The children hold their own copies now: they see EOF / EPIPE.
  return child;
}

void ChildProcess::Assign(Observer* observer, std::string stdin_data, const Limits& limits,
                          bool stream_output, const Options& options) {
  observer_ = observer;
  stdin_.Replace(std::move(stdin_data));
  collector_.Configure(OutputSettings(limits, stream_output, options));
  kill_grace_ = options.kill_grace;
  empty_wait_ = options.empty_wait;
  timeout_ = options.timeout;
  deadline_ = options.deadline;
  exec_done_ = loop_.clock().Now();
}

void ChildProcess::SetOutputPaused(bool paused) {
  EXECD_DCHECK_LOOP(loop_);
  if (watched_) collector_.SetPaused(paused);
}

absl::Status ChildProcess::AwaitReady(absl::AnyInvocable<void(absl::Status) &&> done) {
  EXECD_DCHECK_LOOP(loop_);
  return report_.AwaitReady(std::move(done));
}

absl::Status ChildProcess::Watch() {
  EXECD_DCHECK_LOOP(loop_);
  // Stdin that fits in the pipe is written now, not after a round through epoll; a
  // pre-warmed process blocked on its stdin starts at once.
  stdin_.WriteNow();
  // From here the child is watched; any failure kills it (the caller destroys us).
  watched_ = true;
  RETURN_IF_ERROR(tree_.Watch(this));
  RETURN_IF_ERROR(collector_.Watch());
  RETURN_IF_ERROR(stdin_.Watch());
  if (report_.open()) RETURN_IF_ERROR(report_.Watch(this));
  // The caller's deadline may come first (a short one, or one that passed during a slow
  // spawn).
  const bool at_deadline = deadline_ <= exec_done_ + timeout_;
  timeout_timer_ =
      loop_.AddTimer(std::min(exec_done_ + timeout_, deadline_), [this, at_deadline]() mutable {
        timeout_timer_ = 0;
        Terminate(Termination::kTimedOut, /*immediately=*/at_deadline);
      });
  return absl::OkStatus();
}

ChildProcess::~ChildProcess() {
  if (timeout_timer_ != 0) loop_.CancelTimer(timeout_timer_);
  // The parts go in reverse order: the descriptors close, then the tree kills and reaps.
}

void ChildProcess::Destroy(std::unique_ptr<ChildProcess> child,
                           absl::AnyInvocable<void() &&> reaped) {
  child->tree_.OnReaped(std::move(reaped));
  child.reset();
}

void ChildProcess::Terminate(Termination reason, bool immediately) {
  EXECD_DCHECK_LOOP(loop_);
  if (collector_.exit_held()) {  // Nobody will read the rest in time.
    result_.termination = reason;
    collector_.DropHeld();
    return;
  }
  if (exited_ || terminating_ || answered_from_report_) return;
  terminating_ = true;
  result_.termination = reason;
  if (immediately || reason != Termination::kTimedOut) {
    tree_.KillAll();
    return;
  }
  tree_.StopGracefully(kill_grace_);
}

void ChildProcess::AppendStdin(std::string data) {
  EXECD_DCHECK_LOOP(loop_);
  if (exited_ || data.empty()) return;
  stdin_.Append(std::move(data));
}

void ChildProcess::CloseStdin() {
  EXECD_DCHECK_LOOP(loop_);
  stdin_.Close();
}

void ChildProcess::ResizeTerminal(TerminalSize size) {
  EXECD_DCHECK_LOOP(loop_);
  if (!terminal_ || exited_ || collector_.stdout_fd() < 0) return;
  (void)SetTerminalSize(collector_.stdout_fd(), size);
}

void ChildProcess::Signal(int signal) {
  EXECD_DCHECK_LOOP(loop_);
  if (!exited_) tree_.Signal(signal);
}

void ChildProcess::OnOutput(OutputStream stream, absl::string_view data) {
  observer_->OnOutput(stream, data);
}

void ChildProcess::OnReportEnded(std::optional<ExitReport> report) {
  // A report counts only while the program runs its course (not once execd stops it).
  if (report.has_value() && !exited_ && !terminating_) reported_ = std::move(report);
  FinishIfReported();
}

void ChildProcess::FinishIfReported() {
  // Both outputs must have ended: a process that still holds one (a child the program
  // left behind) may still write, so the exit is waited for as without a report.
  if (!reported_.has_value() || exited_ || terminating_ || answered_from_report_ ||
      !collector_.ended()) {
    return;
  }
  answered_from_report_ = true;
  // Everything the command started is killed before its answer leaves (the program itself
  // is exiting anyway); the reaping is left to the destructor, or reap_later, off the
  // answer's path.
  tree_.KillAll();
  tree_.Unwatch();
  EndRun();
  tree_.SetReportedExit(reported_->status, reported_->usage.user_cpu + reported_->usage.system_cpu);
  result_.status = reported_->status;
  result_.usage = reported_->usage;
  Finish();
}

void ChildProcess::OnProgramsExited() {
  exited_ = true;
  const ResourceUsage& usage = tree_.usage();
  result_.usage.user_cpu = usage.user_cpu;
  result_.usage.system_cpu = usage.system_cpu;
  result_.usage.max_rss_bytes = usage.max_rss_bytes;
  const std::vector<ProcessTree::Program>& programs = tree_.programs();
  if (programs.size() > 1) {
    for (const ProcessTree::Program& p : programs) {
      result_.stages.push_back(StageExit{p.pid, p.status});
    }
  }
  EndRun();
  result_.status = programs.back().status;  // A pipeline's is its last program's.
  tree_.AwaitEmpty(loop_.clock().Now() + empty_wait_, [this]() { Finish(); });
}

void ChildProcess::EndRun() {
  stdin_.End();
  if (timeout_timer_ != 0) loop_.CancelTimer(timeout_timer_);
  timeout_timer_ = 0;
  tree_.CancelKill();
  result_.run = loop_.clock().Now() - exec_done_;
}

Termination ChildProcess::DecideTermination(const LimitHits& hits) const {
  if (terminating_) return result_.termination;  // What execd stopped it for.
  const ExitStatus& s = result_.status;
  if (hits.memory) return Termination::kMemoryLimitExceeded;
  // Per-process limits: any program of a pipeline that hit one ends the command's story.
  for (const ProcessTree::Program& p : tree_.programs()) {
    if (cpu_limit_ > absl::ZeroDuration() &&
        (p.status.signal == SIGXCPU || (p.status.signal == SIGKILL && p.cpu >= cpu_limit_))) {
      return Termination::kCpuTimeLimitExceeded;
    }
  }
  for (const ProcessTree::Program& p : tree_.programs()) {
    if (p.status.signal == SIGXFSZ) return Termination::kFileSizeLimitExceeded;
  }
  if (hits.processes && !(s.exited && s.code == 0)) return Termination::kProcessLimitExceeded;
  // Output over the cap that was read only after the command ended (it wrote and exited
  // before execd looked): the same verdict as when execd stops it, whatever the timing.
  if (collector_.truncated()) return Termination::kOutputLimitExceeded;
  return s.exited ? Termination::kExited : Termination::kSignaled;
}

void ChildProcess::Finish() {
  // Every process of the command is gone (or, after an exit report, both pipes ended), so
  // no one writes the pipes any more: draining reads to the end. (After GiveUp a killed
  // process may still hold a pipe; it cannot run to write, and the reads never block: they
  // stop at what is there.)
  collector_.Drain();
  report_.Close();  // Unread (the exit came first): nothing after the answer.
  result_.termination = DecideTermination(tree_.Hits());
  result_.usage.peak_memory_bytes = tree_.PeakMemoryBytes();
  // The last output always comes before the exit: a paused reader holds the exit back
  // until it has taken the rest (or the call is cancelled).
  collector_.HoldExit();
  if (collector_.exit_held()) {  // Held no longer than the command's own time.
    timeout_timer_ =
        loop_.AddTimer(std::max(loop_.clock().Now(), std::min(exec_done_ + timeout_, deadline_)),
                       [this]() mutable {
                         timeout_timer_ = 0;
                         Terminate(Termination::kTimedOut);
                       });
  }
}

void ChildProcess::OnExitReleased() {
  if (timeout_timer_ != 0) loop_.CancelTimer(timeout_timer_);
  timeout_timer_ = 0;
  collector_.MoveInto(result_);
  observer_->OnExit(std::move(result_));
}

}  // namespace execd::core
