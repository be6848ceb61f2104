// Starting a child process. ProcessOs is the seam between the engine and the kernel for the
// calls that can run out of resources (pipe, spawn), so tests can inject EMFILE or EAGAIN the
// way LevelDB's Env does. The system implementation is thread-safe.
#pragma once

#include <sys/types.h>

#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "core/command.h"
#include "core/unique_fd.h"

namespace execd::core {

struct SpawnSpec {
  const std::string* executable = nullptr;
  const std::vector<std::string>* argv = nullptr;
  const std::vector<std::string>* env = nullptr;  // "NAME=value"
  const std::string* cwd = nullptr;               // Empty: inherit.
  // Descriptors that become the child's 0, 1 and 2. Every other descriptor is closed.
  int stdin_fd = -1;
  int stdout_fd = -1;
  int stderr_fd = -1;
  // When set, becomes the child's descriptor 3 (a PREWARMED pool's exit report: see
  // ReportChannel, whose kExitReportFd it is).
  int fd3 = -1;
  // Descriptors the child writes "0" to before exec: cgroup.procs files to join.
  const std::vector<int>* join_fds = nullptr;
  // A cgroup v2 directory to create the child in (clone3, CLONE_INTO_CGROUP), and the
  // member of join_fds for the same cgroup, which the child then skips. Where the kernel
  // cannot (before Linux 5.7, or not x86-64 here), the child joins it through that member.
  int cgroup_dir_fd = -1;
  int cgroup_procs_fd = -1;
  // Per-process limits set in the child (0: leave as inherited, except RLIMIT_NOFILE, which
  // is reset to the soft limit execd started with).
  int64_t cpu_seconds = 0;
  int64_t max_open_files = 0;
  int64_t max_file_size_bytes = 0;
  int64_t address_space_bytes = 0;  // RLIMIT_AS: memory fallback where no cgroup can.
  const std::vector<int>* cpu_affinity = nullptr;
  // stdin is a pseudo-terminal that becomes the controlling terminal of the child, which
  // then gets a session of its own (a terminal needs one).
  bool controlling_terminal = false;
};

// The parts of a spawn that come from `command` (program, arguments, environment, cwd,
// per-process limits); the caller adds the descriptors and the cgroups to join.
// `command` must outlive the spec.
SpawnSpec SpecFor(const Command& command, int64_t address_space_bytes);

// O_NONBLOCK on `fd`.
absl::Status SetNonBlocking(int fd);

struct SpawnedProcess {
  pid_t pid = -1;
  UniqueFd pidfd;  // Readable once the process has exited; the caller must still reap it.
  bool born_in_cgroup = false;  // Created in spec.cgroup_dir_fd rather than joined to it.
  // It wrote its pid to some cgroup.procs (a cgroup v1 hierarchy's, or one it could not be
  // created in): the write that stalls every fork and exit on the machine (see
  // Containment::Group::Birthplace).
  bool joined_by_write = false;
};

class ProcessOs {
 public:
  virtual ~ProcessOs() = default;
  // A pipe with both ends close-on-exec: {read end, write end}.
  virtual absl::StatusOr<std::pair<UniqueFd, UniqueFd>> Pipe() = 0;
  // Starts the child in a process group of its own (in a new session only when it gets a
  // controlling terminal), with default signal dispositions, an empty signal mask and
  // SIGKILL as its parent-death signal. Returns once
  // exec has succeeded, or the reason it failed (NOT_FOUND, PERMISSION_DENIED, ...).
  virtual absl::StatusOr<SpawnedProcess> Spawn(const SpawnSpec& spec) = 0;
};

// The real kernel: pipe2(O_CLOEXEC) and clone(CLONE_VM | CLONE_VFORK | CLONE_PIDFD), or
// clone3 with CLONE_INTO_CGROUP as well when the spec names a cgroup directory.
ProcessOs& SystemProcessOs();

// Makes sure descriptors 0, 1 and 2 are open (on /dev/null if not), so no pipe the engine
// creates can land on them. Call once at start-up.
void EnsureStandardDescriptorsOpen();

// Gives up execd's controlling terminal, if it has one, so that children, which share
// execd's session (see ProcessOs::Spawn), cannot open it as /dev/tty. A session leader
// keeps it (giving it up would hang up its foreground group); its children then get
// sessions of their own. Call once at start-up, before any spawn; idempotent.
void DetachControllingTerminal();

// Raises this process's soft descriptor limit to its hard limit, so thousands of children
// (three descriptors each) fit; children get the original soft limit back. Idempotent.
void RaiseDescriptorLimit();

}  // namespace execd::core
