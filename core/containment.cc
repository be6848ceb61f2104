#include "core/containment.h"

#include "core/cgroup_containment.h"
#include "core/process_group_containment.h"

namespace execd::core {

absl::StatusOr<std::unique_ptr<Containment>> Containment::Create(Mode mode) {
  if (mode != Mode::kProcessGroup) {
    auto cgroup = NewCgroupContainment();
    if (cgroup.ok() || mode == Mode::kCgroup) return cgroup;
  }
  return NewProcessGroupContainment();
}

}  // namespace execd::core
