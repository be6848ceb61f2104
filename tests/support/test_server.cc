#include "tests/support/test_server.h"

#include "absl/strings/str_cat.h"

namespace execd::testing {

void AsyncCall::Start(v1::Executor::Stub& stub, absl::Duration deadline) {
  context.set_deadline(absl::ToChronoTime(absl::Now() + deadline));
  stub.async()->Execute(&context, &request, &response, [this](grpc::Status s) {
    status = std::move(s);
    done.Notify();
  });
}

absl::StatusOr<std::unique_ptr<TestServer>> TestServer::Start(
    const std::function<void(server::ServerConfig&)>& adjust) {
  server::ServerConfig config;
  config.listen = "127.0.0.1:0";
  config.metrics_listen = "127.0.0.1:0";
  config.max_concurrency = 4;
  config.kill_grace = absl::Milliseconds(200);
  config.drain_timeout = absl::Seconds(5);
  config.log_requests = false;
  config.policy = core::RequestPolicy::FromProcessEnvironment();
  config.policy.server_env["PATH"] = "/usr/bin:/bin";
  if (adjust) adjust(config);
  auto server = server::Server::Start(config);
  if (!server.ok()) return server.status();
  auto test_server = std::unique_ptr<TestServer>(new TestServer());
  test_server->server_ = *std::move(server);
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(-1);
  test_server->channel_ =
      grpc::CreateCustomChannel(absl::StrCat("127.0.0.1:", test_server->server_->port()),
                                grpc::InsecureChannelCredentials(), args);
  test_server->stub_ = v1::Executor::NewStub(test_server->channel_);
  return test_server;
}

v1::ExecuteRequest TestServer::Request(std::initializer_list<std::string> argv) {
  v1::ExecuteRequest request;
  for (const std::string& a : argv) request.add_argv(a);
  return request;
}

grpc::Status TestServer::Execute(const v1::ExecuteRequest& request, v1::ExecuteResponse* response,
                                 absl::Duration deadline,
                                 std::multimap<std::string, std::string>* trailers) {
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + deadline));
  grpc::Status status = stub_->Execute(&context, request, response);
  if (trailers != nullptr) {
    for (const auto& [key, value] : context.GetServerTrailingMetadata()) {
      trailers->emplace(std::string(key.data(), key.size()),
                        std::string(value.data(), value.size()));
    }
  }
  return status;
}

void ServerTest::SetUp() {
  auto server = TestServer::Start();
  ASSERT_TRUE(server.ok()) << server.status();
  server_ = *std::move(server);
}

}  // namespace execd::testing
