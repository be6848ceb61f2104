#include "loadtest/background.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <thread>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace execd::loadtest {

bool AbslParseFlag(absl::string_view text, BackgroundKind* kind, std::string* error) {
  if (text == "none") {
    *kind = BackgroundKind::kNone;
  } else if (text == "cpu") {
    *kind = BackgroundKind::kCpu;
  } else if (text == "fork") {
    *kind = BackgroundKind::kFork;
  } else {
    *error = absl::StrCat("\"", text, "\" is none of none, cpu, fork");
    return false;
  }
  return true;
}

std::string AbslUnparseFlag(BackgroundKind kind) {
  switch (kind) {
    case BackgroundKind::kCpu:
      return "cpu";
    case BackgroundKind::kFork:
      return "fork";
    case BackgroundKind::kNone:
      break;
  }
  return "none";
}

bool AbslParseFlag(absl::string_view text, BackgroundSession* session, std::string* error) {
  if (text == "same") {
    *session = BackgroundSession::kSame;
  } else if (text == "own") {
    *session = BackgroundSession::kOwn;
  } else {
    *error = absl::StrCat("\"", text, "\" is neither same nor own");
    return false;
  }
  return true;
}

std::string AbslUnparseFlag(BackgroundSession session) {
  return session == BackgroundSession::kOwn ? "own" : "same";
}

namespace {

// What a loop reports through its pipe once set up: step 0 when all went well, otherwise
// the step that failed and its errno.
enum Step : int { kReady = 0, kStdio, kDeathSignal, kSignalMask, kSession, kNice };
struct SetupReport {
  int step;
  int error;
};

const char* StepName(int step) {
  switch (step) {
    case kStdio:
      return "stdio to /dev/null";
    case kDeathSignal:
      return "prctl(PR_SET_PDEATHSIG)";
    case kSignalMask:
      return "sigprocmask";
    case kSession:
      return "setsid/setpgid";
    case kNice:
      return "setpriority(19)";
  }
  return "setup";
}

// The child after fork: raw system calls only (the parent has other threads, whose locks
// may be held in this copy of its memory). Never returns.
[[noreturn]] void LoopMain(BackgroundKind kind, BackgroundSession session, pid_t parent,
                           int devnull, int report_fd) {
  auto fail = [report_fd](int step) {
    SetupReport report = {step, errno};
    (void)!write(report_fd, &report, sizeof report);
    _exit(127);
  };
  // Its descriptors: /dev/null for stdio, so that it never holds the caller's pipes open,
  // the report pipe, nothing else.
  if (dup2(devnull, 0) < 0 || dup2(devnull, 1) < 0 || dup2(devnull, 2) < 0) fail(kStdio);
  if (report_fd != 3) {
    if (dup2(report_fd, 3) < 0) fail(kStdio);
    report_fd = 3;
  }
  close_range(4, ~0U, 0);
  if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) fail(kDeathSignal);
  if (getppid() != parent) _exit(0);  // The parent ended before the prctl.
  sigset_t none;
  sigemptyset(&none);
  if (sigprocmask(SIG_SETMASK, &none, nullptr) != 0) fail(kSignalMask);
  // A process group of its own in either case, so that Stop kills what it forked too.
  if (session == BackgroundSession::kOwn ? setsid() < 0 : setpgid(0, 0) != 0) fail(kSession);
  if (setpriority(PRIO_PROCESS, 0, 19) != 0) fail(kNice);
  SetupReport ready = {kReady, 0};
  (void)!write(report_fd, &ready, sizeof ready);
  close(report_fd);
  if (kind == BackgroundKind::kCpu) {
    for (;;) asm volatile("" ::: "memory");
  }
  char true_path[] = "/bin/true";
  char* const argv[] = {true_path, nullptr};
  char* const envp[] = {nullptr};
  for (;;) {
    pid_t pid = fork();
    if (pid == 0) {
      execve(true_path, argv, envp);
      _exit(127);
    }
    if (pid > 0) {
      while (waitpid(pid, nullptr, 0) < 0 && errno == EINTR) {
      }
    }
  }
}

absl::Status ErrnoStatus(int error, absl::string_view what) {
  return absl::ErrnoToStatus(error, absl::StrCat("background loop: ", what));
}

}  // namespace

absl::StatusOr<std::unique_ptr<BackgroundLoad>> BackgroundLoad::Start(BackgroundKind kind,
                                                                      BackgroundSession session,
                                                                      int loops) {
  std::unique_ptr<BackgroundLoad> load(new BackgroundLoad(kind, session));
  if (kind == BackgroundKind::kNone) return load;
  // So that what a loop forked, orphaned when Stop kills it, is reaped here too.
  if (prctl(PR_SET_CHILD_SUBREAPER, 1) != 0) return ErrnoStatus(errno, "PR_SET_CHILD_SUBREAPER");
  const int devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
  if (devnull < 0) return ErrnoStatus(errno, "open /dev/null");
  const pid_t self = getpid();
  absl::Status status;
  for (int i = 0; i < loops && status.ok(); ++i) {
    int report[2];
    if (pipe2(report, O_CLOEXEC) != 0) {
      status = ErrnoStatus(errno, "pipe2");
      break;
    }
    const pid_t pid = fork();
    if (pid == 0) LoopMain(kind, session, self, devnull, report[1]);
    close(report[1]);
    if (pid < 0) {
      status = ErrnoStatus(errno, "fork");
      close(report[0]);
      break;
    }
    load->pids_.push_back(pid);
    SetupReport setup = {kReady, 0};
    ssize_t n;
    while ((n = read(report[0], &setup, sizeof setup)) < 0 && errno == EINTR) {
    }
    close(report[0]);
    if (n != static_cast<ssize_t>(sizeof setup)) {
      status = absl::InternalError(absl::StrCat("background loop ", pid, " ended before it ran"));
    } else if (setup.step != kReady) {
      status = ErrnoStatus(setup.error, StepName(setup.step));
    }
  }
  close(devnull);
  if (!status.ok()) {
    load->Stop();
    return status;
  }
  return load;
}

void BackgroundLoad::Stop() {
  absl::MutexLock lock(&mu_);
  if (stopped_) return;
  stopped_ = true;
  for (pid_t pid : pids_) {
    // The group may not exist yet if the loop failed before making it: then the loop alone.
    kill(-pid, SIGKILL);
    kill(pid, SIGKILL);
  }
  for (pid_t pid : pids_) {
    while (waitpid(pid, nullptr, 0) < 0 && errno == EINTR) {
    }
    // The loop's /bin/true, killed with it, comes to this process as the subreaper.
    while (waitpid(-pid, nullptr, 0) > 0 || errno == EINTR) {
    }
  }
}

std::string BackgroundLoad::Describe() const {
  if (kind_ == BackgroundKind::kNone) return "none";
  return absl::StrCat(AbslUnparseFlag(kind_), " x", pids_.size(),
                      session_ == BackgroundSession::kOwn ? ", own sessions" : ", caller's session",
                      ", nice 19, pids ", absl::StrJoin(pids_, ","));
}

sigset_t BlockTerminationSignals() {
  sigset_t signals;
  sigemptyset(&signals);
  for (int sig : {SIGINT, SIGTERM, SIGHUP}) {
    // One the caller ignores (nohup) stays ignored.
    struct sigaction action;
    if (sigaction(sig, nullptr, &action) == 0 && action.sa_handler != SIG_IGN) {
      sigaddset(&signals, sig);
    }
  }
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  return signals;
}

void StopOnSignal(const sigset_t& signals, BackgroundLoad* load) {
  std::thread([signals, load] {
    int sig = 0;
    while (sigwait(&signals, &sig) != 0) {
    }
    load->Stop();
    signal(sig, SIG_DFL);
    sigset_t just_this;
    sigemptyset(&just_this);
    sigaddset(&just_this, sig);
    pthread_sigmask(SIG_UNBLOCK, &just_this, nullptr);
    raise(sig);
  }).detach();
}

}  // namespace execd::loadtest
