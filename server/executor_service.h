// ExecutorService implements execd.v1.Executor on gRPC's callback API: no thread per call.
// It is a transport only: each handler turns its request into a core call, started on the
// Dispatcher (core's one request path), and the call's events back into messages. Each
// call's reactor finishes itself when the call reports its end. Every call is authenticated
// first (server/auth.h): one that is not gets UNAUTHENTICATED before anything else happens,
// and the identity of one that is goes with its core call. Thread-safe.
#pragma once

#include <grpcpp/grpcpp.h>

#include "core/dispatcher.h"
#include "execd/v1/execd.grpc.pb.h"
#include "metrics/registry.h"
#include "server/arena_allocator.h"
#include "server/auth.h"
#include "server/request_log.h"

namespace execd::server {

class ExecutorService final : public v1::Executor::CallbackService {
 public:
  ExecutorService(core::Dispatcher& dispatcher, RequestLog& log, metrics::Registry& metrics,
                  const Authenticator& authenticator)
      : dispatcher_(dispatcher), log_(log), metrics_(metrics), authenticator_(authenticator) {
    SetMessageAllocatorFor_Execute(&execute_allocator_);
  }

  grpc::ServerUnaryReactor* Execute(grpc::CallbackServerContext* context,
                                    const v1::ExecuteRequest* request,
                                    v1::ExecuteResponse* response) override;
  grpc::ServerWriteReactor<v1::ExecuteEvent>* ExecuteStream(
      grpc::CallbackServerContext* context, const v1::ExecuteRequest* request) override;
  grpc::ServerWriteReactor<v1::BatchResult>* ExecuteBatch(grpc::CallbackServerContext* context,
                                                          const v1::BatchRequest* request) override;
  grpc::ServerBidiReactor<v1::AttachRequest, v1::AttachEvent>* Attach(
      grpc::CallbackServerContext* context) override;
  grpc::ServerUnaryReactor* Ping(grpc::CallbackServerContext* context,
                                 const v1::PingRequest* request,
                                 v1::PingResponse* response) override;
  grpc::ServerUnaryReactor* GetStatus(grpc::CallbackServerContext* context,
                                      const v1::StatusRequest* request,
                                      v1::StatusResponse* response) override;

  core::Dispatcher& dispatcher() { return dispatcher_; }
  RequestLog& log() { return log_; }
  metrics::Registry& metrics() { return metrics_; }
  const Authenticator& authenticator() const { return authenticator_; }
  // A call answered OK on gRPC's thread, without a core call: counted, not logged.
  void CountAnsweredAtOnce(core::Rpc rpc, absl::Time received) {
    core::CallTimes times;
    times.total = dispatcher_.engine().clock().Now() - received;
    metrics_.CallEnded(rpc, absl::StatusCode::kOk, times);
  }

 private:
  ArenaMessageAllocator<v1::ExecuteRequest, v1::ExecuteResponse> execute_allocator_;
  core::Dispatcher& dispatcher_;
  RequestLog& log_;
  metrics::Registry& metrics_;
  const Authenticator& authenticator_;
};

}  // namespace execd::server
