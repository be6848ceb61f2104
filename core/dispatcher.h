// Dispatcher: the one request path in front of the engine. Every call (a unary Execute, an
// ExecuteStream, an ExecuteBatch item, an Attach session) goes through Start, which runs
//   cache lookup -> single flight -> memory budget -> admission and run (Engine) -> store
// and reports the call's life to a CallSink, the transport's side of it. Metrics, tuning
// and authorization attach here, never to a transport.
//
// Thread-safety: every method may be called from any thread. A sink hears from the engine's
// loop thread (a running command), from the thread that called Start (an answer at once: a
// refusal, a cache hit), from an identical request's thread (a waiter released by its
// leader), or from the dispatcher's executor (a cache hit streamed as the reader takes it,
// and the end of a call with large output, whose storing and answer cost CPU).
// No sink callback is made with a dispatcher lock held.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "core/authz.h"
#include "core/cache.h"
#include "core/cache_policy.h"
#include "core/clock.h"
#include "core/command.h"
#include "core/engine.h"
#include "core/executor.h"
#include "core/memory_budget.h"
#include "core/validate.h"

namespace execd::core {

// The result cache's settings (flags --cache_*).
struct CacheSettings {
  int64_t max_bytes = 256 << 20;  // 0: no cache.
  std::string salt;
  absl::Duration default_ttl = absl::Minutes(10);
  absl::Duration max_ttl = absl::Hours(24);
  // Entries' ages and expiries: monotonic, so a step of the wall clock neither expires
  // every entry at once nor keeps one past its TTL. Tests inject a manual clock.
  const Clock* clock = &MonotonicClock::Get();
};

// What a call's transport holds for it, which decides the memory it may need.
enum class CallShape {
  kUnary,    // The whole result, returned at once.
  kStream,   // Output handed on as it comes; a window of it queued for a slow reader.
  kSession,  // A stream whose stdin keeps coming (Attach).
};

// Output queued for one streaming call's reader, counted with each message's own cost:
// past it the command's output is no longer read until the reader catches up.
inline constexpr int64_t kStreamWindowBytes = 1 << 20;

struct CallOptions {
  CallShape shape = CallShape::kUnary;
  CachePolicy cache = CachePolicy::kOff;
  absl::Duration cache_ttl = absl::ZeroDuration();  // Zero: the default TTL.
  // The caller's deadline on the engine's clock.
  absl::Time deadline = absl::InfiniteFuture();
  // Who asks (the caller's identity; "anonymous" without authentication): authorization
  // applies its rule, the scheduler its share, and the cache keeps its results apart.
  std::string caller;
  // Memory reserved for this call already (a batch reserves before it starts an item);
  // without one the call reserves its own worst case.
  std::optional<MemoryGrant> grant;
};

// The transport's side of a call. OnStarted and OnOutput as the engine's observer has
// them; OnFinished exactly once, last. A sink stays alive until its OnFinished returns.
using CallSink = Engine::Observer;

// A started call. The memory reserved for it is held as long as this handle, and until the
// sink has heard the end: the transport lets go of it once what the call produced has left
// the server.
class Call {
 public:
  virtual ~Call() = default;
  // Runs `command` (once). The sink may hear the end before this returns.
  virtual void Start(Command command) = 0;
  // Ends the call: waiting, queued or running; the sink hears CANCELLED or the result.
  virtual void Cancel() = 0;
  // Back-pressure: while paused, no more output reaches the sink.
  virtual void SetOutputPaused(bool paused) = 0;
  // Sessions (CallShape::kSession), once the sink has seen OnStarted: see Engine.
  virtual void WriteStdin(std::string data) = 0;
  virtual void CloseStdin() = 0;
  virtual absl::Status Signal(int signal) = 0;
  virtual void ResizeTerminal(TerminalSize size) = 0;
};

class Dispatcher {
 public:
  Dispatcher(Engine& engine, const RequestPolicy& policy, const CacheSettings& cache,
             int64_t memory_budget_bytes);
  ~Dispatcher();

  // The command a request asks for: validated for a fresh spawn, or for the worker pool
  // `pool` (NOT_FOUND naming the pools there are when there is no such pool), and
  // authorized for `options.caller` under the authorization policy, if there is one
  // (core/authz.h): refused before validation when the request itself asks for what the
  // caller may not have, after it when a program it would run is not allowed. Under a
  // policy the command's programs are their canonical paths, the ones checked.
  absl::StatusOr<Command> Prepare(CommandRequest request, const std::string& pool,
                                  const CallOptions& options = {}) const;

  // The authorization policy in force from now on; null: none, everything is allowed.
  // Callers' shares of the concurrency limit follow it.
  void SetAuthzPolicy(std::shared_ptr<const AuthzPolicy> policy);
  std::shared_ptr<const AuthzPolicy> authz_policy() const;
  // Whether `caller` may read the server's status, and use server reflection.
  absl::Status CheckGetStatus(absl::string_view caller) const;
  absl::Status CheckReflection(absl::string_view caller) const;

  // A call for `sink`, to be started with Call::Start. The handle exists before anything
  // reaches the sink, so a sink can pause or cancel from its first event on. The sink
  // always hears the end.
  std::shared_ptr<Call> NewCall(CallOptions options, CallSink* sink);

  // The most memory a call of `shape` running `command` can hold on the server.
  static int64_t WorstCase(const Command& command, CallShape shape);

  struct Stats {
    Engine::Stats engine;  // Its queue counts calls waiting for an identical one's result.
    int64_t memory_in_use = 0;
    int64_t memory_limit = 0;
    std::optional<ResultCache::Stats> cache;  // None: no cache.
  };
  Stats stats() const;

  Engine& engine() { return engine_; }
  MemoryBudget& budget() { return budget_; }
  const RequestPolicy& policy() const { return policy_; }
  const CacheSettings& cache_settings() const { return cache_settings_; }

 private:
  class CallImpl;
  friend class CallImpl;

  // Single flight: true when `call` leads (runs); false when it waits for the leader.
  bool JoinFlight(const std::string& key, std::shared_ptr<CallImpl> call);
  // The leader's end: every waiter gets `stored` (null: no clean success, run yourselves).
  void LandFlight(const std::string& key, const Result* stored);
  // A waiter gives up; false when the flight already landed for it.
  bool LeaveFlight(const std::string& key, const CallImpl* call);

  Engine& engine_;
  const RequestPolicy& policy_;
  const CacheSettings cache_settings_;
  std::unique_ptr<ResultCache> cache_;
  MemoryBudget budget_;
  // Replays cache hits to streaming readers as they take them.
  std::unique_ptr<TaskPool> executor_;
  // The command `request` asks for, validated.
  absl::StatusOr<Command> Validate(CommandRequest request, const std::string& pool) const;

  mutable absl::Mutex authz_mu_;
  std::shared_ptr<const AuthzPolicy> authz_ ABSL_GUARDED_BY(authz_mu_);
  absl::Mutex flights_mu_;
  absl::flat_hash_map<std::string, std::vector<std::shared_ptr<CallImpl>>> flights_
      ABSL_GUARDED_BY(flights_mu_);
};

}  // namespace execd::core
