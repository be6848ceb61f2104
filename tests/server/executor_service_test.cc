// Integration tests: a real execd server on a loopback port, called through a real gRPC
// channel, as a client would.
#include <grpcpp/grpcpp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <memory>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "execd/v1/execd.grpc.pb.h"
#include "gmock/gmock.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "gtest/gtest.h"
#include "server/server.h"
#include "tests/support/subprocess.h"
#include "tests/support/test_server.h"

namespace execd::server {
namespace {

using ::testing::HasSubstr;

class ExecutorServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto server = testing::TestServer::Start();
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    channel_ = server_->channel();
    stub_ = &server_->stub();
  }

  static v1::ExecuteRequest Request(std::initializer_list<std::string> argv) {
    return testing::TestServer::Request(argv);
  }

  grpc::Status Execute(const v1::ExecuteRequest& request, v1::ExecuteResponse* response,
                       absl::Duration deadline = absl::Seconds(30)) {
    return server_->Execute(request, response, deadline);
  }

  // The server still answers after whatever the test did.
  void ExpectStillServing() {
    v1::ExecuteResponse response;
    grpc::Status status = Execute(Request({"/bin/echo", "alive"}), &response);
    ASSERT_TRUE(status.ok()) << status.error_message();
    EXPECT_EQ(response.stdout(), "alive\n");
  }

  // Reads a pid a command wrote to `path`, waiting for the file to be complete.
  pid_t ReadPid(const std::string& path) {
    pid_t pid = 0;
    testing::WaitFor(
        [&] {
          std::ifstream in(path);
          std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
          return absl::EndsWith(text, "\n") &&
                 absl::SimpleAtoi(absl::StripAsciiWhitespace(text), &pid);
        },
        absl::Seconds(10));
    return pid;
  }

  std::unique_ptr<testing::TestServer> server_;
  std::shared_ptr<grpc::Channel> channel_;
  v1::Executor::Stub* stub_ = nullptr;
  testing::ScopedTempDir temp_{"execd_it"};
  const std::string dir_ = temp_.path();
};

TEST_F(ExecutorServiceTest, EchoReturnsOutputAndExitZero) {
  v1::ExecuteResponse response;
  grpc::Status status = Execute(Request({"/bin/echo", "hello"}), &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(response.termination(), v1::EXITED);
  EXPECT_EQ(response.exit_code(), 0);
  EXPECT_EQ(response.stdout(), "hello\n");
  EXPECT_EQ(response.stderr(), "");
  EXPECT_GT(response.pid(), 0);
  EXPECT_TRUE(response.timings().has_total());
  EXPECT_GT(response.timings().total().nanos() + response.timings().total().seconds(), 0);
}

TEST_F(ExecutorServiceTest, NonZeroExitIsOkStatusWithExitCode) {
  v1::ExecuteResponse response;
  ASSERT_TRUE(Execute(Request({"/bin/sh", "-c", "echo oops >&2; exit 3"}), &response).ok());
  EXPECT_EQ(response.termination(), v1::EXITED);
  EXPECT_EQ(response.exit_code(), 3);
  EXPECT_EQ(response.stderr(), "oops\n");
}

TEST_F(ExecutorServiceTest, KilledBySignalReportsSignal) {
  v1::ExecuteResponse response;
  ASSERT_TRUE(Execute(Request({"/bin/sh", "-c", "kill -TERM $$"}), &response).ok());
  EXPECT_EQ(response.termination(), v1::SIGNALED);
  EXPECT_EQ(response.signal(), SIGTERM);
}

TEST_F(ExecutorServiceTest, StdinEnvAndCwdReachTheChild) {
  v1::ExecuteRequest request =
      Request({"/bin/sh", "-c", "cat; echo \"$GREETING\"; pwd; env | wc -l"});
  request.set_stdin("from stdin\n");
  (*request.mutable_env())["GREETING"] = "hi there";
  request.set_cwd("/tmp");
  v1::ExecuteResponse response;
  ASSERT_TRUE(Execute(request, &response).ok());
  // sh adds PWD (and may add SHLVL, _) of its own; the caller's one variable is there and the
  // server's environment is not.
  EXPECT_THAT(response.stdout(), ::testing::StartsWith("from stdin\nhi there\n/tmp\n"));
  int count = 0;
  std::string last = std::string(absl::StripTrailingAsciiWhitespace(response.stdout()));
  ASSERT_TRUE(absl::SimpleAtoi(last.substr(last.rfind('\n') + 1), &count));
  EXPECT_LE(count, 4);
}

TEST(ExecutorService, InheritEnvPassesOnlyNamedServerVariables) {
  auto server = testing::TestServer::Start([](server::ServerConfig& c) {
    c.policy.inheritable_env.push_back("EXECD_SURELY_UNSET_VARIABLE");
    c.policy.server_env["EXECD_SECRET"] = "hunter2";
  });
  ASSERT_TRUE(server.ok()) << server.status();
  v1::ExecuteRequest request = testing::TestServer::Request({"/usr/bin/env"});
  request.add_inherit_env("PATH");
  request.add_inherit_env("EXECD_SURELY_UNSET_VARIABLE");
  v1::ExecuteResponse response;
  ASSERT_TRUE((*server)->Execute(request, &response).ok());
  EXPECT_EQ(response.stdout(), "PATH=/usr/bin:/bin\n");
  // A server variable outside --inheritable_env is not the caller's to read.
  request.add_inherit_env("EXECD_SECRET");
  grpc::Status status = (*server)->Execute(request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_THAT(status.error_message(),
              ::testing::HasSubstr("inherit_env \"EXECD_SECRET\" is not inheritable"));
}

TEST_F(ExecutorServiceTest, TimeoutStopsTheCommandPromptly) {
  v1::ExecuteRequest request = Request({"/bin/sleep", "10"});
  request.mutable_limits()->mutable_timeout()->set_nanos(200'000'000);
  v1::ExecuteResponse response;
  absl::Time start = absl::Now();
  ASSERT_TRUE(Execute(request, &response).ok());
  EXPECT_LT(absl::Now() - start, absl::Seconds(2));
  EXPECT_EQ(response.termination(), v1::TIMED_OUT);
  EXPECT_EQ(response.signal(), SIGTERM);
}

TEST_F(ExecutorServiceTest, FloodOnBothStreamsIsCappedWithoutDeadlock) {
  v1::ExecuteRequest request =
      Request({"/bin/sh", "-c", "head -c 50000000 /dev/zero; head -c 50000000 /dev/zero >&2"});
  v1::ExecuteResponse response;
  ASSERT_TRUE(Execute(request, &response).ok());
  EXPECT_EQ(response.termination(), v1::OUTPUT_LIMIT_EXCEEDED);
  EXPECT_TRUE(response.stdout_truncated());
  EXPECT_EQ(response.stdout().size(), 1u << 20);  // The default cap.
  EXPECT_FALSE(response.stderr_truncated());
}

TEST_F(ExecutorServiceTest, LargeStdinAndOutputBothWays) {
  std::string input(8 << 20, 'x');
  for (size_t i = 0; i < input.size(); i += 4096) input[i] = static_cast<char>('a' + i % 26);
  v1::ExecuteRequest request = Request({"/bin/cat"});
  request.set_stdin(input);
  request.mutable_limits()->set_max_output_bytes(16 << 20);
  v1::ExecuteResponse response;
  ASSERT_TRUE(Execute(request, &response).ok());
  EXPECT_EQ(response.termination(), v1::EXITED);
  EXPECT_EQ(response.stdout().size(), input.size());
  EXPECT_TRUE(response.stdout() == input);
}

TEST_F(ExecutorServiceTest, MissingBinaryIsNotFoundNamingThePath) {
  v1::ExecuteResponse response;
  grpc::Status status = Execute(Request({"/usr/bin/pyton3"}), &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_THAT(status.error_message(), HasSubstr("/usr/bin/pyton3"));
  status = Execute(Request({"no-such-program-anywhere"}), &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_THAT(status.error_message(), HasSubstr("no-such-program-anywhere"));
  ExpectStillServing();
}

TEST_F(ExecutorServiceTest, NonExecutableFileIsPermissionDenied) {
  std::string path = dir_ + "/not_executable.sh";
  std::ofstream(path) << "#!/bin/sh\necho hi\n";
  chmod(path.c_str(), 0644);
  v1::ExecuteResponse response;
  grpc::Status status = Execute(Request({path}), &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_THAT(status.error_message(), HasSubstr(path));
  ExpectStillServing();
}

struct BadRequestCase {
  std::string name;
  std::function<void(v1::ExecuteRequest&)> mutate;
  std::string message_part;
};

TEST_F(ExecutorServiceTest, BadRequestsGetInvalidArgumentAndServerKeepsServing) {
  const std::vector<BadRequestCase> cases = {
      {"empty argv", [](v1::ExecuteRequest& r) { r.clear_argv(); }, "argv"},
      {"empty argv0", [](v1::ExecuteRequest& r) { r.set_argv(0, ""); }, "argv[0]"},
      {"NUL in argv", [](v1::ExecuteRequest& r) { r.add_argv(std::string("a\0b", 3)); }, "NUL"},
      {"NUL in env value",
       [](v1::ExecuteRequest& r) { (*r.mutable_env())["X"] = std::string("a\0b", 3); }, "NUL"},
      {"= in env name", [](v1::ExecuteRequest& r) { (*r.mutable_env())["A=B"] = "c"; }, "'='"},
      {"empty env name", [](v1::ExecuteRequest& r) { (*r.mutable_env())[""] = "c"; }, "empty"},
      {"NUL in cwd", [](v1::ExecuteRequest& r) { r.set_cwd(std::string("/tmp\0x", 6)); }, "cwd"},
      {"relative cwd", [](v1::ExecuteRequest& r) { r.set_cwd("tmp"); }, "absolute"},
      {"negative timeout",
       [](v1::ExecuteRequest& r) { r.mutable_limits()->mutable_timeout()->set_seconds(-1); },
       "limits.timeout"},
      {"absurd timeout",
       [](v1::ExecuteRequest& r) {
         r.mutable_limits()->mutable_timeout()->set_seconds(365LL * 24 * 3600);
       },
       "limits.timeout"},
      {"negative output limit",
       [](v1::ExecuteRequest& r) { r.mutable_limits()->set_max_output_bytes(-5); },
       "limits.max_output_bytes"},
      {"absurd output limit",
       [](v1::ExecuteRequest& r) { r.mutable_limits()->set_max_output_bytes(1LL << 40); },
       "limits.max_output_bytes"},
  };
  for (const BadRequestCase& c : cases) {
    SCOPED_TRACE(c.name);
    v1::ExecuteRequest request = Request({"/bin/echo", "x"});
    c.mutate(request);
    v1::ExecuteResponse response;
    grpc::Status status = Execute(request, &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << status.error_message();
    EXPECT_THAT(status.error_message(), HasSubstr(c.message_part));
  }
  ExpectStillServing();
}

TEST_F(ExecutorServiceTest, MissingCwdIsNotFound) {
  v1::ExecuteRequest request = Request({"/bin/pwd"});
  request.set_cwd("/no/such/dir");
  v1::ExecuteResponse response;
  grpc::Status status = Execute(request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_THAT(status.error_message(), HasSubstr("/no/such/dir"));
}

TEST_F(ExecutorServiceTest, CallDeadlineKillsTheChild) {
  std::string pid_file = dir_ + "/deadline.pid";
  v1::ExecuteRequest request =
      Request({"/bin/sh", "-c", absl::StrCat("echo $$ > ", pid_file, "; exec sleep 100")});
  v1::ExecuteResponse response;
  grpc::Status status = Execute(request, &response, absl::Milliseconds(500));
  // Either the server answered TIMED_OUT just before the deadline, or the client saw its
  // deadline pass; in both cases the child must be gone soon after.
  if (status.ok()) {
    EXPECT_EQ(response.termination(), v1::TIMED_OUT);
  } else {
    EXPECT_EQ(status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  }
  pid_t pid = ReadPid(pid_file);
  ASSERT_GT(pid, 0);
  EXPECT_TRUE(testing::WaitFor([&] { return !testing::ProcessAlive(pid); }, absl::Seconds(2)));
  ExpectStillServing();
}

TEST_F(ExecutorServiceTest, StreamDeliversStartedOutputThenExited) {
  grpc::ClientContext context;
  auto reader = stub_->ExecuteStream(
      &context, Request({"/bin/sh", "-c", "echo one; echo two >&2; echo three; exit 5"}));
  v1::ExecuteEvent event;
  std::vector<v1::ExecuteEvent> events;
  while (reader->Read(&event)) events.push_back(event);
  ASSERT_TRUE(reader->Finish().ok());
  ASSERT_GE(events.size(), 3u);
  EXPECT_TRUE(events.front().has_started());
  EXPECT_GT(events.front().started().pid(), 0);
  EXPECT_TRUE(events.back().has_exited());
  EXPECT_EQ(events.back().exited().exit_code(), 5);
  std::string out, err;
  for (size_t i = 1; i + 1 < events.size(); ++i) {
    ASSERT_TRUE(events[i].has_output());
    (events[i].output().stream() == v1::ExecuteEvent::STDOUT ? out : err) +=
        events[i].output().data();
  }
  EXPECT_EQ(out, "one\nthree\n");
  EXPECT_EQ(err, "two\n");
}

TEST_F(ExecutorServiceTest, StreamErrorBeforeStartIsRpcStatus) {
  grpc::ClientContext context;
  auto reader = stub_->ExecuteStream(&context, Request({"/no/such/binary"}));
  v1::ExecuteEvent event;
  EXPECT_FALSE(reader->Read(&event));
  grpc::Status status = reader->Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND);
}

TEST_F(ExecutorServiceTest, ClientCancelKillsTheChild) {
  grpc::ClientContext context;
  auto reader = stub_->ExecuteStream(&context, Request({"/bin/sleep", "100"}));
  v1::ExecuteEvent event;
  ASSERT_TRUE(reader->Read(&event));
  ASSERT_TRUE(event.has_started());
  pid_t pid = event.started().pid();
  ASSERT_TRUE(testing::ProcessAlive(pid));
  context.TryCancel();
  while (reader->Read(&event)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_TRUE(testing::WaitFor([&] { return !testing::ProcessAlive(pid); }, absl::Seconds(2)));
  ExpectStillServing();
}

TEST_F(ExecutorServiceTest, PingEchoesPayload) {
  grpc::ClientContext context;
  v1::PingRequest request;
  request.set_payload("marco");
  v1::PingResponse response;
  ASSERT_TRUE(stub_->Ping(&context, request, &response).ok());
  EXPECT_EQ(response.payload(), "marco");
}

TEST_F(ExecutorServiceTest, HealthIsServingForServerAndExecutor) {
  auto health = grpc::health::v1::Health::NewStub(channel_);
  for (const std::string service : {"", "execd.v1.Executor"}) {
    grpc::ClientContext context;
    grpc::health::v1::HealthCheckRequest request;
    request.set_service(service);
    grpc::health::v1::HealthCheckResponse response;
    ASSERT_TRUE(health->Check(&context, request, &response).ok());
    EXPECT_EQ(response.status(), grpc::health::v1::HealthCheckResponse::SERVING);
  }
}

TEST_F(ExecutorServiceTest, ManyConcurrentCallsAllComplete) {
  constexpr int kCalls = 64;  // More than max_concurrency: the rest queue.
  std::vector<std::thread> threads;
  std::atomic<int> ok{0};
  for (int i = 0; i < kCalls; ++i) {
    threads.emplace_back([&, i] {
      v1::ExecuteResponse response;
      grpc::Status status = Execute(Request({"/bin/echo", std::to_string(i)}), &response);
      if (status.ok() && response.stdout() == std::to_string(i) + "\n") ok.fetch_add(1);
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(ok.load(), kCalls);
}

}  // namespace
}  // namespace execd::server
