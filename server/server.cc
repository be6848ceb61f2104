#include "server/server.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/impl/server_builder_option.h>
#include <grpcpp/impl/server_builder_plugin.h>

#include <utility>

#include "absl/algorithm/container.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "core/kernel_files.h"
#include "core/status_macros.h"
#include "server/authz_config.h"
#include "server/pools_config.h"
#include "server/reflection_authz.h"

namespace execd::server {
namespace {

// Room a message needs beyond the command output it carries.
constexpr int64_t kResponseOverhead = 64 << 10;

// Durations and maxima where 0 has a meaning and a negative value has none.
absl::Status CheckNotNegative(const ServerConfig& c) {
  const core::RequestPolicy& p = c.policy;
  for (const auto& [flag, value] :
       {std::pair{"--drain_timeout", c.drain_timeout}, std::pair{"--kill_grace", c.kill_grace},
        std::pair{"--max_cpu_time", p.max_cpu_time}}) {
    if (value < absl::ZeroDuration()) {
      return absl::InvalidArgumentError(
          absl::StrCat(flag, " must not be negative, got ", absl::FormatDuration(value)));
    }
  }
#define EXECD_FLAG_VALUE(field, server_maximum, what) \
  std::pair{"--" #server_maximum, p.server_maximum},
  for (const auto& [flag, value] : {EXECD_COUNT_LIMITS(EXECD_FLAG_VALUE)}) {
#undef EXECD_FLAG_VALUE
    if (value < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(flag, " must not be negative (0: no maximum), got ", value));
    }
  }
  // An endless grace never sends SIGKILL: a command that ignores SIGTERM outlives its
  // timeout, and a drain waits for it forever.
  if (c.kill_grace == absl::InfiniteDuration()) {
    return absl::InvalidArgumentError("--kill_grace must be finite, got inf");
  }
  return absl::OkStatus();
}

// gRPC quietly serves somewhere nobody asked for when the port is missing (443) or past
// 65535 (taken modulo 65536), so a TCP address must end in a port in range.
absl::Status CheckListenPort(absl::string_view flag, const std::string& listen) {
  if (flag == "listen" &&
      (absl::StartsWith(listen, "unix:") || absl::StartsWith(listen, "unix-abstract:"))) {
    return absl::OkStatus();
  }
  size_t colon = listen.rfind(':');
  size_t bracket = listen.rfind(']');
  absl::string_view port;
  if (colon != std::string::npos && (bracket == std::string::npos || colon > bracket)) {
    port = absl::string_view(listen).substr(colon + 1);
  }
  int value = -1;
  if (port.empty() || port.size() > 5 || !absl::c_all_of(port, absl::ascii_isdigit) ||
      !absl::SimpleAtoi(port, &value) || value > 65535) {
    const absl::string_view example = flag == "listen"           ? "50051"
                                      : flag == "metrics_listen" ? "9464"
                                                                 : "50052";
    return absl::InvalidArgumentError(absl::StrCat(
        "--", flag, "=", listen, " needs a port from 0 to 65535 (0: any free port), as in ",
        "127.0.0.1:", example, " or [::]:", example));
  }
  return absl::OkStatus();
}

// A listener on an address other machines can reach, which does not check who calls or
// lets secrets cross the network unencrypted, and what to do about it.
struct OpenListener {
  absl::string_view flag;
  std::string address;
  std::string why;
  std::string remedy;
};

std::vector<OpenListener> OpenListeners(const ServerConfig& c) {
  std::vector<OpenListener> open;
  if (!OnlyLocallyReachable(c.listen)) {
    if (!c.auth.authenticates()) {
      open.push_back({"listen", c.listen,
                      "no authentication: anyone who reaches it can run commands as execd's user",
                      "authenticate callers (--auth_tokens_file with --tls_cert and --tls_key, or "
                      "mutual TLS with --tls_client_ca; see the README's Security section) or "
                      "listen on 127.0.0.1"});
    } else if (!c.auth.tls()) {
      open.push_back({"listen", c.listen,
                      "bearer tokens but no TLS: the tokens would cross the network unencrypted",
                      "add --tls_cert and --tls_key"});
    }
  }
  if (!c.metrics_listen.empty() && !OnlyLocallyReachable(c.metrics_listen) &&
      c.auth.metrics_auth_file.empty()) {
    open.push_back({"metrics_listen", c.metrics_listen,
                    "no --metrics_auth_file: anyone who reaches it can read the metrics",
                    "give --metrics_auth_file or serve metrics on 127.0.0.1"});
  }
  return open;
}

absl::Status CheckAuth(const ServerConfig& c) {
  const AuthConfig& a = c.auth;
  if (a.tls_cert.empty() != a.tls_key.empty()) {
    return absl::InvalidArgumentError(
        "--tls_cert and --tls_key go together: give both (the certificate chain and its "
        "private key) or neither");
  }
  if (a.mutual_tls() && !a.tls()) {
    return absl::InvalidArgumentError(
        "--tls_client_ca asks callers for certificates, which only TLS carries: give "
        "--tls_cert and --tls_key too");
  }
  if (a.tls() && c.health_listen.empty()) {
    return absl::InvalidArgumentError(
        "--tls_cert: health probes (Kubernetes' gRPC probes among them) can do neither TLS nor "
        "tokens; give --health_listen=HOST:PORT, a plaintext port that serves only "
        "grpc.health.v1");
  }
  if (!a.metrics_auth_file.empty() && c.metrics_listen.empty()) {
    return absl::InvalidArgumentError(
        "--metrics_auth_file protects /metrics, but --metrics_listen is empty: serve metrics, "
        "or drop --metrics_auth_file");
  }
  if (!c.health_listen.empty()) RETURN_IF_ERROR(CheckListenPort("health_listen", c.health_listen));
  if (const std::vector<OpenListener> open = OpenListeners(c); !open.empty() && !c.insecure) {
    const OpenListener& first = open.front();
    return absl::InvalidArgumentError(absl::StrCat(
        "--", first.flag, "=", first.address, " is reachable from other machines with ", first.why,
        ". To fix: ", first.remedy, "; or pass --insecure to serve it anyway"));
  }
  return absl::OkStatus();
}

absl::Status CheckConfig(const ServerConfig& c) {
  if (c.max_concurrency < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("--max_concurrency must be at least 1, got ", c.max_concurrency));
  }
  if (c.max_message_bytes < (1 << 20)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--max_message_bytes must be at least 1048576, got ", c.max_message_bytes));
  }
  const core::RequestPolicy& p = c.policy;
  if (p.default_max_output_bytes < 1 || p.default_max_output_bytes > p.max_output_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("--default_max_output_bytes must be between 1 and --max_output_bytes (",
                     p.max_output_bytes, "), got ", p.default_max_output_bytes));
  }
  // A unary response carries both streams; it must fit in one message. Compared as a
  // quotient: 2 * max_output_bytes overflows for a huge flag value.
  if (p.max_output_bytes > (c.max_message_bytes - kResponseOverhead) / 2) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--max_output_bytes (", p.max_output_bytes, ") is too large for --max_message_bytes (",
        c.max_message_bytes, "): a response with both streams full needs twice it plus ",
        kResponseOverhead, " bytes; raise --max_message_bytes or lower --max_output_bytes"));
  }
  if (p.max_stream_output_bytes < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--max_stream_output_bytes must be at least 1, got ", p.max_stream_output_bytes));
  }
  if (p.default_timeout <= absl::ZeroDuration() || p.default_timeout > p.max_timeout) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--default_timeout must be positive and at most --max_timeout (",
        absl::FormatDuration(p.max_timeout), "), got ", absl::FormatDuration(p.default_timeout)));
  }
  if (absl::Status s = CheckNotNegative(c); !s.ok()) return s;
  if (c.memory_budget_bytes < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--memory_budget_bytes must not be negative (0: the default), got ",
                     c.memory_budget_bytes));
  }
  if (c.spawn_threads < 1 || c.spawn_threads > ServerConfig::kMaxSpawnThreads) {
    return absl::InvalidArgumentError(absl::StrCat("--spawn_threads must be from 1 to ",
                                                   ServerConfig::kMaxSpawnThreads,
                                                   " (0: one per core), got ", c.spawn_threads));
  }
  if (c.tuner.min < 0 || c.tuner.max < 0 || (c.tuner.max > 0 && c.tuner.min > c.tuner.max)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--tuner_min and --tuner_max must not be negative (0: the default) and --tuner_min (",
        c.tuner.min, ") at most --tuner_max (", c.tuner.max, ")"));
  }
  if (c.tuner.target_p99 < absl::ZeroDuration() || c.tuner.window <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--tuner_target_p99 must not be negative (0: none), got ",
                     absl::FormatDuration(c.tuner.target_p99)));
  }
  if (!c.metrics_listen.empty())
    RETURN_IF_ERROR(CheckListenPort("metrics_listen", c.metrics_listen));
  RETURN_IF_ERROR(CheckListenPort("listen", c.listen));
  return CheckAuth(c);
}

// gRPC 1.51 predates fixes for several HTTP/2 abuse CVEs: bound what one connection may ask
// of a server.
void LimitConnections(grpc::ServerBuilder& builder) {
  builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS, 1024);
  builder.AddChannelArgument(GRPC_ARG_MAX_METADATA_SIZE, 16 << 10);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PING_STRIKES, 2);
  // gRPC sets SO_REUSEPORT by default: a second execd on a busy port would start and take
  // a share of its connections instead of failing.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
}

// Once initialised, the reflection plugin joins every server built after; the health-only
// server serves health and nothing else.
class WithoutReflection final : public grpc::ServerBuilderOption {
 public:
  void UpdateArguments(grpc::ChannelArguments*) override {}
  void UpdatePlugins(std::vector<std::unique_ptr<grpc::ServerBuilderPlugin>>* plugins) override {
    std::erase_if(*plugins, [](const std::unique_ptr<grpc::ServerBuilderPlugin>& plugin) {
      return plugin->name() == "proto_server_reflection";
    });
  }
};

std::string AuthenticationMode(const AuthConfig& a) {
  std::vector<absl::string_view> modes;
  if (!a.tokens_file.empty()) modes.push_back("tokens");
  if (a.mutual_tls()) modes.push_back("mutual_tls");
  return modes.empty() ? "none" : absl::StrJoin(modes, ",");
}

class EnginePlant final : public core::AutoTuner::Plant {
 public:
  explicit EnginePlant(core::Engine& engine) : engine_(engine) {}
  Load load() const override {
    const core::Engine::Stats s = engine_.stats();
    return Load{s.limit, s.running, static_cast<int>(s.queued)};
  }
  void SetLimit(int limit) override { engine_.SetConcurrencyLimit(limit); }

 private:
  core::Engine& engine_;
};

std::string DescribeDecision(const core::AutoTuner::Decision& d) {
  const core::TunerWindow& w = d.window;
  const double seconds = absl::ToDoubleSeconds(w.length);
  const double per = w.completions > 0 ? 1e3 / static_cast<double>(w.completions) : 0;
  return absl::StrFormat(
      "event=tuner from=%d to=%d reason=%s running=%d queued=%d completions=%d "
      "service_ms=%.1f queue_ms=%.1f p99_ms=%.1f cpu_utilisation=%.2f cpu_pressure=%.2f "
      "drops=%d resource_errors=%d",
      d.from, d.to, d.reason, w.in_flight, w.queued, w.completions,
      absl::ToDoubleSeconds(w.service_time_sum) * per,
      absl::ToDoubleSeconds(w.queue_wait_sum) * per, absl::ToDoubleMilliseconds(w.latency_p99),
      seconds > 0 ? w.child_cpu_seconds / (seconds * w.cores) : 0, w.cpu_pressure, w.drops,
      w.resource_errors);
}

}  // namespace

absl::Status Server::StartTuner() {
  const ServerConfig::Tuner& t = config_.tuner;
  core::AutoTuner::Options o;
  o.cores = core::UsableCores();
  o.max = t.max > 0 ? t.max : 64 * o.cores;
  std::string max_from = t.max > 0 ? "tuner_max" : "default";
  const int64_t memory_per_command = config_.policy.max_memory_bytes;
  if (auto ceiling = core::MachineCommandCeiling(memory_per_command);
      ceiling.has_value() && ceiling->commands < o.max) {
    o.max = ceiling->commands;
    max_from = ceiling->why;
  }
  o.min = t.min > 0 ? t.min : std::min(o.cores, o.max);
  if (o.min > o.max) {
    return absl::InvalidArgumentError(
        absl::StrCat("--tuner_min=", o.min, " is above what this machine can run at once (", o.max,
                     ", from its ", max_from, " limit): lower --tuner_min"));
  }
  o.target_p99 = t.target_p99;
  o.window = t.window;
  plant_ = std::make_unique<EnginePlant>(*engine_);
  // The commands' own CPU figures where their cgroup tells them: on a shared machine the
  // machine's pressure is mostly other tenants'.
  const bool commands_cpu = engine_->CommandsCpu().has_value();
  core::AutoTuner::CpuSource cpu = [engine = engine_.get(), commands_cpu] {
    if (commands_cpu) {
      if (std::optional<core::CpuTotals> c = engine->CommandsCpu()) {
        return core::AutoTuner::CpuReading{c->used, c->stalled};
      }
    }
    return core::AutoTuner::CpuReading{std::nullopt, core::CpuStallTotal()};
  };
  tuner_ = std::make_unique<core::AutoTuner>(
      o, *plant_, *metrics_, engine_->clock(), std::move(cpu),
      [this](const core::AutoTuner::Decision& d) { log_.Event(DescribeDecision(d)); });
  log_.Event(absl::StrCat("event=tuner_on start=", engine_->stats().limit, " min=", o.min,
                          " max=", o.max, " max_from=", max_from, " cores=", o.cores,
                          " target_p99_ms=", absl::ToInt64Milliseconds(o.target_p99),
                          " window_ms=", absl::ToInt64Milliseconds(o.window), " cpu=",
                          commands_cpu                        ? "commands_cgroup"
                          : core::CpuStallTotal().has_value() ? "machine_pressure"
                                                              : "no_pressure"));
  return absl::OkStatus();
}

Server::Server(ServerConfig config)
    : config_(std::move(config)),
      log_(config_.log_requests),
      metrics_(std::make_shared<metrics::Registry>(config_.version)) {}

absl::StatusOr<std::unique_ptr<Server>> Server::Start(ServerConfig config) {
  if (absl::Status s = CheckConfig(config); !s.ok()) return s;
  std::unique_ptr<Server> server(new Server(std::move(config)));
  core::RequestPolicy& policy = server->config_.policy;
  policy.max_stream_chunk_bytes = std::min<int64_t>(
      policy.max_stream_chunk_bytes, server->config_.max_message_bytes - kResponseOverhead);
  const ServerConfig& c = server->config_;
  // First, as a file that does not check out should stop start-up before anything starts.
  ASSIGN_OR_RETURN(server->authenticator_, Authenticator::Create(c.auth));
  const Authenticator* authenticator = server->authenticator_.get();

  core::Engine::Options engine_options;
  engine_options.max_concurrency = c.max_concurrency;
  engine_options.max_queue = c.max_queue;
  engine_options.kill_grace = c.kill_grace;
  engine_options.containment = c.containment;
  engine_options.spawn_threads = c.spawn_threads;
  engine_options.pools = c.pools;
  engine_options.metrics = server->metrics_.get();
  auto engine = core::Engine::Create(engine_options);
  if (!engine.ok()) return engine.status();
  server->engine_ = *std::move(engine);
  const int64_t budget =
      c.memory_budget_bytes > 0 ? c.memory_budget_bytes : core::MemoryBudget::DefaultLimit();
  server->dispatcher_ =
      std::make_unique<core::Dispatcher>(*server->engine_, c.policy, c.cache, budget);
  server->dispatcher_->SetAuthzPolicy(c.authz_policy);
  if (c.tuner.enabled) RETURN_IF_ERROR(server->StartTuner());
  server->metrics_->SetSource([s = server.get()] {
    metrics::Snapshot snapshot{s->dispatcher_->stats(), s->engine_->PoolStatuses(),
                               s->engine_->CommandsMemoryBytes(), std::nullopt};
    if (s->tuner_ != nullptr) snapshot.limit_bounds = {s->tuner_->min(), s->tuner_->max()};
    return snapshot;
  });
  if (!c.metrics_listen.empty()) {
    metrics::Exposer::BasicAuth basic_auth;
    if (!c.auth.metrics_auth_file.empty()) {
      basic_auth = [authenticator](const std::string& user, const std::string& password) {
        return authenticator->CheckMetricsUser(user, password);
      };
    }
    auto exposer = metrics::Exposer::Start(c.metrics_listen, server->metrics_, basic_auth);
    if (!exposer.ok()) return exposer.status();
    server->exposer_ = *std::move(exposer);
  }
  server->service_ = std::make_unique<ExecutorService>(*server->dispatcher_, server->log_,
                                                       *server->metrics_, *authenticator);

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.AddListeningPort(c.listen, authenticator->ServerCredentials(), &server->port_);
  builder.RegisterService(server->service_.get());
  builder.SetMaxReceiveMessageSize(c.max_message_bytes);
  builder.SetMaxSendMessageSize(c.max_message_bytes);
  LimitConnections(builder);
  // Only under a policy: with any interceptor, gRPC asks for one on every call.
  if (c.authz_policy != nullptr) {
    std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> creators;
    creators.push_back(std::make_unique<ReflectionAuthz>(*server->dispatcher_, *authenticator));
    builder.experimental().SetInterceptorCreators(std::move(creators));
  }
  server->grpc_server_ = builder.BuildAndStart();
  if (server->grpc_server_ == nullptr || server->port_ == 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen on --listen=", c.listen,
                                               " (address in use, or not a valid host:port)"));
  }
  if (!c.health_listen.empty()) {
    if (absl::Status s = server->StartHealthServer(); !s.ok()) {
      server->grpc_server_.reset();  // It served nothing yet: no drain to wait for.
      return s;
    }
  }
  server->SetServing(true);
  server->log_.Event(absl::StrCat("event=containment mechanism=\"",
                                  server->engine_->containment().Describe(), "\""));
  server->log_.Event(absl::StrCat("event=authentication mode=", AuthenticationMode(c.auth), " tls=",
                                  c.auth.tls() ? "on " : "off ", authenticator->summary()));
  if (c.insecure) {
    for (const OpenListener& open : OpenListeners(c)) {
      server->log_.Event(absl::StrCat("event=insecure level=warning listener=", open.flag,
                                      " addr=", open.address, " reason=\"", open.why, "\""));
    }
  }
  if (c.authz_policy != nullptr) {
    server->log_.Event(absl::StrCat(
        "event=authz_policy rules=", c.authz_policy->rules.size(),
        " default_rule=", c.authz_policy->default_rule.has_value() ? "true" : "false"));
  }
  server->log_.Event(absl::StrCat(
      "event=listening addr=", c.listen, " port=", server->port_,
      " metrics_port=", server->metrics_port(), " health_port=", server->health_port_,
      " max_concurrency=", server->engine_->stats().limit, " memory_budget_bytes=", budget));
  if (server->tuner_ != nullptr) server->tuner_->Start();
  return server;
}

Server::~Server() { Shutdown(); }

absl::Status Server::StartHealthServer() {
  health_fallback_ = std::make_unique<grpc::CallbackGenericService>();
  grpc::ServerBuilder builder;
  builder.AddListeningPort(config_.health_listen, grpc::InsecureServerCredentials(), &health_port_);
  builder.RegisterCallbackGenericService(health_fallback_.get());
  builder.SetOption(std::make_unique<WithoutReflection>());
  builder.SetMaxReceiveMessageSize(4 << 10);  // A health request names a service.
  LimitConnections(builder);
  health_server_ = builder.BuildAndStart();
  if (health_server_ == nullptr || health_port_ == 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen on --health_listen=", config_.health_listen,
                     " (address in use, or not a valid host:port)"));
  }
  return absl::OkStatus();
}

void Server::SetServing(bool serving) {
  for (grpc::Server* server : {grpc_server_.get(), health_server_.get()}) {
    if (server == nullptr) continue;
    grpc::HealthCheckServiceInterface* health = server->GetHealthCheckService();
    health->SetServingStatus(serving);
    health->SetServingStatus(v1::Executor::service_full_name(), serving);
  }
}

absl::Status Server::ReloadAuth() {
  absl::StatusOr<std::string> reloaded = authenticator_->Reload();
  if (!authenticator_->config().any_file()) {
    log_.Event(absl::StrCat("event=auth_reload_skipped reason=\"",
                            absl::CEscape(reloaded.status().message()), "\""));
    return reloaded.status();
  }
  if (!reloaded.ok()) {
    log_.Event(absl::StrCat("event=auth_reload_failed error=\"",
                            absl::CEscape(reloaded.status().message()),
                            "\" kept=\"what was trusted before\""));
    return reloaded.status();
  }
  log_.Event(absl::StrCat("event=auth_reloaded ", *reloaded));
  return absl::OkStatus();
}

absl::Status Server::ReloadPools(const std::string& path) {
  if (path.empty()) {  // Said, so that an operator's SIGHUP is not met with silence.
    log_.Event("event=pools_reload_skipped reason=\"no --pools_config: nothing to reload\"");
    return absl::FailedPreconditionError("no --pools_config: nothing to reload");
  }
  absl::StatusOr<std::vector<std::string>> changed = [&] {
    auto pools = LoadPoolsConfig(path, config_.policy);
    if (!pools.ok()) return absl::StatusOr<std::vector<std::string>>(pools.status());
    return engine_->ReloadPools(*std::move(pools));
  }();
  if (!changed.ok()) {
    log_.Event(absl::StrCat("event=pools_reload_failed error=\"",
                            absl::CEscape(changed.status().message()), "\""));
    return changed.status();
  }
  log_.Event(absl::StrCat("event=pools_reloaded changed=\"", absl::StrJoin(*changed, ","), "\""));
  return absl::OkStatus();
}

absl::Status Server::ReloadAuthzPolicy(const std::string& path) {
  if (path.empty()) return absl::OkStatus();
  absl::Status status = [&]() -> absl::Status {
    if (config_.authz_policy == nullptr) {
      return absl::FailedPreconditionError(
          "the server started without --authz_policy; starting with one takes a restart");
    }
    absl::StatusOr<std::shared_ptr<const core::AuthzPolicy>> policy =
        LoadAuthzPolicy(path, config_.policy);
    if (!policy.ok()) return policy.status();
    log_.Event(
        absl::StrCat("event=authz_policy_reloaded rules=", (*policy)->rules.size(),
                     " default_rule=", (*policy)->default_rule.has_value() ? "true" : "false"));
    dispatcher_->SetAuthzPolicy(*std::move(policy));
    return absl::OkStatus();
  }();
  if (!status.ok()) {
    log_.Event(absl::StrCat("event=authz_policy_reload_failed error=\"",
                            absl::CEscape(status.message()), "\" kept=previous"));
  }
  return status;
}

void Server::Shutdown() {
  if (shut_down_ || grpc_server_ == nullptr) return;
  shut_down_ = true;
  // A drain is no load to tune for.
  if (tuner_ != nullptr) tuner_->Stop();
  log_.Event(
      absl::StrCat("event=draining drain_timeout=", absl::FormatDuration(config_.drain_timeout)));
  // Probes see NOT_SERVING at once, while gRPC keeps serving: load balancers move traffic
  // away, new Execute calls get UNAVAILABLE from the engine, and queued and running ones
  // finish for up to the drain timeout. Then the engine kills the rest, which are reported
  // to their callers as CANCELLED.
  // Refuse first, then announce: whoever sees NOT_SERVING can rely on being refused.
  engine_->StopAccepting();
  SetServing(false);
  core::Engine::Stats before = engine_->stats();
  absl::Time start = absl::Now();
  engine_->Shutdown(config_.drain_timeout);
  log_.Event(absl::StrCat("event=drained running=", before.running, " queued=", before.queued,
                          " took_ms=", absl::ToInt64Milliseconds(absl::Now() - start)));
  // Every Execute call has its answer now; what is left (Ping, health) ends quickly.
  grpc_server_->Shutdown(absl::ToChronoTime(absl::Now() + absl::Seconds(1)));
  grpc_server_->Wait();
  // Probes see NOT_SERVING until the main listener is gone.
  if (health_server_ != nullptr) {
    health_server_->Shutdown(absl::ToChronoTime(absl::Now() + absl::Seconds(1)));
    health_server_->Wait();
  }
  log_.Event("event=stopped");
}

void Server::CutDrainShort() {
  log_.Event("event=drain_cut_short reason=\"second stop signal\"");
  engine_->CutDrainShort();
}

}  // namespace execd::server
