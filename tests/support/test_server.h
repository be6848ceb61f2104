// An in-process execd server on a loopback port, and a client for it, for integration
// tests that go through a real gRPC channel.
#pragma once

#include <grpcpp/grpcpp.h>

#include <functional>
#include <initializer_list>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "execd/v1/execd.grpc.pb.h"
#include "gtest/gtest.h"
#include "server/server.h"

namespace execd::testing {

// One Execute in flight on the callback API, for tests that need calls to overlap.
struct AsyncCall {
  grpc::ClientContext context;
  v1::ExecuteRequest request;
  v1::ExecuteResponse response;
  grpc::Status status;
  absl::Notification done;

  void Start(v1::Executor::Stub& stub, absl::Duration deadline = absl::Seconds(30));
  // Waits (bounded) for the answer; false if none came.
  bool Wait() { return done.WaitForNotificationWithTimeout(absl::Seconds(30)); }
};

class TestServer;

// A fixture that starts a server on the test defaults for each test.
class ServerTest : public ::testing::Test {
 protected:
  void SetUp() override;
  std::unique_ptr<TestServer> server_;
};

class TestServer {
 public:
  // The config tests start from: loopback port 0, short kill grace, no request log, and a
  // PATH of /usr/bin:/bin. `adjust` changes it before the server starts.
  static absl::StatusOr<std::unique_ptr<TestServer>> Start(
      const std::function<void(server::ServerConfig&)>& adjust = nullptr);

  server::Server& server() { return *server_; }
  v1::Executor::Stub& stub() { return *stub_; }
  std::shared_ptr<grpc::Channel> channel() { return channel_; }

  static v1::ExecuteRequest Request(std::initializer_list<std::string> argv);

  // A unary Execute with a deadline; `trailers`, when given, receives the trailing metadata.
  grpc::Status Execute(const v1::ExecuteRequest& request, v1::ExecuteResponse* response,
                       absl::Duration deadline = absl::Seconds(30),
                       std::multimap<std::string, std::string>* trailers = nullptr);

 private:
  std::unique_ptr<server::Server> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Executor::Stub> stub_;
};

}  // namespace execd::testing
