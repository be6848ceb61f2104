// Batch: many calls as one (ExecuteBatch). Items start in order, each a call of its own on
// the Dispatcher, at most max_parallel at once and never more than the concurrency limit in
// force when each starts. An item's memory stays reserved until its transport says its result
// has left the server (Written); a batch holds at most half the memory budget, so other
// callers' calls fit beside it: an item that would pass that, or finds the budget full, waits
// while the batch holds memory that will come back, and is refused only when it holds none.
// With fail_fast, the first failed item stops the rest from starting (they end CANCELLED).
//
// Thread-safety: every method may be called from any thread. The sink hears each item's end
// once (OnItem) and then the batch's (OnEnd) once, after the last OnItem has returned; never
// with a batch lock held. Keep the Batch (a shared_ptr) until OnEnd; it may be dropped then.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "core/dispatcher.h"

namespace execd::core {

class BatchSink {
 public:
  virtual ~BatchSink() = default;
  // Item `index` ended: its result, or why it did not run.
  virtual void OnItem(int index, absl::StatusOr<Result> result) = 0;
  // Every item has been reported (or, cancelled, every started item has ended): OK, or
  // CANCELLED when some never ran.
  virtual void OnEnd(absl::Status status) = 0;
};

class Batch : public std::enable_shared_from_this<Batch> {
 public:
  struct Options {
    int total = 0;
    int max_parallel = 0;  // 0: the concurrency limit.
    bool fail_fast = false;
  };
  // Item `index`'s command and call options (validation failures end just that item).
  using PrepareFn = absl::AnyInvocable<absl::StatusOr<Command>(int index, CallOptions* options)>;

  static std::shared_ptr<Batch> Create(Dispatcher& dispatcher, Options options, PrepareFn prepare,
                                       BatchSink* sink);

  // Starts items while there is room; call again when room may have come back (a result
  // written, the window no longer held).
  void Start();
  // Item `index`'s result has left the server: its memory goes back.
  void Written(int index);
  // While held (the transport's window is full), no item starts.
  void SetHeld(bool held);
  // Stops starting items and cancels the running ones.
  void Cancel();

  class Item;

 private:
  Batch(Dispatcher& dispatcher, Options options, PrepareFn prepare, BatchSink* sink);
  // An item's end, from its call (or for one never started).
  void ItemDone(int index, absl::StatusOr<Result> result);
  void Launch();
  // Starts at most one item (each may have to wait for memory); true to go on.
  bool LaunchOnce();
  // Reserves `bytes` for an item within the batch's share; none when it should wait.
  std::optional<MemoryGrant> ReserveForItem(int64_t bytes);
  // An item that found no memory waits here; false when the batch holds none besides it.
  bool Park(Item* item);
  // The batch's end, once, when it has just ended.
  std::optional<absl::Status> TakeEndLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  Dispatcher& dispatcher_;
  const Options options_;
  PrepareFn prepare_;
  BatchSink* const sink_;

  absl::Mutex mu_;
  int next_ ABSL_GUARDED_BY(mu_) = 0;       // Next item to start.
  int running_ ABSL_GUARDED_BY(mu_) = 0;    // Started, not yet reported.
  int reported_ ABSL_GUARDED_BY(mu_) = 0;   // Handed to the sink.
  int delivered_ ABSL_GUARDED_BY(mu_) = 0;  // Whose OnItem has returned.
  int written_ ABSL_GUARDED_BY(mu_) = 0;    // Said to have left the server.
  int64_t reserved_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopped_ ABSL_GUARDED_BY(mu_) = false;  // fail_fast after a failure.
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  bool held_ ABSL_GUARDED_BY(mu_) = false;
  bool ended_ ABSL_GUARDED_BY(mu_) = false;
  bool launching_ ABSL_GUARDED_BY(mu_) = false;
  bool relaunch_ ABSL_GUARDED_BY(mu_) = false;
  std::string stop_reason_ ABSL_GUARDED_BY(mu_);
  std::vector<std::unique_ptr<Item>> items_ ABSL_GUARDED_BY(mu_);  // By index, as started.
  Item* parked_ ABSL_GUARDED_BY(mu_) = nullptr;
};

}  // namespace execd::core
