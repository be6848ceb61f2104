// Loading worker pools from `--pools_config`: a PoolsConfig message (protos/execd/v1/
// pools.proto) in protobuf text format, checked and turned into the engine's PoolSpecs.
// Every error names the file, the line, the pool and the fix.
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/pool.h"
#include "core/validate.h"

namespace execd::server {

// Parses and validates `text` (read from `path`, which only labels messages). Worker
// commands are validated like requests under `policy` (their executables must exist).
absl::StatusOr<std::vector<core::PoolSpec>> ParsePoolsConfig(const std::string& text,
                                                             const std::string& path,
                                                             const core::RequestPolicy& policy);
// Reads `path` and parses it.
absl::StatusOr<std::vector<core::PoolSpec>> LoadPoolsConfig(const std::string& path,
                                                            const core::RequestPolicy& policy);

}  // namespace execd::server
