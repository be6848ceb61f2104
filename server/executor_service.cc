#include "server/executor_service.h"

#include <algorithm>
#include <atomic>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <utility>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "core/cache_key.h"
#include "server/attach_call.h"
#include "server/convert.h"
#include "server/event_queue.h"

namespace execd::server {
namespace {

// Who still needs a reactor: gRPC until OnDone, and each thread working on the call outside
// its reactions (an engine thread ending a batch item, a leader's thread landing a flight).
// Unref is true for the last one out, which deletes the reactor.
class Refs {
 public:
  void Ref() { n_.fetch_add(1, std::memory_order_relaxed); }
  bool Unref() { return n_.fetch_sub(1, std::memory_order_acq_rel) == 1; }

 private:
  std::atomic<int> n_{1};  // gRPC's.
};

// What both reactors share: validating and submitting the request, cancelling it, and
// logging its end. A reactor finishes only after its Start() has returned and the engine
// has reported the end, so neither path can touch the reactor after the other finished it.
class CallBase : public core::Engine::Observer, public ExecutorService::FlightWaiter {
 protected:
  CallBase(ExecutorService& service, grpc::CallbackServerContext* context, absl::string_view rpc)
      : service_(service), context_(context), rpc_(rpc), received_(absl::Now()) {}

  // Validates and submits; on failure returns the status to finish the call with.
  absl::Status Submit(const v1::ExecuteRequest& request, bool stream_output) {
    // gRPC owns the request message until the call ends and reads it no more: its fields
    // (stdin can be large) are moved out rather than copied.
    core::CommandRequest command_request =
        CommandRequestFromProto(const_cast<v1::ExecuteRequest&>(request));
    request_id_ = command_request.request_id;
    command_request.streamed = stream_output;
    accept_lz4_ = request.accept_compression() == v1::LZ4;
    if (!command_request.argv.empty()) argv0_ = command_request.argv[0];
    absl::StatusOr<core::Command> command = Validate(request.pool(), std::move(command_request));
    if (!command.ok()) return command.status();
    command->stream_output = stream_output;
    if (request.cache_policy() != v1::CACHE_OFF) {
      absl::StatusOr<bool> hit = LookUpCache(request, *command);
      if (!hit.ok()) return hit.status();
      if (*hit) return absl::OkStatus();  // Answered.
      // Identical requests in flight share one run (results that are stored: READ_WRITE,
      // and not streamed, whose output is not kept).
      if (cache_policy_ == v1::READ_WRITE && !stream_output) {
        absl::MutexLock lock(&mu_);
        waiting_command_ = std::make_unique<core::Command>(std::move(*command));
        if (!service_.JoinFlight(cache_key_, this)) return absl::OkStatus();  // Waits.
        leader_ = true;
        command = std::move(*waiting_command_);
        waiting_command_.reset();
      }
    }
    return SubmitToEngine(*std::move(command));
  }

  // The command a request asks for, cold or from `pool` (returned, not assigned: a Command
  // is large, and a cache hit moves it no further).
  absl::StatusOr<core::Command> Validate(const std::string& pool_name,
                                         core::CommandRequest command_request) {
    if (pool_name.empty()) {
      return core::ValidateRequest(std::move(command_request), service_.policy());
    }
    std::shared_ptr<const core::PoolSpec> pool = service_.engine().FindPool(pool_name);
    if (pool == nullptr) return service_.UnknownPool(pool_name);
    argv0_ = absl::StrCat("pool:", pool->name);
    return core::ValidatePooledRequest(std::move(command_request), *pool, service_.policy());
  }

  absl::Status SubmitToEngine(core::Command command) {
    absl::Duration left = TimeUntilDeadline(context_->deadline());
    if (left != absl::InfiniteDuration()) {
      command.deadline = service_.engine().clock().Now() + left;
    }
    auto execution = service_.engine().Submit(std::move(command), this);
    if (!execution.ok()) return execution.status();
    std::shared_ptr<core::Engine::Execution> cancel;
    {
      absl::MutexLock lock(&mu_);
      if (released_) return absl::OkStatus();  // It ended already; nothing to hold or cancel.
      execution_ = *std::move(execution);
      if (cancelled_) cancel = execution_;
      // Output can outrun this thread: a pause asked for before now is applied now.
      if (output_paused_) service_.engine().SetOutputPaused(execution_, true);
    }
    // Not under the lock: cancelled while queued, the command ends here, on this thread,
    // and OnFinished (a batch item's ReleaseExecution) takes the lock.
    if (cancel != nullptr) service_.engine().Cancel(cancel);
    return absl::OkStatus();
  }

  // The engine has reported: the execution (the command, held for cancelling) is let go.
  // A batch keeps its finished items until it ends; this keeps each to a few hundred bytes.
  void ReleaseExecution() {
    absl::MutexLock lock(&mu_);
    released_ = true;
    execution_.reset();
  }

  // A waiter's turn: the leader's clean success, or none and this call runs itself. It
  // comes on the leader's thread, outside this call's reactions: the command it submits
  // may end, and the call finish, before SubmitToEngine is done with this object.
  void FlightLanded(const core::Result* stored) override {
    Ref();
    absl::Cleanup unref = [this] { Unref(); };
    std::unique_ptr<core::Command> command;
    {
      absl::MutexLock lock(&mu_);
      command = std::move(waiting_command_);
    }
    // The key leaves the output cap out: a result over this call's cap is not its result
    // (it would have been truncated), so the call runs itself.
    if (stored != nullptr && command != nullptr &&
        std::max(stored->stdout_data.size(), stored->stderr_data.size()) <=
            static_cast<uint64_t>(command->limits.max_output_bytes)) {
      core::Result result = *stored;
      result.cache_hit = true;
      result.cache_age = absl::ZeroDuration();
      OnFinished(std::move(result));
      return;
    }
    absl::Status submitted = command != nullptr ? SubmitToEngine(std::move(*command))
                                                : absl::CancelledError("cancelled");
    if (!submitted.ok()) OnFinished(submitted);
  }

  // The leader's end, whatever it was: waiters get the stored result or run themselves.
  void LandIfLeader(const core::Result* stored) {
    if (!leader_) return;
    leader_ = false;
    service_.LandFlight(cache_key_, stored);
  }

  // Checks the cache settings, computes the key, and answers from the cache when it can
  // (true: the call has been answered through OnOutput/OnFinished).
  absl::StatusOr<bool> LookUpCache(const v1::ExecuteRequest& request, const core::Command& cmd) {
    if (!v1::CachePolicy_IsValid(request.cache_policy())) {
      return absl::InvalidArgumentError(
          absl::StrCat("cache_policy ", request.cache_policy(),
                       " is not one of CACHE_OFF, READ_WRITE, READ_ONLY or REFRESH"));
    }
    core::ResultCache* cache = service_.cache();
    if (cache == nullptr) {
      return absl::FailedPreconditionError(
          "this server has no result cache (--cache_max_bytes=0); leave cache_policy unset");
    }
    const CacheConfig& config = service_.cache_config();
    absl::Duration ttl = DurationFromProto(request.cache_ttl());
    if (ttl < absl::ZeroDuration() || ttl > config.max_ttl) {
      return absl::InvalidArgumentError(
          absl::StrCat("cache_ttl ", absl::FormatDuration(ttl), " is not within 0..",
                       absl::FormatDuration(config.max_ttl), " (--max_cache_ttl)"));
    }
    cache_ttl_ = ttl == absl::ZeroDuration() ? config.default_ttl : ttl;
    auto key = core::CacheKey(cmd, config.salt);
    if (!key.ok()) return key.status();
    cache_key_ = *std::move(key);
    cache_policy_ = request.cache_policy();
    if (cache_policy_ != v1::READ_WRITE && cache_policy_ != v1::READ_ONLY) return false;
    const absl::Time now = service_.cache_config().clock->Now();
    std::shared_ptr<const core::CachedResult> entry =
        cache->Lookup(cache_key_, now, cmd.limits.max_output_bytes);
    if (entry == nullptr) return false;
    core::Result result = entry->Restore();
    result.cache_hit = true;
    result.cache_age = now - entry->stored;
    result.queued = result.spawn = result.run = absl::ZeroDuration();
    if (cmd.stream_output) {
      OnStarted(result.pid, absl::ZeroDuration());
      // In chunks of the size asked, as a run's output comes.
      const size_t chunk = static_cast<size_t>(std::max<int64_t>(1, cmd.stream_chunk_bytes));
      for (size_t at = 0; at < result.stdout_data.size(); at += chunk) {
        OnOutput(core::OutputStream::kStdout,
                 absl::string_view(result.stdout_data).substr(at, chunk));
      }
      for (size_t at = 0; at < result.stderr_data.size(); at += chunk) {
        OnOutput(core::OutputStream::kStderr,
                 absl::string_view(result.stderr_data).substr(at, chunk));
      }
      result.stdout_data.clear();
      result.stderr_data.clear();
    }
    OnFinished(std::move(result));
    return true;
  }

  // Stores a clean success under the request's key when its cache policy writes, then
  // releases any identical requests waiting on this one: with that success whether or not
  // the cache admitted it (they ran once), else to run themselves.
  void StoreAndLand(const absl::StatusOr<core::Result>& result) {
    const bool clean = result.ok() && !result->cache_hit && core::CleanSuccess(*result);
    if (clean) MaybeStore(*result);
    LandIfLeader(clean ? &*result : nullptr);
  }

  bool MaybeStore(const core::Result& result) {
    if (cache_policy_ != v1::READ_WRITE && cache_policy_ != v1::REFRESH) return false;
    if (result.cache_hit || !core::CleanSuccess(result)) return false;
    const absl::Time now = service_.cache_config().clock->Now();
    return service_.cache()->Insert(cache_key_,
                                    core::CachedResult::Make(result, now, now + cache_ttl_));
  }

  // Back-pressure: stop (or resume) reading the child's output. Posted under the lock, so
  // pauses and resumes reach the engine in order; one asked for before the execution is
  // known is applied when it is.
  void SetOutputPaused(bool paused) {
    absl::MutexLock lock(&mu_);
    output_paused_ = paused;
    if (execution_ != nullptr) service_.engine().SetOutputPaused(execution_, paused);
  }

  // Puts `data` into `field`, lz4-compressed when the caller accepts it and it pays.
  bool accept_lz4() const { return accept_lz4_; }
  void SetOutput(std::string data, std::string* field, v1::Compression* compression) {
    SetMaybeCompressed(accept_lz4_, std::move(data), field, compression);
  }

  void CancelExecution() {
    std::shared_ptr<core::Engine::Execution> execution;
    bool waiting;
    {
      absl::MutexLock lock(&mu_);
      cancelled_ = true;
      execution = execution_;
      waiting = waiting_command_ != nullptr;
    }
    if (waiting && service_.LeaveFlight(cache_key_, this)) {
      {
        absl::MutexLock lock(&mu_);
        waiting_command_.reset();
      }
      OnFinished(absl::CancelledError("cancelled while waiting for an identical request's result"));
      return;
    }
    if (execution != nullptr) service_.engine().Cancel(execution);
  }

  // The call's final status; a retry delay the engine attached becomes the standard
  // `grpc-retry-pushback-ms` trailer, which gRPC's retry policy honours.
  grpc::Status CallStatus(const absl::Status& status) { return ToCallStatus(status, context_); }

  void Log(const absl::StatusOr<core::Result>& result) {
    service_.log().WriteCall(
        rpc_, request_id_, [this] { return context_->peer(); }, argv0_, result, received_);
  }

  // Keep the call from being deleted until Unref, which may delete it (OnDone is gRPC's
  // Unref). A batch item refers to its batch instead, which owns it.
  virtual void Ref() { refs_.Ref(); }
  virtual void Unref() {
    if (refs_.Unref()) delete this;
  }

  ExecutorService& service_;
  grpc::CallbackServerContext* const context_;
  const absl::string_view rpc_;
  const absl::Time received_;
  std::string request_id_;
  std::string argv0_;

 private:
  absl::Mutex mu_;
  bool accept_lz4_ = false;                       // Set in Submit, before the engine can call back.
  v1::CachePolicy cache_policy_ = v1::CACHE_OFF;  // Likewise, with the key and TTL.
  std::string cache_key_;
  absl::Duration cache_ttl_;
  bool leader_ = false;  // Runs for identical waiting requests; lands the flight.
  // Waiting on a leader (on the heap: every call, and every finished item a batch keeps,
  // would otherwise carry a Command's size).
  std::unique_ptr<core::Command> waiting_command_ ABSL_GUARDED_BY(mu_);
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  std::shared_ptr<core::Engine::Execution> execution_ ABSL_GUARDED_BY(mu_);
  bool released_ ABSL_GUARDED_BY(mu_) = false;       // ReleaseExecution was called.
  bool output_paused_ ABSL_GUARDED_BY(mu_) = false;  // What the writer last asked for.
  Refs refs_;
};

class ExecuteReactor final : public grpc::ServerUnaryReactor, public CallBase {
 public:
  ExecuteReactor(ExecutorService& service, grpc::CallbackServerContext* context,
                 v1::ExecuteResponse* response)
      : CallBase(service, context, "Execute"), response_(response) {}

  // The call's status if it is answered already (a cache hit, a rejected request, or a
  // command that ended before Start returned): the response is complete and this reactor is
  // not needed. Otherwise the reactor finishes the call when the result comes.
  std::optional<grpc::Status> Start(const v1::ExecuteRequest& request) {
    absl::Status submitted = Submit(request, /*stream_output=*/false);
    if (!submitted.ok()) {
      OnFinished(submitted);  // Releases the engine's hold; the engine will never call.
    }
    if (ReleaseHold()) return status_;
    return std::nullopt;
  }

  void OnFinished(absl::StatusOr<core::Result> result) override {
    StoreAndLand(result);
    if (result.ok()) {
      ResultToProto(*result, response_);
      DurationToProto(absl::Now() - received_, response_->mutable_timings()->mutable_total());
    } else {
      status_ = CallStatus(result.status());
    }
    Log(result);
    if (result.ok()) {
      v1::Compression stdout_compression, stderr_compression;
      SetOutput(std::move(result->stdout_data), response_->mutable_stdout(), &stdout_compression);
      SetOutput(std::move(result->stderr_data), response_->mutable_stderr(), &stderr_compression);
      response_->set_stdout_compression(stdout_compression);
      response_->set_stderr_compression(stderr_compression);
    }
    result_delivered_.store(true, std::memory_order_release);
    if (ReleaseHold()) Finish(status_);
  }

  void OnCancel() override { CancelExecution(); }
  void OnDone() override { Unref(); }
  // Answered in Start and never handed to gRPC: deleted now, or when a reference still in
  // use goes (a waiter's FlightLanded can run past the OnFinished it delivered).
  void Discard() { Unref(); }
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
  std::atomic<int> holds_{2};  // Start() and the engine's OnFinished.
};

class ExecuteStreamReactor final : public grpc::ServerWriteReactor<v1::ExecuteEvent>,
                                   public CallBase {
 public:
  ExecuteStreamReactor(ExecutorService& service, grpc::CallbackServerContext* context)
      : CallBase(service, context, "ExecuteStream") {}

  void Start(const v1::ExecuteRequest& request) {
    writer_.set_chunk_bytes(request.stream_chunk_bytes() > 0 ? request.stream_chunk_bytes()
                                                             : 64 << 10);
    absl::Status submitted = Submit(request, /*stream_output=*/true);
    if (!submitted.ok()) OnFinished(submitted);
    writer_.Open();
  }

  void OnStarted(pid_t pid, absl::Duration queued) override {
    v1::ExecuteEvent event;
    event.mutable_started()->set_pid(pid);
    DurationToProto(queued, event.mutable_started()->mutable_queued());
    writer_.Push(std::move(event), /*coalesce=*/false);
  }

  void OnOutput(core::OutputStream stream, absl::string_view data) override {
    v1::ExecuteEvent event;
    OutputToProto(stream, data, accept_lz4(), event.mutable_output());
    // A frame is a whole message: compressed chunks are not merged.
    const bool plain = event.output().compression() == v1::COMPRESSION_NONE;
    writer_.Push(std::move(event), /*coalesce=*/plain);
  }

  void OnFinished(absl::StatusOr<core::Result> result) override {
    Log(result);
    if (result.ok()) {
      v1::ExecuteEvent event;
      ResultToProto(*result, event.mutable_exited());
      DurationToProto(absl::Now() - received_,
                      event.mutable_exited()->mutable_timings()->mutable_total());
      writer_.Push(std::move(event), /*coalesce=*/false);
    }
    writer_.Close(result.ok() ? grpc::Status::OK : CallStatus(result.status()));
  }

  void OnWriteDone(bool ok) override { writer_.WriteDone(ok); }
  void OnCancel() override { CancelExecution(); }
  void OnDone() override { Unref(); }

 private:
  // Opened once Start has submitted, so that nothing is written before the call is set up.
  EventWriter<v1::ExecuteEvent> writer_{
      {.start_write = [this](const v1::ExecuteEvent* event) { StartWrite(event); },
       .finish = [this](const grpc::Status& status) { Finish(status); },
       .pause_output = [this](bool paused) { SetOutputPaused(paused); }},
      /*open=*/false};
};

// ExecuteBatch: items run as CallBase executions of their own (validated, queued, logged
// like single calls), at most max_parallel at once; results are written one at a time as
// items complete. The call finishes once every item has reported (or, cancelled, once
// every started item has ended), so no item outlives the reactor.
class ExecuteBatchReactor final : public grpc::ServerWriteReactor<v1::BatchResult> {
 public:
  ExecuteBatchReactor(ExecutorService& service, grpc::CallbackServerContext* context)
      : service_(service), context_(context) {}

  void Start(const v1::BatchRequest* request) {
    request_ = request;
    absl::Status valid = Check(*request);
    if (!valid.ok()) {
      writer_.Close(ToGrpcStatus(valid));
      return;
    }
    total_ = request->stdins_size() > 0 ? request->stdins_size() : request->requests_size();
    max_parallel_ =
        request->max_parallel() > 0 ? request->max_parallel() : service_.engine().stats().limit;
    fail_fast_ = request->fail_fast();
    Launch();
  }

  void OnWriteDone(bool ok) override {
    writer_.WriteDone(ok);
    if (!ok) {
      CancelAll();  // The client is gone: nothing more to run for it.
      return;
    }
    bool resumed;
    {
      absl::MutexLock lock(&mu_);
      resumed = resumed_;
      resumed_ = false;
    }
    if (resumed) Launch();
  }
  void OnCancel() override { CancelAll(); }
  void OnDone() override { Unref(); }

  // An item's end: its result, or why it did not run. Items end on engine threads, and once
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

  // gRPC's reference (released in OnDone), one per ItemDone in progress and one per item
  // landing a flight.
  void Ref() { refs_.Ref(); }
  void Unref() {
    if (refs_.Unref()) delete this;
  }

  // Starts items while there is room and reports the ones fail_fast skips.
  void Launch();
  void LaunchOnce();
  void CancelAll();

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
  const v1::BatchRequest* request_ = nullptr;
  int total_ = 0;
  int max_parallel_ = 1;
  bool fail_fast_ = false;
  Refs refs_;

  absl::Mutex mu_;
  int next_ ABSL_GUARDED_BY(mu_) = 0;      // Next item to start.
  int running_ ABSL_GUARDED_BY(mu_) = 0;   // Started, not yet reported.
  int reported_ ABSL_GUARDED_BY(mu_) = 0;  // Results produced (sent or dropped).
  bool stopped_ ABSL_GUARDED_BY(mu_) = false;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  std::string stop_reason_ ABSL_GUARDED_BY(mu_);
  std::vector<std::unique_ptr<Item>> items_ ABSL_GUARDED_BY(mu_);
  int queued_ ABSL_GUARDED_BY(mu_) = 0;      // Results handed to writer_.
  bool ended_ ABSL_GUARDED_BY(mu_) = false;  // The writer was closed.
  bool launching_ ABSL_GUARDED_BY(mu_) = false;
  bool relaunch_ ABSL_GUARDED_BY(mu_) = false;
  // Back-pressure: while too much output waits in results a slow reader has not taken, no
  // more items start (held_); the write that makes room sets resumed_, and its OnWriteDone
  // launches (the writer's hook may not call back into the writer).
  bool held_ ABSL_GUARDED_BY(mu_) = false;
  bool resumed_ ABSL_GUARDED_BY(mu_) = false;
  EventWriter<v1::BatchResult> writer_{
      {.start_write = [this](const v1::BatchResult* result) { StartWrite(result); },
       .finish = [this](const grpc::Status& status) { Finish(status); },
       .pause_output =
           [this](bool paused) {
             absl::MutexLock lock(&mu_);
             held_ = paused;
             resumed_ = !paused;
           }},
      /*open=*/true};
};

class ExecuteBatchReactor::Item final : public CallBase {
 public:
  Item(ExecutorService& service, grpc::CallbackServerContext* context, ExecuteBatchReactor& batch,
       int index)
      : CallBase(service, context, "ExecuteBatch"), batch_(batch), index_(index) {}

  void Start(v1::ExecuteRequest request) {
    absl::Status submitted = Submit(request, /*stream_output=*/false);
    if (!submitted.ok()) OnFinished(submitted);
  }
  void Cancel() { CancelExecution(); }
  // The batch owns its items: a reference to an item is one to the batch.
  void Ref() override { batch_.Ref(); }
  void Unref() override { batch_.Unref(); }

  void OnFinished(absl::StatusOr<core::Result> result) override {
    ReleaseExecution();
    Log(result);
    StoreAndLand(result);
    v1::ExecuteResponse response;
    if (result.ok()) {
      ResultToProto(*result, &response);
      DurationToProto(absl::Now() - received_, response.mutable_timings()->mutable_total());
      v1::Compression out_c, err_c;
      SetOutput(std::move(result->stdout_data), response.mutable_stdout(), &out_c);
      SetOutput(std::move(result->stderr_data), response.mutable_stderr(), &err_c);
      response.set_stdout_compression(out_c);
      response.set_stderr_compression(err_c);
    }
    batch_.ItemDone(index_, result.status(), std::move(response));
  }

 private:
  ExecuteBatchReactor& batch_;
  const int index_;
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
    LaunchOnce();
    absl::MutexLock lock(&mu_);
    if (!relaunch_) {
      launching_ = false;
      break;
    }
    relaunch_ = false;
  }
}

void ExecuteBatchReactor::LaunchOnce() {
  std::vector<std::pair<Item*, int>> to_start;
  std::vector<int> skipped;
  std::string reason;
  {
    absl::MutexLock lock(&mu_);
    while (!stopped_ && !cancelled_ && !held_ && next_ < total_ && running_ < max_parallel_) {
      const int index = next_++;
      ++running_;
      items_.push_back(std::make_unique<Item>(service_, context_, *this, index));
      to_start.emplace_back(items_.back().get(), index);
    }
    if (stopped_ && !cancelled_) {
      reason = stop_reason_;
      while (next_ < total_) {
        skipped.push_back(next_++);
        ++running_;  // Reported below, as a started item would be.
      }
    }
  }
  for (auto [item, index] : to_start) {
    v1::ExecuteRequest request;
    if (request_->stdins_size() > 0) {
      request = request_->requests(0);
      request.set_stdin(request_->stdins(index));
    } else {
      request = request_->requests(index);
    }
    item->Start(std::move(request));
  }
  for (int index : skipped) ItemDone(index, absl::CancelledError(reason), v1::ExecuteResponse());
}

void ExecuteBatchReactor::CancelAll() {
  std::vector<Item*> items;
  std::optional<grpc::Status> end;
  {
    absl::MutexLock lock(&mu_);
    cancelled_ = true;
    for (auto& item : items_) items.push_back(item.get());
    end = TakeEndLocked();  // Nothing running: no item will report to end it.
  }
  if (end.has_value()) {
    writer_.Close(*std::move(end));
    return;
  }
  for (Item* item : items) item->Cancel();
}

}  // namespace

grpc::ServerUnaryReactor* ExecutorService::Execute(grpc::CallbackServerContext* context,
                                                   const v1::ExecuteRequest* request,
                                                   v1::ExecuteResponse* response) {
  auto* reactor = new ExecuteReactor(*this, context, response);
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
  auto* reactor = new ExecuteStreamReactor(*this, context);
  reactor->Start(*request);
  return reactor;
}

grpc::ServerBidiReactor<v1::AttachRequest, v1::AttachEvent>* ExecutorService::Attach(
    grpc::CallbackServerContext* context) {
  return NewAttachCall(*this, context);
}

grpc::ServerWriteReactor<v1::BatchResult>* ExecutorService::ExecuteBatch(
    grpc::CallbackServerContext* context, const v1::BatchRequest* request) {
  auto* reactor = new ExecuteBatchReactor(*this, context);
  reactor->Start(request);
  return reactor;
}

absl::Status ExecutorService::UnknownPool(absl::string_view name) const {
  std::vector<std::string> names;
  for (const auto& p : engine_.PoolStatuses()) names.push_back(p.name);
  return absl::NotFoundError(
      absl::StrCat("no worker pool named \"", name, "\"; this server has ",
                   names.empty() ? "none (start it with --pools_config)"
                                 : absl::StrCat("\"", absl::StrJoin(names, "\", \""), "\"")));
}

bool ExecutorService::JoinFlight(const std::string& key, FlightWaiter* waiter) {
  absl::MutexLock lock(&flights_mu_);
  auto [it, inserted] = flights_.try_emplace(key);
  if (!inserted) it->second.push_back(waiter);
  return inserted;
}

void ExecutorService::LandFlight(const std::string& key, const core::Result* stored) {
  std::vector<FlightWaiter*> waiters;
  {
    absl::MutexLock lock(&flights_mu_);
    auto it = flights_.find(key);
    if (it == flights_.end()) return;
    waiters = std::move(it->second);
    flights_.erase(it);
  }
  for (FlightWaiter* w : waiters) w->FlightLanded(stored);
}

bool ExecutorService::LeaveFlight(const std::string& key, FlightWaiter* waiter) {
  absl::MutexLock lock(&flights_mu_);
  auto it = flights_.find(key);
  if (it == flights_.end()) return false;
  auto& waiters = it->second;
  auto pos = std::find(waiters.begin(), waiters.end(), waiter);
  if (pos == waiters.end()) return false;
  waiters.erase(pos);
  return true;
}

grpc::ServerUnaryReactor* ExecutorService::GetStatus(grpc::CallbackServerContext* context,
                                                     const v1::StatusRequest* /*request*/,
                                                     v1::StatusResponse* response) {
  core::Engine::Stats stats = engine_.stats();
  response->set_running(stats.running);
  response->set_queued(static_cast<int32_t>(stats.queued));
  response->set_concurrency_limit(stats.limit);
  for (const core::Engine::PoolStatus& p : engine_.PoolStatuses()) {
    v1::PoolStatus* out = response->add_pools();
    out->set_name(p.name);
    out->set_kind(std::string(core::PoolKindName(p.kind)));
    out->set_idle(p.stats.idle);
    out->set_busy(p.stats.busy);
    out->set_starting(p.stats.starting);
    out->set_started(p.stats.started);
    out->set_recycled(p.stats.recycled);
    out->set_crashed(p.stats.crashed);
    out->set_served(p.stats.served);
    out->set_misses(p.stats.misses);
    out->set_generation(p.stats.generation);
  }
  if (cache_ != nullptr) {
    core::ResultCache::Stats c = cache_->stats();
    v1::CacheStatus* out = response->mutable_cache();
    out->set_bytes(c.bytes);
    out->set_max_bytes(cache_config_.max_bytes);
    out->set_entries(c.entries);
    out->set_hits(c.hits);
    out->set_misses(c.misses);
    out->set_evictions(c.evictions);
    out->set_rejections(c.rejections);
    out->set_expirations(c.expirations);
  }
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerUnaryReactor* ExecutorService::Ping(grpc::CallbackServerContext* context,
                                                const v1::PingRequest* request,
                                                v1::PingResponse* response) {
  response->set_payload(request->payload());
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

}  // namespace execd::server
