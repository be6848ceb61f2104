// Attach: one interactive session with one command over a bidirectional stream. The first
// message starts the command (validated like ExecuteStream); later ones feed its stdin,
// close it or signal it; the command's output streams back as it comes, then its exit.
#pragma once

#include <grpcpp/grpcpp.h>

#include <string>

#include "execd/v1/execd.grpc.pb.h"

namespace execd::server {

class ExecutorService;

// The reactor of one Attach call from `caller` (its authenticated identity); it deletes
// itself when the call is done.
grpc::ServerBidiReactor<v1::AttachRequest, v1::AttachEvent>* NewAttachCall(
    ExecutorService& service, grpc::CallbackServerContext* context, std::string caller);

}  // namespace execd::server
