// Event-loop scale: 2,000 commands through the real execd binary are all alive at once and
// all complete, while the server's thread count stays small and flat (a child costs
// descriptors, not a thread). Each command blocks on a shared flock(1) of a file the test
// holds exclusively, so "all alive at once" is an observed state, not a race against a
// sleep. Prints the figures BENCHMARKS.md reports.
#include <fcntl.h>
#include <grpcpp/grpcpp.h>
#include <sys/file.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "execd/v1/execd.grpc.pb.h"
#include "gtest/gtest.h"
#include "tests/support/subprocess.h"

namespace execd {
namespace {

int ThreadCount(pid_t pid) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(in, line)) {
    int n;
    if (line.rfind("Threads:", 0) == 0 && absl::SimpleAtoi(line.substr(8), &n)) return n;
  }
  return -1;
}

TEST(Scale, TwoThousandConcurrentChildrenWithAFlatThreadCount) {
  constexpr int kCommands = 2000;
  testing::ServerProcess server(
      EXECD_BIN, {"--max_concurrency=2500", "--max_queue=4096", "--log_requests=false"});
  ASSERT_TRUE(server.ok()) << server.log();
  // Several connections: one HTTP/2 connection carries at most 1,024 streams at once.
  std::vector<std::unique_ptr<v1::Executor::Stub>> stubs;
  for (int i = 0; i < 4; ++i) {
    grpc::ChannelArguments args;
    args.SetInt("execd.test.connection", i);
    stubs.push_back(v1::Executor::NewStub(
        grpc::CreateCustomChannel(server.target(), grpc::InsecureChannelCredentials(), args)));
  }
  const int threads_idle = ThreadCount(server.pid());
  testing::ScopedTempDir dir("scale");
  const std::string lock_path = dir.path() + "/gate";
  int gate = open(lock_path.c_str(), O_CREAT | O_RDWR | O_CLOEXEC, 0644);
  ASSERT_GE(gate, 0);
  ASSERT_EQ(flock(gate, LOCK_EX), 0);

  struct Call {
    grpc::ClientContext context;
    v1::ExecuteRequest request;
    v1::ExecuteResponse response;
  };
  std::vector<std::unique_ptr<Call>> calls;
  absl::Mutex mu;
  int done = 0, ok = 0;
  const absl::Time start = absl::Now();
  for (int i = 0; i < kCommands; ++i) {
    auto call = std::make_unique<Call>();
    for (const char* arg : {"/usr/bin/flock", "--shared", lock_path.c_str(), "/bin/true"}) {
      call->request.add_argv(arg);
    }
    call->context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(120)));
    Call* c = call.get();
    stubs[i % stubs.size()]->async()->Execute(
        &c->context, &c->request, &c->response, [&, c](grpc::Status status) {
          absl::MutexLock lock(&mu);
          ++done;
          if (status.ok() && c->response.termination() == v1::EXITED &&
              c->response.exit_code() == 0) {
            ++ok;
          }
        });
    calls.push_back(std::move(call));
  }
  // Sample the server until every command is alive at once: its threads, its children.
  int threads_max = threads_idle;
  size_t children_max = 0;
  absl::Duration all_alive_after;
  for (;;) {
    threads_max = std::max(threads_max, ThreadCount(server.pid()));
    children_max = std::max(children_max, testing::ChildrenOf(server.pid()).size());
    if (children_max >= kCommands) break;
    {
      absl::MutexLock lock(&mu);
      ASSERT_EQ(done, 0) << "a command ended before the gate opened";
    }
    ASSERT_LT(absl::Now() - start, absl::Seconds(120))
        << children_max << " of " << kCommands << " commands alive at most";
    absl::SleepFor(absl::Milliseconds(20));
  }
  all_alive_after = absl::Now() - start;
  // Open the gate: every command finishes.
  const absl::Time released = absl::Now();
  close(gate);
  absl::MutexLock lock(&mu);
  auto all_done = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) { return done == kCommands; };
  while (!mu.AwaitWithTimeout(absl::Condition(&all_done), absl::Milliseconds(50))) {
    threads_max = std::max(threads_max, ThreadCount(server.pid()));
    ASSERT_LT(absl::Now() - released, absl::Seconds(120)) << done << " of " << kCommands;
  }
  const absl::Duration drained = absl::Now() - released;
  EXPECT_EQ(ok, kCommands);
  EXPECT_EQ(children_max, static_cast<size_t>(kCommands));
  // Flat: no thread per child, nor anything proportional to the load.
  EXPECT_LE(threads_max, threads_idle + 16);
  printf(
      "scale: %d commands all alive %.2fs after the first call, all done %.2fs after the "
      "gate opened; server threads idle %d max %d\n",
      kCommands, absl::ToDoubleSeconds(all_alive_after), absl::ToDoubleSeconds(drained),
      threads_idle, threads_max);
}

}  // namespace
}  // namespace execd
