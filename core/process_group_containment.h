// Containment without cgroups: each program's process group holds the command, and execd,
// as child subreaper, gets back what escapes it and kills it when a command ends (see
// Containment::SweepOrphans).
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "core/containment.h"

namespace execd::core {

// Makes this process the child subreaper; the error when the kernel refuses.
absl::StatusOr<std::unique_ptr<Containment>> NewProcessGroupContainment();

}  // namespace execd::core
