// Admission through a real server: priorities under a full limit, queue overflow with
// pushback, queue-time and deadline drops, cancel and deadline kills.
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <iterator>
#include <memory>
#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/support/subprocess.h"
#include "tests/support/test_server.h"

namespace execd {
namespace {

using testing::AsyncCall;
using ::testing::HasSubstr;
using testing::TestServer;

std::string ReadAll(const std::string& path) {
  std::ifstream in(path);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

class SchedulingTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto server = TestServer::Start([](server::ServerConfig& c) {
      c.max_concurrency = 1;
      c.max_queue = 3;
    });
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    gate_ = dir_ + "/gate";
  }

  // Occupies the only slot until Release().
  void HoldTheSlot() {
    blocker_.request = TestServer::Request(
        {"/bin/sh", "-c", absl::StrCat("while [ ! -e ", gate_, " ]; do sleep 0.01; done")});
    blocker_.Start(server_->stub());
    ASSERT_TRUE(WaitForStats([](const core::Engine::Stats& s) { return s.running == 1; }));
  }
  void Release() { std::ofstream(gate_) << "open"; }

  bool WaitForStats(const std::function<bool(const core::Engine::Stats&)>& pred) {
    return testing::WaitFor([&] { return pred(server_->server().engine().stats()); },
                            absl::Seconds(10));
  }

  // A command that appends `name` to the order file when (if ever) it runs.
  v1::ExecuteRequest Appender(const std::string& name) {
    return TestServer::Request(
        {"/bin/sh", "-c", absl::StrCat("echo ", name, " >> ", dir_, "/order")});
  }

  std::unique_ptr<TestServer> server_;
  testing::ScopedTempDir temp_{"execd_sched"};
  const std::string dir_ = temp_.path();
  std::string gate_;
  AsyncCall blocker_;
};

TEST_F(SchedulingTest, HigherPriorityRunsFirstWhenTheLimitIsFull) {
  HoldTheSlot();
  AsyncCall low, normal, high;
  low.request = Appender("low");
  low.request.set_priority(v1::PRIORITY_LOW);
  normal.request = Appender("normal");  // Unset priority is NORMAL.
  high.request = Appender("high");
  high.request.set_priority(v1::PRIORITY_HIGH);
  for (AsyncCall* call : {&low, &normal, &high}) call->Start(server_->stub());
  ASSERT_TRUE(WaitForStats([](const core::Engine::Stats& s) { return s.queued == 3; }));
  Release();
  for (AsyncCall* call : {&blocker_, &low, &normal, &high}) {
    ASSERT_TRUE(call->Wait());
    EXPECT_TRUE(call->status.ok()) << call->status.error_message();
  }
  EXPECT_EQ(ReadAll(dir_ + "/order"), "high\nnormal\nlow\n");
}

TEST_F(SchedulingTest, FullQueueIsResourceExhaustedWithPushbackAndNeverSpawns) {
  HoldTheSlot();
  AsyncCall queued[3];
  for (AsyncCall& call : queued) {
    call.request = Appender("queued");
    call.Start(server_->stub());
  }
  ASSERT_TRUE(WaitForStats([](const core::Engine::Stats& s) { return s.queued == 3; }));
  v1::ExecuteResponse response;
  std::multimap<std::string, std::string> trailers;
  grpc::Status status =
      server_->Execute(Appender("overflow"), &response, absl::Seconds(10), &trailers);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(status.error_message(), HasSubstr("at capacity"));
  ASSERT_EQ(trailers.count("grpc-retry-pushback-ms"), 1u);
  int pushback_ms = 0;
  ASSERT_TRUE(absl::SimpleAtoi(trailers.find("grpc-retry-pushback-ms")->second, &pushback_ms));
  EXPECT_GT(pushback_ms, 0);
  Release();
  for (AsyncCall& call : queued) ASSERT_TRUE(call.Wait());
  ASSERT_TRUE(blocker_.Wait());
  EXPECT_EQ(ReadAll(dir_ + "/order"), "queued\nqueued\nqueued\n");
}

TEST_F(SchedulingTest, HighPriorityDisplacesTheNewestLowPriorityFromAFullQueue) {
  HoldTheSlot();
  AsyncCall low1, low2, normal, high;
  low1.request = Appender("low1");
  low1.request.set_priority(v1::PRIORITY_LOW);
  low2.request = Appender("low2");
  low2.request.set_priority(v1::PRIORITY_LOW);
  normal.request = Appender("normal");
  // One at a time: which low request is the newest must not depend on arrival races.
  size_t queued = 0;
  for (AsyncCall* call : {&low1, &low2, &normal}) {
    call->Start(server_->stub());
    ++queued;
    ASSERT_TRUE(
        WaitForStats([queued](const core::Engine::Stats& s) { return s.queued == queued; }));
  }
  high.request = Appender("high");
  high.request.set_priority(v1::PRIORITY_HIGH);
  high.Start(server_->stub());
  ASSERT_TRUE(low2.Wait());
  EXPECT_EQ(low2.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(low2.status.error_message(), HasSubstr("higher-priority"));
  Release();
  for (AsyncCall* call : {&blocker_, &low1, &normal, &high}) ASSERT_TRUE(call->Wait());
  EXPECT_EQ(ReadAll(dir_ + "/order"), "high\nnormal\nlow1\n");
}

TEST_F(SchedulingTest, MaxQueueTimeDropsTheRequestWithoutStartingIt) {
  HoldTheSlot();
  v1::ExecuteRequest late = Appender("late");
  late.mutable_max_queue_time()->set_nanos(100'000'000);
  v1::ExecuteResponse response;
  absl::Time start = absl::Now();
  grpc::Status status = server_->Execute(late, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_THAT(status.error_message(), HasSubstr("max_queue_time"));
  EXPECT_LT(absl::Now() - start, absl::Seconds(2));
  Release();
  ASSERT_TRUE(blocker_.Wait());
  // The queue moved on: a later request ran, the dropped one never did.
  ASSERT_TRUE(server_->Execute(Appender("after"), &response).ok());
  EXPECT_EQ(ReadAll(dir_ + "/order"), "after\n");
}

TEST_F(SchedulingTest, QueuedRequestWhoseCallDeadlinePassesIsDropped) {
  HoldTheSlot();
  v1::ExecuteResponse response;
  grpc::Status status = server_->Execute(Appender("late"), &response, absl::Milliseconds(200));
  EXPECT_EQ(status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  ASSERT_TRUE(WaitForStats([](const core::Engine::Stats& s) { return s.queued == 0; }));
  Release();
  ASSERT_TRUE(blocker_.Wait());
  ASSERT_TRUE(server_->Execute(Appender("after"), &response).ok());
  EXPECT_EQ(ReadAll(dir_ + "/order"), "after\n");
}

TEST_F(SchedulingTest, CancelRemovesAQueuedRequest) {
  HoldTheSlot();
  AsyncCall queued;
  queued.request = Appender("cancelled");
  queued.Start(server_->stub());
  ASSERT_TRUE(WaitForStats([](const core::Engine::Stats& s) { return s.queued == 1; }));
  queued.context.TryCancel();
  ASSERT_TRUE(queued.Wait());
  EXPECT_EQ(queued.status.error_code(), grpc::StatusCode::CANCELLED);
  ASSERT_TRUE(WaitForStats([](const core::Engine::Stats& s) { return s.queued == 0; }));
  Release();
  ASSERT_TRUE(blocker_.Wait());
  v1::ExecuteResponse response;
  ASSERT_TRUE(server_->Execute(Appender("after"), &response).ok());
  EXPECT_EQ(ReadAll(dir_ + "/order"), "after\n");
}

TEST_F(SchedulingTest, RaisingTheLimitAtRunTimeStartsQueuedWork) {
  HoldTheSlot();
  AsyncCall queued;
  queued.request = Appender("queued");
  queued.Start(server_->stub());
  ASSERT_TRUE(WaitForStats([](const core::Engine::Stats& s) { return s.queued == 1; }));
  server_->server().engine().SetConcurrencyLimit(2);
  ASSERT_TRUE(queued.Wait());  // Ran while the blocker still holds the first slot.
  EXPECT_TRUE(queued.status.ok());
  Release();
  ASSERT_TRUE(blocker_.Wait());
}

TEST_F(SchedulingTest, PriorityOutOfRangeIsInvalidArgument) {
  v1::ExecuteRequest request = Appender("x");
  request.set_priority(static_cast<v1::Priority>(42));
  v1::ExecuteResponse response;
  grpc::Status status = server_->Execute(request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("priority"));
}

// When the caller is gone (deadline passed, cancelled) the command is SIGKILLed at once,
// without the SIGTERM grace a timeout gets. The server's grace here is a minute and the
// child ignores SIGTERM, so a child gone within the bounded wait was never given the grace:
// what is checked is the behaviour, not a latency figure on a shared machine.
class KillLatencyTest : public ::testing::Test {
 protected:
  static constexpr absl::Duration kGrace = absl::Seconds(60);
  void SetUp() override {
    auto server = TestServer::Start([](server::ServerConfig& c) { c.kill_grace = kGrace; });
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
  }
  static v1::ExecuteRequest IgnoresSigterm() {
    return TestServer::Request({"/bin/sh", "-c", "trap '' TERM; sleep 100"});
  }
  std::unique_ptr<TestServer> server_;
};

TEST_F(KillLatencyTest, CallDeadlineKillsTheRunningChildWithoutAGrace) {
  grpc::ClientContext context;
  const absl::Time deadline = absl::Now() + absl::Milliseconds(500);
  context.set_deadline(absl::ToChronoTime(deadline));
  auto reader = server_->stub().ExecuteStream(&context, IgnoresSigterm());
  v1::ExecuteEvent event;
  ASSERT_TRUE(reader->Read(&event));
  ASSERT_TRUE(event.has_started());
  pid_t pid = event.started().pid();
  while (reader->Read(&event)) {
  }
  // The client's own timer ends the call, or execd's answer if it gets there first.
  grpc::Status status = reader->Finish();
  EXPECT_TRUE(status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED || status.ok())
      << status.error_message();
  EXPECT_TRUE(testing::WaitFor([&] { return !testing::ProcessAlive(pid); }, kGrace / 4))
      << "still alive " << absl::Now() - deadline << " after the deadline";
}

TEST_F(KillLatencyTest, CancelKillsTheRunningChildWithoutAGrace) {
  grpc::ClientContext context;
  auto reader = server_->stub().ExecuteStream(&context, IgnoresSigterm());
  v1::ExecuteEvent event;
  ASSERT_TRUE(reader->Read(&event));
  ASSERT_TRUE(event.has_started());
  pid_t pid = event.started().pid();
  absl::Time cancelled = absl::Now();
  context.TryCancel();
  EXPECT_TRUE(testing::WaitFor([&] { return !testing::ProcessAlive(pid); }, kGrace / 4))
      << "still alive " << absl::Now() - cancelled << " after the cancel";
  while (reader->Read(&event)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
}

TEST_F(KillLatencyTest, DeadlineAlreadyPassedIsDeadlineExceeded) {
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() - absl::Seconds(1)));
  v1::ExecuteResponse response;
  grpc::Status status =
      server_->stub().Execute(&context, TestServer::Request({"/bin/true"}), &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
}

}  // namespace
}  // namespace execd
