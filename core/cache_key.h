// The result cache's key: SHA-256 over a canonical encoding of everything that can change
// a command's result: the program's identity (its resolved path, and the device, inode,
// size and modification time of the file), argv, the child's full environment, cwd, stdin,
// every limit, the pool and its configuration, and a server-wide salt. Two commands that
// differ in any of these never share a key. Thread-safe.
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "core/command.h"

namespace execd::core {

// 32 bytes. FAILED_PRECONDITION when the executable cannot be identified (gone).
absl::StatusOr<std::string> CacheKey(const Command& command, absl::string_view salt);

}  // namespace execd::core
