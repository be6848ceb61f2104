#include "server/batch_call.h"

#include <algorithm>
#include <atomic>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "server/call_base.h"
#include "server/convert.h"
#include "server/event_queue.h"
#include "server/executor_service.h"

namespace execd::server {
namespace {

// Who still needs a reactor: gRPC until OnDone, and each thread working on the call outside
// its reactions (a core thread ending an item). Unref is true for the last one out,
// which deletes the reactor.
class Refs {
 public:
  void Ref() { n_.fetch_add(1, std::memory_order_relaxed); }
  bool Unref() { return n_.fetch_sub(1, std::memory_order_acq_rel) == 1; }

 private:
  std::atomic<int> n_{1};  // gRPC's.
};

// ExecuteBatch: items run as calls of their own (validated, queued, logged like single
// calls), at most max_parallel (and the concurrency limit) at once; results are written one
// at a time as items complete. Each item's memory stays reserved until its result has been
// written. A batch holds at most half the memory budget, so that other callers' calls still
// fit beside it: an item that would pass that, or finds the budget full, waits while the
// batch holds memory of its own (its earlier items' results free it), and is refused only
// when the batch holds none. The call finishes once every item has reported (or, cancelled,
// once every started item has ended), so no item outlives the reactor.
class ExecuteBatchReactor final : public grpc::ServerWriteReactor<v1::BatchResult> {
 public:
  ExecuteBatchReactor(ExecutorService& service, grpc::CallbackServerContext* context)
      : service_(service), context_(context) {}

  void Start(const v1::BatchRequest* request) {
    // gRPC owns the request until the call ends and reads it no more: items' fields (stdin
    // can be large) are moved out rather than copied.
    request_ = const_cast<v1::BatchRequest*>(request);
    absl::Status valid = Check(*request);
    if (!valid.ok()) {
      writer_.Close(ToGrpcStatus(valid));
      return;
    }
    stdins_ = request->stdins_size() > 0;
    if (stdins_) request_->mutable_requests(0)->clear_stdin();  // Each item has its own.
    total_ = stdins_ ? request->stdins_size() : request->requests_size();
    max_parallel_ = request->max_parallel();
    fail_fast_ = request->fail_fast();
    Launch();
  }

  void OnWriteDone(bool ok) override {
    writer_.WriteDone(ok);
    if (!ok) {
      CancelAll();  // The client is gone: nothing more to run for it.
      return;
    }
    Launch();  // The write may have made room, in the window or in the memory budget.
  }
  void OnCancel() override { CancelAll(); }
  void OnDone() override { Unref(); }

  // An item's end: its result, or why it did not run. Items end on core threads, and once
  // one of them has queued the last result another may close the writer, and gRPC delete
  // the reactor, while this call is still launching: it holds a reference until it returns.
  void ItemDone(int index, const absl::Status& status, v1::ExecuteResponse response) {
    Ref();
    absl::Cleanup unref = [this] { Unref(); };
    const bool failed =
        !status.ok() || response.termination() != v1::EXITED || response.exit_code() != 0;
    {
      absl::MutexLock lock(&mu_);
      --running_;
      ++reported_;
      if (failed && fail_fast_ && !stopped_) {
        stopped_ = true;
        stop_reason_ = absl::StrCat("not started: fail_fast after item ", index, " failed");
      }
    }
    v1::BatchResult result;
    result.set_index(index);
    result.set_status_code(static_cast<int>(status.code()));
    result.set_status_message(std::string(status.message()));
    *result.mutable_response() = std::move(response);
    // Not under the lock: the write may start here, and other items finishing meanwhile
    // must not wait for it.
    writer_.Push(std::move(result), /*coalesce=*/false);
    std::optional<grpc::Status> end;
    {
      absl::MutexLock lock(&mu_);
      ++queued_;
      end = TakeEndLocked();
    }
    if (end.has_value()) {
      writer_.Close(*std::move(end));
      return;
    }
    Launch();
  }

 private:
  class Item;

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

  // gRPC's reference (released in OnDone), and one per ItemDone in progress.
  void Ref() { refs_.Ref(); }
  void Unref() {
    if (refs_.Unref()) delete this;
  }

  // Starts items while there is room and reports the ones fail_fast skips.
  void Launch();
  // Starts at most one item (each may have to wait for memory); true to go on.
  bool LaunchOnce();
  void CancelAll();
  // An item's result has been written: its memory goes back.
  void Written(const v1::BatchResult& result);
  // Reserves `bytes` for an item, within the batch's share of the budget; none when it
  // should wait for memory the batch holds to come back.
  std::optional<core::MemoryGrant> ReserveForItem(int64_t bytes);
  // An item that found no memory waits here until the batch frees some; false when the
  // batch holds none besides it (nothing would wake it).
  bool Park(Item* item);

  // The call's status, once, when the batch has just ended: every item reported (or,
  // cancelled, none still running) and every report queued for writing, so that no
  // result can come after the writer is closed.
  std::optional<grpc::Status> TakeEndLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (ended_ || running_ > 0 || queued_ < reported_ || (reported_ < total_ && !cancelled_)) {
      return std::nullopt;
    }
    ended_ = true;
    if (reported_ < total_) {
      return grpc::Status(grpc::StatusCode::CANCELLED, "the batch was cancelled");
    }
    return grpc::Status::OK;
  }

  ExecutorService& service_;
  grpc::CallbackServerContext* const context_;
  v1::BatchRequest* request_ = nullptr;
  bool stdins_ = false;
  int total_ = 0;
  int max_parallel_ = 0;  // 0: the concurrency limit.
  bool fail_fast_ = false;
  Refs refs_;

  absl::Mutex mu_;
  int next_ ABSL_GUARDED_BY(mu_) = 0;          // Next item to start.
  int running_ ABSL_GUARDED_BY(mu_) = 0;       // Started, not yet reported.
  int reported_ ABSL_GUARDED_BY(mu_) = 0;      // Results produced (sent or dropped).
  int written_ ABSL_GUARDED_BY(mu_) = 0;       // Results written.
  int64_t reserved_ ABSL_GUARDED_BY(mu_) = 0;  // Memory reserved for unwritten items.
  bool stopped_ ABSL_GUARDED_BY(mu_) = false;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  std::string stop_reason_ ABSL_GUARDED_BY(mu_);
  std::vector<std::unique_ptr<Item>> items_ ABSL_GUARDED_BY(mu_);  // By index.
  Item* parked_ ABSL_GUARDED_BY(mu_) = nullptr;
  int queued_ ABSL_GUARDED_BY(mu_) = 0;      // Results handed to writer_.
  bool ended_ ABSL_GUARDED_BY(mu_) = false;  // The writer was closed.
  bool launching_ ABSL_GUARDED_BY(mu_) = false;
  bool relaunch_ ABSL_GUARDED_BY(mu_) = false;
  // Back-pressure: while too much output waits in results a slow reader has not taken, no
  // more items start.
  bool held_ ABSL_GUARDED_BY(mu_) = false;
  EventWriter<v1::BatchResult> writer_{
      {.start_write = [this](const v1::BatchResult* result) { StartWrite(result); },
       .finish = [this](const grpc::Status& status) { Finish(status); },
       .pause_output =
           [this](bool paused) {
             absl::MutexLock lock(&mu_);
             held_ = paused;
           },
       .written = [this](const v1::BatchResult& result) { Written(result); }},
      /*open=*/true};
};

class ExecuteBatchReactor::Item final : public CallBase {
 public:
  Item(ExecutorService& service, grpc::CallbackServerContext* context, ExecuteBatchReactor& batch,
       int index)
      : CallBase(service, context, "ExecuteBatch"), batch_(batch), index_(index) {}

  void Start(v1::ExecuteRequest request) {
    absl::StatusOr<core::Command> command = Prepare(request, core::CallShape::kUnary, &options_);
    if (!command.ok()) {
      OnFinished(command.status());
      return;
    }
    command_ = *std::move(command);
    TryRun();
  }

  // Runs with the item's memory reserved; or, the budget full, waits (parked) while the
  // batch holds memory that will come back, else runs to be refused with the reason.
  void TryRun() {
    reserved_ = core::Dispatcher::WorstCase(command_, options_.shape);
    options_.grant = batch_.ReserveForItem(reserved_);
    if (!options_.grant.has_value()) {
      if (batch_.Park(this)) return;
      reserved_ = 0;  // Runs to reserve its own, or be refused with the reason.
    }
    Run(std::move(command_), std::move(options_));
  }

  // What the batch reserved for this item; given back once its result is written.
  int64_t TakeReserved() { return std::exchange(reserved_, 0); }

  void OnFinished(absl::StatusOr<core::Result> result) override {
    Log(result);
    v1::ExecuteResponse response;
    if (result.ok()) ToResponse(*std::move(result), &response);
    batch_.ItemDone(index_, result.status(), std::move(response));
  }

  using CallBase::Cancel;
  using CallBase::ReleaseCall;

 private:
  ExecuteBatchReactor& batch_;
  const int index_;
  core::Command command_;  // Until it runs.
  core::CallOptions options_;
  int64_t reserved_ = 0;
};

void ExecuteBatchReactor::Launch() {
  // One launcher at a time, looping while others asked for more: an item that fails
  // validation reports (and calls Launch) from inside Start, which must not recurse once
  // per item of a large batch.
  {
    absl::MutexLock lock(&mu_);
    if (launching_) {
      relaunch_ = true;
      return;
    }
    launching_ = true;
  }
  for (;;) {
    const bool more = LaunchOnce();
    absl::MutexLock lock(&mu_);
    if (!relaunch_ && !more) {
      launching_ = false;
      break;
    }
    relaunch_ = false;
  }
}

bool ExecuteBatchReactor::LaunchOnce() {
  Item* parked;
  {
    absl::MutexLock lock(&mu_);
    parked = cancelled_ ? nullptr : std::exchange(parked_, nullptr);
  }
  if (parked != nullptr) {
    parked->TryRun();
    absl::MutexLock lock(&mu_);
    if (parked_ != nullptr) return false;  // Still waiting for memory.
  }
  // The concurrency limit in force now caps max_parallel: a batch never runs more at once
  // than the server would run separate calls.
  const int limit = service_.dispatcher().engine().stats().limit;
  const int parallel = max_parallel_ > 0 ? std::min(max_parallel_, limit) : limit;
  Item* item = nullptr;
  int index = 0;
  std::vector<int> skipped;
  std::string reason;
  {
    absl::MutexLock lock(&mu_);
    if (parked_ == nullptr && !stopped_ && !cancelled_ && !held_ && next_ < total_ &&
        running_ < parallel) {
      index = next_++;
      ++running_;
      items_.push_back(std::make_unique<Item>(service_, context_, *this, index));
      item = items_.back().get();
    }
    if (stopped_ && !cancelled_) {
      reason = stop_reason_;
      while (next_ < total_) {
        skipped.push_back(next_++);
        ++running_;  // Reported below, as a started item would be.
      }
    }
  }
  if (item != nullptr) {
    v1::ExecuteRequest request;
    if (stdins_) {
      request = request_->requests(0);  // Without its stdin, cleared in Start.
      request.set_stdin(std::move(*request_->mutable_stdins(index)));
    } else {
      request = std::move(*request_->mutable_requests(index));
    }
    item->Start(std::move(request));
  }
  for (int i : skipped) ItemDone(i, absl::CancelledError(reason), v1::ExecuteResponse());
  return item != nullptr;
}

std::optional<core::MemoryGrant> ExecuteBatchReactor::ReserveForItem(int64_t bytes) {
  core::MemoryBudget& budget = service_.dispatcher().budget();
  absl::MutexLock lock(&mu_);
  if (reserved_ > 0 && budget.limit() > 0 && reserved_ + bytes > budget.limit() / 2) {
    return std::nullopt;
  }
  std::optional<core::MemoryGrant> grant = budget.TryReserve(bytes);
  if (grant.has_value()) reserved_ += bytes;
  return grant;
}

bool ExecuteBatchReactor::Park(Item* item) {
  absl::MutexLock lock(&mu_);
  // Memory of the batch's comes back as a running item's result is written, or as an
  // unwritten result is; the item asking is one of running_.
  if (running_ <= 1 && reported_ <= written_) return false;
  parked_ = item;
  return true;
}

void ExecuteBatchReactor::Written(const v1::BatchResult& result) {
  Item* item = nullptr;
  {
    absl::MutexLock lock(&mu_);
    ++written_;
    if (result.index() < static_cast<int>(items_.size())) {
      item = items_[result.index()].get();
      reserved_ -= item->TakeReserved();
    }
  }
  if (item != nullptr) item->ReleaseCall();
}

void ExecuteBatchReactor::CancelAll() {
  std::vector<Item*> items;
  Item* parked;
  std::optional<grpc::Status> end;
  {
    absl::MutexLock lock(&mu_);
    cancelled_ = true;
    parked = std::exchange(parked_, nullptr);
    for (auto& item : items_) items.push_back(item.get());
    end = TakeEndLocked();  // Nothing running: no item will report to end it.
  }
  if (end.has_value()) {
    writer_.Close(*std::move(end));
    return;
  }
  // A parked item never ran: it reports as a call cancelled while queued would.
  if (parked != nullptr) parked->OnFinished(absl::CancelledError("the batch was cancelled"));
  for (Item* item : items) {
    if (item != parked) item->Cancel();
  }
}

}  // namespace

grpc::ServerWriteReactor<v1::BatchResult>* NewBatchCall(ExecutorService& service,
                                                        grpc::CallbackServerContext* context,
                                                        const v1::BatchRequest* request) {
  auto* reactor = new ExecuteBatchReactor(service, context);
  reactor->Start(request);
  return reactor;
}

}  // namespace execd::server
