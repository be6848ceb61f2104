// Containment by cgroup: a cgroup per command (see containment.h), under a directory of
// this server's own in each usable hierarchy.
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "core/containment.h"

namespace execd::core {

// Finds the writable cgroup hierarchies, clears what earlier execd processes left there,
// and creates this server's directories. FAILED_PRECONDITION when none can track commands.
absl::StatusOr<std::unique_ptr<Containment>> NewCgroupContainment();

}  // namespace execd::core
