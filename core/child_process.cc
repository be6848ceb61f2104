#include "core/child_process.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "core/errno_status.h"
#include "core/status_macros.h"

namespace execd::core {
namespace {

constexpr size_t kReadChunk = 64 << 10;

// /dev/null, opened once, for children that get no stdin.
absl::StatusOr<int> DevNull() {
  static const int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoToStatus(errno, "open /dev/null");
  return fd;
}

absl::StatusOr<UniqueFd> SealedMemfd(absl::string_view data) {
  UniqueFd fd(memfd_create("execd-stdin", MFD_CLOEXEC | MFD_ALLOW_SEALING));
  if (!fd.valid()) return ErrnoToStatus(errno, "memfd_create");
  for (size_t done = 0; done < data.size();) {
    ssize_t n = write(fd.get(), data.data() + done, data.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return ErrnoToStatus(errno, "write to the stdin memfd");
    done += static_cast<size_t>(n);
  }
  if (fcntl(fd.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL) < 0) {
    return ErrnoToStatus(errno, "seal the stdin memfd");
  }
  if (lseek(fd.get(), 0, SEEK_SET) < 0) return ErrnoToStatus(errno, "lseek the stdin memfd");
  return fd;
}

// Sets the size of the pseudo-terminal `fd` (either side); its foreground process group
// gets SIGWINCH.
bool SetTerminalSize(int fd, const TerminalSize& size) {
  winsize ws{};
  ws.ws_row = static_cast<unsigned short>(size.rows);
  ws.ws_col = static_cast<unsigned short>(size.columns);
  return ioctl(fd, TIOCSWINSZ, &ws) == 0;
}

// A pseudo-terminal of `size`: {master, slave}, both close-on-exec.
absl::StatusOr<std::pair<UniqueFd, UniqueFd>> OpenTerminal(const TerminalSize& size) {
  UniqueFd master(posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC));
  if (!master.valid()) return ErrnoToStatus(errno, "posix_openpt");
  if (grantpt(master.get()) != 0 || unlockpt(master.get()) != 0) {
    return ErrnoToStatus(errno, "unlock the pseudo-terminal");
  }
  char name[64];
  if (ptsname_r(master.get(), name, sizeof(name)) != 0) return ErrnoToStatus(errno, "ptsname_r");
  UniqueFd slave(open(name, O_RDWR | O_NOCTTY | O_CLOEXEC));
  if (!slave.valid()) return ErrnoToStatus(errno, absl::StrCat("open ", name));
  if (!SetTerminalSize(master.get(), size)) return ErrnoToStatus(errno, "TIOCSWINSZ");
  return std::make_pair(std::move(master), std::move(slave));
}

// The longest exit report line read (Options::exit_report); a longer one is not a report.
constexpr size_t kMaxReportLine = 128;
// A CPU time past this (about 35 years) is not a report: it would not fit a response.
constexpr int64_t kMaxReportedMicros = int64_t{1} << 50;

// "exit CODE USER_US SYSTEM_US MAX_RSS_KIB": the program's exit code and resource use.
bool ParseExitReport(absl::string_view line, ExitStatus* status, ResourceUsage* usage) {
  std::vector<absl::string_view> words = absl::StrSplit(line, ' ');
  int code;
  int64_t user_us, system_us, max_rss_kib;
  if (words.size() != 5 || words[0] != "exit" || !absl::SimpleAtoi(words[1], &code) || code < 0 ||
      code > 255 || !absl::SimpleAtoi(words[2], &user_us) || user_us < 0 ||
      !absl::SimpleAtoi(words[3], &system_us) || system_us < 0 ||
      !absl::SimpleAtoi(words[4], &max_rss_kib) || max_rss_kib < 0 ||
      std::max(user_us, system_us) > kMaxReportedMicros || max_rss_kib > (int64_t{1} << 40)) {
    return false;
  }
  *status = ExitStatus{.exited = true, .code = code, .signal = 0};
  usage->user_cpu = absl::Microseconds(user_us);
  usage->system_cpu = absl::Microseconds(system_us);
  usage->max_rss_bytes = max_rss_kib * 1024;
  return true;
}

absl::Duration FromTimeval(const timeval& tv) {
  return absl::Seconds(tv.tv_sec) + absl::Microseconds(tv.tv_usec);
}

}  // namespace

ChildProcess::ChildProcess(EventLoop& loop, const Command& command, const Options& options,
                           Observer* observer)
    : loop_(loop),
      observer_(observer),
      stream_output_(command.stream_output),
      max_output_bytes_(command.limits.max_output_bytes),
      kill_grace_(options.kill_grace),
      empty_wait_(options.empty_wait),
      cpu_limit_(command.limits.cpu_time),
      stream_chunk_bytes_(std::max<int64_t>(1, options.stream_chunk_bytes)),
      stream_flush_interval_(options.stream_flush_interval) {}

absl::StatusOr<std::unique_ptr<ChildProcess>> ChildProcess::Spawn(
    EventLoop& loop, ProcessOs& os, Command& command, const Options& options,
    std::unique_ptr<Containment::Group> group, Observer* observer) {
  std::unique_ptr<ChildProcess> child(new ChildProcess(loop, command, options, observer));
  child->group_ = std::move(group);
  child->reap_later_ = options.reap_later;  // Before any spawn: a failed start uses it.
  UniqueFd stdin_read;  // The child's end of its stdin (on a terminal: of 0, 1 and 2).
  int child_stdin;
  const bool terminal = command.terminal.has_value();
  if (terminal && !command.pipe_to.empty()) {
    return absl::InvalidArgumentError("a pipeline cannot run on a pseudo-terminal");
  }
  if (terminal) {
    ASSIGN_OR_RETURN(auto pty, OpenTerminal(*command.terminal));
    stdin_read = std::move(pty.second);
    child->stdin_ = std::move(pty.first);
    child->terminal_ = true;
    child_stdin = stdin_read.get();
    RETURN_IF_ERROR(SetNonBlocking(child->stdin_.get()));
    child->stdin_data_ = std::move(command.stdin_data);
  } else if (command.stdin_data.empty() && !options.stdin_pipe) {
    ASSIGN_OR_RETURN(child_stdin, DevNull());
  } else if (options.memfd_stdin_bytes > 0 && !options.stdin_pipe &&
             static_cast<int64_t>(command.stdin_data.size()) >= options.memfd_stdin_bytes) {
    // Large stdin: a sealed in-memory file the child reads (and may seek or mmap) at its
    // own pace, with no writer on the event loop and no pipe-sized round trips.
    ASSIGN_OR_RETURN(stdin_read, SealedMemfd(command.stdin_data));
    child_stdin = stdin_read.get();
    std::string().swap(command.stdin_data);
  } else {
    ASSIGN_OR_RETURN(auto stdin_pipe, os.Pipe());
    stdin_read = std::move(stdin_pipe.first);
    child->stdin_ = std::move(stdin_pipe.second);
    child_stdin = stdin_read.get();
    RETURN_IF_ERROR(SetNonBlocking(child->stdin_.get()));
    child->stdin_data_ = std::move(command.stdin_data);
  }
  std::pair<UniqueFd, UniqueFd> stdout_pipe, stderr_pipe;
  if (terminal) {
    // All output is read from the master side, through a descriptor of its own, so the
    // loop watches reading and writing separately.
    child->output_[0].reset(fcntl(child->stdin_.get(), F_DUPFD_CLOEXEC, 0));
    if (!child->output_[0].valid()) return ErrnoToStatus(errno, "dup the pseudo-terminal");
  } else {
    ASSIGN_OR_RETURN(stdout_pipe, os.Pipe());
    ASSIGN_OR_RETURN(stderr_pipe, os.Pipe());
    child->output_[0] = std::move(stdout_pipe.first);
    child->output_[1] = std::move(stderr_pipe.first);
    for (const UniqueFd& fd : child->output_) RETURN_IF_ERROR(SetNonBlocking(fd.get()));
  }
  std::pair<UniqueFd, UniqueFd> report_pipe;
  if (options.exit_report && !terminal && command.pipe_to.empty()) {
    ASSIGN_OR_RETURN(report_pipe, os.Pipe());
    RETURN_IF_ERROR(SetNonBlocking(report_pipe.first.get()));
    child->exit_report_ = std::move(report_pipe.first);
  }

  SpawnSpec spec = SpecFor(command, options.address_space_bytes);
  spec.stderr_fd = terminal ? child_stdin : stderr_pipe.second.get();
  spec.controlling_terminal = terminal;
  spec.fd3 = report_pipe.second.get();  // -1 without a report pipe.
  child->group_->PlaceChild(spec);
  const size_t count = 1 + command.pipe_to.size();
  child->programs_.reserve(count);
  UniqueFd prev_read;  // The previous program's stdout: this one's stdin.
  for (size_t i = 0; i < count; ++i) {
    const bool last = i + 1 == count;
    std::pair<UniqueFd, UniqueFd> next;  // This program's stdout to the next one.
    if (!last) {
      ASSIGN_OR_RETURN(next, os.Pipe());
    }
    spec.stdin_fd = i == 0 ? child_stdin : prev_read.get();
    spec.stdout_fd = !last ? next.second.get() : terminal ? child_stdin : stdout_pipe.second.get();
    if (i > 0) {
      spec.executable = &command.pipe_to[i - 1].executable;
      spec.argv = &command.pipe_to[i - 1].argv;
    }
    // On error, the programs already started are killed and reaped with `child`.
    ASSIGN_OR_RETURN(SpawnedProcess spawned, os.Spawn(spec));
    child->group_->Attach(spawned.pid);
    Program& program = child->programs_.emplace_back();
    program.pid = spawned.pid;
    program.pidfd = std::move(spawned.pidfd);
    child->joined_by_write_ |= spawned.joined_by_write;
    ++child->running_;
    prev_read = std::move(next.first);  // Ours of the link just used closes here.
  }
  child->exec_done_ = loop.clock().Now();
  child->result_.pid = child->pid();
  // The children hold their own copies now; closing ours lets them see EOF / EPIPE.
  stdin_read.reset();
  stdout_pipe.second.reset();
  stderr_pipe.second.reset();
  report_pipe.second.reset();

  child->timeout_ = options.timeout;
  child->deadline_ = options.deadline;
  child->keep_stdin_open_ = command.keep_stdin_open && child->stdin_.valid();
  return child;
}

void ChildProcess::Assign(Observer* observer, std::string stdin_data, const Limits& limits,
                          bool stream_output, const Options& options) {
  observer_ = observer;
  stdin_data_ = std::move(stdin_data);
  max_output_bytes_ = limits.max_output_bytes;
  stream_output_ = stream_output;
  kill_grace_ = options.kill_grace;
  empty_wait_ = options.empty_wait;
  timeout_ = options.timeout;
  deadline_ = options.deadline;
  stream_chunk_bytes_ = std::max<int64_t>(1, options.stream_chunk_bytes);
  stream_flush_interval_ = options.stream_flush_interval;
  exec_done_ = loop_.clock().Now();
}

void ChildProcess::SetOutputPaused(bool paused) {
  EXECD_DCHECK_LOOP(loop_);
  if (!watched_ || paused == output_paused_) return;
  output_paused_ = paused;
  for (const UniqueFd& fd : output_) {
    if (fd.valid()) (void)loop_.Modify(fd.get(), paused ? 0u : static_cast<uint32_t>(EPOLLIN));
  }
  // Output held back by the pause goes on from the loop, not from inside this call: a
  // resume can be decided while the observer is handing on output.
  if (!paused && (!batch_[0].empty() || !batch_[1].empty())) {
    if (flush_timer_ != 0) loop_.CancelTimer(flush_timer_);
    flush_timer_ = 0;
    ArmFlush(absl::ZeroDuration());
  }
}

bool ChildProcess::Alive() const {
  const UniqueFd& pidfd = programs_.front().pidfd;
  pollfd p{pidfd.get(), POLLIN, 0};
  return pidfd.valid() && poll(&p, 1, 0) == 0;
}

std::vector<pid_t> ChildProcess::pids() const {
  std::vector<pid_t> pids;
  pids.reserve(programs_.size());
  for (const Program& p : programs_) pids.push_back(p.pid);
  return pids;
}

absl::Status ChildProcess::AwaitReady(absl::AnyInvocable<void(absl::Status) &&> done) {
  EXECD_DCHECK_LOOP(loop_);
  if (!exit_report_.valid()) return absl::FailedPreconditionError("no report descriptor");
  RETURN_IF_ERROR(loop_.Watch(exit_report_.get(), EPOLLIN, this));
  on_ready_ = std::move(done);
  return absl::OkStatus();
}

bool ChildProcess::ReadReportLine(size_t* end, bool* closed) {
  char buf[kMaxReportLine];
  ssize_t n;
  do {
    n = read(exit_report_.get(), buf, sizeof(buf));
  } while (n < 0 && errno == EINTR);
  if (n < 0 && errno == EAGAIN) return false;
  if (n > 0) report_line_.append(buf, static_cast<size_t>(n));
  *end = report_line_.find('\n');
  *closed = n <= 0;
  return *closed || *end != std::string::npos || report_line_.size() >= kMaxReportLine;
}

void ChildProcess::ReadReadyLine() {
  size_t end;
  bool closed;
  if (!ReadReportLine(&end, &closed)) return;
  absl::Status status;
  if (end == std::string::npos) {
    status = absl::FailedPreconditionError(
        closed ? "it closed its report descriptor, or exited, before it reported \"ready\""
               : "it wrote too long a line on its report descriptor, where \"ready\" was expected");
  } else if (absl::string_view(report_line_).substr(0, end) != "ready") {
    status = absl::FailedPreconditionError(absl::StrCat(
        "it wrote \"", absl::CHexEscape(absl::string_view(report_line_).substr(0, end)),
        "\" on its report descriptor, where \"ready\" was expected"));
  } else if (end + 1 < report_line_.size()) {
    // Nothing it says before it has a request can be its program's exit.
    status = absl::FailedPreconditionError(
        "it wrote more after \"ready\" on its report descriptor before it had a request");
  }
  report_line_.clear();
  loop_.Unwatch(exit_report_.get());  // Watch() watches it again, for the exit report.
  loop_.Post([alive = std::weak_ptr<bool>(alive_), done = std::move(on_ready_),
              status = std::move(status)]() mutable {
    if (alive.lock() != nullptr) std::move(done)(std::move(status));
  });
  on_ready_ = nullptr;
}

absl::Status ChildProcess::Watch() {
  EXECD_DCHECK_LOOP(loop_);
  // Stdin that fits in the pipe is written now, not after a round through epoll; a
  // pre-warmed process blocked on its stdin starts at once. (Not yet watched: closing the
  // pipe here only closes it.)
  if (stdin_.valid() && !keep_stdin_open_) WriteStdin();
  // From here the child is watched; any failure kills it (the caller destroys us).
  watched_ = true;
  for (const Program& p : programs_) RETURN_IF_ERROR(loop_.Watch(p.pidfd.get(), EPOLLIN, this));
  for (const UniqueFd& fd : output_) {
    if (fd.valid()) RETURN_IF_ERROR(loop_.Watch(fd.get(), EPOLLIN, this));
  }
  if (stdin_.valid()) RETURN_IF_ERROR(loop_.Watch(stdin_.get(), EPOLLOUT, this));
  if (exit_report_.valid()) RETURN_IF_ERROR(loop_.Watch(exit_report_.get(), EPOLLIN, this));
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
  for (EventLoop::TimerId timer : {timeout_timer_, kill_timer_, empty_timer_, flush_timer_}) {
    if (timer != 0) loop_.CancelTimer(timer);
  }
  if (on_ready_) loop_.Unwatch(exit_report_.get());
  for (UniqueFd* fd : {&output_[0], &output_[1], &stdin_, &exit_report_}) CloseStream(*fd);
  // Dropped on the loop, the group does not wait for its killed processes to be gone: one
  // still dying leaves its cgroup to be removed later (Containment::Group::GiveUp).
  if (group_ != nullptr && loop_.IsLoopThread()) group_->GiveUp();
  // Once every program is reaped, here or later by reap_later_ (the 1 is this destructor's
  // share): the containment group goes (its cgroup removed: not before, when the removal
  // would wait for them), then on_reaped_ runs.
  auto pending = std::make_shared<int>(1);
  auto done = std::make_shared<absl::AnyInvocable<void() &&>>(std::move(on_reaped_));
  auto group = std::make_shared<std::unique_ptr<Containment::Group>>();
  auto release = [pending, done, group]() {
    if (--*pending != 0) return;
    group->reset();
    if (*done) std::move (*done)();
  };
  if (!programs_.empty() && !exited_) {
    KillAll();
    for (Program& p : programs_) {
      if (ReapIfExited(p.pid) != 0) continue;  // Reaped (or, ECHILD, not ours).
      // Off the loop (a spawn thread, for a pipeline that failed to start), a killed
      // program is waited for a moment: it dies within it, and the command's cgroup is
      // then gone before the failure is reported.
      if (!loop_.IsLoopThread() && p.pidfd.valid() &&
          AwaitExit(p.pidfd.get(), absl::Milliseconds(100)) && ReapIfExited(p.pid) != 0) {
        continue;
      }
      if (reap_later_ && p.pidfd.valid()) {
        // Not gone: maybe stuck in the kernel, and a waitpid here would hold the whole
        // loop, or the spawn thread, until it comes out.
        if (watched_) loop_.Unwatch(p.pidfd.get());
        if (*group == nullptr && group_ != nullptr) {
          *group = std::move(group_);
          // Dropped on the loop once this is reaped: it must not wait there for the rest.
          (*group)->GiveUp();
        }
        ++*pending;
        reap_later_(std::move(p.pidfd), release);
        continue;
      }
      while (waitpid(p.pid, nullptr, 0) < 0 && errno == EINTR) {
      }
    }
  }
  for (Program& p : programs_) CloseStream(p.pidfd);
  release();
}

void ChildProcess::Destroy(std::unique_ptr<ChildProcess> child,
                           absl::AnyInvocable<void() &&> reaped) {
  child->on_reaped_ = std::move(reaped);
  child.reset();
}

void ChildProcess::KillGroup(int signal) {
  // Each program called setsid(), so its pid is its process group id, and none is reaped
  // before all have exited (then nothing signals them any more). ESRCH (group already
  // gone) is the expected race and needs no handling. A pipeline's last program first:
  // signalled in order, a program could see its input end (the one before it gone) and
  // exit by itself before its own signal came, as if it had finished its work.
  for (auto p = programs_.rbegin(); p != programs_.rend(); ++p) kill(-p->pid, signal);
}

void ChildProcess::KillAll() {
  KillGroup(SIGKILL);
  if (group_ != nullptr) group_->KillAll();
}

void ChildProcess::Terminate(Termination reason, bool immediately) {
  EXECD_DCHECK_LOOP(loop_);
  if (exit_held_) {  // Nobody will read the rest in time.
    result_.termination = reason;
    if (!batch_[0].empty()) result_.stdout_truncated = true;
    if (!batch_[1].empty()) result_.stderr_truncated = true;
    batch_[0].clear();
    batch_[1].clear();
    FlushBatches();
    return;
  }
  if (exited_ || terminating_ || answered_from_report_) return;
  terminating_ = true;
  result_.termination = reason;
  if (immediately || reason != Termination::kTimedOut) {
    KillAll();
    return;
  }
  KillGroup(SIGTERM);
  KillGroup(SIGCONT);  // A stopped process acts on SIGTERM only once continued.
  kill_timer_ = loop_.AddTimer(loop_.clock().Now() + kill_grace_, [this]() mutable {
    kill_timer_ = 0;
    KillAll();
  });
}

void ChildProcess::OnFdReady(int fd, uint32_t events) {
  EXECD_DCHECK_LOOP(loop_);
  if (on_ready_ && fd == exit_report_.get()) {
    ReadReadyLine();
    return;
  }
  for (size_t i = 0; i < programs_.size(); ++i) {
    if (fd == programs_[i].pidfd.get()) {
      OnProgramExited(i);
      return;
    }
  }
  if (fd == output_[0].get()) {
    ReadOutput(0, /*drain=*/false);
    FinishIfReported();
  } else if (fd == output_[1].get()) {
    ReadOutput(1, /*drain=*/false);
    FinishIfReported();
  } else if (fd == exit_report_.get()) {
    ReadExitReport();
  } else if (fd == stdin_.get()) {
    if (keep_stdin_open_) {
      WriteSessionStdin(/*reader_gone=*/(events & (EPOLLERR | EPOLLHUP)) != 0);
    } else {
      WriteStdin();
    }
  }
}

void ChildProcess::CloseStream(UniqueFd& fd) {
  if (!fd.valid()) return;
  if (watched_) loop_.Unwatch(fd.get());  // Never touch the loop from a spawning thread.
  fd.reset();
}

void ChildProcess::ReadExitReport() {
  size_t end;
  bool closed;
  if (!ReadReportLine(&end, &closed)) return;
  // A line, the end of the descriptor, an error or too long a line: it has said all it
  // will. A report counts only while the program runs its course (not once execd stops it).
  if (end != std::string::npos && !exited_ && !terminating_) {
    reported_ = ParseExitReport(absl::string_view(report_line_).substr(0, end), &report_.status,
                                &report_.usage);
  }
  CloseStream(exit_report_);
  std::string().swap(report_line_);
  FinishIfReported();
}

void ChildProcess::FinishIfReported() {
  // Both outputs must have ended: a process that still holds one (a child the program
  // left behind) may still write, so the exit is waited for as without a report.
  if (!reported_ || exited_ || terminating_ || answered_from_report_ || output_[0].valid() ||
      output_[1].valid()) {
    return;
  }
  answered_from_report_ = true;
  // Everything the command started is killed before its answer leaves (the program itself
  // is exiting anyway); the reaping is left to the destructor, or reap_later, off the
  // answer's path.
  KillAll();
  for (Program& p : programs_) {
    if (watched_) loop_.Unwatch(p.pidfd.get());
  }
  EndRun();
  Program& program = programs_.front();
  program.status = report_.status;
  program.cpu = report_.usage.user_cpu + report_.usage.system_cpu;
  result_.status = report_.status;
  result_.usage = report_.usage;
  Finish();
}

void ChildProcess::Deliver(int index, const char* data, size_t size) {
  int64_t room = std::max<int64_t>(0, max_output_bytes_ - captured_[index]);
  size_t keep = std::min<size_t>(size, room);
  if (keep > 0) {
    captured_[index] += keep;
    if (stream_output_) {
      batch_[index].append(data, keep);
      // Full chunks go now; the rest waits for more, or for the flush timer.
      HandOn(index, /*partial=*/false);
      if (!batch_[index].empty()) ArmFlush(stream_flush_interval_);
    } else {
      (index == 0 ? result_.stdout_data : result_.stderr_data).append(data, keep);
    }
  }
  if (keep < size) {
    (index == 0 ? result_.stdout_truncated : result_.stderr_truncated) = true;
    Terminate(Termination::kOutputLimitExceeded);
  }
}

void ChildProcess::HandOn(int index, bool partial) {
  // The observer may pause the output from inside OnOutput (its reader fell behind): what
  // is left then waits here, in one buffer, rather than as many queued messages there.
  std::string& batch = batch_[index];
  const size_t chunk = static_cast<size_t>(stream_chunk_bytes_);
  size_t sent = 0;
  while (!output_paused_ && sent < batch.size() && (partial || batch.size() - sent >= chunk)) {
    const size_t n = std::min(chunk, batch.size() - sent);
    observer_->OnOutput(index == 0 ? OutputStream::kStdout : OutputStream::kStderr,
                        absl::string_view(batch).substr(sent, n));
    sent += n;
  }
  batch.erase(0, sent);
}

void ChildProcess::ArmFlush(absl::Duration after) {
  if (flush_timer_ != 0) return;
  flush_timer_ = loop_.AddTimer(loop_.clock().Now() + after, [this]() mutable {
    flush_timer_ = 0;
    FlushBatches();
  });
}

void ChildProcess::FlushBatches() {
  for (int i = 0; i < 2; ++i) HandOn(i, /*partial=*/true);
  if (exit_held_ && batch_[0].empty() && batch_[1].empty()) {
    exit_held_ = false;
    if (timeout_timer_ != 0) loop_.CancelTimer(timeout_timer_);
    timeout_timer_ = 0;
    observer_->OnExit(std::move(result_));
  }
}

void ChildProcess::ReadOutput(int index, bool drain) {
  // Bounded per wake-up so one chatty child cannot starve the loop; a drain after exit
  // takes what is buffered, bounded too in case an escaped process keeps writing.
  const int max_reads = drain ? 64 : 4;
  char buf[kReadChunk];
  for (int i = 0; i < max_reads && output_[index].valid(); ++i) {
    ssize_t n = read(output_[index].get(), buf, sizeof(buf));
    if (n > 0) {
      Deliver(index, buf, static_cast<size_t>(n));
      if (static_cast<size_t>(n) < sizeof(buf) && !drain) return;
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) return;
    CloseStream(output_[index]);  // EOF or a read error: nothing more will come.
  }
}

size_t ChildProcess::WriteQueuedStdin(bool* broken) {
  size_t written = 0;
  while (stdin_offset_ < stdin_data_.size()) {
    ssize_t n =
        write(stdin_.get(), stdin_data_.data() + stdin_offset_, stdin_data_.size() - stdin_offset_);
    if (n > 0) {
      stdin_offset_ += static_cast<size_t>(n);
      written += static_cast<size_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) break;
    *broken = true;  // EPIPE: the child closed its stdin.
    break;
  }
  return written;
}

void ChildProcess::WriteStdin() {
  bool broken = false;
  WriteQueuedStdin(&broken);
  if (!broken && stdin_offset_ < stdin_data_.size()) return;  // The pipe is full: later.
  // All written, or the child closed its stdin and the rest is not wanted.
  CloseStream(stdin_);
  std::string().swap(stdin_data_);
}

void ChildProcess::WriteSessionStdin(bool reader_gone) {
  // The child closed its stdin: reported even while nothing waits to be written (epoll
  // reports it regardless of the events asked for), so it must close our end now. The
  // session goes on without it.
  bool broken = reader_gone;
  size_t written = broken ? 0 : WriteQueuedStdin(&broken);
  if (broken || stdin_offset_ == stdin_data_.size()) {
    written += stdin_data_.size() - stdin_offset_;  // Dropped, when broken.
    std::string().swap(stdin_data_);
    stdin_offset_ = 0;
    if (broken || stdin_closing_) {
      CloseStream(stdin_);
    } else {
      (void)loop_.Modify(stdin_.get(), 0);  // Nothing to write until AppendStdin.
    }
  }
  if (written > 0) observer_->OnStdinWritten(written);
}

void ChildProcess::AppendStdin(std::string data) {
  EXECD_DCHECK_LOOP(loop_);
  if (exited_ || data.empty()) return;
  if (!keep_stdin_open_ || !stdin_.valid() || stdin_closing_) {
    observer_->OnStdinWritten(data.size());  // Nobody reads it any more.
    return;
  }
  const bool idle = stdin_offset_ == stdin_data_.size();
  stdin_data_.erase(0, stdin_offset_);
  stdin_offset_ = 0;
  stdin_data_.append(data);
  if (idle) (void)loop_.Modify(stdin_.get(), EPOLLOUT);
}

void ChildProcess::CloseStdin() {
  EXECD_DCHECK_LOOP(loop_);
  if (!keep_stdin_open_ || stdin_closing_) return;
  stdin_closing_ = true;
  if (stdin_offset_ == stdin_data_.size()) CloseStream(stdin_);
}

void ChildProcess::ResizeTerminal(TerminalSize size) {
  EXECD_DCHECK_LOOP(loop_);
  if (!terminal_ || exited_ || !output_[0].valid()) return;
  (void)SetTerminalSize(output_[0].get(), size);
}

void ChildProcess::Signal(int signal) {
  EXECD_DCHECK_LOOP(loop_);
  if (!exited_) KillGroup(signal);
}

void ChildProcess::OnProgramExited(size_t index) {
  Program& p = programs_[index];
  if (running_ == 1) {
    OnExited(index);
    return;
  }
  // One program of a pipeline ended before the others: its process group goes with it,
  // as a lone command's does, but it stays unreaped (so its pid cannot be reused) until the
  // whole pipeline is over.
  siginfo_t info{};
  if (waitid(P_PID, p.pid, &info, WEXITED | WNOHANG | WNOWAIT) == 0 && info.si_pid == 0) {
    return;  // Not yet waitable (spurious wake-up); the pidfd stays readable.
  }
  kill(-p.pid, SIGKILL);
  CloseStream(p.pidfd);
  --running_;
}

void ChildProcess::OnExited(size_t last) {
  // Sweep the groups first, while the programs are still unreaped so their pids (the
  // group ids) cannot be reused: nothing the command started outlives it.
  KillAll();
  int last_status = 0;
  rusage last_usage{};
  pid_t last_r;
  do {
    last_r = wait4(programs_[last].pid, &last_status, WNOHANG, &last_usage);
  } while (last_r < 0 && errno == EINTR);
  if (last_r == 0) return;  // Not yet reapable (spurious wake-up); the pidfd stays readable.
  exited_ = true;
  running_ = 0;
  for (size_t i = 0; i < programs_.size(); ++i) {
    Program& p = programs_[i];
    int status = last_status;
    rusage usage = last_usage;
    pid_t r = last_r;
    // The others have exited already, so waiting for them does not block.
    if (i != last) {
      do {
        r = wait4(p.pid, &status, 0, &usage);
      } while (r < 0 && errno == EINTR);
    }
    // r < 0 (ECHILD) would mean something else reaped our child; report it as killed rather
    // than spin on a pidfd that stays readable.
    if (r < 0) status = SIGKILL;
    p.status = ExitStatus::FromWaitStatus(status);
    p.cpu = FromTimeval(usage.ru_utime) + FromTimeval(usage.ru_stime);
    CloseStream(p.pidfd);
    result_.usage.user_cpu += FromTimeval(usage.ru_utime);
    result_.usage.system_cpu += FromTimeval(usage.ru_stime);
    result_.usage.max_rss_bytes = std::max<int64_t>(result_.usage.max_rss_bytes,
                                                    static_cast<int64_t>(usage.ru_maxrss) * 1024);
    if (programs_.size() > 1) result_.stages.push_back(StageExit{p.pid, p.status});
  }
  EndRun();
  result_.status = programs_.back().status;  // A pipeline's is its last program's.
  empty_deadline_ = loop_.clock().Now() + empty_wait_;
  FinishWhenEmpty(absl::Milliseconds(1));
}

void ChildProcess::EndRun() {
  CloseStream(stdin_);
  for (EventLoop::TimerId* timer : {&timeout_timer_, &kill_timer_}) {
    if (*timer != 0) loop_.CancelTimer(*timer);
    *timer = 0;
  }
  result_.run = loop_.clock().Now() - exec_done_;
}

void ChildProcess::FinishWhenEmpty(absl::Duration backoff) {
  empty_timer_ = 0;
  if (group_->Empty()) {
    Finish();
    return;
  }
  if (loop_.clock().Now() >= empty_deadline_) {
    group_->GiveUp();
    Finish();
    return;
  }
  // SIGKILL was sent; the kernel needs a moment to tear the processes down.
  group_->KillAll();
  empty_timer_ = loop_.AddTimer(loop_.clock().Now() + backoff, [this, backoff]() mutable {
    FinishWhenEmpty(std::min(backoff * 2, absl::Milliseconds(50)));
  });
}

Termination ChildProcess::DecideTermination(const LimitHits& hits) const {
  if (terminating_) return result_.termination;  // What execd stopped it for.
  const ExitStatus& s = result_.status;
  if (hits.memory) return Termination::kMemoryLimitExceeded;
  // Per-process limits: any program of a pipeline that hit one ends the command's story.
  for (const Program& p : programs_) {
    if (cpu_limit_ > absl::ZeroDuration() &&
        (p.status.signal == SIGXCPU || (p.status.signal == SIGKILL && p.cpu >= cpu_limit_))) {
      return Termination::kCpuTimeLimitExceeded;
    }
  }
  for (const Program& p : programs_) {
    if (p.status.signal == SIGXFSZ) return Termination::kFileSizeLimitExceeded;
  }
  if (hits.processes && !(s.exited && s.code == 0)) return Termination::kProcessLimitExceeded;
  // Output over the cap that was read only after the command ended (it wrote and exited
  // before execd looked): the same verdict as when execd stops it, whatever the timing.
  if (result_.stdout_truncated || result_.stderr_truncated) {
    return Termination::kOutputLimitExceeded;
  }
  return s.exited ? Termination::kExited : Termination::kSignaled;
}

void ChildProcess::Finish() {
  // Every process of the command is gone (or, after an exit report, both pipes ended), so
  // no one writes the pipes any more: draining reads to the end. (After GiveUp a killed
  // process may still hold a pipe; it cannot run to write, and the reads never block: they
  // stop at what is there.)
  for (int i = 0; i < 2; ++i) {
    ReadOutput(i, /*drain=*/true);
    CloseStream(output_[i]);
  }
  CloseStream(exit_report_);  // Unread (the exit came first): nothing after the answer.
  result_.termination = DecideTermination(group_->Hits());
  result_.usage.peak_memory_bytes = group_->PeakMemoryBytes();
  if (flush_timer_ != 0) loop_.CancelTimer(flush_timer_);
  flush_timer_ = 0;
  // The last output always comes before the exit: a paused reader holds the exit back
  // until it has taken the rest (or the call is cancelled).
  exit_held_ = true;
  FlushBatches();
  if (exit_held_) {  // Held no longer than the command's own time.
    timeout_timer_ =
        loop_.AddTimer(std::max(loop_.clock().Now(), std::min(exec_done_ + timeout_, deadline_)),
                       [this]() mutable {
                         timeout_timer_ = 0;
                         Terminate(Termination::kTimedOut);
                       });
  }
}

}  // namespace execd::core
