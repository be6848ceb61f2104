#include "server/batch_call.h"

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/batch.h"
#include "server/call_base.h"
#include "server/convert.h"
#include "server/event_queue.h"
#include "server/executor_service.h"

namespace execd::server {
namespace {

// ExecuteBatch's transport: items' requests become core calls of a core::Batch (which
// decides when each starts), and their results BatchResult messages, written one at a time
// as items complete. A result's memory goes back once it is written; while too much output
// waits for a slow reader, no further item starts. The call finishes once the batch has
// ended, so no item outlives the reactor.
class ExecuteBatchReactor final : public grpc::ServerWriteReactor<v1::BatchResult>,
                                  public core::BatchSink {
 public:
  ExecuteBatchReactor(ExecutorService& service, grpc::CallbackServerContext* context,
                      std::string caller)
      : service_(service), context_(context), caller_(std::move(caller)) {}

  void Start(const v1::BatchRequest* request) {
    // gRPC owns the request until the call ends and reads it no more: items' fields (stdin
    // can be large) are moved out rather than copied.
    request_ = const_cast<v1::BatchRequest*>(request);
    absl::Status valid = Check(*request);
    if (!valid.ok()) {
      // Counted and logged as one request: no item exists.
      CallInfo info;
      info.identity = caller_;
      ReportCall(service_, core::Rpc::kExecuteBatch, info, context_,
                 absl::StatusOr<core::Result>(valid), absl::ZeroDuration(), valid.code());
      writer_.Close(ToGrpcStatus(valid));
      return;
    }
    stdins_ = request->stdins_size() > 0;
    if (stdins_) request_->mutable_requests(0)->clear_stdin();  // Each item has its own.
    const int total = stdins_ ? request->stdins_size() : request->requests_size();
    infos_.resize(total);
    core::Batch::Options options;
    options.total = total;
    options.max_parallel = request->max_parallel();
    options.fail_fast = request->fail_fast();
    batch_ = core::Batch::Create(
        service_.dispatcher(), options,
        [this](int index, core::CallOptions* call) { return Prepare(index, call); }, this);
    batch_->Start();
  }

  void OnWriteDone(bool ok) override {
    writer_.WriteDone(ok);
    if (!ok) {
      batch_->Cancel();  // The client is gone: nothing more to run for it.
      return;
    }
    batch_->Start();  // The write may have made room, in the window or in the memory budget.
  }
  void OnCancel() override {
    if (batch_ != nullptr) batch_->Cancel();
  }
  void OnDone() override { delete this; }

  // core::BatchSink.
  void OnItem(int index, absl::StatusOr<core::Result> result) override {
    const CallInfo& info = infos_[index];
    ReportCall(service_, core::Rpc::kExecuteBatch, info, context_, result, Now() - info.started,
               result.status().code());
    v1::BatchResult out;
    out.set_index(index);
    out.set_status_code(static_cast<int>(result.status().code()));
    out.set_status_message(std::string(result.status().message()));
    if (result.ok()) {
      ResultToProto(*std::move(result), info.accept_lz4, Now() - info.started,
                    out.mutable_response(), service_.metrics());
    }
    writer_.Push(std::move(out));
  }
  void OnEnd(absl::Status status) override { writer_.Close(ToGrpcStatus(status)); }

 private:
  static absl::Status Check(const v1::BatchRequest& request) {
    constexpr int kMaxItems = 100000;
    if (request.stdins_size() > 0 && request.requests_size() != 1) {
      return absl::InvalidArgumentError(absl::StrCat(
          "stdins needs exactly one request to run per input, got ", request.requests_size()));
    }
    const int n = request.stdins_size() > 0 ? request.stdins_size() : request.requests_size();
    if (n == 0) return absl::InvalidArgumentError("the batch is empty: give requests");
    if (n > kMaxItems) {
      return absl::InvalidArgumentError(
          absl::StrCat("the batch has ", n, " items, over the limit of ", kMaxItems));
    }
    if (request.max_parallel() < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("max_parallel ", request.max_parallel(), " is negative"));
    }
    return absl::OkStatus();
  }

  // Item `index`'s command, taken out of the request as it starts.
  absl::StatusOr<core::Command> Prepare(int index, core::CallOptions* options) {
    v1::ExecuteRequest request;
    if (stdins_) {
      request = request_->requests(0);  // Without its stdin, cleared in Start.
      request.set_stdin(std::move(*request_->mutable_stdins(index)));
    } else {
      request = std::move(*request_->mutable_requests(index));
    }
    options->deadline = CallDeadline(service_.dispatcher(), *context_);
    infos_[index].identity = caller_;
    return PrepareCall(service_.dispatcher(), request, core::CallShape::kUnary, options,
                       &infos_[index]);
  }

  absl::Time Now() const { return service_.dispatcher().engine().clock().Now(); }

  ExecutorService& service_;
  grpc::CallbackServerContext* const context_;
  const std::string caller_;  // Every item's CallInfo::identity.
  v1::BatchRequest* request_ = nullptr;
  bool stdins_ = false;
  // One per item, each written by its Prepare before the item can report.
  std::vector<CallInfo> infos_;
  std::shared_ptr<core::Batch> batch_;
  EventWriter<v1::BatchResult> writer_{
      {.start_write = [this](const v1::BatchResult* result) { StartWrite(result); },
       .finish = [this](const grpc::Status& status) { Finish(status); },
       .pause_output = [this](bool paused) { batch_->SetHeld(paused); },
       .written = [this](const v1::BatchResult& result) { batch_->Written(result.index()); }},
      /*open=*/true};
};

}  // namespace

grpc::ServerWriteReactor<v1::BatchResult>* NewBatchCall(ExecutorService& service,
                                                        grpc::CallbackServerContext* context,
                                                        const v1::BatchRequest* request,
                                                        std::string caller) {
  auto* reactor = new ExecuteBatchReactor(service, context, std::move(caller));
  reactor->Start(request);
  return reactor;
}

}  // namespace execd::server
