// The memory budget against callers that try to make the server hold more than it: each
// attack runs against the real execd binary with --memory_budget_bytes=256 MiB, and the
// server's peak RSS (VmHWM) may rise at most 320 MiB over its idle RSS, while another
// caller's Ping and Execute are still answered.
#include <grpcpp/grpcpp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "execd/v1/execd.grpc.pb.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/support/subprocess.h"

namespace execd {
namespace {

constexpr int64_t kMiB = 1 << 20;
constexpr int64_t kBudget = 256 * kMiB;
constexpr int64_t kMaxRise = 320 * kMiB;

// A field of /proc/PID/status in bytes (VmRSS, VmHWM), or -1.
int64_t StatusBytes(pid_t pid, const std::string& field) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(field + ":", 0) != 0) continue;
    std::string value = line.substr(field.size() + 1);
    value = value.substr(0, value.find(" kB"));
    int64_t kb;
    if (absl::SimpleAtoi(value, &kb)) return kb * 1024;
  }
  return -1;
}

// The server's CPU time so far (user + system).
absl::Duration CpuTime(pid_t pid) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/stat"));
  std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<std::string> fields;
  size_t at = stat.rfind(')') + 2;
  while (at < stat.size()) {
    size_t end = stat.find(' ', at);
    if (end == std::string::npos) end = stat.size();
    fields.push_back(stat.substr(at, end - at));
    at = end + 1;
  }
  int64_t utime = 0, stime = 0;
  if (fields.size() < 13 || !absl::SimpleAtoi(fields[11], &utime) ||
      !absl::SimpleAtoi(fields[12], &stime)) {
    return absl::InfiniteDuration();
  }
  return absl::Seconds(static_cast<double>(utime + stime) / sysconf(_SC_CLK_TCK));
}

class MemoryTest : public ::testing::Test {
 protected:
  void SetUp() override { Start({}); }

  void Start(std::vector<std::string> extra) {
    std::vector<std::string> args = {absl::StrCat("--memory_budget_bytes=", kBudget),
                                     "--log_requests=false", "--max_output_bytes=16777216"};
    args.insert(args.end(), extra.begin(), extra.end());
    server_ = std::make_unique<testing::ServerProcess>(EXECD_BIN, args);
    ASSERT_TRUE(server_->ok()) << server_->log();
    attacker_ = NewStub(0);
    bystander_ = NewStub(1);
    // Idle, after one call of each kind the bystander makes: the server's own caches and
    // threads are warm.
    ASSERT_TRUE(BystanderIsServed());
    idle_ = StatusBytes(server_->pid(), "VmRSS");
    ASSERT_GT(idle_, 0);
  }

  // A stub on a connection of its own.
  std::unique_ptr<v1::Executor::Stub> NewStub(int connection) {
    grpc::ChannelArguments args;
    args.SetInt("execd.test.connection", connection);
    args.SetMaxReceiveMessageSize(-1);
    args.SetMaxSendMessageSize(-1);
    return v1::Executor::NewStub(
        grpc::CreateCustomChannel(server_->target(), grpc::InsecureChannelCredentials(), args));
  }

  // Another caller's Ping and Execute, each answered in time.
  bool BystanderIsServed() {
    {
      grpc::ClientContext context;
      context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
      v1::PingRequest request;
      v1::PingResponse response;
      grpc::Status status = bystander_->Ping(&context, request, &response);
      EXPECT_TRUE(status.ok()) << status.error_message();
      if (!status.ok()) return false;
    }
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    v1::ExecuteRequest request;
    request.add_argv("/bin/echo");
    request.add_argv("served");
    v1::ExecuteResponse response;
    grpc::Status status = bystander_->Execute(&context, request, &response);
    EXPECT_TRUE(status.ok()) << status.error_message();
    EXPECT_EQ(response.stdout(), "served\n");
    return status.ok() && response.stdout() == "served\n";
  }

  v1::StatusResponse Status() {
    grpc::ClientContext context;
    v1::StatusResponse response;
    EXPECT_TRUE(bystander_->GetStatus(&context, v1::StatusRequest(), &response).ok());
    return response;
  }

  // Waits (bounded) until the server's RSS has stopped growing for half a second: whatever
  // the attack can make it hold, it holds by then.
  void AwaitSettled() {
    int64_t last = -1;
    absl::Time since = absl::Now();
    ASSERT_TRUE(testing::WaitFor(
        [&] {
          const int64_t now = StatusBytes(server_->pid(), "VmRSS");
          if (last < 0 || now - last >= kMiB) {
            last = now;
            since = absl::Now();
          }
          return absl::Now() - since >= absl::Milliseconds(500);
        },
        absl::Seconds(60)));
  }

  void ExpectPeakWithinBound(const std::string& attack) {
    const int64_t peak = StatusBytes(server_->pid(), "VmHWM");
    EXPECT_LE(peak - idle_, kMaxRise)
        << attack << ": peak RSS " << peak / kMiB << " MiB, idle " << idle_ / kMiB << " MiB";
    printf("memory_test: %s: idle %ld MiB, peak %ld MiB (+%ld MiB)\n", attack.c_str(),
           static_cast<long>(idle_ / kMiB), static_cast<long>(peak / kMiB),
           static_cast<long>((peak - idle_) / kMiB));
  }

  std::unique_ptr<testing::ServerProcess> server_;
  std::unique_ptr<v1::Executor::Stub> attacker_;
  std::unique_ptr<v1::Executor::Stub> bystander_;
  int64_t idle_ = 0;
};

// Prints `n` bytes of zeros to stdout and to stderr.
v1::ExecuteRequest BothStreams(int64_t n) {
  v1::ExecuteRequest request;
  request.add_argv("/bin/sh");
  request.add_argv("-c");
  request.add_argv(absl::StrCat("head -c ", n, " /dev/zero; head -c ", n, " /dev/zero >&2"));
  request.mutable_limits()->set_max_output_bytes(n);
  return request;
}

TEST_F(MemoryTest, AnUnreadBatchOfLargeOutputsHoldsAtMostItsShareOfTheBudget) {
  v1::BatchRequest batch;
  for (int i = 0; i < 64; ++i) *batch.add_requests() = BothStreams(16 * kMiB);
  grpc::ClientContext context;
  auto reader = attacker_->ExecuteBatch(&context, batch);  // Never read.
  // The batch stalls once its results fill its share: nothing runs, results wait.
  ASSERT_TRUE(testing::WaitFor(
      [&] {
        v1::StatusResponse s = Status();
        return s.running() == 0 && s.memory_in_use_bytes() > 0;
      },
      absl::Seconds(60)));
  AwaitSettled();
  EXPECT_LE(Status().memory_in_use_bytes(), kBudget);
  EXPECT_TRUE(BystanderIsServed());
  ExpectPeakWithinBound("unread batch of 64 x 2 x 16 MiB");
  context.TryCancel();
}

TEST_F(MemoryTest, AnUnreadStreamOfOneByteChunksIsPausedByWhatItsMessagesCost) {
  v1::ExecuteRequest request;
  request.add_argv("/usr/bin/head");
  request.add_argv("-c");
  request.add_argv(absl::StrCat(256 * kMiB));
  request.add_argv("/dev/zero");
  request.set_stream_chunk_bytes(1);
  grpc::ClientContext context;
  auto reader = attacker_->ExecuteStream(&context, request);  // Never read.
  ASSERT_TRUE(testing::WaitFor([&] { return Status().running() == 1; }, absl::Seconds(30)));
  AwaitSettled();
  EXPECT_EQ(Status().running(), 1) << "the command should be paused, not finished";
  EXPECT_TRUE(BystanderIsServed());
  ExpectPeakWithinBound("unread stream of 1-byte chunks");
  context.TryCancel();
}

TEST_F(MemoryTest, AnUnreadStreamAnsweredFromTheCacheIsPacedByItsReader) {
  v1::ExecuteRequest request;
  request.add_argv("/usr/bin/head");
  request.add_argv("-c");
  request.add_argv(absl::StrCat(8 * kMiB));
  request.add_argv("/dev/urandom");
  request.mutable_limits()->set_max_output_bytes(8 * kMiB);
  request.set_cache_policy(v1::READ_WRITE);
  {
    grpc::ClientContext context;
    v1::ExecuteResponse response;
    ASSERT_TRUE(attacker_->Execute(&context, request, &response).ok());
    ASSERT_EQ(response.stdout().size(), static_cast<size_t>(8 * kMiB));
  }
  ASSERT_EQ(Status().cache().entries(), 1);
  request.set_stream_chunk_bytes(1);
  grpc::ClientContext context;
  auto reader = attacker_->ExecuteStream(&context, request);  // Never read.
  ASSERT_TRUE(testing::WaitFor([&] { return Status().cache().hits() == 1; }, absl::Seconds(30)));
  AwaitSettled();
  EXPECT_TRUE(BystanderIsServed());
  ExpectPeakWithinBound("unread cache-hit stream of 1-byte chunks");
  context.TryCancel();
}

TEST(MemoryQueue, IdenticalCallsWaitingForOneRunTakeQueuePlaces) {
  testing::ScopedTempDir dir("memory");
  const std::string fifo = dir.path() + "/gate";
  ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0);
  testing::ServerProcess server(
      EXECD_BIN, {absl::StrCat("--memory_budget_bytes=", kBudget), "--log_requests=false",
                  "--max_queue=1", "--max_concurrency=1"});
  ASSERT_TRUE(server.ok()) << server.log();
  grpc::ChannelArguments args;
  args.SetMaxSendMessageSize(-1);
  auto stub = v1::Executor::NewStub(
      grpc::CreateCustomChannel(server.target(), grpc::InsecureChannelCredentials(), args));
  const int64_t idle = StatusBytes(server.pid(), "VmRSS");

  // The leader blocks on the FIFO until the test opens it.
  v1::ExecuteRequest request;
  request.add_argv("/bin/sh");
  request.add_argv("-c");
  request.add_argv(absl::StrCat("read x < ", fifo, "; cat > /dev/null; echo done"));
  request.set_stdin(std::string(8 * kMiB, 'x'));
  request.set_cache_policy(v1::READ_WRITE);
  constexpr int kCalls = 40;
  struct Call {
    grpc::ClientContext context;
    v1::ExecuteResponse response;
    grpc::Status status;
    absl::Notification done;
  };
  std::vector<std::unique_ptr<Call>> calls;
  for (int i = 0; i < kCalls; ++i) {
    calls.push_back(std::make_unique<Call>());
    Call* c = calls.back().get();
    c->context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
    stub->async()->Execute(&c->context, &request, &c->response, [c](grpc::Status s) {
      c->status = std::move(s);
      c->done.Notify();
    });
  }
  // One runs, one waits for its result in the queue place, the rest are refused.
  int refused = 0;
  ASSERT_TRUE(testing::WaitFor(
      [&] {
        refused = 0;
        for (auto& c : calls) refused += c->done.HasBeenNotified() ? 1 : 0;
        return refused == kCalls - 2;
      },
      absl::Seconds(30)))
      << refused << " answered before the leader ran";
  for (auto& c : calls) {
    if (c->done.HasBeenNotified()) {
      EXPECT_EQ(c->status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED)
          << c->status.error_message();
    }
  }
  {
    grpc::ClientContext context;
    v1::StatusResponse status;
    ASSERT_TRUE(stub->GetStatus(&context, v1::StatusRequest(), &status).ok());
    EXPECT_EQ(status.running(), 1);
    EXPECT_EQ(status.queued(), 1) << "the waiting call holds the queue place";
  }
  {
    grpc::ClientContext context;
    v1::PingResponse pong;
    EXPECT_TRUE(stub->Ping(&context, v1::PingRequest(), &pong).ok());
  }
  std::ofstream(fifo) << "go\n";
  int ran = 0;
  for (auto& c : calls) {
    ASSERT_TRUE(c->done.WaitForNotificationWithTimeout(absl::Seconds(60)));
    if (c->status.ok()) {
      ++ran;
      EXPECT_EQ(c->response.stdout(), "done\n");
    }
  }
  EXPECT_EQ(ran, 2) << "the leader and its one waiter";
  const int64_t peak = StatusBytes(server.pid(), "VmHWM");
  EXPECT_LE(peak - idle, kMaxRise) << "peak " << peak / kMiB << " MiB, idle " << idle / kMiB;
  printf("memory_test: 40 identical waiting calls: idle %ld MiB, peak %ld MiB\n",
         static_cast<long>(idle / kMiB), static_cast<long>(peak / kMiB));
  // Served after, on the same tight limits.
  grpc::ClientContext context;
  v1::ExecuteRequest echo;
  echo.add_argv("/bin/echo");
  echo.add_argv("served");
  v1::ExecuteResponse response;
  EXPECT_TRUE(stub->Execute(&context, echo, &response).ok());
  EXPECT_EQ(response.stdout(), "served\n");
}

// What the stdins form costs the server beyond running its items: the same 1,000-item batch
// with and without a 32 MiB stdin in its template, which no item uses.
TEST_F(MemoryTest, TheStdinsFormNeverCopiesTheTemplatesStdin) {
  auto run = [&](int64_t template_stdin) {
    v1::BatchRequest batch;
    v1::ExecuteRequest* one = batch.add_requests();
    one->add_argv("/bin/true");
    one->set_stdin(std::string(template_stdin, 'x'));  // Ignored: each item has its own.
    for (int i = 0; i < 1000; ++i) batch.add_stdins("in");
    const absl::Duration before = CpuTime(server_->pid());
    grpc::ClientContext context;
    auto reader = attacker_->ExecuteBatch(&context, batch);
    v1::BatchResult result;
    int ok = 0;
    while (reader->Read(&result)) ok += result.status_code() == 0 ? 1 : 0;
    EXPECT_TRUE(reader->Finish().ok());
    EXPECT_EQ(ok, 1000);
    return CpuTime(server_->pid()) - before;
  };
  const absl::Duration plain = run(0);
  const absl::Duration with_template = run(32 * kMiB);
  printf("memory_test: 1,000-item stdins batch: %s server CPU, %s with a 32 MiB template stdin\n",
         absl::FormatDuration(plain).c_str(), absl::FormatDuration(with_template).c_str());
  EXPECT_LT(with_template - plain, absl::Seconds(1));
  EXPECT_TRUE(BystanderIsServed());
  ExpectPeakWithinBound("stdins batch with a 32 MiB template");
}

}  // namespace
}  // namespace execd
