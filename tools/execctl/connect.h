// How execctl's commands reach execd, and what an RPC that failed makes execctl print and
// exit with.
#pragma once

#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>

#include "tools/client_auth.h"

namespace execd::execctl {

// A channel to `target`, authenticated with `auth`, with no message size limits (outputs can
// be large).
std::shared_ptr<grpc::Channel> Connect(const std::string& target, const client::ClientAuth& auth);

// Says on stderr what failed (with a hint when nothing listens at `target`) and returns the
// exit code for it: 127 for NOT_FOUND, 126 for PERMISSION_DENIED, else 125. A failed TLS
// handshake gets a hint at the TLS flags.
int ExitForRpcError(const grpc::Status& status, const std::string& target);

}  // namespace execd::execctl
