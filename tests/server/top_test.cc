// execctl top as a user runs it against a real execd: on a terminal after a known load,
// piped into a file, stopped with Ctrl-C, and losing its server.
#include <grpcpp/grpcpp.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "execd/v1/execd.grpc.pb.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/support/subprocess.h"
#include "tests/support/terminal.h"

namespace execd {
namespace {

using ::testing::ContainsRegex;
using ::testing::HasSubstr;
using ::testing::Not;
using testing::OnTerminal;
using testing::ProcessResult;
using testing::ReadToEnd;
using testing::ReadUntil;
using testing::RunProcess;
using testing::ServerProcess;
using testing::StartOnTerminal;
using ::testing::StartsWith;
using testing::WaitEnd;

constexpr char kClearScreen[] = "\x1b[H\x1b[2J";

// The last frame drawn on a terminal: what follows the last clear, without the terminal's
// carriage returns.
std::string LastScreen(const std::string& seen) {
  const size_t at = seen.rfind(kClearScreen);
  if (at == std::string::npos) return "";
  return absl::StrReplaceAll(seen.substr(at + sizeof(kClearScreen) - 1), {{"\r", ""}});
}

class TopTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(server_.ok()) << server_.log(); }

  void TearDown() override {
    for (auto& context : held_contexts_) context->TryCancel();
    for (std::thread& t : held_) t.join();
  }

  // Runs `n` commands `argv` one after another, each ending with `code`.
  void Execute(int n, const std::vector<std::string>& argv, grpc::StatusCode code) {
    for (int i = 0; i < n; ++i) {
      grpc::ClientContext context;
      context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
      v1::ExecuteRequest request;
      for (const std::string& a : argv) request.add_argv(a);
      v1::ExecuteResponse response;
      EXPECT_EQ(stub_->Execute(&context, request, &response).error_code(), code) << argv[0];
    }
  }

  // Starts `n` commands that run until the test ends (their calls are then cancelled), and
  // waits until the server counts them running.
  bool Hold(int n) {
    for (int i = 0; i < n; ++i) {
      grpc::ClientContext* context =
          held_contexts_.emplace_back(std::make_unique<grpc::ClientContext>()).get();
      held_.emplace_back([this, context] {
        v1::ExecuteRequest request;
        request.add_argv("/bin/sleep");
        request.add_argv("600");
        request.mutable_limits()->mutable_timeout()->set_seconds(600);
        v1::ExecuteResponse response;
        (void)stub_->Execute(context, request, &response);
      });
    }
    return testing::WaitFor(
        [&] {
          grpc::ClientContext context;
          v1::StatusResponse status;
          return stub_->GetStatus(&context, v1::StatusRequest(), &status).ok() &&
                 status.running() == n;
        },
        absl::Seconds(10));
  }

  std::vector<std::string> Top(std::vector<std::string> flags) {
    flags.insert(flags.begin(), {EXECCTL_BIN, "--target=" + server_.target(), "top"});
    return flags;
  }

  ServerProcess server_{EXECD_BIN, {"--max_concurrency=6", "--max_queue=50", "--kill_grace=200ms"}};
  std::unique_ptr<v1::Executor::Stub> stub_ = v1::Executor::NewStub(
      grpc::CreateChannel(server_.target(), grpc::InsecureChannelCredentials()));
  std::vector<std::unique_ptr<grpc::ClientContext>> held_contexts_;
  std::vector<std::thread> held_;
};

TEST_F(TopTest, OnATerminalRedrawsTheFiguresOfTheLoadInPlace) {
  Execute(20, {"/bin/true"}, grpc::StatusCode::OK);
  Execute(3, {"/no/such/program"}, grpc::StatusCode::NOT_FOUND);
  ASSERT_TRUE(Hold(2));

  OnTerminal t = StartOnTerminal(Top({"--interval=100ms", "--iterations=2"}));
  ASSERT_GE(t.pid, 0);
  std::string seen;
  ASSERT_TRUE(ReadToEnd(t.master, &seen, absl::Seconds(30))) << seen;
  const int status = WaitEnd(t.pid);
  close(t.master);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status << "\n" << seen;

  // Two frames, each drawn over the last.
  EXPECT_EQ(std::vector<std::string>(absl::StrSplit(seen, kClearScreen)).size(), 3u) << seen;
  const std::string screen = LastScreen(seen);
  EXPECT_THAT(screen, StartsWith("execd ")) << screen;
  EXPECT_THAT(screen, HasSubstr(" at " + server_.target() + ", over ")) << screen;
  // The load ended before the interval: its totals, no calls in it, so no quantiles.
  EXPECT_THAT(screen, ContainsRegex("\nExecute +0 +23 +- +-\n")) << screen;
  EXPECT_THAT(screen, ContainsRegex("\nall commands +0 +23 +- +-\n")) << screen;
  EXPECT_THAT(screen, ContainsRegex("\nPing +0 +0 +- +-\n")) << screen;
  EXPECT_THAT(screen, HasSubstr("\nerrors/s    NOT_FOUND 0 (3 total)\n")) << screen;
  EXPECT_THAT(screen, HasSubstr("\nshed/s      none\n")) << screen;
  EXPECT_THAT(screen, HasSubstr("\nrunning     2 of 6\n")) << screen;
  EXPECT_THAT(screen, HasSubstr("\nqueued      0 of 50 (low 0, normal 0, high 0)\n")) << screen;
  EXPECT_THAT(screen, ContainsRegex("\ncpu         execd [0-9.]+ cores, commands [0-9.]+ cores\n"))
      << screen;
}

TEST_F(TopTest, PipedPrintsPlainFramesApartByABlankLine) {
  Execute(1, {"/bin/true"}, grpc::StatusCode::OK);
  ProcessResult r = RunProcess(Top({"--interval=50ms", "--iterations=3"}));
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, Not(HasSubstr("\x1b"))) << r.out;
  const std::vector<std::string> frames = absl::StrSplit(r.out, "\n\n");
  ASSERT_EQ(frames.size(), 3u) << r.out;
  EXPECT_THAT(frames[0], HasSubstr("first snapshot"));
  for (const std::string& frame : frames) {
    EXPECT_THAT(frame, StartsWith("execd ")) << frame;
    EXPECT_THAT(frame, ContainsRegex("\nExecute +[-0-9.]+ +1 ")) << frame;
  }
}

TEST_F(TopTest, CtrlCEndsItWithExitZero) {
  OnTerminal t = StartOnTerminal(Top({"--interval=100ms"}));
  ASSERT_GE(t.pid, 0);
  std::string seen;
  ASSERT_TRUE(ReadUntil(t.master, &seen, ", over ", absl::Seconds(30))) << seen;  // Refreshing.
  ASSERT_EQ(write(t.master, "\x03", 1), 1);  // Ctrl-C: the terminal sends top SIGINT.
  ReadToEnd(t.master, &seen, absl::Seconds(30));
  const int status = WaitEnd(t.pid);
  close(t.master);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status << "\n" << seen;
}

TEST_F(TopTest, AServerThatGoesAwayEndsItWithTheRpcError) {
  OnTerminal t = StartOnTerminal(Top({"--interval=100ms"}));
  ASSERT_GE(t.pid, 0);
  std::string seen;
  ASSERT_TRUE(ReadUntil(t.master, &seen, "first snapshot", absl::Seconds(30))) << seen;
  EXPECT_EQ(server_.Stop(SIGKILL, absl::Seconds(10)), -1);
  ASSERT_TRUE(ReadToEnd(t.master, &seen, absl::Seconds(30))) << seen;
  const int status = WaitEnd(t.pid);
  close(t.master);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 125) << status << "\n" << seen;
  EXPECT_THAT(seen, HasSubstr("execctl: top stopped: no snapshot from " + server_.target()))
      << seen;
  EXPECT_THAT(seen, HasSubstr("execctl: UNAVAILABLE: ")) << seen;
}

TEST(TopNoServer, FailsAtOnceWithTheRpcError) {
  ProcessResult r = RunProcess({EXECCTL_BIN, "--target=127.0.0.1:1", "top"});
  EXPECT_EQ(r.exit_code, 125);
  EXPECT_THAT(r.err, HasSubstr("UNAVAILABLE"));
  EXPECT_THAT(r.err, HasSubstr("is execd running at 127.0.0.1:1?"));
  EXPECT_EQ(r.out, "");
}

}  // namespace
}  // namespace execd
