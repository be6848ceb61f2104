// How execctl's commands reach execd, and what an RPC that failed makes execctl print and
// exit with.
#pragma once

#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>

namespace execd::execctl {

// A channel to `target` with no message size limits (outputs can be large).
std::shared_ptr<grpc::Channel> Connect(const std::string& target);

// Says on stderr what failed (with a hint when nothing listens at `target`) and returns the
// exit code for it: 127 for NOT_FOUND, 126 for PERMISSION_DENIED, else 125.
int ExitForRpcError(const grpc::Status& status, const std::string& target);

}  // namespace execd::execctl
