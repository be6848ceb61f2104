#include "core/dispatcher.h"

#include <algorithm>
#include <utility>

#include "absl/functional/any_invocable.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/cache_key.h"
#include "core/status_macros.h"

namespace execd::core {
namespace {

// A result with at least this much output is concluded on the executor, not on the engine's
// loop: lz4 compresses at about 470 MB/s here (`lz4 -b1`), so 128 KiB costs the loop some
// 0.27 ms, several times the wake-up of another thread.
constexpr size_t kOffLoopOutputBytes = 128 << 10;

}  // namespace

// One call: its way through cache, flight, budget and engine, and the engine's observer
// for its run. It keeps itself alive until the sink has heard the end (the sink may drop
// its handle from inside OnFinished), and the transport's handle keeps the memory reserved.
class Dispatcher::CallImpl final : public Call,
                                   public Engine::Observer,
                                   public std::enable_shared_from_this<CallImpl> {
 public:
  CallImpl(Dispatcher& dispatcher, CallOptions options, CallSink* sink)
      : dispatcher_(dispatcher), options_(std::move(options)), sink_(sink) {
    grant_ = std::move(options_.grant);
    options_.grant.reset();
  }

  void Start(Command command) override {
    self_ = shared_from_this();
    if (Cancelled()) return End(absl::CancelledError("cancelled before it started"));
    command.caller = options_.caller;
    command.deadline = std::min(command.deadline, options_.deadline);
    if (absl::Status s = CheckCacheUse(command); !s.ok()) return End(s);
    if (!grant_.has_value()) {
      auto grant = dispatcher_.budget_.Reserve(WorstCase(command, options_.shape), "this call");
      if (!grant.ok()) return End(grant.status());
      grant_ = *std::move(grant);
    }
    if (Reads() && AnswerFromCache(command)) return;
    // Identical calls in flight share one run: of results that are stored (READ_WRITE) and
    // held whole (unary), as a stream's output is not kept.
    if (options_.cache == CachePolicy::kReadWrite && options_.shape == CallShape::kUnary) {
      {
        absl::MutexLock lock(&mu_);
        waiting_ = std::make_unique<Command>(std::move(command));
      }
      if (!dispatcher_.JoinFlight(key_, shared_from_this())) return Wait();
      leader_ = true;
      absl::MutexLock lock(&mu_);
      command = std::move(*waiting_);
      waiting_.reset();
    }
    Submit(std::move(command));
  }

  // A waiter holds a queue place, as a queued command would; refused one (the queue is
  // full), it leaves the flight and ends with the refusal.
  void Wait() {
    absl::Status held;
    {
      absl::MutexLock lock(&mu_);
      if (waiting_ == nullptr) return;  // The leader landed already and took the command.
      held = dispatcher_.engine_.HoldQueuePlace(waiting_->priority);
      holds_place_ = held.ok();
      if (holds_place_) held_priority_ = waiting_->priority;
    }
    if (held.ok() || !dispatcher_.LeaveFlight(key_, this)) return;  // Waits, or has landed.
    {
      absl::MutexLock lock(&mu_);
      waiting_.reset();
    }
    End(held);
  }

  // Gives back the queue place a waiter held.
  void ReleasePlace() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (holds_place_) dispatcher_.engine_.ReleaseQueuePlace(held_priority_);
    holds_place_ = false;
  }

  // Call.
  void Cancel() override {
    std::shared_ptr<Engine::Execution> execution;
    bool waiting;
    {
      absl::MutexLock lock(&mu_);
      cancelled_ = true;
      execution = execution_;
      waiting = waiting_ != nullptr;
    }
    if (waiting && dispatcher_.LeaveFlight(key_, this)) {
      {
        absl::MutexLock lock(&mu_);
        ReleasePlace();
        waiting_.reset();
      }
      return End(absl::CancelledError("cancelled while waiting for an identical request's result"));
    }
    if (execution != nullptr) dispatcher_.engine_.Cancel(execution);
    PumpReplay();  // A replay cut short ends here.
  }

  void SetOutputPaused(bool paused) override {
    bool replaying;
    {
      // Under the lock, so that pauses and resumes reach the engine in order.
      absl::MutexLock lock(&mu_);
      output_paused_ = paused;
      if (execution_ != nullptr) dispatcher_.engine_.SetOutputPaused(execution_, paused);
      replaying = replay_ != nullptr;
    }
    // A resumed replay goes on elsewhere: the sink may be asking from inside its own lock.
    if (replaying && !paused) {
      dispatcher_.executor_->Submit([self = shared_from_this()]() mutable { self->PumpReplay(); });
    }
  }

  void WriteStdin(std::string data) override {
    ToSession([data = std::move(data)](Engine& engine, const ExecutionPtr& e) mutable {
      engine.WriteStdin(e, std::move(data));
    });
  }
  void CloseStdin() override {
    ToSession([](Engine& engine, const ExecutionPtr& e) { engine.CloseStdin(e); });
  }
  absl::Status Signal(int signal) override {
    RETURN_IF_ERROR(Engine::CheckSignal(signal));
    ToSession([signal](Engine& engine, const ExecutionPtr& e) {
      engine.Signal(e, signal).IgnoreError();  // Checked above.
    });
    return absl::OkStatus();
  }
  void ResizeTerminal(TerminalSize size) override {
    ToSession([size](Engine& engine, const ExecutionPtr& e) { engine.ResizeTerminal(e, size); });
  }

  // Engine::Observer.
  void OnStarted(pid_t pid, absl::Duration queued) override { sink_->OnStarted(pid, queued); }
  void OnOutput(OutputStream stream, absl::string_view data) override {
    sink_->OnOutput(stream, data);
  }
  void OnStdinWritten(size_t bytes) override { sink_->OnStdinWritten(bytes); }
  void OnFinished(absl::StatusOr<Result> result) override {
    {
      absl::MutexLock lock(&mu_);
      execution_.reset();  // The command is over; nothing to hold for cancelling.
      ended_ = true;
    }
    // Storing compresses the output, and the sink builds (and may compress) its answer:
    // CPU work that grows with the output, which the loop does not do.
    if (result.ok() &&
        result->stdout_data.size() + result->stderr_data.size() >= kOffLoopOutputBytes) {
      dispatcher_.executor_->Submit(
          [self = shared_from_this(), result = std::move(result)]() mutable {
            self->StoreAndLand(result);
            self->End(std::move(result));
          });
      return;
    }
    StoreAndLand(result);
    End(std::move(result));
  }

  // A waiter's turn, on the leader's thread: the leader's clean success, or none and this
  // call runs itself (admitted or refused on its own).
  void FlightLanded(const Result* stored) {
    std::unique_ptr<Command> command;
    {
      absl::MutexLock lock(&mu_);
      ReleasePlace();
      command = std::move(waiting_);
    }
    if (command == nullptr) return;  // Cancelled meanwhile; it has ended.
    // The key leaves the output cap out: a result over this call's cap is not its result
    // (it would have been truncated), so the call runs itself.
    if (stored != nullptr && std::max(stored->stdout_data.size(), stored->stderr_data.size()) <=
                                 static_cast<uint64_t>(command->limits.max_output_bytes)) {
      Result result = *stored;
      result.cache_hit = true;
      result.cache_age = absl::ZeroDuration();
      return End(std::move(result));
    }
    Submit(std::move(*command));
  }

 private:
  bool Reads() const {
    return options_.cache == CachePolicy::kReadWrite || options_.cache == CachePolicy::kReadOnly;
  }
  // Only a result held whole is stored: a stream's output went to its reader.
  bool Writes() const {
    return options_.shape == CallShape::kUnary &&
           (options_.cache == CachePolicy::kReadWrite || options_.cache == CachePolicy::kRefresh);
  }

  using ExecutionPtr = std::shared_ptr<Engine::Execution>;
  using SessionInput = absl::AnyInvocable<void(Engine&, const ExecutionPtr&) &&>;

  // Hands session input to the engine. The command can start, and its sink ask for input,
  // while the thread in Submit is still on its way back from the engine with the handle:
  // input that comes first waits for the handle, in order; once the command has ended
  // there is nothing to give it to.
  void ToSession(SessionInput input) {
    ExecutionPtr execution;
    {
      absl::MutexLock lock(&mu_);
      if (execution_ == nullptr) {
        if (!ended_) early_input_.push_back(std::move(input));
        return;
      }
      execution = execution_;
    }
    std::move(input)(dispatcher_.engine_, execution);
  }

  // The cache settings a call asks for, and its key.
  absl::Status CheckCacheUse(const Command& command) {
    if (options_.cache == CachePolicy::kOff) return absl::OkStatus();
    if (dispatcher_.cache_ == nullptr) {
      return absl::FailedPreconditionError(
          "this server has no result cache (--cache_max_bytes=0); leave cache_policy unset");
    }
    const CacheSettings& settings = dispatcher_.cache_settings_;
    const absl::Duration ttl = options_.cache_ttl;
    if (ttl < absl::ZeroDuration() || ttl > settings.max_ttl) {
      return absl::InvalidArgumentError(
          absl::StrCat("cache_ttl ", absl::FormatDuration(ttl), " is not within 0..",
                       absl::FormatDuration(settings.max_ttl), " (--max_cache_ttl)"));
    }
    ttl_ = ttl == absl::ZeroDuration() ? settings.default_ttl : ttl;
    auto key = CacheKey(command, settings.salt);
    if (!key.ok()) return key.status();
    key_ = *std::move(key);
    return absl::OkStatus();
  }

  // True when the call was answered from the cache (at once, or replayed to a stream).
  bool AnswerFromCache(const Command& command) {
    const absl::Time now = dispatcher_.cache_settings_.clock->Now();
    std::shared_ptr<const CachedResult> entry =
        dispatcher_.cache_->Lookup(key_, now, command.limits.max_output_bytes);
    if (entry == nullptr) return false;
    Result result = entry->Restore();
    result.cache_hit = true;
    result.cache_age = now - entry->stored;
    result.queued = result.spawn = result.run = absl::ZeroDuration();
    if (options_.shape == CallShape::kUnary) {
      End(std::move(result));
      return true;
    }
    // A stream gets the stored output in chunks of the size asked, paced by its reader as
    // a run's output is; the entry's output is held meanwhile, and reserved.
    auto held = dispatcher_.budget_.Reserve(
        static_cast<int64_t>(result.stdout_data.size() + result.stderr_data.size()),
        "a cached result streamed to this call");
    if (!held.ok()) {
      End(held.status());
      return true;
    }
    replay_grant_ = *std::move(held);
    chunk_ = static_cast<size_t>(std::max<int64_t>(1, command.stream_chunk_bytes));
    sink_->OnStarted(result.pid, absl::ZeroDuration());
    {
      absl::MutexLock lock(&mu_);
      replay_ = std::make_unique<Result>(std::move(result));
    }
    PumpReplay();
    return true;
  }

  // Hands on the replayed output while the reader takes it; ends the call after the last
  // chunk, or once cancelled. One thread pumps at a time; a pause stops it, and the resume
  // starts it again.
  void PumpReplay() {
    for (;;) {
      std::string chunk;
      OutputStream stream = OutputStream::kStdout;
      std::unique_ptr<Result> done;
      {
        absl::MutexLock lock(&mu_);
        if (replay_ == nullptr || pumping_) return;
        if (!cancelled_ && output_paused_) return;
        Result& r = *replay_;
        const int i = at_[0] < r.stdout_data.size() ? 0 : 1;
        const std::string& data = i == 0 ? r.stdout_data : r.stderr_data;
        if (cancelled_ || at_[i] >= data.size()) {
          done = std::move(replay_);
        } else {
          stream = i == 0 ? OutputStream::kStdout : OutputStream::kStderr;
          chunk = data.substr(at_[i], chunk_);
          at_[i] += chunk.size();
          pumping_ = true;
        }
      }
      if (done != nullptr) {
        replay_grant_.Reset();
        if (Cancelled()) return End(absl::CancelledError("cancelled"));
        done->stdout_data.clear();
        done->stderr_data.clear();
        return End(std::move(*done));
      }
      sink_->OnOutput(stream, chunk);
      absl::MutexLock lock(&mu_);
      pumping_ = false;
    }
  }

  bool Cancelled() {
    absl::MutexLock lock(&mu_);
    return cancelled_;
  }

  void Submit(Command command) {
    auto execution = dispatcher_.engine_.Submit(std::move(command), this);
    if (!execution.ok()) {
      // Never admitted: identical calls waiting on this one run themselves.
      if (leader_) {
        leader_ = false;
        dispatcher_.LandFlight(key_, nullptr);
      }
      return End(execution.status());
    }
    std::shared_ptr<Engine::Execution> cancel;
    {
      absl::MutexLock lock(&mu_);
      if (ended_) return;  // It ended already; nothing to hold or cancel.
      execution_ = *std::move(execution);
      if (cancelled_) cancel = execution_;
      // Output and input can outrun this thread: what the sink asked for before now is
      // applied now, under the lock, so that later requests follow it.
      if (output_paused_) dispatcher_.engine_.SetOutputPaused(execution_, true);
      for (SessionInput& input : early_input_) std::move(input)(dispatcher_.engine_, execution_);
      early_input_.clear();
    }
    // Not under the lock: cancelled while queued, the command ends here, on this thread.
    if (cancel != nullptr) dispatcher_.engine_.Cancel(cancel);
  }

  // Stores a clean success when the policy writes, then releases identical calls waiting
  // on this one: with that success whether or not the cache admitted it (they ran once),
  // else to run themselves.
  void StoreAndLand(const absl::StatusOr<Result>& result) {
    const bool clean = result.ok() && !result->cache_hit && CleanSuccess(*result);
    if (clean && Writes()) {
      const absl::Time now = dispatcher_.cache_settings_.clock->Now();
      dispatcher_.cache_->Insert(key_, CachedResult::Make(*result, now, now + ttl_));
    }
    if (leader_) {
      leader_ = false;
      dispatcher_.LandFlight(key_, clean ? &*result : nullptr);
    }
  }

  // Tells the sink, once; the last reference this call holds to itself goes after.
  void End(absl::StatusOr<Result> result) {
    std::shared_ptr<CallImpl> self = std::move(self_);
    sink_->OnFinished(std::move(result));
  }

  Dispatcher& dispatcher_;
  CallOptions options_;
  CallSink* const sink_;
  std::shared_ptr<CallImpl> self_;  // Until the sink has heard the end.
  std::optional<MemoryGrant> grant_;
  // Set in Start before anything can call back.
  std::string key_;
  absl::Duration ttl_;
  bool leader_ = false;  // Runs for identical waiting calls; lands the flight.

  absl::Mutex mu_;
  // Waiting on a leader (on the heap: a Command is large).
  std::unique_ptr<Command> waiting_ ABSL_GUARDED_BY(mu_);
  bool holds_place_ ABSL_GUARDED_BY(mu_) = false;  // A queue place, while waiting,
  int held_priority_ ABSL_GUARDED_BY(mu_) = 0;     // under this priority.
  std::shared_ptr<Engine::Execution> execution_ ABSL_GUARDED_BY(mu_);
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  bool ended_ ABSL_GUARDED_BY(mu_) = false;                     // The engine has reported.
  bool output_paused_ ABSL_GUARDED_BY(mu_) = false;             // What the sink last asked for.
  std::vector<SessionInput> early_input_ ABSL_GUARDED_BY(mu_);  // See ToSession.
  // A cache hit being streamed: the result, how far each stream has gone.
  std::unique_ptr<Result> replay_ ABSL_GUARDED_BY(mu_);
  size_t at_[2] ABSL_GUARDED_BY(mu_) = {0, 0};
  bool pumping_ ABSL_GUARDED_BY(mu_) = false;
  size_t chunk_ = 64 << 10;
  MemoryGrant replay_grant_;
};

Dispatcher::Dispatcher(Engine& engine, const RequestPolicy& policy, const CacheSettings& cache,
                       int64_t memory_budget_bytes)
    : engine_(engine),
      policy_(policy),
      cache_settings_(cache),
      budget_(memory_budget_bytes, &engine.metrics()),
      executor_(std::make_unique<WorkStealingExecutor>(2)) {
  if (cache.max_bytes > 0) {
    ResultCache::Options options;
    options.max_bytes = cache.max_bytes;
    cache_ = std::make_unique<ResultCache>(options);
  }
}

Dispatcher::~Dispatcher() = default;

absl::StatusOr<Command> Dispatcher::Prepare(CommandRequest request, const std::string& pool,
                                            const CallOptions& options) const {
  const std::shared_ptr<const AuthzPolicy> authz = authz_policy();
  std::optional<Access> access;
  if (authz != nullptr) {
    access = Access::Of(request, pool, options.cache, options.caller);
    RETURN_IF_ERROR(Authorize(*authz, *access));
  }
  ASSIGN_OR_RETURN(Command command, Validate(std::move(request), pool));
  command.caller = options.caller;
  if (authz == nullptr) return command;
  ApplyRuleDefaults(*authz, *access, &command);
  ASSIGN_OR_RETURN(std::vector<ProgramPath> programs, RealProgramPaths(command));
  RETURN_IF_ERROR(AuthorizePrograms(*authz, options.caller, programs));
  // What runs is what was checked: a symlink changed from now on cannot redirect it.
  if (command.pool.empty()) {
    command.executable = programs[0].real;
    for (size_t i = 0; i < command.pipe_to.size(); ++i) {
      command.pipe_to[i].executable = programs[i + 1].real;
    }
  }
  return command;
}

void Dispatcher::SetAuthzPolicy(std::shared_ptr<const AuthzPolicy> policy) {
  if (policy == nullptr) {
    engine_.SetShares({}, 1);
  } else {
    engine_.SetShares(policy->Shares(), policy->DefaultShare());
  }
  absl::MutexLock lock(&authz_mu_);
  authz_ = std::move(policy);
}

std::shared_ptr<const AuthzPolicy> Dispatcher::authz_policy() const {
  absl::ReaderMutexLock lock(&authz_mu_);
  return authz_;
}

absl::Status Dispatcher::CheckGetStatus(absl::string_view caller) const {
  const std::shared_ptr<const AuthzPolicy> authz = authz_policy();
  return authz == nullptr ? absl::OkStatus() : AuthorizeStatus(*authz, caller);
}

absl::Status Dispatcher::CheckReflection(absl::string_view caller) const {
  const std::shared_ptr<const AuthzPolicy> authz = authz_policy();
  return authz == nullptr ? absl::OkStatus() : AuthorizeReflection(*authz, caller);
}

absl::StatusOr<Command> Dispatcher::Validate(CommandRequest request,
                                             const std::string& pool_name) const {
  if (pool_name.empty()) return ValidateRequest(std::move(request), policy_);
  std::shared_ptr<const PoolSpec> pool = engine_.FindPool(pool_name);
  if (pool == nullptr) {
    const std::vector<std::string> names = engine_.PoolNames();
    return absl::NotFoundError(
        absl::StrCat("no worker pool named \"", pool_name, "\"; this server has ",
                     names.empty() ? "none (start it with --pools_config)"
                                   : absl::StrCat("\"", absl::StrJoin(names, "\", \""), "\"")));
  }
  return ValidatePooledRequest(std::move(request), *pool, policy_);
}

int64_t Dispatcher::WorstCase(const Command& command, CallShape shape) {
  const int64_t in = static_cast<int64_t>(command.stdin_data.size());
  switch (shape) {
    case CallShape::kUnary:
      return in + 2 * command.limits.max_output_bytes;
    case CallShape::kStream:
      // The window queued for the reader, and what the engine holds back once it is full.
      return in + 2 * kStreamWindowBytes;
    case CallShape::kSession:
      // Also the stdin a session may queue ahead of its child (one window).
      return in + 3 * kStreamWindowBytes;
  }
  return in;
}

std::shared_ptr<Call> Dispatcher::NewCall(CallOptions options, CallSink* sink) {
  return std::make_shared<CallImpl>(*this, std::move(options), sink);
}

Dispatcher::Stats Dispatcher::stats() const {
  Stats stats;
  stats.engine = engine_.stats();
  stats.memory_in_use = budget_.in_use();
  stats.memory_limit = budget_.limit();
  if (cache_ != nullptr) stats.cache = cache_->stats();
  return stats;
}

bool Dispatcher::JoinFlight(const std::string& key, std::shared_ptr<CallImpl> call) {
  absl::MutexLock lock(&flights_mu_);
  auto [it, inserted] = flights_.try_emplace(key);
  if (!inserted) it->second.push_back(std::move(call));
  return inserted;
}

void Dispatcher::LandFlight(const std::string& key, const Result* stored) {
  std::vector<std::shared_ptr<CallImpl>> waiters;
  {
    absl::MutexLock lock(&flights_mu_);
    auto it = flights_.find(key);
    if (it == flights_.end()) return;
    waiters = std::move(it->second);
    flights_.erase(it);
  }
  for (auto& w : waiters) w->FlightLanded(stored);
}

bool Dispatcher::LeaveFlight(const std::string& key, const CallImpl* call) {
  absl::MutexLock lock(&flights_mu_);
  auto it = flights_.find(key);
  if (it == flights_.end()) return false;
  auto& waiters = it->second;
  auto pos = std::find_if(waiters.begin(), waiters.end(),
                          [call](const auto& w) { return w.get() == call; });
  if (pos == waiters.end()) return false;
  waiters.erase(pos);
  return true;
}

}  // namespace execd::core
