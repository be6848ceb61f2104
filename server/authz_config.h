// Loading the authorization policy from `--authz_policy`: an AuthzPolicy message
// (protos/execd/v1/policy.proto) in protobuf text format, checked and turned into
// core::AuthzPolicy. Every error names the file, the line, the rule and the field.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "core/authz.h"
#include "core/validate.h"

namespace execd::server {

// Parses and checks `text` (read from `path`, which only labels messages). Limit maxima may
// not exceed the server's (`server`). The executables' paths are canonicalised now
// (realpath, for those that exist).
absl::StatusOr<std::shared_ptr<const core::AuthzPolicy>> ParseAuthzPolicy(
    const std::string& text, const std::string& path, const core::RequestPolicy& server);
// Reads `path` and parses it.
absl::StatusOr<std::shared_ptr<const core::AuthzPolicy>> LoadAuthzPolicy(
    const std::string& path, const core::RequestPolicy& server);

}  // namespace execd::server
