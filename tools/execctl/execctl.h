// execctl's commands, each returning the process exit code. Output goes to stdout/stderr.
#pragma once

#include "tools/execctl/args.h"

namespace execd::execctl {

// Exit codes for failures of execctl itself, chosen to match the shell's conventions.
inline constexpr int kExitTimedOut = 124;
inline constexpr int kExitError = 125;
inline constexpr int kExitPermissionDenied = 126;
inline constexpr int kExitNotFound = 127;

int RunCommand(const Args& args);

}  // namespace execd::execctl
