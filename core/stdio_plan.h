// StdioPlan: which descriptors a command's child gets, decided from its Command and a few
// options before any pipe or terminal exists, so that the decision can be tested without a
// kernel and the spawn only carries it out (OpenStdio): stdin from /dev/null, a sealed
// memfd, a pipe or a pseudo-terminal; stdout and stderr through pipes or the terminal;
// descriptor 3 for an exit report, or nothing.
//
// Thread-safety: plain values and functions, used on the spawning thread.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/command.h"
#include "core/spawn.h"
#include "core/unique_fd.h"

namespace execd::core {

struct StdioPlan {
  enum class Input {
    kNull,      // /dev/null: no stdin data, and none to come.
    kMemfd,     // A sealed memfd holding all of it, read at the child's own pace.
    kPipe,      // A pipe execd writes without blocking, as the child reads.
    kTerminal,  // The slave side of a pseudo-terminal (Command::terminal).
  };
  enum class Outputs {
    kPipes,     // stdout and stderr, each through a pipe of its own.
    kTerminal,  // Both to the terminal, read from its master side.
  };
  enum class Report {
    kNone,
    kExitReport,  // Descriptor 3: a pipe for the "ready" line and the exit report.
  };
  Input input = Input::kNull;
  Outputs outputs = Outputs::kPipes;
  Report report = Report::kNone;

  bool operator==(const StdioPlan&) const = default;
};

// What the caller wants beyond the command (ChildProcess::Options' fields of these names).
struct StdioWants {
  // A stdin pipe even with no stdin data yet (a pre-warmed process gets it later).
  bool stdin_pipe = false;
  // stdin of at least this many bytes goes in a memfd (0: never).
  int64_t memfd_stdin_bytes = 0;
  // Descriptor 3 for an exit report; only a single program off a terminal gets one.
  bool exit_report = false;
};

// The plan for `command`; INVALID_ARGUMENT for a pipeline on a terminal.
absl::StatusOr<StdioPlan> PlanStdio(const Command& command, const StdioWants& wants);

// A plan carried out: execd's ends of the descriptors, and the child's.
struct Stdio {
  // execd's ends, non-blocking. stdin: the pipe's write end or the terminal's master
  // (invalid for /dev/null or a memfd); stdout: its pipe's read end or, on a terminal, a
  // descriptor of the master of its own, through which all output comes; stderr: its
  // pipe's read end (none on a terminal); report: descriptor 3's read end.
  UniqueFd stdin_write;
  UniqueFd stdout_read;
  UniqueFd stderr_read;
  UniqueFd report_read;
  // The child's ends, as the first program's stdin, the last one's stdout, everyone's
  // stderr and descriptor 3 (-1: none). On a terminal the slave is all three.
  int child_stdin = -1;
  int child_stdout = -1;
  int child_stderr = -1;
  int child_fd3 = -1;
  // Owns the child's ends but /dev/null (shared, never closed).
  std::vector<UniqueFd> child_ends;
};

// Opens what `plan` (PlanStdio's for `command`) says: the memfd holds command.stdin_data,
// the terminal has command.terminal's size. Pipes come from `os`, in this order: stdin,
// stdout, stderr, report.
absl::StatusOr<Stdio> OpenStdio(const StdioPlan& plan, ProcessOs& os, const Command& command);

// Sets the size of the pseudo-terminal `fd` (either side); its foreground process group
// gets SIGWINCH. False on failure (errno set).
bool SetTerminalSize(int fd, const TerminalSize& size);

}  // namespace execd::core
