// execd: the process-execution server. Parses flags, builds the server, serves until
// SIGTERM or SIGINT, then drains and exits 0; a second SIGTERM or SIGINT cuts the drain
// short.
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "core/malloc_tuning.h"
#include "server/authz_config.h"
#include "server/pools_config.h"
#include "server/server.h"

// Defaults live in ServerConfig and RequestPolicy; the flags only expose them.
static const execd::server::ServerConfig kDefaults;

ABSL_FLAG(std::string, listen, kDefaults.listen, "host:port to serve gRPC on");
ABSL_FLAG(std::string, metrics_listen, kDefaults.metrics_listen,
          "host:port to serve Prometheus metrics on (/metrics); empty: none (GetStatus still "
          "returns them)");
ABSL_FLAG(std::string, health_listen, kDefaults.health_listen,
          "host:port of a plaintext listener serving only grpc.health.v1 (for probes that can "
          "do neither TLS nor tokens); empty: none. Required with --tls_cert");
ABSL_FLAG(std::string, tls_cert, "",
          "PEM certificate chain (leaf first) to serve gRPC over TLS with; needs --tls_key and "
          "--health_listen. SIGHUP re-reads it");
ABSL_FLAG(std::string, tls_key, "", "the unencrypted PEM private key of --tls_cert");
ABSL_FLAG(std::string, tls_client_ca, "",
          "PEM CA certificates: require a client certificate they signed (mutual TLS); a "
          "caller's identity is its certificate's subject CN. SIGHUP re-reads it");
ABSL_FLAG(std::string, auth_tokens_file, "",
          "bearer tokens: lines `IDENTITY TOKEN` (# comments); callers send `authorization: "
          "Bearer TOKEN`. SIGHUP re-reads it");
ABSL_FLAG(std::string, metrics_auth_file, "",
          "HTTP basic auth for /metrics: lines `USER PASSWORD` (# comments). SIGHUP re-reads it");
ABSL_FLAG(bool, insecure, kDefaults.insecure,
          "serve --listen or --metrics_listen on an address other machines can reach without "
          "authentication (anyone who reaches --listen can run commands as execd's user)");
ABSL_FLAG(int, max_concurrency, 0,
          "commands running at once; 0 means 4 per CPU core. More wait in a queue");
ABSL_FLAG(bool, tuner, kDefaults.tuner.enabled,
          "let the auto-tuner move the concurrency limit with the load, from --max_concurrency "
          "within [--tuner_min, --tuner_max]; false pins it at --max_concurrency");
ABSL_FLAG(int, tuner_min, kDefaults.tuner.min,
          "lowest limit the tuner sets; 0: the CPU cores execd may use");
ABSL_FLAG(int, tuner_max, kDefaults.tuner.max,
          "highest limit the tuner sets; 0: 64 per core. A pids or memory limit of the "
          "machine or cgroup lowers it");
ABSL_FLAG(absl::Duration, tuner_target_p99, kDefaults.tuner.target_p99,
          "with the tuner on, keep commands' p99 service time (spawn to exit) under this by "
          "running fewer at once (more wait or are shed); 0: no target");
ABSL_FLAG(int, max_queue, static_cast<int>(kDefaults.max_queue),
          "commands waiting for a slot; past this, requests get RESOURCE_EXHAUSTED");
ABSL_FLAG(int, max_message_bytes, kDefaults.max_message_bytes,
          "largest gRPC message received or sent");
ABSL_FLAG(absl::Duration, default_timeout, kDefaults.policy.default_timeout,
          "a command's timeout when the request sets none");
ABSL_FLAG(absl::Duration, max_timeout, kDefaults.policy.max_timeout,
          "largest timeout a request may ask");
ABSL_FLAG(int64_t, default_max_output_bytes, kDefaults.policy.default_max_output_bytes,
          "bytes captured per stream when the request sets no limit");
ABSL_FLAG(int64_t, max_output_bytes, kDefaults.policy.max_output_bytes,
          "largest per-stream output limit a request may ask");
ABSL_FLAG(int64_t, max_stream_output_bytes, kDefaults.policy.max_stream_output_bytes,
          "per-stream output limit of a streamed call (ExecuteStream), default and maximum");
ABSL_FLAG(absl::Duration, kill_grace, kDefaults.kill_grace,
          "time between SIGTERM and SIGKILL when a command is stopped");
ABSL_FLAG(absl::Duration, drain_timeout, kDefaults.drain_timeout,
          "on SIGTERM, how long running commands may take before they are killed");
ABSL_FLAG(absl::Duration, max_cpu_time, kDefaults.policy.max_cpu_time,
          "largest limits.cpu_time a request may ask; also the default. 0: no maximum");
#define EXECD_LIMIT_FLAG(field, server_maximum, what)                 \
  ABSL_FLAG(int64_t, server_maximum, kDefaults.policy.server_maximum, \
            "largest limits." #field " a request may ask (" what      \
            "); also the default. 0: no maximum");
EXECD_COUNT_LIMITS(EXECD_LIMIT_FLAG)
#undef EXECD_LIMIT_FLAG
ABSL_FLAG(int, spawn_threads, 0,
          "threads that start children in parallel (each blocks until its child has "
          "exec'd), 1 to 256; 0 means one per CPU core, at least 2 and at most 256");
ABSL_FLAG(std::string, containment, "auto",
          "how a command's processes are held and killed together: auto (the strongest "
          "available), cgroup, or process-group");
ABSL_FLAG(std::string, pools_config, "",
          "worker pools: a PoolsConfig in protobuf text format (see deploy/pools.textproto); "
          "empty for none");
ABSL_FLAG(std::string, authz_policy, "",
          "authorization: an AuthzPolicy in protobuf text format (see deploy/policy.textproto) "
          "saying what each caller's identity may do; once given, what it does not allow is "
          "refused. SIGHUP re-reads it. Empty: every caller may do everything");
ABSL_FLAG(std::vector<std::string>, inheritable_env, kDefaults.policy.inheritable_env,
          "server environment variables a request may pass on with inherit_env (comma-separated; "
          "empty: none)");
ABSL_FLAG(int64_t, cache_max_bytes, kDefaults.cache.max_bytes,
          "bytes of results the result cache may hold (0: no cache)");
ABSL_FLAG(std::string, cache_salt, kDefaults.cache.salt,
          "mixed into every cache key: change it to invalidate all cached results");
ABSL_FLAG(absl::Duration, default_cache_ttl, kDefaults.cache.default_ttl,
          "how long a cached result stays valid when the request sets no cache_ttl");
ABSL_FLAG(absl::Duration, max_cache_ttl, kDefaults.cache.max_ttl,
          "largest cache_ttl a request may ask for");
ABSL_FLAG(int64_t, memory_budget_bytes, kDefaults.memory_budget_bytes,
          "server memory all calls together may hold (stdin, output, queued stream chunks, "
          "batch results); past it new calls get RESOURCE_EXHAUSTED. 0: half of the smaller "
          "of the machine's memory and execd's cgroup memory limit");
ABSL_FLAG(bool, log_requests, kDefaults.log_requests,
          "write one logfmt line per request to stderr");

namespace {

absl::StatusOr<execd::core::Containment::Mode> ContainmentFromFlag(const std::string& name) {
  using Mode = execd::core::Containment::Mode;
  if (name == "auto") return Mode::kAuto;
  if (name == "cgroup") return Mode::kCgroup;
  if (name == "process-group") return Mode::kProcessGroup;
  return absl::InvalidArgumentError(
      absl::StrCat("--containment must be auto, cgroup or process-group, got \"", name, "\""));
}

absl::StatusOr<execd::server::ServerConfig> ConfigFromFlags() {
  execd::server::ServerConfig c;
  auto containment = ContainmentFromFlag(absl::GetFlag(FLAGS_containment));
  if (!containment.ok()) return containment.status();
  c.containment = *containment;
  c.listen = absl::GetFlag(FLAGS_listen);
  c.metrics_listen = absl::GetFlag(FLAGS_metrics_listen);
  c.health_listen = absl::GetFlag(FLAGS_health_listen);
  c.auth.tls_cert = absl::GetFlag(FLAGS_tls_cert);
  c.auth.tls_key = absl::GetFlag(FLAGS_tls_key);
  c.auth.tls_client_ca = absl::GetFlag(FLAGS_tls_client_ca);
  c.auth.tokens_file = absl::GetFlag(FLAGS_auth_tokens_file);
  c.auth.metrics_auth_file = absl::GetFlag(FLAGS_metrics_auth_file);
  c.insecure = absl::GetFlag(FLAGS_insecure);
  c.version = EXECD_VERSION;
  c.max_concurrency = absl::GetFlag(FLAGS_max_concurrency);
  if (c.max_concurrency == 0) {
    c.max_concurrency = 4 * static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  }
  c.tuner.enabled = absl::GetFlag(FLAGS_tuner);
  c.tuner.min = absl::GetFlag(FLAGS_tuner_min);
  c.tuner.max = absl::GetFlag(FLAGS_tuner_max);
  c.tuner.target_p99 = absl::GetFlag(FLAGS_tuner_target_p99);
  c.spawn_threads = absl::GetFlag(FLAGS_spawn_threads);
  if (c.spawn_threads == 0) {  // Within the range the server accepts, on any machine.
    c.spawn_threads = std::clamp(static_cast<int>(std::thread::hardware_concurrency()), 2,
                                 execd::server::ServerConfig::kMaxSpawnThreads);
  }
  if (int max_queue = absl::GetFlag(FLAGS_max_queue); max_queue >= 0) {
    c.max_queue = static_cast<size_t>(max_queue);
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("--max_queue must not be negative (0: no queue), got ", max_queue));
  }
  c.max_message_bytes = absl::GetFlag(FLAGS_max_message_bytes);
  c.kill_grace = absl::GetFlag(FLAGS_kill_grace);
  c.drain_timeout = absl::GetFlag(FLAGS_drain_timeout);
  c.log_requests = absl::GetFlag(FLAGS_log_requests);
  c.memory_budget_bytes = absl::GetFlag(FLAGS_memory_budget_bytes);
  c.cache.max_bytes = absl::GetFlag(FLAGS_cache_max_bytes);
  c.cache.salt = absl::GetFlag(FLAGS_cache_salt);
  c.cache.default_ttl = absl::GetFlag(FLAGS_default_cache_ttl);
  c.cache.max_ttl = absl::GetFlag(FLAGS_max_cache_ttl);
  if (c.cache.max_bytes < 0 || c.cache.default_ttl <= absl::ZeroDuration() ||
      c.cache.default_ttl > c.cache.max_ttl) {
    return absl::InvalidArgumentError(
        "--cache_max_bytes must be >= 0 and 0 < --default_cache_ttl <= --max_cache_ttl");
  }
  c.policy = execd::core::RequestPolicy::FromProcessEnvironment();
  c.policy.default_timeout = absl::GetFlag(FLAGS_default_timeout);
  c.policy.max_timeout = absl::GetFlag(FLAGS_max_timeout);
  c.policy.default_max_output_bytes = absl::GetFlag(FLAGS_default_max_output_bytes);
  c.policy.max_output_bytes = absl::GetFlag(FLAGS_max_output_bytes);
  c.policy.max_stream_output_bytes = absl::GetFlag(FLAGS_max_stream_output_bytes);
  c.policy.max_cpu_time = absl::GetFlag(FLAGS_max_cpu_time);
#define EXECD_FROM_FLAG(field, server_maximum, what) \
  c.policy.server_maximum = absl::GetFlag(FLAGS_##server_maximum);
  EXECD_COUNT_LIMITS(EXECD_FROM_FLAG)
#undef EXECD_FROM_FLAG
  c.policy.inheritable_env = absl::GetFlag(FLAGS_inheritable_env);
  if (const std::string path = absl::GetFlag(FLAGS_authz_policy); !path.empty()) {
    auto authz = execd::server::LoadAuthzPolicy(path, c.policy);
    if (!authz.ok()) return authz.status();
    c.authz_policy = *std::move(authz);
  }
  if (const std::string path = absl::GetFlag(FLAGS_pools_config); !path.empty()) {
    auto pools = execd::server::LoadPoolsConfig(path, c.policy);
    if (!pools.ok()) return pools.status();
    c.pools = *std::move(pools);
  }
  return c;
}

}  // namespace

int main(int argc, char** argv) {
  execd::core::TuneMallocForStreams();
  absl::SetProgramUsageMessage(
      "execd: runs processes for remote callers over gRPC.\n"
      "  execd [--listen=127.0.0.1:50051] [--flagfile=execd.flags] [--helpfull]");
  absl::ParseCommandLine(argc, argv);
  // Debian's Abseil checks every absl::Mutex for lock-order cycles, a global graph update
  // per mutex created and destroyed (each call has some); measured at ~2% of a cache-hit
  // request's CPU. The tests keep the checks on.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);

  // Block the shutdown signals before any thread starts, so every thread inherits the mask
  // and only the sigwait below receives them. Children get a clean mask at spawn.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  // Reload --pools_config, the authentication files and --authz_policy.
  sigaddset(&stop_signals, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  signal(SIGPIPE, SIG_IGN);  // A child closing its stdin early must not kill the server.

  absl::StatusOr<std::unique_ptr<execd::server::Server>> server = [] {
    auto config = ConfigFromFlags();
    if (!config.ok())
      return absl::StatusOr<std::unique_ptr<execd::server::Server>>(config.status());
    return execd::server::Server::Start(*std::move(config));
  }();
  if (!server.ok()) {
    fprintf(stderr, "execd: %s\n", std::string(server.status().message()).c_str());
    return 2;
  }
  const std::string pools_path = absl::GetFlag(FLAGS_pools_config);
  const std::string authz_path = absl::GetFlag(FLAGS_authz_policy);
  for (;;) {
    int sig = 0;
    sigwait(&stop_signals, &sig);
    if (sig != SIGHUP) break;
    // Each logs what it did, or why not.
    (void)(*server)->ReloadPools(pools_path);
    (void)(*server)->ReloadAuth();
    (void)(*server)->ReloadAuthzPolicy(authz_path);
  }
  // The drain runs on its own thread so that this one keeps listening: a second SIGTERM or
  // Ctrl-C cuts the drain short, as an operator who sent it expects.
  std::atomic<bool> drained{false};
  const pthread_t main_thread = pthread_self();
  std::thread drainer([&] {
    (*server)->Shutdown();
    drained = true;
    pthread_kill(main_thread, SIGTERM);  // Wakes the sigwait below.
  });
  for (bool cut = false; !drained;) {
    int sig = 0;
    sigwait(&stop_signals, &sig);
    if (drained || sig == SIGHUP || cut) continue;  // No reloads while draining.
    cut = true;
    (*server)->CutDrainShort();
  }
  drainer.join();
  return 0;
}
