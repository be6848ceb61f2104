#include "core/stdio_plan.h"

#include <fcntl.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <termios.h>
#include <unistd.h>

#include <cerrno>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/errno_status.h"
#include "core/status_macros.h"

namespace execd::core {
namespace {

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

}  // namespace

bool SetTerminalSize(int fd, const TerminalSize& size) {
  winsize ws{};
  ws.ws_row = static_cast<unsigned short>(size.rows);
  ws.ws_col = static_cast<unsigned short>(size.columns);
  return ioctl(fd, TIOCSWINSZ, &ws) == 0;
}

absl::StatusOr<StdioPlan> PlanStdio(const Command& command, const StdioWants& wants) {
  const bool terminal = command.terminal.has_value();
  if (terminal && !command.pipe_to.empty()) {
    return absl::InvalidArgumentError("a pipeline cannot run on a pseudo-terminal");
  }
  StdioPlan plan;
  if (terminal) {
    plan.input = StdioPlan::Input::kTerminal;
  } else if (command.stdin_data.empty() && !wants.stdin_pipe) {
    plan.input = StdioPlan::Input::kNull;
  } else if (wants.memfd_stdin_bytes > 0 && !wants.stdin_pipe &&
             static_cast<int64_t>(command.stdin_data.size()) >= wants.memfd_stdin_bytes) {
    // Large stdin: a sealed in-memory file the child reads (and may seek or mmap) at its
    // own pace, with no writer on the event loop and no pipe-sized round trips.
    plan.input = StdioPlan::Input::kMemfd;
  } else {
    plan.input = StdioPlan::Input::kPipe;
  }
  plan.outputs = terminal ? StdioPlan::Outputs::kTerminal : StdioPlan::Outputs::kPipes;
  // The report is the program's own: a pipeline's programs, or a terminal's session, have
  // no one program whose exit is the command's.
  plan.report = wants.exit_report && !terminal && command.pipe_to.empty()
                    ? StdioPlan::Report::kExitReport
                    : StdioPlan::Report::kNone;
  return plan;
}

absl::StatusOr<Stdio> OpenStdio(const StdioPlan& plan, ProcessOs& os, const Command& command) {
  Stdio stdio;
  auto keep_child_end = [&stdio](UniqueFd fd) {
    const int raw = fd.get();
    stdio.child_ends.push_back(std::move(fd));
    return raw;
  };
  switch (plan.input) {
    case StdioPlan::Input::kTerminal: {
      ASSIGN_OR_RETURN(auto pty, OpenTerminal(*command.terminal));
      stdio.stdin_write = std::move(pty.first);
      stdio.child_stdin = keep_child_end(std::move(pty.second));
      RETURN_IF_ERROR(SetNonBlocking(stdio.stdin_write.get()));
      break;
    }
    case StdioPlan::Input::kNull: {
      ASSIGN_OR_RETURN(stdio.child_stdin, DevNull());
      break;
    }
    case StdioPlan::Input::kMemfd: {
      ASSIGN_OR_RETURN(UniqueFd memfd, SealedMemfd(command.stdin_data));
      stdio.child_stdin = keep_child_end(std::move(memfd));
      break;
    }
    case StdioPlan::Input::kPipe: {
      ASSIGN_OR_RETURN(auto pipe, os.Pipe());
      stdio.stdin_write = std::move(pipe.second);
      stdio.child_stdin = keep_child_end(std::move(pipe.first));
      RETURN_IF_ERROR(SetNonBlocking(stdio.stdin_write.get()));
      break;
    }
  }
  if (plan.outputs == StdioPlan::Outputs::kTerminal) {
    // All output is read from the master side, through a descriptor of its own, so the
    // loop watches reading and writing separately.
    stdio.stdout_read.reset(fcntl(stdio.stdin_write.get(), F_DUPFD_CLOEXEC, 0));
    if (!stdio.stdout_read.valid()) return ErrnoToStatus(errno, "dup the pseudo-terminal");
    stdio.child_stdout = stdio.child_stdin;
    stdio.child_stderr = stdio.child_stdin;
  } else {
    ASSIGN_OR_RETURN(auto stdout_pipe, os.Pipe());
    ASSIGN_OR_RETURN(auto stderr_pipe, os.Pipe());
    stdio.stdout_read = std::move(stdout_pipe.first);
    stdio.stderr_read = std::move(stderr_pipe.first);
    stdio.child_stdout = keep_child_end(std::move(stdout_pipe.second));
    stdio.child_stderr = keep_child_end(std::move(stderr_pipe.second));
    RETURN_IF_ERROR(SetNonBlocking(stdio.stdout_read.get()));
    RETURN_IF_ERROR(SetNonBlocking(stdio.stderr_read.get()));
  }
  if (plan.report == StdioPlan::Report::kExitReport) {
    ASSIGN_OR_RETURN(auto report_pipe, os.Pipe());
    RETURN_IF_ERROR(SetNonBlocking(report_pipe.first.get()));
    stdio.report_read = std::move(report_pipe.first);
    stdio.child_fd3 = keep_child_end(std::move(report_pipe.second));
  }
  return stdio;
}

}  // namespace execd::core
