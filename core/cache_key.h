// The result cache's key: SHA-256 over a canonical encoding of who asked (the caller's
// identity: each caller reads and writes only its own entries) and of everything that can
// change a command's result that execd sees: the program's identity (its resolved path,
// and the device, inode, size, modification and change times of the file), argv, the
// child's full environment, cwd, stdin, every limit, the pool and its configuration, and a
// server-wide salt. Two commands that differ in any of these never share a key. Files the
// command reads that are not its executable (a script's interpreter, shared libraries, its
// input files) are not in it. Thread-safe.
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "core/command.h"

namespace execd::core {

// 32 bytes. FAILED_PRECONDITION when the executable cannot be identified (gone).
absl::StatusOr<std::string> CacheKey(const Command& command, absl::string_view salt);

}  // namespace execd::core
