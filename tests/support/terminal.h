// Test support: run a binary on a new pseudo-terminal, as from a user's terminal, and read
// what it draws there with bounded waits.
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

#include "absl/time/time.h"

namespace execd::testing {

// A process started on a terminal, and the terminal's master side (what the user types
// goes in, what the process draws comes out).
struct OnTerminal {
  pid_t pid = -1;
  int master = -1;
};

// Runs `args` (argv[0] a path) as the session leader of a new pseudo-terminal of rows x
// columns, that terminal its stdin, stdout and stderr. pid is -1 when it could not start.
OnTerminal StartOnTerminal(std::vector<std::string> args, int rows = 24, int columns = 80);

// Reads the terminal `fd` into `*seen` until it contains `text`; false after `timeout`, or
// when the terminal has no writer left.
bool ReadUntil(int fd, std::string* seen, const std::string& text, absl::Duration timeout);

// Reads the terminal `fd` into `*seen` until no process has it open any more (all it drew
// is then in `*seen`); false after `timeout`.
bool ReadToEnd(int fd, std::string* seen, absl::Duration timeout);

// Waits (bounded) for the process to end; its wait status, or -1 (then it is killed).
int WaitEnd(pid_t pid);

}  // namespace execd::testing
