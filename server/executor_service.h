// ExecutorService implements execd.v1.Executor on gRPC's callback API: no thread per call;
// handlers validate, hand the command to the engine and return. Each call's reactor finishes
// itself when the engine reports the end. Thread-safe.
#pragma once

#include <grpcpp/grpcpp.h>

#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "core/cache.h"
#include "core/clock.h"
#include "core/engine.h"
#include "core/validate.h"
#include "execd/v1/execd.grpc.pb.h"
#include "server/arena_allocator.h"
#include "server/request_log.h"

namespace execd::server {

// The result cache's settings (flags --cache_*).
struct CacheConfig {
  int64_t max_bytes = 256 << 20;  // 0: no cache.
  std::string salt;
  absl::Duration default_ttl = absl::Minutes(10);
  absl::Duration max_ttl = absl::Hours(24);
  // Entries' ages and expiries: monotonic, so a step of the wall clock neither expires
  // every entry at once nor keeps one past its TTL. Tests inject a manual clock.
  const core::Clock* clock = &core::MonotonicClock::Get();
};

class ExecutorService final : public v1::Executor::CallbackService {
 public:
  ExecutorService(core::Engine& engine, const core::RequestPolicy& policy, RequestLog& log,
                  const CacheConfig& cache = CacheConfig())
      : engine_(engine), policy_(policy), log_(log), cache_config_(cache) {
    SetMessageAllocatorFor_Execute(&execute_allocator_);
    if (cache.max_bytes > 0) {
      core::ResultCache::Options options;
      options.max_bytes = cache.max_bytes;
      cache_ = std::make_unique<core::ResultCache>(options);
    }
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

  // NOT_FOUND for a request naming a pool this server does not have, listing those it has.
  absl::Status UnknownPool(absl::string_view name) const;

  core::Engine& engine() { return engine_; }
  const core::RequestPolicy& policy() const { return policy_; }
  RequestLog& log() { return log_; }
  core::ResultCache* cache() { return cache_.get(); }

  // Single-flight for cacheable requests: the first of identical concurrent requests
  // (same key) runs; the others wait for its result.
  class FlightWaiter {
   public:
    virtual ~FlightWaiter() = default;
    // The leader's clean success (stored or not), or null when it had none (the waiter
    // runs itself).
    virtual void FlightLanded(const core::Result* result) = 0;
  };
  // True: the caller leads (runs the command and must call LandFlight). False: it waits.
  bool JoinFlight(const std::string& key, FlightWaiter* waiter);
  // The leader's end: wakes every waiter with `stored` (null if it was no clean success).
  void LandFlight(const std::string& key, const core::Result* stored);
  // A waiter gives up (cancelled); false if the flight already landed for it.
  bool LeaveFlight(const std::string& key, FlightWaiter* waiter);
  const CacheConfig& cache_config() const { return cache_config_; }

 private:
  ArenaMessageAllocator<v1::ExecuteRequest, v1::ExecuteResponse> execute_allocator_;
  core::Engine& engine_;
  const core::RequestPolicy& policy_;
  RequestLog& log_;
  const CacheConfig cache_config_;
  std::unique_ptr<core::ResultCache> cache_;
  absl::Mutex flights_mu_;
  absl::flat_hash_map<std::string, std::vector<FlightWaiter*>> flights_
      ABSL_GUARDED_BY(flights_mu_);
};

}  // namespace execd::server
