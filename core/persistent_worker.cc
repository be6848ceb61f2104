#include "core/persistent_worker.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/errno_status.h"
#include "core/reaper.h"
#include "core/status_macros.h"
#include "core/worker_frame.h"

namespace execd::core {
namespace {

constexpr size_t kStderrTail = 4096;
constexpr size_t kReadChunk = 64 << 10;

}  // namespace

absl::StatusOr<std::unique_ptr<PersistentWorker>> PersistentWorker::Spawn(
    EventLoop& loop, ProcessOs& os, const Command& command, const Options& options,
    std::unique_ptr<Containment::Group> group, Listener* listener) {
  std::unique_ptr<PersistentWorker> w(new PersistentWorker(loop, options, listener));
  w->group_ = std::move(group);
  ASSIGN_OR_RETURN(auto in_pipe, os.Pipe());
  ASSIGN_OR_RETURN(auto out_pipe, os.Pipe());
  ASSIGN_OR_RETURN(auto err_pipe, os.Pipe());
  w->stdin_ = std::move(in_pipe.second);
  w->stdout_ = std::move(out_pipe.first);
  w->stderr_ = std::move(err_pipe.first);
  for (const UniqueFd* fd : {&w->stdin_, &w->stdout_, &w->stderr_}) {
    RETURN_IF_ERROR(SetNonBlocking(fd->get()));
  }
  SpawnSpec spec = SpecFor(command, options.address_space_bytes);
  spec.stdin_fd = in_pipe.first.get();
  spec.stdout_fd = out_pipe.second.get();
  spec.stderr_fd = err_pipe.second.get();
  w->group_->PlaceChild(spec);
  ASSIGN_OR_RETURN(SpawnedProcess spawned, os.Spawn(spec));
  w->group_->Attach(spawned.pid);
  w->pid_ = spawned.pid;
  w->pidfd_ = std::move(spawned.pidfd);
  w->joined_by_write_ = spawned.joined_by_write;
  return w;
}

PersistentWorker::~PersistentWorker() {
  CancelTimer();
  for (UniqueFd* fd : {&stdin_, &stdout_, &stderr_}) Close(*fd);
  // Dropped on the loop, the group does not wait for its killed processes to be gone: one
  // still dying leaves its cgroup to be removed later (Containment::Group::GiveUp).
  if (group_ != nullptr && loop_.IsLoopThread()) group_->GiveUp();
  if (pid_ > 0 && !reaped_) {
    kill(-pid_, SIGKILL);
    if (group_ != nullptr) group_->KillAll();
    TryReap();
  }
  if (pid_ > 0 && !reaped_ && options_.reap_later && pidfd_.valid() && loop_.IsLoopThread()) {
    // Killed, and not gone yet: it may be stuck in the kernel (uninterruptible sleep), and a
    // waitpid here would hold the whole loop until it comes out.
    // Its containment group goes with it: destroyed (its cgroup removed) once it is reaped,
    // not here, where its removal would wait for a process that is not gone.
    if (watched_) loop_.Unwatch(pidfd_.get());
    options_.reap_later(std::move(pidfd_), [on_reaped = options_.on_reaped, pid = pid_,
                                            group = std::move(group_)]() mutable {
      group.reset();
      if (on_reaped) on_reaped(pid);
    });
    return;
  }
  Close(pidfd_);
  if (pid_ > 0 && !reaped_) {
    while (waitpid(pid_, nullptr, 0) < 0 && errno == EINTR) {
    }
    MarkReaped();
  }
}

void PersistentWorker::TryReap() {
  if (ReapIfExited(pid_) != 0) MarkReaped();  // Reaped, or (ECHILD) not ours to reap.
}

void PersistentWorker::MarkReaped() {
  reaped_ = true;
  if (options_.on_reaped) options_.on_reaped(pid_);
}

void PersistentWorker::Close(UniqueFd& fd) {
  if (!fd.valid()) return;
  if (watched_) loop_.Unwatch(fd.get());
  fd.reset();
}

void PersistentWorker::CancelTimer() {
  if (timer_ != 0) loop_.CancelTimer(timer_);
  timer_ = 0;
}

void PersistentWorker::KillAfter(absl::Duration after, absl::Status why) {
  CancelTimer();
  timer_ = loop_.AddTimer(loop_.clock().Now() + after, [this, why = std::move(why)]() mutable {
    timer_ = 0;
    Kill(std::move(why));
  });
}

absl::Status PersistentWorker::Start() {
  EXECD_DCHECK_LOOP(loop_);
  watched_ = true;
  RETURN_IF_ERROR(loop_.Watch(pidfd_.get(), EPOLLIN, this));
  RETURN_IF_ERROR(loop_.Watch(stdout_.get(), EPOLLIN, this));
  RETURN_IF_ERROR(loop_.Watch(stderr_.get(), EPOLLIN, this));
  RETURN_IF_ERROR(loop_.Watch(stdin_.get(), 0, this));
  state_ = State::kStarting;
  request_id_ = 0;
  // Armed before the write, which may find the worker gone and arm its own (ExpectExit).
  KillAfter(options_.startup_timeout, absl::DeadlineExceededError(absl::StrCat(
                                          "did not answer the start-up health check within ",
                                          absl::FormatDuration(options_.startup_timeout))));
  worker::v1::WorkRequest health;  // request_id 0: the health check.
  Write(health);
  return absl::OkStatus();
}

void PersistentWorker::Send(uint64_t request_id, const std::vector<std::string>& arguments,
                            const std::string& stdin_data, absl::Duration timeout) {
  EXECD_DCHECK_LOOP(loop_);
  if (dead_) return;
  // Closed, and waiting out its grace: it cannot take or answer a request.
  for (auto [fd, name] : {std::pair{&stdin_, "stdin"}, std::pair{&stdout_, "stdout"}}) {
    if (fd->valid()) continue;
    Kill(absl::InternalError(absl::StrCat("closed its ", name, "; it can serve no more requests")));
    return;
  }
  // The stderr tail goes into this request's error message: none of what the worker wrote
  // for an earlier request (and maybe another caller), which it wrote before answering.
  if (stderr_.valid()) ReadStderr();
  stderr_tail_.clear();
  worker::v1::WorkRequest request;
  request.set_request_id(request_id);
  for (const std::string& a : arguments) request.add_arguments(a);
  request.set_stdin(stdin_data);
  state_ = State::kBusy;
  request_id_ = request_id;
  KillAfter(timeout, absl::DeadlineExceededError(absl::StrCat(
                         "did not answer within the timeout of ", absl::FormatDuration(timeout))));
  Write(request);
}

void PersistentWorker::Cancel() {
  EXECD_DCHECK_LOOP(loop_);
  if (dead_ || state_ != State::kBusy) return;
  state_ = State::kCancelling;
  worker::v1::WorkRequest cancel;
  cancel.set_request_id(request_id_);
  cancel.set_cancel(true);
  Write(cancel);
  if (dead_) return;
  KillAfter(options_.kill_grace,
            absl::CancelledError(absl::StrCat("did not answer a cancel within ",
                                              absl::FormatDuration(options_.kill_grace))));
}

void PersistentWorker::Write(const worker::v1::WorkRequest& request) {
  AppendFrame(request, out_);
  FlushStdin();
}

void PersistentWorker::FlushStdin() {
  if (!stdin_.valid()) return;
  size_t done = 0;
  while (done < out_.size()) {
    ssize_t n = write(stdin_.get(), out_.data() + done, out_.size() - done);
    if (n > 0) {
      done += static_cast<size_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) break;
    StdinClosed();  // EPIPE.
    return;
  }
  out_.erase(0, done);
  bool want = !out_.empty();
  if (want != want_write_ && stdin_.valid()) {
    want_write_ = want;
    (void)loop_.Modify(stdin_.get(), want ? static_cast<uint32_t>(EPOLLOUT) : 0u);
  }
}

void PersistentWorker::OnFdReady(int fd, uint32_t events) {
  EXECD_DCHECK_LOOP(loop_);
  if (dead_) return;
  if (fd == stdout_.get()) {
    ReadStdout();
  } else if (fd == stderr_.get()) {
    ReadStderr();
  } else if (fd == stdin_.get()) {
    if ((events & (EPOLLERR | EPOLLHUP)) != 0) {
      StdinClosed();
      return;
    }
    FlushStdin();
  } else if (fd == pidfd_.get()) {
    OnExited();
  }
}

void PersistentWorker::StdinClosed() {
  Close(stdin_);
  out_.clear();
  OnExited();
  if (!dead_) ExpectExit("stdin");
}

void PersistentWorker::ExpectExit(absl::string_view pipe) {
  // Usually the worker is exiting, and its exit status will tell why. One that lives on
  // can serve nothing more: it is killed once an exit would have come, rather than hold
  // its place until a request times out on it.
  KillAfter(options_.kill_grace,
            absl::InternalError(absl::StrCat("closed its ", pipe, " but did not exit within ",
                                             absl::FormatDuration(options_.kill_grace),
                                             "; it can serve no more requests")));
}

void PersistentWorker::ReadStderr() {
  char buf[kReadChunk];
  for (int i = 0; i < 4; ++i) {
    ssize_t n = read(stderr_.get(), buf, sizeof(buf));
    if (n > 0) {
      stderr_tail_.append(buf, static_cast<size_t>(n));
      if (stderr_tail_.size() > kStderrTail) {
        stderr_tail_.erase(0, stderr_tail_.size() - kStderrTail);
      }
      continue;
    }
    if (n < 0 && (errno == EINTR)) continue;
    if (n < 0 && errno == EAGAIN) return;
    Close(stderr_);
    return;
  }
}

void PersistentWorker::ReadStdout() {
  char buf[kReadChunk];
  for (int i = 0; i < 16 && !dead_; ++i) {
    ssize_t n = read(stdout_.get(), buf, sizeof(buf));
    if (n > 0) {
      in_.append(buf, static_cast<size_t>(n));
      ParseFrames();
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) return;
    Close(stdout_);
    ExpectExit("stdout");
    return;
  }
}

void PersistentWorker::ParseFrames() {
  while (!dead_ && !in_.empty()) {
    worker::v1::WorkResponse response;
    absl::StatusOr<size_t> taken = ReadResponseFrame(in_, options_.max_frame_bytes, response);
    if (!taken.ok()) {
      Kill(taken.status());
      return;
    }
    if (*taken == 0) return;
    in_.erase(0, *taken);
    if (state_ == State::kIdle || response.request_id() != request_id_) {
      Kill(absl::InternalError(absl::StrCat(
          "broke the protocol: answered request_id ", response.request_id(), " while ",
          state_ == State::kIdle ? "no request was in flight"
                                 : absl::StrCat("request_id ", request_id_, " was in flight"))));
      return;
    }
    CancelTimer();
    State was = state_;
    state_ = State::kIdle;
    if (was == State::kStarting) {
      listener_->OnWorkerReady(this);
    } else {
      listener_->OnWorkerResponse(this, std::move(response));
    }
  }
}

void PersistentWorker::OnExited() {
  int status = 0;
  const pid_t r = ReapIfExited(pid_, &status);
  if (r == 0) return;
  MarkReaped();
  ExitStatus s = ExitStatus::FromWaitStatus(r < 0 ? SIGKILL : status);
  // Read what it said last, for the message.
  if (stderr_.valid()) ReadStderr();
  Fail(absl::UnavailableError(s.exited ? absl::StrCat("exited with code ", s.code)
                                       : absl::StrCat("was killed by signal ", s.signal)));
}

void PersistentWorker::Kill(absl::Status why, bool quiet) {
  EXECD_DCHECK_LOOP(loop_);
  if (dead_) return;
  kill(-pid_, SIGKILL);
  if (group_ != nullptr) group_->KillAll();
  // Not waited for: a killed process takes a millisecond or so to die, a large one tens,
  // and one stuck in the kernel (uninterruptible sleep) until it comes out. Once dead it is
  // reaped through its pidfd on the loop (Options::reap_later, from the destructor); its
  // owner counts it until Options::on_reaped.
  if (!reaped_) TryReap();
  if (quiet) {
    dead_ = true;
    CancelTimer();
    return;
  }
  Fail(std::move(why));
}

void PersistentWorker::Fail(absl::Status why) {
  if (dead_) return;
  dead_ = true;
  CancelTimer();
  // Whatever the worker started goes with it. Its process group only while it is unreaped
  // (after that the id may be reused); the containment group always.
  if (!reaped_) kill(-pid_, SIGKILL);
  if (group_ != nullptr) group_->KillAll();
  for (UniqueFd* fd : {&stdin_, &stdout_, &stderr_}) Close(*fd);
  // The pidfd stays while the worker is unreaped, for the destructor to reap it by; its
  // events are not wanted any more.
  if (reaped_) {
    Close(pidfd_);
  } else if (watched_ && pidfd_.valid()) {
    loop_.Unwatch(pidfd_.get());  // Idempotent: the destructor may unwatch it again.
  }
  listener_->OnWorkerFailed(this, std::move(why));
}

}  // namespace execd::core
