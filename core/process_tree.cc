#include "core/process_tree.h"

#include <poll.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/wait.h>

#include <algorithm>
#include <cerrno>
#include <utility>

#include "core/status_macros.h"

namespace execd::core {
namespace {

absl::Duration FromTimeval(const timeval& tv) {
  return absl::Seconds(tv.tv_sec) + absl::Microseconds(tv.tv_usec);
}

}  // namespace

absl::Status ProcessTree::Spawn(ProcessOs& os, const Command& command, SpawnSpec spec,
                                int first_stdin, int last_stdout) {
  group_->PlaceChild(spec);
  const size_t count = 1 + command.pipe_to.size();
  programs_.reserve(count);
  UniqueFd prev_read;  // The previous program's stdout: this one's stdin.
  for (size_t i = 0; i < count; ++i) {
    const bool last = i + 1 == count;
    std::pair<UniqueFd, UniqueFd> next;  // This program's stdout to the next one.
    if (!last) {
      ASSIGN_OR_RETURN(next, os.Pipe());
    }
    spec.stdin_fd = i == 0 ? first_stdin : prev_read.get();
    spec.stdout_fd = last ? last_stdout : next.second.get();
    if (i > 0) {
      spec.executable = &command.pipe_to[i - 1].executable;
      spec.argv = &command.pipe_to[i - 1].argv;
    }
    ASSIGN_OR_RETURN(SpawnedProcess spawned, os.Spawn(spec));
    group_->Attach(spawned.pid);
    Program& program = programs_.emplace_back();
    program.pid = spawned.pid;
    program.pidfd = std::move(spawned.pidfd);
    joined_by_write_ |= spawned.joined_by_write;
    ++running_;
    prev_read = std::move(next.first);  // Ours of the link just used closes here.
  }
  return absl::OkStatus();
}

ProcessTree::~ProcessTree() {
  for (EventLoop::TimerId timer : {kill_timer_, empty_timer_}) {
    if (timer != 0) loop_.CancelTimer(timer);
  }
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
  if (!programs_.empty() && !reaped_) {
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
  for (Program& p : programs_) Close(p.pidfd);
  release();
}

absl::Status ProcessTree::Watch(Listener* listener) {
  EXECD_DCHECK_LOOP(loop_);
  listener_ = listener;
  watched_ = true;
  for (const Program& p : programs_) RETURN_IF_ERROR(loop_.Watch(p.pidfd.get(), EPOLLIN, this));
  return absl::OkStatus();
}

void ProcessTree::Unwatch() {
  EXECD_DCHECK_LOOP(loop_);
  for (Program& p : programs_) {
    if (watched_) loop_.Unwatch(p.pidfd.get());
  }
}

std::vector<pid_t> ProcessTree::pids() const {
  std::vector<pid_t> pids;
  pids.reserve(programs_.size());
  for (const Program& p : programs_) pids.push_back(p.pid);
  return pids;
}

bool ProcessTree::Alive() const {
  const UniqueFd& pidfd = programs_.front().pidfd;
  pollfd p{pidfd.get(), POLLIN, 0};
  return pidfd.valid() && poll(&p, 1, 0) == 0;
}

void ProcessTree::SetReportedExit(const ExitStatus& status, absl::Duration cpu) {
  Program& program = programs_.front();
  program.status = status;
  program.cpu = cpu;
}

void ProcessTree::Signal(int signal) {
  // Each program has a process group of its own, so its pid is its process group id, and none is
  // reaped before all have exited (then nothing signals them any more). ESRCH (group already gone)
  // is the expected race and needs no handling. A pipeline's last program first: signalled in
  // order, a program could see its input end (the one before it gone) and exit by itself before its
  // own signal came, as if it had finished its work.
  for (auto p = programs_.rbegin(); p != programs_.rend(); ++p) kill(-p->pid, signal);
}

void ProcessTree::KillAll() {
  Signal(SIGKILL);
  if (group_ != nullptr) group_->KillAll();
}

void ProcessTree::StopGracefully(absl::Duration grace) {
  EXECD_DCHECK_LOOP(loop_);
  Signal(SIGTERM);
  Signal(SIGCONT);  // A stopped process acts on SIGTERM only once continued.
  kill_timer_ = loop_.AddTimer(loop_.clock().Now() + grace, [this]() mutable {
    kill_timer_ = 0;
    KillAll();
  });
}

void ProcessTree::CancelKill() {
  if (kill_timer_ != 0) loop_.CancelTimer(kill_timer_);
  kill_timer_ = 0;
}

void ProcessTree::OnFdReady(int fd, uint32_t /*events*/) {
  EXECD_DCHECK_LOOP(loop_);
  for (size_t i = 0; i < programs_.size(); ++i) {
    if (fd == programs_[i].pidfd.get()) {
      OnProgramExited(i);
      return;
    }
  }
}

void ProcessTree::OnProgramExited(size_t index) {
  Program& p = programs_[index];
  if (running_ == 1) {
    if (ReapAll(index)) listener_->OnProgramsExited();
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
  Close(p.pidfd);
  --running_;
}

bool ProcessTree::ReapAll(size_t last) {
  // Sweep the groups first, while the programs are still unreaped so their pids (the
  // group ids) cannot be reused: nothing the command started outlives it.
  KillAll();
  int last_status = 0;
  rusage last_usage{};
  pid_t last_r;
  do {
    last_r = wait4(programs_[last].pid, &last_status, WNOHANG, &last_usage);
  } while (last_r < 0 && errno == EINTR);
  if (last_r == 0) return false;  // Not yet reapable (spurious wake-up); still readable.
  reaped_ = true;
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
    Close(p.pidfd);
    usage_.user_cpu += FromTimeval(usage.ru_utime);
    usage_.system_cpu += FromTimeval(usage.ru_stime);
    usage_.max_rss_bytes =
        std::max<int64_t>(usage_.max_rss_bytes, static_cast<int64_t>(usage.ru_maxrss) * 1024);
  }
  return true;
}

void ProcessTree::AwaitEmpty(absl::Time deadline, absl::AnyInvocable<void() &&> done) {
  EXECD_DCHECK_LOOP(loop_);
  empty_deadline_ = deadline;
  on_empty_ = std::move(done);
  CheckEmpty(absl::Milliseconds(1));
}

void ProcessTree::CheckEmpty(absl::Duration backoff) {
  empty_timer_ = 0;
  if (group_->Empty()) {
    std::move(on_empty_)();
    return;
  }
  if (loop_.clock().Now() >= empty_deadline_) {
    group_->GiveUp();
    std::move(on_empty_)();
    return;
  }
  // SIGKILL was sent; the kernel needs a moment to tear the processes down.
  group_->KillAll();
  empty_timer_ = loop_.AddTimer(loop_.clock().Now() + backoff, [this, backoff]() mutable {
    CheckEmpty(std::min(backoff * 2, absl::Milliseconds(50)));
  });
}

void ProcessTree::Close(UniqueFd& pidfd) {
  if (!pidfd.valid()) return;
  if (watched_) loop_.Unwatch(pidfd.get());  // Never touch the loop from a spawning thread.
  pidfd.reset();
}

}  // namespace execd::core
