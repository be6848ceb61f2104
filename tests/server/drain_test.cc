// Graceful drain: health turns NOT_SERVING at once, new work is refused with UNAVAILABLE,
// queued and running work finishes within the drain timeout, and what is still running
// after it is killed and reported.
#include <sys/stat.h>

#include <fstream>
#include <limits>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "gmock/gmock.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "gtest/gtest.h"
#include "tests/support/subprocess.h"
#include "tests/support/test_server.h"

namespace execd {
namespace {

using testing::AsyncCall;
using ::testing::HasSubstr;
using testing::TestServer;

class DrainTest : public ::testing::Test {
 protected:
  void StartServer(absl::Duration drain) {
    auto server = TestServer::Start([drain](server::ServerConfig& c) {
      c.max_concurrency = 1;
      c.drain_timeout = drain;
    });
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
  }

  bool WaitForStats(const std::function<bool(const core::Engine::Stats&)>& pred) {
    return testing::WaitFor([&] { return pred(server_->server().engine().stats()); },
                            absl::Seconds(10));
  }

  grpc::health::v1::HealthCheckResponse::ServingStatus Health() {
    auto health = grpc::health::v1::Health::NewStub(server_->channel());
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
    grpc::health::v1::HealthCheckRequest request;
    grpc::health::v1::HealthCheckResponse response;
    if (!health->Check(&context, request, &response).ok()) {
      return grpc::health::v1::HealthCheckResponse::UNKNOWN;
    }
    return response.status();
  }

  std::unique_ptr<TestServer> server_;
  testing::ScopedTempDir temp_{"execd_drain"};
  const std::string dir_ = temp_.path();
};

TEST_F(DrainTest, QueuedAndRunningWorkFinishesWhileNewWorkIsRefused) {
  StartServer(absl::Seconds(20));
  std::string gate = dir_ + "/gate";
  AsyncCall running, queued;
  running.request = TestServer::Request(
      {"/bin/sh", "-c", absl::StrCat("while [ ! -e ", gate, " ]; do sleep 0.01; done; echo ran")});
  queued.request = TestServer::Request({"/bin/echo", "queued ran"});
  running.Start(server_->stub());
  ASSERT_TRUE(WaitForStats([](const core::Engine::Stats& s) { return s.running == 1; }));
  queued.Start(server_->stub());
  ASSERT_TRUE(WaitForStats([](const core::Engine::Stats& s) { return s.queued == 1; }));

  std::thread shutdown([&] { server_->server().Shutdown(); });
  EXPECT_TRUE(testing::WaitFor(
      [&] { return Health() == grpc::health::v1::HealthCheckResponse::NOT_SERVING; },
      absl::Seconds(2)));
  v1::ExecuteResponse response;
  grpc::Status refused = server_->Execute(TestServer::Request({"/bin/true"}), &response);
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_THAT(refused.error_message(), HasSubstr("shutting down"));

  std::ofstream(gate) << "open";
  ASSERT_TRUE(running.Wait());
  ASSERT_TRUE(queued.Wait());
  shutdown.join();
  ASSERT_TRUE(running.status.ok()) << running.status.error_message();
  EXPECT_EQ(running.response.stdout(), "ran\n");
  ASSERT_TRUE(queued.status.ok()) << queued.status.error_message();
  EXPECT_EQ(queued.response.stdout(), "queued ran\n");
}

TEST_F(DrainTest, WorkStillRunningAfterTheDrainTimeoutIsKilledAndReported) {
  StartServer(absl::Milliseconds(300));
  AsyncCall running, queued;
  running.request = TestServer::Request({"/bin/sleep", "100"});
  queued.request = TestServer::Request({"/bin/echo", "never"});
  running.Start(server_->stub());
  ASSERT_TRUE(WaitForStats([](const core::Engine::Stats& s) { return s.running == 1; }));
  queued.Start(server_->stub());
  ASSERT_TRUE(WaitForStats([](const core::Engine::Stats& s) { return s.queued == 1; }));
  absl::Time start = absl::Now();
  server_->server().Shutdown();
  EXPECT_LT(absl::Now() - start, absl::Seconds(3));
  ASSERT_TRUE(running.Wait());
  ASSERT_TRUE(queued.Wait());
  ASSERT_TRUE(running.status.ok()) << running.status.error_message();
  EXPECT_EQ(running.response.termination(), v1::CANCELLED);
  EXPECT_FALSE(testing::ProcessAlive(running.response.pid()));
  EXPECT_EQ(queued.status.error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_THAT(queued.status.error_message(), HasSubstr("shutting down"));
}

// Start-up refuses a configuration it cannot honour, naming the setting to change.
absl::Status StartWith(const std::function<void(server::ServerConfig&)>& adjust) {
  auto server = TestServer::Start(adjust);
  return server.ok() ? absl::OkStatus() : server.status();
}

TEST(ServerStart, RefusesAPortAnotherServerIsListeningOn) {
  auto first = TestServer::Start();
  ASSERT_TRUE(first.ok()) << first.status();
  int port = (*first)->server().port();
  absl::Status second =
      StartWith([port](server::ServerConfig& c) { c.listen = absl::StrCat("127.0.0.1:", port); });
  EXPECT_EQ(second.code(), absl::StatusCode::kUnavailable) << second;
  EXPECT_THAT(second.message(), HasSubstr("cannot listen"));
}

TEST(ServerStart, RefusesAnAddressWithoutAPortInRange) {
  for (std::string listen : {"127.0.0.1:99999", "127.0.0.1:", "127.0.0.1", "[::1]"}) {
    absl::Status s = StartWith([listen](server::ServerConfig& c) { c.listen = listen; });
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << listen << ": " << s;
    EXPECT_THAT(s.message(), HasSubstr("--listen=" + listen + " needs a port")) << listen;
  }
}

TEST(ServerStart, RefusesAnOutputLimitWhoseResponseWouldOverflow) {
  for (int64_t huge : {int64_t{1} << 62, std::numeric_limits<int64_t>::max()}) {
    absl::Status s = StartWith([huge](server::ServerConfig& c) {
      c.policy.default_max_output_bytes = 1;
      c.policy.max_output_bytes = huge;
    });
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << huge;
    EXPECT_THAT(s.message(), HasSubstr("--max_output_bytes")) << huge;
  }
}

TEST(ServerStart, RefusesNegativeDurationsAndMaxima) {
  const std::vector<std::pair<std::string, std::function<void(server::ServerConfig&)>>> cases = {
      {"--drain_timeout", [](server::ServerConfig& c) { c.drain_timeout = absl::Seconds(-1); }},
      {"--kill_grace", [](server::ServerConfig& c) { c.kill_grace = absl::Seconds(-1); }},
      {"--kill_grace must be finite",
       [](server::ServerConfig& c) { c.kill_grace = absl::InfiniteDuration(); }},
      {"--max_cpu_time",
       [](server::ServerConfig& c) { c.policy.max_cpu_time = absl::Seconds(-1); }},
      {"--max_memory_bytes", [](server::ServerConfig& c) { c.policy.max_memory_bytes = -1; }},
      {"--max_processes", [](server::ServerConfig& c) { c.policy.max_processes = -1; }},
      {"--max_open_files", [](server::ServerConfig& c) { c.policy.max_open_files = -1; }},
      {"--max_file_size_bytes", [](server::ServerConfig& c) { c.policy.max_file_size_bytes = -1; }},
      {"--spawn_threads", [](server::ServerConfig& c) { c.spawn_threads = -1; }},
      // Not negative, but more threads than any machine starts: refused, not an abort.
      {"--spawn_threads must be from 1 to 256",
       [](server::ServerConfig& c) { c.spawn_threads = 1'000'000; }},
  };
  for (const auto& [flag, adjust] : cases) {
    absl::Status s = StartWith(adjust);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << flag;
    EXPECT_THAT(s.message(), HasSubstr(flag)) << s;
  }
}

}  // namespace
}  // namespace execd
