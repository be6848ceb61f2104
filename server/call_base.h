// CallBase: what every RPC's reactor shares as the sink of a core call: turning a request
// into a call on the Dispatcher, cancelling and pausing it, its final status, and its log
// line. The reactor adds only how events become messages.
//
// Thread-safety: the call's events come on core's threads (see Dispatcher); Cancel and
// SetOutputPaused may be called from any thread.
#pragma once

#include <grpcpp/grpcpp.h>

#include <memory>
#include <optional>
#include <string>
#include <utility>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "core/dispatcher.h"
#include "execd/v1/execd.pb.h"
#include "server/convert.h"
#include "server/executor_service.h"

namespace execd::server {

// What the transport keeps of a request for its answer and its log line.
struct CallInfo {
  // Who asks, as the Authenticator found (server/auth.h); set before PrepareCall, which hands
  // it to core as CallOptions::caller.
  std::string identity;
  std::string request_id;
  std::string argv0;
  bool accept_lz4 = false;
  absl::Time started;  // On the engine's clock.
};

// The command `request` asks for (its fields are moved out: gRPC owns the message until
// the call ends and reads it no more), the call options it sets, and what to keep of it.
inline absl::StatusOr<core::Command> PrepareCall(core::Dispatcher& dispatcher,
                                                 v1::ExecuteRequest& request, core::CallShape shape,
                                                 core::CallOptions* options, CallInfo* info) {
  info->started = dispatcher.engine().clock().Now();
  options->caller = info->identity;
  core::CommandRequest command_request = CommandRequestFromProto(request);
  info->request_id = command_request.request_id;
  if (!command_request.argv.empty()) info->argv0 = command_request.argv[0];
  if (!request.pool().empty()) info->argv0 = absl::StrCat("pool:", request.pool());
  info->accept_lz4 = request.accept_compression() == v1::LZ4;
  command_request.streamed = shape != core::CallShape::kUnary;
  absl::StatusOr<core::CachePolicy> cache = CachePolicyFromProto(request.cache_policy());
  if (!cache.ok()) return cache.status();
  options->shape = shape;
  options->cache = *cache;
  options->cache_ttl = DurationFromProto(request.cache_ttl());
  absl::StatusOr<core::Command> command =
      dispatcher.Prepare(std::move(command_request), request.pool(), *options);
  if (command.ok()) command->stream_output = shape != core::CallShape::kUnary;
  return command;
}

// The call's deadline on the engine's clock, from gRPC's.
inline absl::Time CallDeadline(core::Dispatcher& dispatcher,
                               const grpc::CallbackServerContext& context) {
  const absl::Duration left = TimeUntilDeadline(context.deadline());
  return left == absl::InfiniteDuration() ? absl::InfiniteFuture()
                                          : dispatcher.engine().clock().Now() + left;
}

// A call of `rpc` ended with `result` after `total`, its caller getting `code`: its log
// line and its metrics, with the same stage timings.
inline void ReportCall(ExecutorService& service, core::Rpc rpc, const CallInfo& info,
                       grpc::CallbackServerContext* context,
                       const absl::StatusOr<core::Result>& result, absl::Duration total,
                       absl::StatusCode code) {
  core::CallTimes times;
  times.total = total;
  if (result.ok() && !result->cache_hit) {
    times.ran = true;
    times.queue = result->queued;
    times.spawn = result->spawn;
    times.run = result->run;
  }
  service.metrics().CallEnded(rpc, code, times);
  service.log().WriteCall(
      core::RpcName(rpc), info.request_id, [context] { return context->peer(); }, info.identity,
      info.argv0, result, total);
}

class CallBase : public core::CallSink {
 protected:
  // `caller`: the identity the service authenticated the call as.
  CallBase(ExecutorService& service, grpc::CallbackServerContext* context, core::Rpc rpc,
           std::string caller)
      : service_(service), context_(context), rpc_(rpc), received_(Now()) {
    info_.identity = std::move(caller);
  }

  absl::StatusOr<core::Command> Prepare(v1::ExecuteRequest& request, core::CallShape shape,
                                        core::CallOptions* options) {
    return PrepareCall(service_.dispatcher(), request, shape, options, &info_);
  }

  // Starts the call; the sink hears its end, possibly before this returns (after which
  // this object may be gone: touch nothing of it after calling Run).
  void Run(core::Command command, core::CallOptions options) {
    options.deadline = CallDeadline(service_.dispatcher(), *context_);
    std::shared_ptr<core::Call> call = service_.dispatcher().NewCall(std::move(options), this);
    {
      absl::MutexLock lock(&mu_);
      call_ = call;
      if (cancelled_) call->Cancel();
      if (output_paused_) call->SetOutputPaused(true);
    }
    call->Start(std::move(command));
  }

  // Prepare and Run; a request that cannot be prepared ends the call with why.
  void PrepareAndRun(v1::ExecuteRequest& request, core::CallShape shape) {
    core::CallOptions options;
    absl::StatusOr<core::Command> command = Prepare(request, shape, &options);
    if (!command.ok()) {
      OnFinished(command.status());
      return;
    }
    Run(*std::move(command), std::move(options));
  }

  void Cancel() {
    std::shared_ptr<core::Call> call;
    {
      absl::MutexLock lock(&mu_);
      cancelled_ = true;
      call = call_;
    }
    if (call != nullptr) call->Cancel();
  }

  // Back-pressure: under the lock, so that pauses and resumes reach the call in order; one
  // asked for before the call exists is applied when it does.
  void SetOutputPaused(bool paused) {
    absl::MutexLock lock(&mu_);
    output_paused_ = paused;
    if (call_ != nullptr) call_->SetOutputPaused(paused);
  }

  std::shared_ptr<core::Call> call() {
    absl::MutexLock lock(&mu_);
    return call_;
  }
  // What the call produced has left the server: its memory goes back to the budget.
  void ReleaseCall() {
    std::shared_ptr<core::Call> call;
    absl::MutexLock lock(&mu_);
    call = std::move(call_);
  }

  // The call's final status; a retry delay core attached becomes the standard
  // `grpc-retry-pushback-ms` trailer, which gRPC's retry policy honours.
  grpc::Status CallStatus(const absl::Status& status) { return ToCallStatus(status, context_); }

  // The response for a result, with the call's time on the server so far.
  void ToResponse(core::Result result, v1::ExecuteResponse* response) {
    ResultToProto(std::move(result), info_.accept_lz4, Now() - received_, response,
                  service_.metrics());
  }

  // The call's log line and metrics; its caller gets `code` (by default, the result's).
  void Report(const absl::StatusOr<core::Result>& result,
              std::optional<absl::StatusCode> code = std::nullopt) {
    ReportCall(service_, rpc_, info_, context_, result, Now() - received_,
               code.value_or(result.status().code()));
  }

  // The engine's clock: monotonic, and a test's when it injects one.
  absl::Time Now() const { return service_.dispatcher().engine().clock().Now(); }

  bool accept_lz4() const { return info_.accept_lz4; }

  ExecutorService& service_;
  grpc::CallbackServerContext* const context_;
  const core::Rpc rpc_;
  const absl::Time received_;
  CallInfo info_;  // Its identity set at construction, the rest in Prepare, before the call
                   // can report.

 private:
  absl::Mutex mu_;
  std::shared_ptr<core::Call> call_ ABSL_GUARDED_BY(mu_);
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  bool output_paused_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace execd::server
