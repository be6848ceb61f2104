// Soak: every kind of call, the ones that go wrong included, through the real execd binary;
// afterwards the server holds exactly the descriptors and child processes it held before
// (its pool workers), and nothing a command started is still running anywhere.
#include <dirent.h>
#include <grpcpp/grpcpp.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "execd/v1/execd.grpc.pb.h"
#include "gtest/gtest.h"
#include "tests/support/deadline.h"
#include "tests/support/subprocess.h"

namespace execd {
namespace {

using testing::ServerProcess;

// The server's open descriptors by kind ("pipe", "socket", "anon_inode:[pidfd]", a path),
// without the cgroup files it keeps open with the emptied cgroups it reuses (at most 64
// of them, each with its files: how many depends on how many commands overlapped).
std::map<std::string, int> Descriptors(pid_t pid) {
  std::map<std::string, int> kinds;
  const std::string dir = absl::StrCat("/proc/", pid, "/fd");
  std::unique_ptr<DIR, int (*)(DIR*)> d(opendir(dir.c_str()), closedir);
  if (d == nullptr) return kinds;
  while (dirent* e = readdir(d.get())) {
    if (e->d_name[0] == '.') continue;
    char target[512];
    ssize_t n = readlink(absl::StrCat(dir, "/", e->d_name).c_str(), target, sizeof(target) - 1);
    if (n < 0) continue;
    std::string kind(target, static_cast<size_t>(n));
    if (absl::StartsWith(kind, "/sys/fs/cgroup/")) continue;
    for (absl::string_view prefix : {"pipe:", "socket:", "/memfd:"}) {
      if (absl::StartsWith(kind, prefix)) kind = std::string(prefix);
    }
    ++kinds[kind];
  }
  return kinds;
}

std::string Show(const std::map<std::string, int>& kinds) {
  return absl::StrJoin(kinds, ", ", absl::PairFormatter("="));
}

class LeakTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::ofstream(pools_) << "pool { name: \"cat\" kind: PREWARMED argv: \"/bin/cat\" "
                             "min_idle: 2 max_size: 2 }\n"
                          << "pool { name: \"w\" kind: PERSISTENT argv: \"" << TEST_WORKER_BIN
                          << "\" min_idle: 2 max_size: 2 timeout { seconds: 30 } }\n";
    server_ = std::make_unique<ServerProcess>(
        EXECD_BIN, std::vector<std::string>{"--pools_config=" + pools_, "--kill_grace=200ms",
                                            "--log_requests=false"});
    ASSERT_TRUE(server_->ok()) << server_->log();
    stub_ = v1::Executor::NewStub(
        grpc::CreateChannel(server_->target(), grpc::InsecureChannelCredentials()));
  }

  v1::ExecuteRequest Request(std::vector<std::string> argv) {
    v1::ExecuteRequest r;
    for (std::string& a : argv) r.add_argv(std::move(a));
    (*r.mutable_env())["EXECD_TEST_MARKER"] = marker_;
    return r;
  }
  v1::ExecuteRequest Pooled(const std::string& pool, std::vector<std::string> argv) {
    v1::ExecuteRequest r;
    r.set_pool(pool);
    for (std::string& a : argv) r.add_argv(std::move(a));
    return r;
  }
  grpc::Status Execute(const v1::ExecuteRequest& request, v1::ExecuteResponse* response,
                       absl::Duration deadline = absl::Seconds(30)) {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + deadline));
    return stub_->Execute(&context, request, response);
  }

  // Idle: nothing running or queued, every pool full and idle.
  bool Idle() {
    grpc::ClientContext context;
    v1::StatusResponse status;
    if (!stub_->GetStatus(&context, v1::StatusRequest(), &status).ok()) return false;
    if (status.running() != 0 || status.queued() != 0) return false;
    for (const v1::PoolStatus& p : status.pools()) {
      if (p.idle() != 2 || p.busy() != 0 || p.starting() != 0) return false;
    }
    return true;
  }

  // A call with a 200 ms deadline whose command runs on.
  void ExpectStoppedAtTheDeadline(const v1::ExecuteRequest& request) {
    v1::ExecuteResponse r;
    testing::ExpectStoppedAtTheDeadline(Execute(request, &r, absl::Milliseconds(200)), r);
  }

  // One of each kind of call; the ones that fail on purpose are checked to fail as meant.
  void Round() {
    v1::ExecuteResponse r;
    // Unary: success, failure, timeout, output over the cap, an executable that is not there,
    // the call's own deadline.
    EXPECT_TRUE(Execute(Request({"/bin/true"}), &r).ok());
    EXPECT_TRUE(Execute(Request({"/bin/sh", "-c", "exit 3"}), &r).ok());
    EXPECT_EQ(r.exit_code(), 3);
    v1::ExecuteRequest timeout = Request({"/bin/sh", "-c", "sleep 100 & sleep 100"});
    timeout.mutable_limits()->mutable_timeout()->set_nanos(100'000'000);
    EXPECT_TRUE(Execute(timeout, &r).ok());
    EXPECT_EQ(r.termination(), v1::TIMED_OUT);
    v1::ExecuteRequest capped = Request({"/usr/bin/head", "-c", "2000000", "/dev/zero"});
    capped.mutable_limits()->set_max_output_bytes(1000);
    EXPECT_TRUE(Execute(capped, &r).ok());
    EXPECT_EQ(r.termination(), v1::OUTPUT_LIMIT_EXCEEDED);
    EXPECT_EQ(Execute(Request({"/no/such/program"}), &r).error_code(), grpc::StatusCode::NOT_FOUND);
    ExpectStoppedAtTheDeadline(Request({"/bin/sleep", "100"}));
    // Large stdin (a memfd), a pipeline, and a cache miss then hit.
    v1::ExecuteRequest big = Request({"/usr/bin/wc", "-c"});
    big.set_stdin(std::string(2 << 20, 'x'));
    EXPECT_TRUE(Execute(big, &r).ok());
    EXPECT_EQ(r.stdout(), absl::StrCat(2 << 20, "\n"));
    v1::ExecuteRequest pipeline = Request({"/usr/bin/seq", "1000"});
    pipeline.add_pipe_to()->add_argv("/usr/bin/wc");
    pipeline.mutable_pipe_to(0)->add_argv("-l");
    EXPECT_TRUE(Execute(pipeline, &r).ok());
    EXPECT_EQ(r.stdout(), "1000\n");
    v1::ExecuteRequest cached = Request({"/bin/echo", marker_});
    cached.set_cache_policy(v1::READ_WRITE);
    EXPECT_TRUE(Execute(cached, &r).ok());
    EXPECT_TRUE(Execute(cached, &r).ok());
    EXPECT_TRUE(r.cache_hit());

    // Streams: read to the end; cancelled while the child runs.
    {
      grpc::ClientContext context;
      auto reader = stub_->ExecuteStream(&context, Request({"/usr/bin/seq", "100000"}));
      v1::ExecuteEvent event;
      size_t bytes = 0;
      while (reader->Read(&event)) bytes += event.output().data().size();
      EXPECT_TRUE(reader->Finish().ok());
      EXPECT_GT(bytes, 500000u);
    }
    {
      grpc::ClientContext context;
      auto reader = stub_->ExecuteStream(&context, Request({"/bin/sleep", "100"}));
      v1::ExecuteEvent event;
      EXPECT_TRUE(reader->Read(&event));
      context.TryCancel();
      while (reader->Read(&event)) {
      }
      EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
    }

    // A batch with a failing item; a batch cancelled while items run.
    {
      v1::BatchRequest batch;
      batch.set_max_parallel(4);
      for (int i = 0; i < 12; ++i) *batch.add_requests() = Request({"/bin/true"});
      *batch.add_requests() = Request({"/no/such/program"});
      grpc::ClientContext context;
      auto reader = stub_->ExecuteBatch(&context, batch);
      v1::BatchResult result;
      int results = 0;
      while (reader->Read(&result)) ++results;
      EXPECT_TRUE(reader->Finish().ok());
      EXPECT_EQ(results, 13);
    }
    {
      v1::BatchRequest batch;
      for (int i = 0; i < 4; ++i) *batch.add_requests() = Request({"/bin/sleep", "100"});
      *batch.add_requests() = Request({"/bin/true"});
      grpc::ClientContext context;
      auto reader = stub_->ExecuteBatch(&context, batch);
      v1::BatchResult result;
      EXPECT_TRUE(reader->Read(&result));  // /bin/true: the sleeps are running.
      context.TryCancel();
      while (reader->Read(&result)) {
      }
      EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
    }

    // Attach: a session to its end; one the caller abandons.
    {
      grpc::ClientContext context;
      auto stream = stub_->Attach(&context);
      v1::AttachRequest request;
      *request.mutable_start() = Request({"/bin/cat"});
      EXPECT_TRUE(stream->Write(request));
      request.set_stdin("hello\n");
      EXPECT_TRUE(stream->Write(request));
      request.mutable_close_stdin();
      EXPECT_TRUE(stream->Write(request));
      stream->WritesDone();
      v1::AttachEvent event;
      std::string out;
      while (stream->Read(&event)) out += event.output().data();
      EXPECT_TRUE(stream->Finish().ok());
      EXPECT_EQ(out, "hello\n");
    }
    {
      grpc::ClientContext context;
      auto stream = stub_->Attach(&context);
      v1::AttachRequest request;
      *request.mutable_start() = Request({"/bin/cat"});
      EXPECT_TRUE(stream->Write(request));
      v1::AttachEvent event;
      EXPECT_TRUE(stream->Read(&event));  // Started.
      context.TryCancel();
      while (stream->Read(&event)) {
      }
      stream->Finish();
    }

    // Pools: a pre-warmed process; a persistent worker that answers, crashes, and hangs past
    // the call's deadline.
    v1::ExecuteRequest prewarmed = Pooled("cat", {});
    prewarmed.set_stdin("pooled");
    EXPECT_TRUE(Execute(prewarmed, &r).ok());
    EXPECT_EQ(r.stdout(), "pooled");
    EXPECT_TRUE(Execute(Pooled("w", {"print", "hi"}), &r).ok());
    EXPECT_EQ(Execute(Pooled("w", {"crash"}), &r).error_code(), grpc::StatusCode::UNAVAILABLE);
    ExpectStoppedAtTheDeadline(Pooled("w", {"hang"}));
  }

  const std::string marker_ = testing::UniqueName("leak");
  testing::ScopedTempDir dir_{"leak"};
  const std::string pools_ = dir_.path() + "/pools.textproto";
  std::unique_ptr<ServerProcess> server_;
  std::unique_ptr<v1::Executor::Stub> stub_;
};

TEST_F(LeakTest, EveryKindOfCallLeavesNoDescriptorOrProcessBehind) {
  ASSERT_TRUE(testing::WaitFor([&] { return Idle(); }, absl::Seconds(30)));
  Round();  // Warms up what stays: connections, threads, kept cgroups.
  ASSERT_TRUE(testing::WaitFor([&] { return Idle(); }, absl::Seconds(30)));
  const std::map<std::string, int> before = Descriptors(server_->pid());
  const size_t workers = testing::ChildrenOf(server_->pid()).size();
  EXPECT_EQ(workers, 4u);  // Two pools of two.
  constexpr int kRounds = 5;
  for (int i = 0; i < kRounds; ++i) Round();
  ASSERT_TRUE(testing::WaitFor([&] { return Idle(); }, absl::Seconds(30)));
  // Children are reaped and their descriptors closed just after the result is sent.
  EXPECT_TRUE(
      testing::WaitFor([&] { return Descriptors(server_->pid()) == before; }, absl::Seconds(10)))
      << "before: " << Show(before) << "\nafter:  " << Show(Descriptors(server_->pid()));
  // Killed workers are reaped once they have died, which the answer does not wait for.
  EXPECT_TRUE(testing::WaitFor(
      [&] { return testing::ChildrenOf(server_->pid()).size() == workers; }, absl::Seconds(10)))
      << testing::ChildrenOf(server_->pid()).size() << " children, " << workers << " expected";
  EXPECT_TRUE(testing::WaitFor(
      [&] { return testing::ProcessesWithEnv("EXECD_TEST_MARKER=" + marker_).empty(); },
      absl::Seconds(10)))
      << "a process of a finished command is still running";
  // It drains and exits cleanly (in a sanitizer build, LeakSanitizer fails the exit on any
  // memory still allocated and unreachable).
  EXPECT_EQ(server_->Stop(SIGTERM, absl::Seconds(30)), 0) << server_->log();
}

}  // namespace
}  // namespace execd
