#include "core/batch.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"

namespace execd::core {

// One item: prepared, given memory (or parked until the batch frees some), then run as a
// call of its own, whose end it reports to the batch. It holds the call, and with it the
// item's memory, until the batch hears the result has left the server.
class Batch::Item final : public CallSink {
 public:
  Item(Batch& batch, int index) : batch_(batch), index_(index) {}

  void Start() {
    absl::StatusOr<Command> command = batch_.prepare_(index_, &options_);
    if (!command.ok()) {
      OnFinished(command.status());
      return;
    }
    command_ = *std::move(command);
    TryRun();
  }

  // Runs with the item's memory reserved; or, none to be had, waits (parked) while the
  // batch holds memory that will come back, else runs to reserve its own or be refused.
  void TryRun() {
    reserved_ = Dispatcher::WorstCase(command_, options_.shape);
    options_.grant = batch_.ReserveForItem(reserved_);
    if (!options_.grant.has_value()) {
      if (batch_.Park(this)) return;
      reserved_ = 0;
    }
    std::shared_ptr<Call> call = batch_.dispatcher_.NewCall(std::move(options_), this);
    {
      absl::MutexLock lock(&mu_);
      call_ = call;
      if (cancelled_) call->Cancel();
    }
    call->Start(std::move(command_));
  }

  void Cancel() {
    std::shared_ptr<Call> call;
    {
      absl::MutexLock lock(&mu_);
      cancelled_ = true;
      call = call_;
    }
    if (call != nullptr) call->Cancel();
  }

  // The result has left the server: the call, and its memory, go. Returns what the batch
  // reserved for it.
  int64_t Release() {
    std::shared_ptr<Call> call;
    absl::MutexLock lock(&mu_);
    call = std::move(call_);
    return std::exchange(reserved_, 0);
  }

  void OnFinished(absl::StatusOr<Result> result) override {
    batch_.ItemDone(index_, std::move(result));
  }

 private:
  Batch& batch_;
  const int index_;
  Command command_;  // Until it runs.
  CallOptions options_;
  int64_t reserved_ = 0;  // Set before the call runs; taken once its result is written.
  absl::Mutex mu_;
  std::shared_ptr<Call> call_ ABSL_GUARDED_BY(mu_);
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
};

std::shared_ptr<Batch> Batch::Create(Dispatcher& dispatcher, Options options, PrepareFn prepare,
                                     BatchSink* sink) {
  return std::shared_ptr<Batch>(new Batch(dispatcher, options, std::move(prepare), sink));
}

Batch::Batch(Dispatcher& dispatcher, Options options, PrepareFn prepare, BatchSink* sink)
    : dispatcher_(dispatcher), options_(options), prepare_(std::move(prepare)), sink_(sink) {}

void Batch::Start() { Launch(); }

void Batch::ItemDone(int index, absl::StatusOr<Result> result) {
  // Once the sink has heard the end it may let go of this batch, while this thread is
  // still here.
  std::shared_ptr<Batch> self = shared_from_this();
  const bool failed =
      !result.ok() || result->termination != Termination::kExited || result->status.code != 0;
  {
    absl::MutexLock lock(&mu_);
    --running_;
    ++reported_;
    if (failed && options_.fail_fast && !stopped_) {
      stopped_ = true;
      stop_reason_ = absl::StrCat("not started: fail_fast after item ", index, " failed");
    }
  }
  // Not under the lock: other items finishing meanwhile must not wait for the sink.
  sink_->OnItem(index, std::move(result));
  std::optional<absl::Status> end;
  {
    absl::MutexLock lock(&mu_);
    ++delivered_;
    end = TakeEndLocked();
  }
  if (end.has_value()) {
    sink_->OnEnd(*std::move(end));
    return;
  }
  Launch();
}

std::optional<absl::Status> Batch::TakeEndLocked() {
  if (ended_ || running_ > 0 || delivered_ < reported_ ||
      (reported_ < options_.total && !cancelled_)) {
    return std::nullopt;
  }
  ended_ = true;
  if (reported_ < options_.total) return absl::CancelledError("the batch was cancelled");
  return absl::OkStatus();
}

void Batch::Launch() {
  // One launcher at a time, looping while others asked for more: an item that fails
  // validation reports (and calls Launch) from inside its Start, which must not recurse
  // once per item of a large batch.
  {
    absl::MutexLock lock(&mu_);
    if (launching_) {
      relaunch_ = true;
      return;
    }
    launching_ = true;
  }
  std::shared_ptr<Batch> self = shared_from_this();  // Items may end the batch meanwhile.
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

bool Batch::LaunchOnce() {
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
  const int limit = dispatcher_.engine().stats().limit;
  const int parallel = options_.max_parallel > 0 ? std::min(options_.max_parallel, limit) : limit;
  Item* item = nullptr;
  std::vector<int> skipped;
  std::string reason;
  {
    absl::MutexLock lock(&mu_);
    if (parked_ == nullptr && !stopped_ && !cancelled_ && !held_ && !ended_ &&
        next_ < options_.total && running_ < parallel) {
      ++running_;
      items_.push_back(std::make_unique<Item>(*this, next_++));
      item = items_.back().get();
    }
    if (stopped_ && !cancelled_) {
      reason = stop_reason_;
      while (next_ < options_.total) {
        skipped.push_back(next_++);
        ++running_;  // Reported below, as a started item would be.
      }
    }
  }
  if (item != nullptr) item->Start();
  for (int i : skipped) ItemDone(i, absl::CancelledError(reason));
  return item != nullptr;
}

std::optional<MemoryGrant> Batch::ReserveForItem(int64_t bytes) {
  MemoryBudget& budget = dispatcher_.budget();
  absl::MutexLock lock(&mu_);
  if (reserved_ > 0 && budget.limit() > 0 && reserved_ + bytes > budget.limit() / 2) {
    return std::nullopt;
  }
  std::optional<MemoryGrant> grant = budget.TryReserve(bytes);
  if (grant.has_value()) reserved_ += bytes;
  return grant;
}

bool Batch::Park(Item* item) {
  absl::MutexLock lock(&mu_);
  // Memory comes back as results are written: of a running item (the one asking is one of
  // running_), or of one reported and not yet written.
  if (running_ <= 1 && reported_ <= written_) return false;
  parked_ = item;
  return true;
}

void Batch::Written(int index) {
  Item* item = nullptr;
  {
    absl::MutexLock lock(&mu_);
    ++written_;
    if (index >= 0 && index < static_cast<int>(items_.size())) item = items_[index].get();
  }
  if (item != nullptr) {
    const int64_t released = item->Release();
    absl::MutexLock lock(&mu_);
    reserved_ -= released;
  }
}

void Batch::SetHeld(bool held) {
  absl::MutexLock lock(&mu_);
  held_ = held;
}

void Batch::Cancel() {
  std::shared_ptr<Batch> self = shared_from_this();
  std::vector<Item*> items;
  Item* parked;
  std::optional<absl::Status> end;
  {
    absl::MutexLock lock(&mu_);
    cancelled_ = true;
    parked = std::exchange(parked_, nullptr);
    for (auto& item : items_) {
      if (item.get() != parked) items.push_back(item.get());
    }
    end = TakeEndLocked();  // Nothing running: no item will report to end it.
  }
  if (end.has_value()) {
    sink_->OnEnd(*std::move(end));
    return;
  }
  // A parked item never ran: it ends as a call cancelled before it started would.
  if (parked != nullptr) parked->OnFinished(absl::CancelledError("the batch was cancelled"));
  for (Item* item : items) item->Cancel();
}

}  // namespace execd::core
