// Metrics through a real server: each kind of event is counted where it happens and read
// back as a user reads it, through GetStatus's samples and the /metrics endpoint.
#include <arpa/inet.h>
#include <fcntl.h>
#include <grpcpp/grpcpp.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <map>
#include <memory>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "execd/v1/execd.grpc.pb.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/support/subprocess.h"
#include "tests/support/test_server.h"

namespace execd {
namespace {

using testing::AsyncCall;
using ::testing::HasSubstr;
using testing::TestServer;

using Labels = std::map<std::string, std::string>;

class ServerMetricsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto server = TestServer::Start([](server::ServerConfig& c) {
      c.max_concurrency = 1;
      c.max_queue = 1;
    });
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
  }

  // The value of the one sample of `name` whose labels include `labels` (0 when none).
  double Metric(const std::string& name, const Labels& labels = {}) {
    grpc::ClientContext context;
    v1::StatusRequest request;
    request.set_include_metrics(true);
    v1::StatusResponse status;
    EXPECT_TRUE(server_->stub().GetStatus(&context, request, &status).ok());
    double value = 0;
    int found = 0;
    for (const v1::MetricSample& s : status.metrics()) {
      if (s.name() != name) continue;
      bool match = true;
      for (const auto& [k, v] : labels) {
        auto it = s.labels().find(k);
        match = match && it != s.labels().end() && it->second == v;
      }
      if (match) {
        value = s.value();
        ++found;
      }
    }
    EXPECT_LE(found, 1) << name << " matched more than one series";
    return value;
  }
  double Count(const std::string& rpc, const std::string& stage) {
    return Metric("execd_request_duration_seconds_count", {{"rpc", rpc}, {"stage", stage}});
  }

  // Occupies the only slot until Release().
  void HoldTheSlot() { HoldTheSlot(blocker_); }
  void HoldTheSlot(AsyncCall& blocker) {
    blocker.request = TestServer::Request(
        {"/bin/sh", "-c", absl::StrCat("while [ ! -e ", gate_, " ]; do sleep 0.01; done")});
    blocker.Start(server_->stub());
    ASSERT_TRUE(testing::WaitFor([&] { return server_->server().engine().stats().running == 1; },
                                 absl::Seconds(10)));
  }
  void Release() { Release(blocker_); }
  void Release(AsyncCall& blocker) {
    std::ofstream(gate_) << "open";
    ASSERT_TRUE(blocker.Wait());
  }

  std::unique_ptr<TestServer> server_;
  testing::ScopedTempDir dir_{"server_metrics"};
  const std::string gate_ = dir_.path() + "/gate";
  AsyncCall blocker_;
  AsyncCall second_blocker_;
};

TEST_F(ServerMetricsTest, AnExecuteIsCountedWithItsCodeItsStagesAndItsOutput) {
  v1::ExecuteResponse r;
  ASSERT_TRUE(server_->Execute(TestServer::Request({"/usr/bin/printf", "hello"}), &r).ok());
  EXPECT_EQ(server_->Execute(TestServer::Request({"/no/such/program"}), &r).error_code(),
            grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(Metric("execd_requests_total", {{"rpc", "Execute"}, {"code", "OK"}}), 1);
  EXPECT_EQ(Metric("execd_requests_total", {{"rpc", "Execute"}, {"code", "NOT_FOUND"}}), 1);
  // The refused call took time, but ran nothing: only its total is recorded.
  EXPECT_EQ(Count("Execute", "total"), 2);
  EXPECT_EQ(Count("Execute", "queue"), 1);
  EXPECT_EQ(Count("Execute", "spawn"), 1);
  EXPECT_EQ(Count("Execute", "run"), 1);
  EXPECT_EQ(Metric("execd_terminations_total", {{"kind", "exited"}}), 1);
  EXPECT_EQ(Metric("execd_output_bytes_total", {{"stream", "stdout"}, {"encoding", "raw"}}), 5);
  EXPECT_EQ(Metric("execd_output_bytes_total", {{"stream", "stdout"}, {"encoding", "identity"}}),
            5);
}

TEST_F(ServerMetricsTest, CompressedOutputCountsItsBytesBeforeAndAfterLz4) {
  v1::ExecuteRequest request = TestServer::Request({"/usr/bin/head", "-c", "1000000", "/dev/zero"});
  request.set_accept_compression(v1::LZ4);
  v1::ExecuteResponse r;
  ASSERT_TRUE(server_->Execute(request, &r).ok());
  ASSERT_EQ(r.stdout_compression(), v1::LZ4);
  EXPECT_EQ(Metric("execd_output_bytes_total", {{"stream", "stdout"}, {"encoding", "raw"}}),
            1000000);
  EXPECT_EQ(Metric("execd_output_bytes_total", {{"stream", "stdout"}, {"encoding", "lz4"}}),
            static_cast<double>(r.stdout().size()));
  EXPECT_EQ(Metric("execd_output_bytes_total", {{"stream", "stdout"}, {"encoding", "identity"}}),
            0);
}

TEST_F(ServerMetricsTest, HowACommandEndedAndTheCpuItUsedAreCounted) {
  v1::ExecuteRequest timeout = TestServer::Request({"/bin/sleep", "10"});
  timeout.mutable_limits()->mutable_timeout()->set_nanos(100'000'000);
  v1::ExecuteResponse r;
  ASSERT_TRUE(server_->Execute(timeout, &r).ok());
  ASSERT_EQ(r.termination(), v1::TIMED_OUT);
  EXPECT_EQ(Metric("execd_terminations_total", {{"kind", "timed_out"}}), 1);
  // A command that burns CPU: its seconds show up in the children's CPU.
  ASSERT_TRUE(
      server_
          ->Execute(TestServer::Request(
                        {"/bin/sh", "-c", "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done"}),
                    &r)
          .ok());
  const double used = absl::ToDoubleSeconds(absl::Seconds(r.usage().user_cpu().seconds()) +
                                            absl::Nanoseconds(r.usage().user_cpu().nanos()));
  ASSERT_GT(used, 0.01);
  EXPECT_GE(Metric("execd_child_cpu_seconds_total", {{"mode", "user"}}), used);
}

TEST_F(ServerMetricsTest, AProgramTheKernelCannotStartIsASpawnErrorByItsErrnoName) {
  // Executable, so it passes validation; its interpreter does not exist, so execve fails.
  const std::string script = dir_.path() + "/script";
  std::ofstream(script) << "#!/no/such/interpreter\n";
  ASSERT_EQ(chmod(script.c_str(), 0755), 0);
  v1::ExecuteResponse r;
  grpc::Status status = server_->Execute(TestServer::Request({script}), &r);
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(Metric("execd_spawn_errors_total", {{"errno", "ENOENT"}}), 1) << status.error_message();
  EXPECT_EQ(
      Metric(
          "execd_requests_total",
          {{"rpc", "Execute"},
           {"code", absl::StatusCodeToString(static_cast<absl::StatusCode>(status.error_code()))}}),
      1);
}

TEST_F(ServerMetricsTest, RefusalsAreCountedAsShedByReasonAndTheQueueByPriority) {
  HoldTheSlot();
  AsyncCall queued;
  queued.request = TestServer::Request({"/bin/true"});
  queued.request.set_priority(v1::PRIORITY_HIGH);
  queued.Start(server_->stub());
  ASSERT_TRUE(testing::WaitFor([&] { return server_->server().engine().stats().queued == 1; },
                               absl::Seconds(10)));
  EXPECT_EQ(Metric("execd_queued", {{"priority", "high"}}), 1);
  EXPECT_EQ(Metric("execd_queued", {{"priority", "normal"}}), 0);
  EXPECT_EQ(Metric("execd_running"), 1);
  EXPECT_EQ(Metric("execd_concurrency_limit"), 1);
  EXPECT_EQ(Metric("execd_queue_capacity"), 1);
  v1::ExecuteResponse r;
  EXPECT_EQ(server_->Execute(TestServer::Request({"/bin/true"}), &r).error_code(),
            grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_EQ(Metric("execd_shed_total", {{"reason", "queue_full"}}), 1);
  Release();
  ASSERT_TRUE(queued.Wait());
  ASSERT_EQ(std::remove(gate_.c_str()), 0);
  // Dropped from the queue when its max_queue_time passed.
  HoldTheSlot(second_blocker_);
  v1::ExecuteRequest late = TestServer::Request({"/bin/true"});
  late.mutable_max_queue_time()->set_nanos(50'000'000);
  EXPECT_EQ(server_->Execute(late, &r).error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_EQ(Metric("execd_shed_total", {{"reason", "queue_timeout"}}), 1);
  Release(second_blocker_);
}

TEST_F(ServerMetricsTest, TheCacheCountsItsHitsAndMisses) {
  v1::ExecuteRequest cached = TestServer::Request({"/bin/echo", "cached"});
  cached.set_cache_policy(v1::READ_WRITE);
  v1::ExecuteResponse r;
  ASSERT_TRUE(server_->Execute(cached, &r).ok());
  ASSERT_TRUE(server_->Execute(cached, &r).ok());
  ASSERT_TRUE(r.cache_hit());
  EXPECT_EQ(Metric("execd_cache_requests_total", {{"result", "miss"}}), 1);
  EXPECT_EQ(Metric("execd_cache_requests_total", {{"result", "hit"}}), 1);
  EXPECT_EQ(Metric("execd_cache_entries"), 1);
  // A hit ran nothing: its call has a total, no run.
  EXPECT_EQ(Count("Execute", "total"), 2);
  EXPECT_EQ(Count("Execute", "run"), 1);
}

TEST_F(ServerMetricsTest, TheRunningCommandsMemoryIsShownWhileTheyRun) {
  // Allocates and touches 64 MiB, says so, and waits for its stdin to close.
  grpc::ClientContext context;
  auto stream = server_->stub().Attach(&context);
  v1::AttachRequest start;
  *start.mutable_start() = TestServer::Request(
      {"/usr/bin/python3", "-c",
       "import sys; b = bytearray(64 << 20); print('ready', flush=True); sys.stdin.read()"});
  ASSERT_TRUE(stream->Write(start));
  v1::AttachEvent event;
  std::string out;
  while (!absl::StrContains(out, "ready") && stream->Read(&event)) out += event.output().data();
  ASSERT_THAT(out, HasSubstr("ready"));
  EXPECT_GE(Metric("execd_child_memory_bytes"), 64 << 20);
  v1::AttachRequest close;
  close.mutable_close_stdin();
  ASSERT_TRUE(stream->Write(close));
  stream->WritesDone();
  while (stream->Read(&event)) {
  }
  ASSERT_TRUE(stream->Finish().ok());
  EXPECT_EQ(Metric("execd_requests_total", {{"rpc", "Attach"}, {"code", "OK"}}), 1);
  EXPECT_LT(Metric("execd_child_memory_bytes"), 64 << 20) << "the command has ended";
}

TEST_F(ServerMetricsTest, PingAndGetStatusAreCountedTooWithTheirTotalOnly) {
  grpc::ClientContext context;
  v1::PingResponse pong;
  ASSERT_TRUE(server_->stub().Ping(&context, v1::PingRequest(), &pong).ok());
  EXPECT_EQ(Metric("execd_requests_total", {{"rpc", "Ping"}, {"code", "OK"}}), 1);
  EXPECT_EQ(Count("Ping", "total"), 1);
  // This call's own GetStatus is counted once it is answered: the next one sees it.
  const double before = Metric("execd_requests_total", {{"rpc", "GetStatus"}, {"code", "OK"}});
  EXPECT_EQ(Metric("execd_requests_total", {{"rpc", "GetStatus"}, {"code", "OK"}}), before + 1);
}

// GET http://127.0.0.1:port/metrics, the response's body.
std::string Scrape(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::string response;
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
    const std::string get = "GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n";
    if (write(fd, get.data(), get.size()) == static_cast<ssize_t>(get.size())) {
      char buf[65536];
      ssize_t n;
      while ((n = read(fd, buf, sizeof(buf))) > 0) response.append(buf, static_cast<size_t>(n));
    }
  }
  close(fd);
  const size_t body = response.find("\r\n\r\n");
  return body == std::string::npos ? "" : response.substr(body + 4);
}

TEST_F(ServerMetricsTest, TheMetricsEndpointServesTheSameCounters) {
  v1::ExecuteResponse r;
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(server_->Execute(TestServer::Request({"/bin/true"}), &r).ok());
  }
  ASSERT_GT(server_->server().metrics_port(), 0);
  const std::string text = Scrape(server_->server().metrics_port());
  EXPECT_THAT(text, HasSubstr("execd_requests_total{rpc=\"Execute\",code=\"OK\"} 3\n"));
  EXPECT_THAT(text, HasSubstr("# TYPE execd_request_duration_seconds histogram"));
  EXPECT_THAT(text, HasSubstr("execd_build_info{version="));
}

// A second server asked for the first one's metrics port does not start, and says why.
TEST(MetricsListenTest, APortAlreadyTakenStopsStartUpWithAClearError) {
  auto first = TestServer::Start();
  ASSERT_TRUE(first.ok()) << first.status();
  const std::string taken = absl::StrCat("127.0.0.1:", (*first)->server().metrics_port());
  auto second = TestServer::Start([&](server::ServerConfig& c) { c.metrics_listen = taken; });
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(second.status().message(), HasSubstr("--metrics_listen=" + taken));
  EXPECT_THAT(second.status().message(), HasSubstr("taken"));
  auto bad = TestServer::Start([&](server::ServerConfig& c) { c.metrics_listen = "nowhere"; });
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(bad.status().message(), HasSubstr("--metrics_listen=nowhere needs a port"));
  // Empty: no endpoint, and the metrics are still there for GetStatus.
  auto none = TestServer::Start([&](server::ServerConfig& c) { c.metrics_listen = ""; });
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_EQ((*none)->server().metrics_port(), 0);
}

// The tuner on: commands that queue while the cores are free raise the limit, within its
// bounds, and each move is counted by direction and reason beside the bounds.
TEST(ServerTunerTest, QueuedCommandsRaiseTheLimitWithinItsBoundsAndTheMoveIsCounted) {
  auto started = TestServer::Start([](server::ServerConfig& c) {
    c.max_concurrency = 1;
    c.tuner.enabled = true;
    c.tuner.min = 1;
    c.tuner.max = 3;
    c.tuner.window = absl::Milliseconds(50);
  });
  ASSERT_TRUE(started.ok()) << started.status();
  TestServer& server = **started;
  ASSERT_NE(server.server().tuner(), nullptr);
  const std::string gate = ::testing::TempDir() + "tuner_gate_" + std::to_string(getpid());
  unlink(gate.c_str());
  AsyncCall calls[5];
  for (AsyncCall& call : calls) {
    call.request = TestServer::Request(
        {"/bin/sh", "-c", absl::StrCat("while [ ! -e ", gate, " ]; do sleep 0.01; done")});
    call.Start(server.stub());
  }
  // Three run (the most the tuner allows), two wait.
  EXPECT_TRUE(testing::WaitFor(
      [&] {
        const core::Engine::Stats s = server.server().engine().stats();
        return s.running == 3 && s.queued == 2;
      },
      absl::Seconds(20)));
  EXPECT_EQ(server.server().engine().stats().limit, 3);
  std::map<std::string, double> samples;
  for (const metrics::Sample& s : server.server().metrics().Samples()) {
    std::string key = s.name;
    for (const auto& [k, v] : s.labels) absl::StrAppend(&key, ",", k, "=", v);
    samples[key] = s.value;
  }
  EXPECT_EQ(samples["execd_concurrency_limit"], 3);
  EXPECT_EQ(samples["execd_concurrency_limit_bounds,bound=min"], 1);
  EXPECT_EQ(samples["execd_concurrency_limit_bounds,bound=max"], 3);
  EXPECT_GE(samples["execd_tuner_decisions_total,direction=up,reason=queueing"], 1);
  EXPECT_EQ(samples["execd_tuner_decisions_total,direction=down,reason=queueing"], 0);
  std::ofstream(gate) << "open";
  for (AsyncCall& call : calls) {
    ASSERT_TRUE(call.Wait());
    EXPECT_TRUE(call.status.ok()) << call.status.error_message();
  }
  // No load, no move: the limit stays where the load left it.
  EXPECT_EQ(server.server().engine().stats().limit, 3);
  unlink(gate.c_str());
}

TEST(ServerTunerTest, WithTheTunerOffTheLimitIsPinnedAndNoBoundsAreExported) {
  auto started = TestServer::Start([](server::ServerConfig& c) { c.max_concurrency = 2; });
  ASSERT_TRUE(started.ok()) << started.status();
  EXPECT_EQ((*started)->server().tuner(), nullptr);
  for (const metrics::Sample& s : (*started)->server().metrics().Samples()) {
    EXPECT_NE(s.name, "execd_concurrency_limit_bounds");
    EXPECT_NE(s.name, "execd_tuner_decisions_total");
  }
  EXPECT_EQ((*started)->server().engine().stats().limit, 2);
}

}  // namespace
}  // namespace execd
