// Server: builds the engine and the gRPC server (Executor, health, reflection) from a
// ServerConfig, with its authentication and, when asked for, a plaintext listener for health
// probes only; and tears them down in reverse order. Thread-safe.
#pragma once

#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "core/auto_tuner.h"
#include "core/dispatcher.h"
#include "core/engine.h"
#include "core/validate.h"
#include "metrics/exposer.h"
#include "metrics/registry.h"
#include "server/auth.h"
#include "server/executor_service.h"
#include "server/request_log.h"

namespace execd::server {

struct ServerConfig {
  std::string listen = "127.0.0.1:50051";
  // host:port for Prometheus' scrapes (/metrics); empty: none. Metrics are recorded either
  // way (GetStatus returns them).
  std::string metrics_listen = "127.0.0.1:9464";
  // host:port of a plaintext listener that serves only grpc.health.v1, following the main
  // listener's status: for probes that can do neither TLS nor tokens. Empty: none (required
  // with TLS).
  std::string health_listen;
  // TLS, tokens, client certificates, the users of /metrics (server/auth.h).
  AuthConfig auth;
  // Serve on a non-loopback address without authentication, with a warning in the log.
  bool insecure = false;
  std::string version = "dev";  // execd_build_info's version.
  int max_concurrency = 8;      // The limit; with the tuner on, where it starts.
  // The auto-tuner (core/auto_tuner.h): moves the concurrency limit with the load.
  struct Tuner {
    bool enabled = false;
    int min = 0;  // 0: the cores execd may use.
    int max = 0;  // 0: 64 per core. Lowered to a pids or memory ceiling the machine has.
    absl::Duration target_p99 = absl::ZeroDuration();  // Zero: none.
    absl::Duration window = absl::Milliseconds(500);
  };
  Tuner tuner;
  size_t max_queue = 1024;
  int max_message_bytes = 64 << 20;
  absl::Duration kill_grace = absl::Milliseconds(500);
  absl::Duration drain_timeout = absl::Seconds(30);
  bool log_requests = true;
  core::Containment::Mode containment = core::Containment::Mode::kAuto;
  // Each spawn thread only waits in vfork for its child's exec: past a few per core they
  // buy nothing, and a count the system cannot start would abort start-up.
  static constexpr int kMaxSpawnThreads = 256;
  int spawn_threads = 2;  // 1 to kMaxSpawnThreads.
  core::RequestPolicy policy;
  // Worker pools (from --pools_config).
  std::vector<core::PoolSpec> pools;
  core::CacheSettings cache;
  // The authorization policy (--authz_policy, server/authz_config.h); null: none, every
  // caller may do everything.
  std::shared_ptr<const core::AuthzPolicy> authz_policy;
  // Server memory all calls together may reserve (core::MemoryBudget); 0: the default,
  // half of the smaller of the machine's memory and this process's cgroup limit.
  int64_t memory_budget_bytes = 0;
};

class Server {
 public:
  // Starts serving; fails with a message naming the flag when the configuration is
  // inconsistent or the address cannot be bound.
  static absl::StatusOr<std::unique_ptr<Server>> Start(ServerConfig config);
  ~Server();

  // The bound port (useful with a ":0" listen address).
  int port() const { return port_; }
  // The metrics port, or 0 when none is served.
  int metrics_port() const { return exposer_ == nullptr ? 0 : exposer_->port(); }
  // The health-only port, or 0 when none is served.
  int health_port() const { return health_port_; }
  metrics::Registry& metrics() { return *metrics_; }
  // The auto-tuner, or null when it is off.
  core::AutoTuner* tuner() { return tuner_.get(); }

  // Health turns NOT_SERVING, new calls are refused, running calls get up to the drain
  // timeout to finish, then the rest are cancelled and their processes killed. Idempotent.
  void Shutdown();
  // Any thread, during or before Shutdown: running calls get no more drain time; they are
  // cancelled at once (an operator's second SIGTERM or Ctrl-C).
  void CutDrainShort();

  core::Engine& engine() { return *engine_; }
  core::Dispatcher& dispatcher() { return *dispatcher_; }

  // Re-reads the pools file (SIGHUP): pools whose configuration changed retire their
  // workers and refill. Logs the outcome; on error the running pools stay as they were.
  // With no file (`path` empty) there is nothing to reload: FAILED_PRECONDITION, logged.
  absl::Status ReloadPools(const std::string& path);
  // Re-reads the authentication files (SIGHUP), all or nothing; logs the outcome. On error
  // what was trusted stays trusted. With no such file: FAILED_PRECONDITION, logged.
  absl::Status ReloadAuth();
  // Re-reads the authorization policy (SIGHUP), all or nothing: a file that does not load
  // keeps the policy in force. Logs the outcome. Nothing to do without a file (`path`
  // empty); FAILED_PRECONDITION if the server started without a policy.
  absl::Status ReloadAuthzPolicy(const std::string& path);

 private:
  explicit Server(ServerConfig config);
  // Builds the tuner from config_.tuner (it starts stepping once the server serves).
  absl::Status StartTuner();
  // Starts the health-only listener of config_.health_listen.
  absl::Status StartHealthServer();
  // Every grpc.health.v1 service of ours says `serving`, for every service name.
  void SetServing(bool serving);

  ServerConfig config_;
  RequestLog log_;
  // Outlives everything that reports to it.
  std::shared_ptr<metrics::Registry> metrics_;
  std::unique_ptr<core::Engine> engine_;
  std::unique_ptr<core::Dispatcher> dispatcher_;
  std::unique_ptr<core::AutoTuner::Plant> plant_;
  // Steers the engine: stops before it goes.
  std::unique_ptr<core::AutoTuner> tuner_;
  // Outlives the gRPC servers and the exposer, which ask it who calls.
  std::unique_ptr<Authenticator> authenticator_;
  // Stops serving scrapes (which read the engine and dispatcher) before they go.
  std::unique_ptr<metrics::Exposer> exposer_;
  std::unique_ptr<ExecutorService> service_;
  std::unique_ptr<grpc::Server> grpc_server_;
  // Gives the health-only server the callback machinery gRPC's own health service needs,
  // and answers UNIMPLEMENTED for every other method.
  std::unique_ptr<grpc::CallbackGenericService> health_fallback_;
  std::unique_ptr<grpc::Server> health_server_;
  int port_ = 0;
  int health_port_ = 0;
  bool shut_down_ = false;
};

}  // namespace execd::server
