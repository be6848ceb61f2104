#include "loadtest/requesters.h"

#include <fcntl.h>
#include <grpcpp/grpcpp.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_format.h"

extern char** environ;

namespace execd::loadtest {

ChannelPool::ChannelPool(const std::string& target, int size, const client::ClientAuth& auth) {
  for (int i = 0; i < size; ++i) {
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(-1);
    // Channels with equal arguments share a subchannel, hence a connection, through the
    // global subchannel pool: a local pool and an argument of their own keep them apart.
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    args.SetInt("execd.channel_id", i);
    stubs_.push_back(v1::Executor::NewStub(client::CreateChannel(target, auth, args)));
  }
}

v1::Executor::Stub& ChannelPool::Next() {
  return *stubs_[next_.fetch_add(1, std::memory_order_relaxed) % stubs_.size()];
}

namespace {

v1::ExecuteRequest ExecuteRequestOf(const Config& config) {
  v1::ExecuteRequest request;
  for (const std::string& a : config.argv) request.add_argv(a);
  request.set_pool(config.pool);
  request.set_stdin(config.stdin_data);
  if (config.cache) request.set_cache_policy(v1::READ_WRITE);
  if (config.accept_lz4) request.set_accept_compression(v1::LZ4);
  request.mutable_limits()->set_max_output_bytes(config.max_output_bytes);
  return request;
}

// A failed RPC and a command that did not exit 0 are both errors.
std::string ExecuteError(const grpc::Status& status, const v1::ExecuteResponse& response) {
  if (!status.ok()) return status.error_message();
  if (response.termination() != v1::EXITED || response.exit_code() != 0) {
    return absl::StrFormat("command ended with %s, exit %d",
                           v1::Termination_Name(response.termination()), response.exit_code());
  }
  return "";
}

std::optional<absl::Duration> ServerTotal(const v1::ExecuteResponse& response) {
  if (!response.timings().has_total()) return std::nullopt;
  const google::protobuf::Duration& d = response.timings().total();
  return absl::Seconds(d.seconds()) + absl::Nanoseconds(d.nanos());
}

class ExecuteRequester final : public Requester {
 public:
  ExecuteRequester(ChannelPool& channels, const Config& config)
      : channels_(channels), request_(ExecuteRequestOf(config)) {}
  std::string Send() override {
    grpc::ClientContext context;
    response_.Clear();
    grpc::Status status = channels_.Next().Execute(&context, request_, &response_);
    return ExecuteError(status, response_);
  }
  std::optional<absl::Duration> ServerTime() const override { return ServerTotal(response_); }

 private:
  ChannelPool& channels_;
  const v1::ExecuteRequest request_;
  // Reused (cleared) for every call, as protobuf advises for hot loops: its sub-messages
  // and strings keep their memory. The same for Ping below.
  v1::ExecuteResponse response_;
};

class PingRequester final : public Requester {
 public:
  PingRequester(ChannelPool& channels, int payload_bytes) : channels_(channels) {
    request_.set_payload(std::string(payload_bytes, 'x'));
  }
  std::string Send() override {
    grpc::ClientContext context;
    response_.Clear();
    grpc::Status status = channels_.Next().Ping(&context, request_, &response_);
    return status.ok() ? "" : status.error_message();
  }

 private:
  ChannelPool& channels_;
  v1::PingRequest request_;
  v1::PingResponse response_;
};

// The baseline: what the same command costs spawned locally, output to /dev/null. With
// `setsid`, the child gets a session of its own (as a server that gives each child one
// would), and with it a scheduler autogroup of its own where autogroups are enabled.
class LocalSpawnRequester final : public Requester {
 public:
  LocalSpawnRequester(const std::vector<std::string>& argv, bool setsid) : argv_(argv) {
    for (std::string& a : argv_) pointers_.push_back(a.data());
    pointers_.push_back(nullptr);
    posix_spawn_file_actions_init(&actions_);
    posix_spawn_file_actions_addopen(&actions_, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&actions_, 1, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_addopen(&actions_, 2, "/dev/null", O_WRONLY, 0);
    // The children start with no signal blocked, whatever the load generator blocks.
    posix_spawnattr_init(&attr_);
    sigset_t none;
    sigemptyset(&none);
    posix_spawnattr_setsigmask(&attr_, &none);
    posix_spawnattr_setflags(
        &attr_, static_cast<short>(POSIX_SPAWN_SETSIGMASK | (setsid ? POSIX_SPAWN_SETSID : 0)));
  }
  ~LocalSpawnRequester() override {
    posix_spawnattr_destroy(&attr_);
    posix_spawn_file_actions_destroy(&actions_);
  }
  std::string Send() override {
    pid_t pid;
    int err = posix_spawnp(&pid, pointers_[0], &actions_, &attr_, pointers_.data(), environ);
    if (err != 0) return absl::StrFormat("posix_spawnp \"%s\": %s", argv_[0], std::strerror(err));
    int status;
    while (waitpid(pid, &status, 0) < 0) {
      if (errno != EINTR) return absl::StrFormat("waitpid: %s", std::strerror(errno));
    }
    if (WIFSIGNALED(status)) {
      return absl::StrFormat("\"%s\" killed by signal %d", argv_[0], WTERMSIG(status));
    }
    if (WEXITSTATUS(status) != 0) {
      return absl::StrFormat("\"%s\" exited with code %d", argv_[0], WEXITSTATUS(status));
    }
    return "";
  }

 private:
  std::vector<std::string> argv_;
  std::vector<char*> pointers_;
  posix_spawn_file_actions_t actions_;
  posix_spawnattr_t attr_;
};

// The request is shared by every call: gRPC serialises it when the call starts and never
// writes it. Each response lives until its call's callback has read it.
class AsyncExecuteRequester final : public AsyncRequester {
 public:
  AsyncExecuteRequester(ChannelPool& channels, const Config& config)
      : channels_(channels), request_(ExecuteRequestOf(config)) {}
  void Start(grpc::ClientContext* context, std::function<void(Outcome)> done) override {
    auto* response = new v1::ExecuteResponse;
    channels_.Next().async()->Execute(
        context, &request_, response, [response, done = std::move(done)](grpc::Status status) {
          Outcome outcome{ExecuteError(status, *response), ServerTotal(*response)};
          delete response;
          done(std::move(outcome));
        });
  }

 private:
  ChannelPool& channels_;
  const v1::ExecuteRequest request_;
};

class AsyncPingRequester final : public AsyncRequester {
 public:
  AsyncPingRequester(ChannelPool& channels, int payload_bytes) : channels_(channels) {
    request_.set_payload(std::string(payload_bytes, 'x'));
  }
  void Start(grpc::ClientContext* context, std::function<void(Outcome)> done) override {
    auto* response = new v1::PingResponse;
    channels_.Next().async()->Ping(
        context, &request_, response, [response, done = std::move(done)](grpc::Status status) {
          delete response;
          done(Outcome{status.ok() ? "" : status.error_message(), std::nullopt});
        });
  }

 private:
  ChannelPool& channels_;
  v1::PingRequest request_;
};

}  // namespace

std::unique_ptr<AsyncRequester> MakeAsyncRequester(const Config& config, ChannelPool& channels) {
  switch (config.mode) {
    case Mode::kExecute:
      return std::make_unique<AsyncExecuteRequester>(channels, config);
    case Mode::kPing:
      return std::make_unique<AsyncPingRequester>(channels, config.payload_bytes);
    case Mode::kLocalSpawn:
    case Mode::kLocalSetsid:
    case Mode::kBatch:
      break;
  }
  return nullptr;
}

std::unique_ptr<Requester> MakeRequester(const Config& config, ChannelPool& channels) {
  switch (config.mode) {
    case Mode::kExecute:
      return std::make_unique<ExecuteRequester>(channels, config);
    case Mode::kPing:
      return std::make_unique<PingRequester>(channels, config.payload_bytes);
    case Mode::kLocalSpawn:
      return std::make_unique<LocalSpawnRequester>(config.argv, false);
    case Mode::kLocalSetsid:
      return std::make_unique<LocalSpawnRequester>(config.argv, true);
    case Mode::kBatch:
      break;
  }
  return nullptr;
}

}  // namespace execd::loadtest
