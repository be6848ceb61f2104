#include "core/spawn.h"

#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <memory>
#include <mutex>

#include "absl/strings/str_cat.h"
#include "core/errno_status.h"

#ifndef CLONE_PIDFD
#define CLONE_PIDFD 0x00001000
#endif

namespace execd::core {
namespace {

// What the child failed at, reported through memory it shares with the parent (CLONE_VM)
// while the parent is suspended (CLONE_VFORK).
enum class ChildStep {
  kNone,
  kParentGone,
  kJoinCgroup,
  kLimits,
  kAffinity,
  kDup,
  kChdir,
  kCloseRange,
  kTerminal,
  kExec
};

// RLIMIT_NOFILE as execd started, restored in children (RaiseDescriptorLimit raises ours).
rlimit g_original_nofile = {0, 0};

struct ChildArgs {
  const char* path;
  char* const* argv;
  char* const* envp;
  const char* cwd;  // Null: inherit.
  int fds[3];
  bool controlling_terminal;
  const int* join_fds;
  size_t join_count;
  // Resource limits to set, each with its resource id; count of them in `limit_count`.
  int limit_resources[4];
  rlimit limits[4];
  int limit_count;
  const cpu_set_t* affinity;  // Null: inherit.
  pid_t parent_pid;
  ChildStep failed_step;
  int error;
};

[[noreturn]] void ChildFail(ChildArgs* args, ChildStep step) {
  args->error = errno;
  args->failed_step = step;
  _exit(127);
}

// Runs in the child, on its own stack, sharing the parent's memory until execve. Only
// async-signal-safe calls: no allocation, no locks.
int ChildMain(void* raw) {
  auto* args = static_cast<ChildArgs*>(raw);
  // Every signal is blocked (inherited from the parent thread). Give each one its default
  // disposition before unblocking, so no parent handler ever runs in the child and signals
  // the server ignores (SIGPIPE) are not ignored by the child.
  struct sigaction dfl;
  std::memset(&dfl, 0, sizeof(dfl));
  dfl.sa_handler = SIG_DFL;
  for (int sig = 1; sig < NSIG; ++sig) {
    struct sigaction old;
    if (sig == SIGKILL || sig == SIGSTOP) continue;
    if (sigaction(sig, nullptr, &old) == 0 && old.sa_handler != SIG_DFL) {
      sigaction(sig, &dfl, nullptr);
    }
  }
  setsid();
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() != args->parent_pid) {
    errno = ESRCH;
    ChildFail(args, ChildStep::kParentGone);
  }
  // Join the command's cgroups first, so everything after is accounted and limited.
  for (size_t i = 0; i < args->join_count; ++i) {
    if (write(args->join_fds[i], "0", 1) != 1) ChildFail(args, ChildStep::kJoinCgroup);
  }
  for (int i = 0; i < args->limit_count; ++i) {
    if (setrlimit(static_cast<__rlimit_resource>(args->limit_resources[i]), &args->limits[i]) !=
        0) {
      ChildFail(args, ChildStep::kLimits);
    }
  }
  if (args->affinity != nullptr && sched_setaffinity(0, sizeof(cpu_set_t), args->affinity) != 0) {
    ChildFail(args, ChildStep::kAffinity);
  }
  for (int i = 0; i < 3; ++i) {
    if (dup2(args->fds[i], i) < 0) ChildFail(args, ChildStep::kDup);
  }
  if (args->controlling_terminal && ioctl(STDIN_FILENO, TIOCSCTTY, 0) != 0) {
    ChildFail(args, ChildStep::kTerminal);
  }
  if (args->cwd != nullptr && chdir(args->cwd) != 0) ChildFail(args, ChildStep::kChdir);
  if (close_range(3, ~0U, 0) != 0) ChildFail(args, ChildStep::kCloseRange);
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, nullptr);
  execve(args->path, args->argv, args->envp);
  ChildFail(args, ChildStep::kExec);
}

absl::Status ChildFailureStatus(const ChildArgs& args, const SpawnSpec& spec) {
  const std::string& path = *spec.executable;
  switch (args.failed_step) {
    case ChildStep::kChdir:
      return ErrnoToStatus(args.error, absl::StrCat("chdir to cwd \"", *spec.cwd, "\""));
    case ChildStep::kExec:
      switch (args.error) {
        case ENOENT:
          return absl::NotFoundError(absl::StrCat("argv[0] \"", path, "\" not found"));
        case EACCES:
          return absl::PermissionDeniedError(
              absl::StrCat("argv[0] \"", path, "\" is not executable by the server's user"));
        case ENOEXEC:
          return absl::InvalidArgumentError(absl::StrCat(
              "argv[0] \"", path, "\" is not in an executable format; a script needs a #! line"));
        case E2BIG:
          return absl::InvalidArgumentError("argv and env are too large for execve");
        default:
          return ErrnoToStatus(args.error, absl::StrCat("execve \"", path, "\""));
      }
    case ChildStep::kJoinCgroup:
      return ErrnoToStatus(args.error, "joining the command's cgroup");
    case ChildStep::kLimits:
      return ErrnoToStatus(args.error, "setrlimit in child");
    case ChildStep::kAffinity:
      return absl::InvalidArgumentError(
          absl::StrCat("limits.cpu_affinity cannot be applied: ", strerror(args.error)));
    case ChildStep::kDup:
      return ErrnoToStatus(args.error, "dup2 in child");
    case ChildStep::kCloseRange:
      return ErrnoToStatus(args.error, "close_range in child");
    case ChildStep::kTerminal:
      return ErrnoToStatus(args.error, "making the pseudo-terminal the controlling terminal");
    case ChildStep::kParentGone:
      return absl::UnavailableError("the spawning thread exited during spawn");
    case ChildStep::kNone:
      break;
  }
  return absl::InternalError("child failed before exec for an unknown reason");
}

// Pointers into `strings`, null-terminated, as execve wants them.
std::vector<char*> CStringArray(const std::vector<std::string>& strings) {
  std::vector<char*> out;
  out.reserve(strings.size() + 1);
  for (const std::string& s : strings) out.push_back(const_cast<char*>(s.c_str()));
  out.push_back(nullptr);
  return out;
}

class SystemOs final : public ProcessOs {
 public:
  absl::StatusOr<std::pair<UniqueFd, UniqueFd>> Pipe() override {
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0) return ErrnoToStatus(errno, "pipe2");
    return std::make_pair(UniqueFd(fds[0]), UniqueFd(fds[1]));
  }

  absl::StatusOr<SpawnedProcess> Spawn(const SpawnSpec& spec) override {
    // The child only runs a few syscalls before execve; 64 KiB is ample and one stack per
    // thread suffices because CLONE_VFORK suspends this thread until the child execs or exits.
    constexpr size_t kStackSize = 64 << 10;
    thread_local std::unique_ptr<char[]> stack(new char[kStackSize]);

    std::vector<char*> argv = CStringArray(*spec.argv);
    std::vector<char*> envp = CStringArray(*spec.env);
    ChildArgs args{};
    args.path = spec.executable->c_str();
    args.argv = argv.data();
    args.envp = envp.data();
    args.cwd = spec.cwd->empty() ? nullptr : spec.cwd->c_str();
    args.fds[0] = spec.stdin_fd;
    args.fds[1] = spec.stdout_fd;
    args.fds[2] = spec.stderr_fd;
    args.controlling_terminal = spec.controlling_terminal;
    args.parent_pid = getpid();
    args.failed_step = ChildStep::kNone;
    if (spec.join_fds != nullptr) {
      args.join_fds = spec.join_fds->data();
      args.join_count = spec.join_fds->size();
    }
    auto add_limit = [&args](int resource, rlim_t soft, rlim_t hard) {
      args.limit_resources[args.limit_count] = resource;
      args.limits[args.limit_count++] = rlimit{soft, hard};
    };
    if (spec.cpu_seconds > 0) {
      // SIGXCPU at the limit; SIGKILL one second later if the process ignores it.
      add_limit(RLIMIT_CPU, spec.cpu_seconds, spec.cpu_seconds + 1);
    }
    if (spec.max_open_files > 0) {
      add_limit(RLIMIT_NOFILE, spec.max_open_files, spec.max_open_files);
    } else if (g_original_nofile.rlim_cur != 0) {
      add_limit(RLIMIT_NOFILE, g_original_nofile.rlim_cur, g_original_nofile.rlim_max);
    }
    if (spec.max_file_size_bytes > 0) {
      add_limit(RLIMIT_FSIZE, spec.max_file_size_bytes, spec.max_file_size_bytes);
    }
    if (spec.address_space_bytes > 0) {
      add_limit(RLIMIT_AS, spec.address_space_bytes, spec.address_space_bytes);
    }
    cpu_set_t affinity;
    if (spec.cpu_affinity != nullptr && !spec.cpu_affinity->empty()) {
      CPU_ZERO(&affinity);
      for (int cpu : *spec.cpu_affinity) CPU_SET(cpu, &affinity);
      args.affinity = &affinity;
    }

    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int pidfd = -1;
    pid_t pid = clone(ChildMain, stack.get() + kStackSize,
                      CLONE_VM | CLONE_VFORK | CLONE_PIDFD | SIGCHLD, &args, &pidfd);
    int clone_errno = errno;
    pthread_sigmask(SIG_SETMASK, &old, nullptr);
    if (pid < 0) return ErrnoToStatus(clone_errno, "clone");
    UniqueFd owned_pidfd(pidfd);
    if (args.failed_step != ChildStep::kNone) {
      int status;
      while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
      }
      return ChildFailureStatus(args, spec);
    }
    return SpawnedProcess{pid, std::move(owned_pidfd)};
  }
};

}  // namespace

ProcessOs& SystemProcessOs() {
  static SystemOs os;
  return os;
}

void RaiseDescriptorLimit() {
  static std::once_flag once;
  std::call_once(once, [] {
    rlimit limit;
    if (getrlimit(RLIMIT_NOFILE, &limit) != 0) return;
    g_original_nofile = limit;
    limit.rlim_cur = limit.rlim_max;
    setrlimit(RLIMIT_NOFILE, &limit);
  });
}

void EnsureStandardDescriptorsOpen() {
  for (int fd = 0; fd < 3; ++fd) {
    if (fcntl(fd, F_GETFD) >= 0) continue;
    int null_fd = open("/dev/null", O_RDWR);
    if (null_fd >= 0 && null_fd != fd) {
      dup2(null_fd, fd);
      close(null_fd);
    }
  }
}

SpawnSpec SpecFor(const Command& command, int64_t address_space_bytes) {
  SpawnSpec spec;
  spec.executable = &command.executable;
  spec.argv = &command.argv;
  spec.env = &command.env;
  spec.cwd = &command.cwd;
  spec.cpu_seconds = absl::ToInt64Seconds(absl::Ceil(command.limits.cpu_time, absl::Seconds(1)));
  spec.max_open_files = command.limits.max_open_files;
  spec.max_file_size_bytes = command.limits.max_file_size_bytes;
  spec.address_space_bytes = address_space_bytes;
  spec.cpu_affinity = &command.limits.cpu_affinity;
  return spec;
}

absl::Status SetNonBlocking(int fd) {
  int flags = fcntl(fd, F_GETFL);
  if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) {
    return ErrnoToStatus(errno, "fcntl(O_NONBLOCK)");
  }
  return absl::OkStatus();
}

}  // namespace execd::core
