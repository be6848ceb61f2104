// ExecuteBatch: many commands in one call, each run as a call of its own through the
// Dispatcher, at most max_parallel (and the concurrency limit) at once, within a share of the
// memory budget; results are streamed as items complete.
#pragma once

#include <grpcpp/grpcpp.h>

#include <string>

#include "execd/v1/execd.grpc.pb.h"

namespace execd::server {

class ExecutorService;

// The reactor of one ExecuteBatch call from `caller` (its authenticated identity, every
// item's); it deletes itself when the call is done.
grpc::ServerWriteReactor<v1::BatchResult>* NewBatchCall(ExecutorService& service,
                                                        grpc::CallbackServerContext* context,
                                                        const v1::BatchRequest* request,
                                                        std::string caller);

}  // namespace execd::server
