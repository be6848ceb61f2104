// execd-loadtest's open loop against a real server whose only slot is taken: it keeps
// sending at the rate, measures latency from each request's scheduled time, refuses past
// its outstanding bound, and writes the timeline. Commands wait on a lock the test holds,
// so every figure asserted follows from the order of events, not from timing.
#include "loadtest/open_loop.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <fstream>
#include <numeric>
#include <sstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "loadtest/requesters.h"
#include "tests/support/subprocess.h"
#include "tests/support/test_server.h"

namespace execd::loadtest {
namespace {

using ::testing::AllOf;
using ::testing::Each;
using ::testing::HasSubstr;
using ::testing::StartsWith;

// A file lock the test holds: commands that take it shared wait until it is released.
class Gate {
 public:
  explicit Gate(const std::string& path)
      : path_(path), fd_(open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644)) {
    EXPECT_GE(fd_, 0);
    EXPECT_EQ(flock(fd_, LOCK_EX), 0);
  }
  ~Gate() { close(fd_); }
  void Open() { EXPECT_EQ(flock(fd_, LOCK_UN), 0); }
  std::vector<std::string> Waiter() const { return {"/usr/bin/flock", "-s", path_, "/bin/true"}; }

 private:
  std::string path_;
  int fd_;
};

class OpenLoopTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto server =
        testing::TestServer::Start([](server::ServerConfig& c) { c.max_concurrency = 1; });
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    gate_ = std::make_unique<Gate>(dir_.path() + "/gate");
    config_.target = absl::StrCat("127.0.0.1:", server_->server().port());
    config_.open_loop = true;
    config_.argv = gate_->Waiter();
  }

  // Commands running or queued at the server now.
  int AtServer() {
    grpc::ClientContext context;
    v1::StatusResponse status;
    if (!server_->stub().GetStatus(&context, v1::StatusRequest(), &status).ok()) return -1;
    return status.running() + status.queued();
  }

  testing::ScopedTempDir dir_{"open_loop_test"};
  std::unique_ptr<testing::TestServer> server_;
  std::unique_ptr<Gate> gate_;
  Config config_;
};

int64_t Sum(const std::vector<TimelineSecond>& timeline, int64_t TimelineSecond::*field) {
  return std::accumulate(timeline.begin(), timeline.end(), int64_t{0},
                         [field](int64_t sum, const TimelineSecond& s) { return sum + s.*field; });
}

TEST_F(OpenLoopTest, KeepsSendingAtTheRateWhileTheServerHoldsEveryRequest) {
  config_.rate = 20;
  config_.duration = absl::Seconds(2);
  Report report;
  std::thread run([&] { report = loadtest::Run(config_); });
  // All 40 reach the server while the first still holds its only slot; only then may any
  // of them end.
  EXPECT_TRUE(testing::WaitFor([&] { return AtServer() == 40; }, absl::Seconds(30)));
  gate_->Open();
  run.join();

  EXPECT_TRUE(report.open_loop);
  EXPECT_EQ(report.requests, 40);
  EXPECT_EQ(report.errors, 0) << report.first_error;
  ASSERT_GE(report.timeline.size(), 2u);
  EXPECT_EQ(report.timeline[0].sent, 20);
  EXPECT_EQ(report.timeline[1].sent, 20);
  EXPECT_EQ(report.timeline[0].ok, 20);
  EXPECT_EQ(report.timeline[1].ok, 20);
  EXPECT_EQ(Sum(report.timeline, &TimelineSecond::sent), 40);
  EXPECT_EQ(Sum(report.timeline, &TimelineSecond::completed), 40);
  // Nothing ended before the last request was sent, at 1.95 s at the earliest: those
  // scheduled in the first second waited at least 1 s from their scheduled time.
  EXPECT_GE(report.timeline[0].p50, absl::Seconds(1));
  EXPECT_GE(report.p99, absl::Seconds(1));
  EXPECT_GE(report.peak_outstanding, 40);
  ASSERT_EQ(report.requests_log.size(), 40u);
  for (size_t i = 0; i < report.requests_log.size(); ++i) {
    const RequestRecord& r = report.requests_log[i];
    EXPECT_EQ(r.scheduled, absl::Milliseconds(50) * static_cast<int64_t>(i));
    EXPECT_TRUE(r.ok);
    EXPECT_GE(r.scheduled + r.latency, absl::Milliseconds(1950));
  }
  std::vector<int> limits;
  for (const TimelineSecond& s : report.timeline) {
    if (s.limit) limits.push_back(*s.limit);
  }
  EXPECT_FALSE(limits.empty());
  EXPECT_THAT(limits, Each(1));
}

TEST_F(OpenLoopTest, RefusesRequestsPastTheOutstandingBoundAndCancelsTheRestAtTheEnd) {
  config_.rate = 20;
  config_.requests = 10;
  config_.max_outstanding = 3;
  config_.drain_timeout = absl::ZeroDuration();
  const Report report = loadtest::Run(config_);
  gate_->Open();

  EXPECT_EQ(report.requests, 10);
  EXPECT_EQ(report.errors, 10);
  EXPECT_EQ(report.peak_outstanding, 3);
  EXPECT_THAT(report.first_error, AllOf(HasSubstr("not sent"), HasSubstr("--max_outstanding=3")));
  ASSERT_FALSE(report.timeline.empty());
  EXPECT_EQ(report.timeline[0].sent, 3);
  EXPECT_EQ(report.timeline[0].errors, 10);
  EXPECT_EQ(report.timeline[0].ok, 0);
  ASSERT_EQ(report.requests_log.size(), 10u);
  EXPECT_EQ(report.requests_log[9].latency, absl::ZeroDuration());  // Refused: never sent.
  EXPECT_FALSE(report.requests_log[0].ok);
}

TEST(OpenLoopRequestLog, IsOneCsvRowPerRequestFromTheOffset) {
  Report report;
  report.requests_log = {{absl::ZeroDuration(), absl::Milliseconds(7.25), true},
                         {absl::Milliseconds(500), absl::ZeroDuration(), false}};
  EXPECT_EQ(FormatRequestLogCsv(report, absl::Seconds(60)),
            "scheduled_s,latency_ms,ok\n"
            "60.000000,7.250,1\n"
            "60.500000,0.000,0\n");
}

TEST(OpenLoopTimeline, IsOneCsvRowPerSecondFromTheOffset) {
  Report report;
  report.timeline.push_back({.sent = 10,
                             .ok = 9,
                             .errors = 1,
                             .p50 = absl::Milliseconds(12.5),
                             .p99 = absl::Milliseconds(40),
                             .completed = 8,
                             .limit = 4});
  TimelineSecond draining;
  draining.completed = 1;
  report.timeline.push_back(draining);
  EXPECT_EQ(FormatTimelineCsv(report, absl::Seconds(60)),
            "t_s,sent,ok,errors,p50_ms,p99_ms,limit,completed\n"
            "60,10,9,1,12.500,40.000,4,8\n"
            "61,0,0,0,,,,1\n");
}

// The binary's flags around the same run: a Ping open loop writes its timeline, offset.
TEST_F(OpenLoopTest, BinaryWritesTheTimelineAtItsOffset) {
  const std::string csv = dir_.path() + "/timeline.csv";
  testing::ProcessResult result = testing::RunProcess(
      {LOADTEST_BIN, "--target=" + config_.target, "--open_loop", "--ping", "--rate=20",
       "--requests=30", "--timeline=" + csv, "--timeline_offset=60s", "--json"});
  ASSERT_EQ(result.exit_code, 0) << result.out << result.err;
  EXPECT_THAT(result.out, AllOf(HasSubstr("\"open_loop\":true"), HasSubstr("\"requests\":30"),
                                HasSubstr("\"peak_outstanding\":")));
  std::ifstream in(csv);
  std::stringstream text;
  text << in.rdbuf();
  std::vector<std::string> lines = absl::StrSplit(text.str(), '\n', absl::SkipEmpty());
  ASSERT_GE(lines.size(), 3u);
  EXPECT_EQ(lines[0], "t_s,sent,ok,errors,p50_ms,p99_ms,limit,completed");
  EXPECT_THAT(lines[1], StartsWith("60,20,20,0,"));
  EXPECT_THAT(lines[2], StartsWith("61,10,10,0,"));
}

TEST(OpenLoopFlags, TimelineWithoutOpenLoopIsAUsageError) {
  testing::ProcessResult result =
      testing::RunProcess({LOADTEST_BIN, "--rate=10", "--timeline=/dev/null", "--", "/bin/true"});
  EXPECT_EQ(result.exit_code, 2);
  EXPECT_THAT(result.err, HasSubstr("--timeline and --request_log need --open_loop"));
}

TEST(OpenLoopFlags, OpenLoopWithoutRateIsAUsageError) {
  testing::ProcessResult result =
      testing::RunProcess({LOADTEST_BIN, "--open_loop", "--", "/bin/true"});
  EXPECT_EQ(result.exit_code, 2);
  EXPECT_THAT(result.err, HasSubstr("--open_loop needs --rate > 0"));
}

}  // namespace
}  // namespace execd::loadtest
