// Event-loop scale: 2,000 concurrent `sleep 1` commands through the real execd binary
// complete, while the server's thread count stays small and flat (a child costs
// descriptors, not a thread). Prints the figures BENCHMARKS.md reports.
#include <grpcpp/grpcpp.h>

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
    call->request.add_argv("/bin/sleep");
    call->request.add_argv("1");
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
  // Sample the server while the commands run: its threads, and its children.
  int threads_max = threads_idle;
  size_t children_max = 0;
  absl::MutexLock lock(&mu);
  auto all_done = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) { return done == kCommands; };
  while (!mu.AwaitWithTimeout(absl::Condition(&all_done), absl::Milliseconds(50))) {
    threads_max = std::max(threads_max, ThreadCount(server.pid()));
    children_max = std::max(children_max, testing::ChildrenOf(server.pid()).size());
    ASSERT_LT(absl::Now() - start, absl::Seconds(120)) << done << " of " << kCommands;
  }
  const absl::Duration wall = absl::Now() - start;
  EXPECT_EQ(ok, kCommands);
  // Concurrent, not serialised: most of them alive at once, and the whole batch in a few
  // seconds where one after another would take 2,000.
  EXPECT_GE(children_max, static_cast<size_t>(kCommands) / 2);
  EXPECT_LT(wall, absl::Seconds(15));
  // Flat: no thread per child, nor anything proportional to the load.
  EXPECT_LE(threads_max, threads_idle + 16);
  printf(
      "scale: %d x sleep 1: wall %.2fs, max concurrent children %zu, server threads idle %d "
      "max %d\n",
      kCommands, absl::ToDoubleSeconds(wall), children_max, threads_idle, threads_max);
}

}  // namespace
}  // namespace execd
