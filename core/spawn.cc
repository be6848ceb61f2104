#include "core/spawn.h"

#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "core/errno_status.h"

#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define EXECD_ASAN 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__) || defined(EXECD_ASAN)
#include <sanitizer/asan_interface.h>
#else
#define ASAN_UNPOISON_MEMORY_REGION(addr, size) ((void)(addr), (void)(size))
#endif

#ifndef CLONE_PIDFD
#define CLONE_PIDFD 0x00001000
#endif

#if defined(__x86_64__)
#define EXECD_HAVE_CLONE3 1
// clone3 with a function to run on a new stack, as clone() offers for the old call (glibc
// 2.36 exports no clone3). In the parent it returns the child's pid or -errno; the child
// calls fn(arg) on the stack given in the arguments and exits with its return value.
// The syscall keeps every register but rax, rcx and r11, and the child starts with the
// parent's registers on its own stack, so fn and arg wait in r9 and r8.
extern "C" long execd_clone3(void* clone_args, size_t size, int (*fn)(void*), void* arg);
asm(R"(
    .text
    .globl execd_clone3
    .hidden execd_clone3
    .type execd_clone3, @function
execd_clone3:
    movq %rdx, %r9
    movq %rcx, %r8
    movl $435, %eax
    syscall
    testq %rax, %rax
    jz 1f
    ret
1:
    xorl %ebp, %ebp
    andq $-16, %rsp
    movq %r8, %rdi
    callq *%r9
    movl %eax, %edi
    movl $60, %eax
    syscall
    hlt
    .size execd_clone3, .-execd_clone3
    .section .note.GNU-stack,"",@progbits
    .text
)");
#endif

namespace execd::core {
namespace {

#ifdef EXECD_HAVE_CLONE3
// struct clone_args of <linux/sched.h> up to its `cgroup` field (CLONE_ARGS_SIZE_VER2).
struct Clone3Args {
  uint64_t flags;
  uint64_t pidfd;
  uint64_t child_tid;
  uint64_t parent_tid;
  uint64_t exit_signal;
  uint64_t stack;
  uint64_t stack_size;
  uint64_t tls;
  uint64_t set_tid;
  uint64_t set_tid_size;
  uint64_t cgroup;
};
static_assert(sizeof(Clone3Args) == 88);
constexpr uint64_t kCloneIntoCgroup = 0x200000000ULL;

// Cleared for good once the kernel shows it has no clone3 or no CLONE_INTO_CGROUP, or
// that children created in a cgroup do not survive (below).
std::atomic<bool> g_clone3_into_cgroup{true};

// After clone3 returned `r` < 0: when that says this kernel has no clone3 (before 5.3) or
// no CLONE_INTO_CGROUP (before 5.7), execd stops trying. Any other refusal (a cgroup that
// takes no processes, a permission) concerns that one cgroup: its child joins instead.
void ForgetClone3IfUnsupported(long r) {
  if (r == -ENOSYS || r == -E2BIG || r == -EINVAL) {
    g_clone3_into_cgroup.store(false, std::memory_order_relaxed);
  }
}

// clone3 arguments for a child created in `cgroup_dir_fd`, run on `stack`, suspending the
// caller until it execs or exits.
Clone3Args IntoCgroup(int cgroup_dir_fd, char* stack, size_t stack_size) {
  Clone3Args cl{};
  cl.flags = CLONE_VM | CLONE_VFORK | kCloneIntoCgroup;
  cl.exit_signal = SIGCHLD;
  cl.stack = reinterpret_cast<uintptr_t>(stack);
  cl.stack_size = stack_size;
  cl.cgroup = static_cast<uint64_t>(cgroup_dir_fd);
  return cl;
}

[[noreturn]] int ExitAtOnce(void*) { _exit(0); }

// On this host's Linux 6.18, a child created by clone3 in a cgroup that had once been
// killed through cgroup.kill is SIGKILLed at birth (seen, not read: the kernel seems to
// compare the target cgroup's kill count with the one of the *creating* process's cgroup).
// execd never creates children in a cgroup it killed (containment does not reuse those),
// but its own cgroup may have been killed before it started (a systemd restart in place),
// and then every child created that way would die. Checked once, before the first use,
// with a child that exits at once. `stack` is the caller's child stack.
bool CreatedChildrenSurvive(int cgroup_dir_fd, char* stack, size_t stack_size) {
  static std::atomic<int> verdict{-1};  // -1 unknown, 0 they die, 1 they survive.
  if (int v = verdict.load(std::memory_order_acquire); v >= 0) return v == 1;
  static absl::Mutex mu(absl::kConstInit);
  absl::MutexLock lock(&mu);
  if (int v = verdict.load(std::memory_order_acquire); v >= 0) return v == 1;
  Clone3Args cl = IntoCgroup(cgroup_dir_fd, stack, stack_size);
  long pid = execd_clone3(&cl, sizeof(cl), ExitAtOnce, nullptr);
  if (pid < 0) {
    ForgetClone3IfUnsupported(pid);  // Else the next spawn asks again.
    return false;
  }
  int status = 0;
  while (waitpid(static_cast<pid_t>(pid), &status, 0) < 0 && errno == EINTR) {
  }
  ASAN_UNPOISON_MEMORY_REGION(stack, stack_size);  // For the child that follows.
  const bool survived = WIFEXITED(status) && WEXITSTATUS(status) == 0;
  verdict.store(survived ? 1 : 0, std::memory_order_release);
  return survived;
}
#endif

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

// Whether children without a terminal get a session of their own. A session is also a
// scheduler autogroup (kernel.sched_autogroup_enabled): one per child makes each compete
// as a group of its own against the whole session of whoever loads the machine, so on a
// busy machine it waits for a CPU where a child in execd's session, favoured by nice,
// would not. A process group is all the process-tree kill needs.
bool g_child_sessions = true;

struct ChildArgs {
  const char* path;
  char* const* argv;
  char* const* envp;
  const char* cwd;  // Null: inherit.
  int fds[4];       // The child's 0, 1, 2 and, unless -1, 3.
  bool controlling_terminal;
  bool new_session;
  const int* join_fds;
  size_t join_count;
  int skip_join_fd;  // Already in that cgroup: created there.
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
  if (args->new_session) {
    setsid();
  } else {
    setpgid(0, 0);
  }
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() != args->parent_pid) {
    errno = ESRCH;
    ChildFail(args, ChildStep::kParentGone);
  }
  // Join the command's cgroups first, so everything after is accounted and limited.
  for (size_t i = 0; i < args->join_count; ++i) {
    if (args->join_fds[i] == args->skip_join_fd) continue;
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
  const int keep = args->fds[3] >= 0 ? 4 : 3;
  for (int i = 0; i < keep; ++i) {
    // dup2 onto itself would keep the descriptor's close-on-exec flag.
    if (args->fds[i] == i ? fcntl(i, F_SETFD, 0) < 0 : dup2(args->fds[i], i) < 0) {
      ChildFail(args, ChildStep::kDup);
    }
  }
  if (args->controlling_terminal && ioctl(STDIN_FILENO, TIOCSCTTY, 0) != 0) {
    ChildFail(args, ChildStep::kTerminal);
  }
  if (args->cwd != nullptr && chdir(args->cwd) != 0) ChildFail(args, ChildStep::kChdir);
  if (close_range(keep, ~0U, 0) != 0) ChildFail(args, ChildStep::kCloseRange);
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
          if (access(path.c_str(), F_OK) == 0) {  // Then what is missing is what it needs.
            return absl::NotFoundError(absl::StrCat(
                "argv[0] \"", path,
                "\" exists, but the interpreter its #! line names (or, for a binary, its "
                "dynamic loader) was not found"));
          }
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
    // Under AddressSanitizer the child's frames poison the shadow of this (shared) memory
    // and never return to clear it; each child starts on a clean one. (A no-op otherwise.)
    ASAN_UNPOISON_MEMORY_REGION(stack.get(), kStackSize);

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
    args.fds[3] = spec.fd3;
    args.controlling_terminal = spec.controlling_terminal;
    args.new_session = spec.controlling_terminal || g_child_sessions;
    args.parent_pid = getpid();
    args.failed_step = ChildStep::kNone;
    args.skip_join_fd = -1;
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
    pid_t pid = -1;
    int clone_errno = 0;
    bool born_in_cgroup = false;
#ifdef EXECD_HAVE_CLONE3
    if (spec.cgroup_dir_fd >= 0 && g_clone3_into_cgroup.load(std::memory_order_relaxed) &&
        CreatedChildrenSurvive(spec.cgroup_dir_fd, stack.get(), kStackSize)) {
      Clone3Args cl = IntoCgroup(spec.cgroup_dir_fd, stack.get(), kStackSize);
      cl.flags |= CLONE_PIDFD;
      cl.pidfd = reinterpret_cast<uintptr_t>(&pidfd);
      args.skip_join_fd = spec.cgroup_procs_fd;
      long r = execd_clone3(&cl, sizeof(cl), ChildMain, &args);
      if (r >= 0) {
        pid = static_cast<pid_t>(r);
        born_in_cgroup = true;
      } else {
        // Otherwise refused for this cgroup: the child joins it by the write, which reports.
        ForgetClone3IfUnsupported(r);
        if (r == -EAGAIN || r == -ENOMEM) clone_errno = static_cast<int>(-r);
        args.skip_join_fd = -1;
      }
    }
#endif
    if (pid < 0 && clone_errno == 0) {
      pid = clone(ChildMain, stack.get() + kStackSize,
                  CLONE_VM | CLONE_VFORK | CLONE_PIDFD | SIGCHLD, &args, &pidfd);
      clone_errno = errno;
    }
    pthread_sigmask(SIG_SETMASK, &old, nullptr);
    if (pid < 0) return ErrnoToStatus(clone_errno, "clone");
    UniqueFd owned_pidfd(pidfd);
    if (args.failed_step != ChildStep::kNone) {
      int status;
      while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
      }
      return WithErrno(ChildFailureStatus(args, spec), args.error);
    }
    bool joined_by_write = false;
    for (size_t i = 0; i < args.join_count; ++i) {
      joined_by_write |= args.join_fds[i] != args.skip_join_fd;
    }
    return SpawnedProcess{pid, std::move(owned_pidfd), born_in_cgroup, joined_by_write};
  }
};

}  // namespace

ProcessOs& SystemProcessOs() {
  static SystemOs os;
  return os;
}

void DetachControllingTerminal() {
  static std::once_flag once;
  std::call_once(once, [] {
    int tty = open("/dev/tty", O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (tty < 0) {
      g_child_sessions = false;  // No controlling terminal to protect.
      return;
    }
    if (getsid(0) != getpid() && ioctl(tty, TIOCNOTTY) == 0) g_child_sessions = false;
    close(tty);
  });
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
