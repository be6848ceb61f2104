#include "server/executor_service.h"

#include <atomic>
#include <memory>
#include <optional>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "server/attach_call.h"
#include "server/batch_call.h"
#include "server/call_base.h"
#include "server/convert.h"
#include "server/event_queue.h"

namespace execd::server {
namespace {

class ExecuteReactor final : public grpc::ServerUnaryReactor, public CallBase {
 public:
  ExecuteReactor(ExecutorService& service, grpc::CallbackServerContext* context,
                 v1::ExecuteResponse* response, std::string caller)
      : CallBase(service, context, core::Rpc::kExecute, std::move(caller)), response_(response) {}

  // The call's status if it is answered already (a cache hit, a rejected request, or a
  // command that ended before Start returned): the response is complete and this reactor is
  // not needed. Otherwise the reactor finishes the call when the result comes.
  std::optional<grpc::Status> Start(const v1::ExecuteRequest& request) {
    PrepareAndRun(const_cast<v1::ExecuteRequest&>(request), core::CallShape::kUnary);
    if (ReleaseHold()) return status_;
    return std::nullopt;
  }

  void OnFinished(absl::StatusOr<core::Result> result) override {
    Report(result);
    if (result.ok()) {
      ToResponse(*std::move(result), response_);
    } else {
      status_ = CallStatus(result.status());
    }
    result_delivered_.store(true, std::memory_order_release);
    if (ReleaseHold()) Finish(status_);
  }

  void OnCancel() override { Cancel(); }
  void OnDone() override { delete this; }
  // Answered in Start and never handed to gRPC.
  void Discard() { delete this; }
  // Once the result is in, what is left of the call's reactions is trivial (OnDone deletes
  // the reactor; a late OnCancel finds nothing to stop), so gRPC may run them inline rather
  // than wake an executor thread for each call: a thread hand-off per call, a quarter of a
  // cache hit's cost.
  bool InternalInlineable() override { return result_delivered_.load(std::memory_order_acquire); }

 private:
  // Returns true for the caller that releases the last hold and so must finish the call.
  bool ReleaseHold() { return holds_.fetch_sub(1, std::memory_order_acq_rel) == 1; }
  std::atomic<bool> result_delivered_{false};

  v1::ExecuteResponse* const response_;
  grpc::Status status_;
  std::atomic<int> holds_{2};  // Start() and the call's OnFinished.
};

class ExecuteStreamReactor final : public grpc::ServerWriteReactor<v1::ExecuteEvent>,
                                   public CallBase {
 public:
  ExecuteStreamReactor(ExecutorService& service, grpc::CallbackServerContext* context,
                       std::string caller)
      : CallBase(service, context, core::Rpc::kExecuteStream, std::move(caller)) {
    writer_.set_metrics(&service.metrics());
  }

  void Start(const v1::ExecuteRequest& request) {
    writer_.set_chunk_bytes(request.stream_chunk_bytes() > 0 ? request.stream_chunk_bytes()
                                                             : 64 << 10);
    PrepareAndRun(const_cast<v1::ExecuteRequest&>(request), core::CallShape::kStream);
    writer_.set_accept_lz4(accept_lz4());
    writer_.Open();
  }

  void OnStarted(pid_t pid, absl::Duration queued) override {
    v1::ExecuteEvent event;
    event.mutable_started()->set_pid(pid);
    DurationToProto(queued, event.mutable_started()->mutable_queued());
    writer_.Push(std::move(event));
  }

  void OnOutput(core::OutputStream stream, absl::string_view data) override {
    v1::ExecuteEvent event;
    OutputToProto(stream, data, event.mutable_output());
    writer_.Push(std::move(event));
  }

  void OnFinished(absl::StatusOr<core::Result> result) override {
    Report(result);
    if (result.ok()) {
      v1::ExecuteEvent event;
      ToResponse(*std::move(result), event.mutable_exited());
      writer_.Push(std::move(event));
    }
    writer_.Close(result.ok() ? grpc::Status::OK : CallStatus(result.status()));
  }

  void OnWriteDone(bool ok) override { writer_.WriteDone(ok); }
  void OnCancel() override { Cancel(); }
  void OnDone() override { delete this; }

 private:
  // Opened once Start has run the call, so that nothing is written before the call is set
  // up (and the call cannot finish before Start is done with this object).
  EventWriter<v1::ExecuteEvent> writer_{
      {.start_write = [this](const v1::ExecuteEvent* event) { StartWrite(event); },
       .finish = [this](const grpc::Status& status) { Finish(status); },
       .pause_output = [this](bool paused) { SetOutputPaused(paused); }},
      /*open=*/false};
};

// A streaming call refused before it started: finished at once, deleted once gRPC is done.
template <class Reactor>
class RefusedCall final : public Reactor {
 public:
  explicit RefusedCall(const absl::Status& status) { this->Finish(ToGrpcStatus(status)); }
  void OnDone() override { delete this; }
};

// The identity of the caller of `context`'s call of `rpc`. When there is none, the call is
// counted and logged as refused, and the caller answers it with the error, having done
// nothing else for it.
absl::StatusOr<std::string> Authenticate(ExecutorService& service,
                                         grpc::CallbackServerContext* context, core::Rpc rpc) {
  absl::StatusOr<std::string> caller = service.authenticator().Authenticate(*context);
  if (!caller.ok()) {
    ReportCall(service, rpc, CallInfo{}, context, absl::StatusOr<core::Result>(caller.status()),
               absl::ZeroDuration(), caller.status().code());
  }
  return caller;
}

grpc::ServerUnaryReactor* Refuse(grpc::CallbackServerContext* context, const absl::Status& status) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(ToGrpcStatus(status));
  return reactor;
}

}  // namespace

grpc::ServerUnaryReactor* ExecutorService::Execute(grpc::CallbackServerContext* context,
                                                   const v1::ExecuteRequest* request,
                                                   v1::ExecuteResponse* response) {
  absl::StatusOr<std::string> caller = Authenticate(*this, context, core::Rpc::kExecute);
  if (!caller.ok()) return Refuse(context, caller.status());
  auto* reactor = new ExecuteReactor(*this, context, response, *std::move(caller));
  std::optional<grpc::Status> answered = reactor->Start(*request);
  if (!answered.has_value()) return reactor;
  // Answered at once: finish as Ping does, through gRPC's own inline reactor, which saves
  // the thread hand-offs a reactor of ours costs (a fifth of a cache hit).
  reactor->Discard();
  grpc::ServerUnaryReactor* done = context->DefaultReactor();
  done->Finish(*std::move(answered));
  return done;
}

grpc::ServerWriteReactor<v1::ExecuteEvent>* ExecutorService::ExecuteStream(
    grpc::CallbackServerContext* context, const v1::ExecuteRequest* request) {
  absl::StatusOr<std::string> caller = Authenticate(*this, context, core::Rpc::kExecuteStream);
  if (!caller.ok()) {
    return new RefusedCall<grpc::ServerWriteReactor<v1::ExecuteEvent>>(caller.status());
  }
  auto* reactor = new ExecuteStreamReactor(*this, context, *std::move(caller));
  reactor->Start(*request);
  return reactor;
}

grpc::ServerBidiReactor<v1::AttachRequest, v1::AttachEvent>* ExecutorService::Attach(
    grpc::CallbackServerContext* context) {
  absl::StatusOr<std::string> caller = Authenticate(*this, context, core::Rpc::kAttach);
  if (!caller.ok()) {
    return new RefusedCall<grpc::ServerBidiReactor<v1::AttachRequest, v1::AttachEvent>>(
        caller.status());
  }
  return NewAttachCall(*this, context, *std::move(caller));
}

grpc::ServerWriteReactor<v1::BatchResult>* ExecutorService::ExecuteBatch(
    grpc::CallbackServerContext* context, const v1::BatchRequest* request) {
  absl::StatusOr<std::string> caller = Authenticate(*this, context, core::Rpc::kExecuteBatch);
  if (!caller.ok()) {
    return new RefusedCall<grpc::ServerWriteReactor<v1::BatchResult>>(caller.status());
  }
  return NewBatchCall(*this, context, request, *std::move(caller));
}

grpc::ServerUnaryReactor* ExecutorService::GetStatus(grpc::CallbackServerContext* context,
                                                     const v1::StatusRequest* request,
                                                     v1::StatusResponse* response) {
  absl::StatusOr<std::string> caller = Authenticate(*this, context, core::Rpc::kGetStatus);
  if (!caller.ok()) return Refuse(context, caller.status());
  const absl::Time received = dispatcher_.engine().clock().Now();
  if (absl::Status allowed = dispatcher_.CheckGetStatus(*caller); !allowed.ok()) {
    CallInfo info;
    info.identity = *std::move(caller);
    ReportCall(*this, core::Rpc::kGetStatus, info, context, absl::StatusOr<core::Result>(allowed),
               dispatcher_.engine().clock().Now() - received, allowed.code());
    return Refuse(context, allowed);
  }
  const core::Dispatcher::Stats stats = dispatcher_.stats();
  response->set_running(stats.engine.running);
  response->set_queued(static_cast<int32_t>(stats.engine.queued));
  response->set_concurrency_limit(stats.engine.limit);
  response->set_memory_in_use_bytes(stats.memory_in_use);
  response->set_memory_budget_bytes(stats.memory_limit);
  for (const core::Engine::PoolStatus& p : dispatcher_.engine().PoolStatuses()) {
    v1::PoolStatus* out = response->add_pools();
    out->set_name(p.name);
    out->set_kind(std::string(core::PoolKindName(p.kind)));
#define EXECD_POOL_STAT_TO_PROTO(type, name, what) out->set_##name(p.stats.name);
    EXECD_POOL_STATS(EXECD_POOL_STAT_TO_PROTO)
#undef EXECD_POOL_STAT_TO_PROTO
  }
  if (stats.cache.has_value()) {
    const core::ResultCache::Stats& c = *stats.cache;
    v1::CacheStatus* out = response->mutable_cache();
#define EXECD_CACHE_STAT_TO_PROTO(type, name, what) out->set_##name(c.name);
    EXECD_CACHE_STATS(EXECD_CACHE_STAT_TO_PROTO)
#undef EXECD_CACHE_STAT_TO_PROTO
    out->set_max_bytes(dispatcher_.cache_settings().max_bytes);
  }
  if (request->include_metrics()) {
    for (metrics::Sample& sample : metrics_.Samples()) {
      v1::MetricSample* out = response->add_metrics();
      out->set_name(std::move(sample.name));
      for (auto& [name, value] : sample.labels) (*out->mutable_labels())[name] = std::move(value);
      out->set_value(sample.value);
    }
  }
  CountAnsweredAtOnce(core::Rpc::kGetStatus, received);
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerUnaryReactor* ExecutorService::Ping(grpc::CallbackServerContext* context,
                                                const v1::PingRequest* request,
                                                v1::PingResponse* response) {
  if (absl::StatusOr<std::string> caller = Authenticate(*this, context, core::Rpc::kPing);
      !caller.ok()) {
    return Refuse(context, caller.status());
  }
  const absl::Time received = dispatcher_.engine().clock().Now();
  response->set_payload(request->payload());
  CountAnsweredAtOnce(core::Rpc::kPing, received);
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

}  // namespace execd::server
