// Attach: interactive sessions through a real server and channel.
#include <fcntl.h>
#include <grpcpp/grpcpp.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <atomic>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "core/compress.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/support/subprocess.h"
#include "tests/support/test_server.h"

namespace execd {
namespace {

using ::execd::testing::ProcessAlive;
using ::execd::testing::TestServer;
using ::execd::testing::WaitFor;
using ::testing::HasSubstr;

constexpr absl::Duration kWait = absl::Seconds(30);

// One Attach call: messages are written from the test's thread while a reader thread
// collects the events, so a test can wait (bounded) for output it expects.
class Session {
 public:
  explicit Session(v1::Executor::Stub& stub) {
    context_.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(120));
    stream_ = stub.Attach(&context_);
    reader_ = std::thread([this] { ReadAll(); });
  }
  ~Session() {
    context_.TryCancel();
    Finish();
  }

  bool Send(const v1::AttachRequest& request) { return stream_->Write(request); }
  bool Start(v1::ExecuteRequest start) {
    v1::AttachRequest request;
    *request.mutable_start() = std::move(start);
    return Send(request);
  }
  // Starts `start` on a pseudo-terminal of rows x columns.
  bool StartOnTerminal(v1::ExecuteRequest start, int rows, int columns) {
    v1::AttachRequest request;
    *request.mutable_start() = std::move(start);
    request.mutable_terminal()->set_rows(rows);
    request.mutable_terminal()->set_columns(columns);
    return Send(request);
  }
  bool Resize(int rows, int columns) {
    v1::AttachRequest request;
    request.mutable_resize()->set_rows(rows);
    request.mutable_resize()->set_columns(columns);
    return Send(request);
  }
  bool Stdin(const std::string& data) {
    v1::AttachRequest request;
    request.set_stdin(data);
    return Send(request);
  }
  bool CloseStdin() {
    v1::AttachRequest request;
    request.mutable_close_stdin();
    return Send(request);
  }
  bool Signal(int signal) {
    v1::AttachRequest request;
    request.set_signal(signal);
    return Send(request);
  }
  bool WritesDone() { return stream_->WritesDone(); }

  // The started event's pid, or 0 if none came in time.
  pid_t WaitStarted() {
    absl::MutexLock lock(&mu_);
    mu_.AwaitWithTimeout(absl::Condition(
                             +[](Session* s) ABSL_EXCLUSIVE_LOCKS_REQUIRED(s->mu_) {
                               return s->pid_ != 0 || s->ended_;
                             },
                             this),
                         kWait);
    return pid_;
  }
  bool WaitStdout(const std::string& text) { return WaitOutput(&out_, text); }
  bool WaitStderr(const std::string& text) { return WaitOutput(&err_, text); }

  // Waits for the end of the call; its status.
  grpc::Status Finish() {
    if (reader_.joinable()) reader_.join();
    if (!status_.has_value()) status_ = stream_->Finish();
    return *status_;
  }
  std::string out() {
    absl::MutexLock lock(&mu_);
    return out_;
  }
  std::string err() {
    absl::MutexLock lock(&mu_);
    return err_;
  }
  int exits() {
    absl::MutexLock lock(&mu_);
    return exits_;
  }
  v1::ExecuteResponse exited() {
    absl::MutexLock lock(&mu_);
    return exited_;
  }

 private:
  void ReadAll() {
    v1::AttachEvent event;
    while (stream_->Read(&event)) {
      absl::MutexLock lock(&mu_);
      if (event.has_started()) pid_ = event.started().pid();
      if (event.has_output()) {
        std::string data = event.output().data();
        if (event.output().compression() == v1::LZ4) {
          data = *core::Lz4Decompress(data, size_t{1} << 30);
        }
        (event.output().stream() == v1::ExecuteEvent::STDERR ? err_ : out_) += data;
      }
      if (event.has_exited()) {
        ++exits_;
        exited_ = event.exited();
      }
    }
    absl::MutexLock lock(&mu_);
    ended_ = true;
  }

  bool WaitOutput(const std::string* stream, const std::string& text) {
    absl::MutexLock lock(&mu_);
    auto seen = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return absl::StrContains(*stream, text) || ended_;
    };
    mu_.AwaitWithTimeout(absl::Condition(&seen), kWait);
    return absl::StrContains(*stream, text);
  }

  grpc::ClientContext context_;
  std::unique_ptr<grpc::ClientReaderWriter<v1::AttachRequest, v1::AttachEvent>> stream_;
  std::thread reader_;
  std::optional<grpc::Status> status_;
  absl::Mutex mu_;
  pid_t pid_ ABSL_GUARDED_BY(mu_) = 0;
  std::string out_ ABSL_GUARDED_BY(mu_);
  std::string err_ ABSL_GUARDED_BY(mu_);
  int exits_ ABSL_GUARDED_BY(mu_) = 0;
  v1::ExecuteResponse exited_ ABSL_GUARDED_BY(mu_);
  bool ended_ ABSL_GUARDED_BY(mu_) = false;
};

using AttachTest = testing::ServerTest;

bool Gone(pid_t pid) {
  return WaitFor([pid] { return !ProcessAlive(pid); }, kWait);
}

v1::ExecuteRequest Python() { return TestServer::Request({"python3", "-i", "-q", "-u"}); }

TEST_F(AttachTest, AReplAnswersEachLineAndKeepsItsStateUntilEndOfInput) {
  Session s(server_->stub());
  ASSERT_TRUE(s.Start(Python()));
  ASSERT_NE(s.WaitStarted(), 0);
  ASSERT_TRUE(s.Stdin("x = 6 * 7\nprint('x is', x)\n"));
  ASSERT_TRUE(s.WaitStdout("x is 42\n")) << s.out() << s.err();
  // Depends on the state the first line left, and is sent only after its answer came.
  ASSERT_TRUE(s.Stdin("print('next is', x + 1)\n"));
  ASSERT_TRUE(s.WaitStdout("next is 43\n")) << s.out() << s.err();
  ASSERT_TRUE(s.CloseStdin());
  ASSERT_TRUE(s.Finish().ok());
  EXPECT_EQ(s.out(), "x is 42\nnext is 43\n");
  EXPECT_EQ(s.exits(), 1);
  EXPECT_EQ(s.exited().termination(), v1::EXITED);
  EXPECT_EQ(s.exited().exit_code(), 0);
}

TEST_F(AttachTest, CtrlCInterruptsTheReplWhichGoesOn) {
  Session s(server_->stub());
  ASSERT_TRUE(s.Start(Python()));
  ASSERT_NE(s.WaitStarted(), 0);
  ASSERT_TRUE(s.Stdin("import time\nprint('sleeping'); time.sleep(1000)\n"));
  ASSERT_TRUE(s.WaitStdout("sleeping\n")) << s.err();
  ASSERT_TRUE(s.Signal(SIGINT));
  ASSERT_TRUE(s.WaitStderr("KeyboardInterrupt")) << s.err();
  ASSERT_TRUE(s.Stdin("print('still', 'here')\n"));
  ASSERT_TRUE(s.WaitStdout("still here\n")) << s.out() << s.err();
  ASSERT_TRUE(s.WritesDone());
  ASSERT_TRUE(s.Finish().ok());
  EXPECT_EQ(s.exited().termination(), v1::EXITED);
  EXPECT_EQ(s.exited().exit_code(), 0);
}

TEST_F(AttachTest, CloseStdinGivesTheChildEndOfFileAfterEverythingSent) {
  Session s(server_->stub());
  v1::ExecuteRequest start = TestServer::Request({"/bin/cat"});
  start.set_stdin("first\n");  // Written before anything sent later.
  ASSERT_TRUE(s.Start(start));
  ASSERT_TRUE(s.WaitStdout("first\n"));
  ASSERT_TRUE(s.Stdin("second "));
  ASSERT_TRUE(s.Stdin("third\n"));
  ASSERT_TRUE(s.CloseStdin());
  ASSERT_TRUE(s.Finish().ok());
  EXPECT_EQ(s.out(), "first\nsecond third\n");
  EXPECT_EQ(s.exits(), 1);
  EXPECT_EQ(s.exited().termination(), v1::EXITED);
  EXPECT_EQ(s.exited().exit_code(), 0);
}

TEST_F(AttachTest, ASessionCanDriveAPipeline) {
  Session s(server_->stub());
  v1::ExecuteRequest start = TestServer::Request({"/bin/cat"});
  // tr buffers its output on a pipe unless told not to; cat writes what it reads.
  v1::PipeStage* tr = start.add_pipe_to();
  for (const char* a : {"stdbuf", "-o0", "tr", "a-z", "A-Z"}) tr->add_argv(a);
  start.add_pipe_to()->add_argv("/bin/cat");
  ASSERT_TRUE(s.Start(start));
  ASSERT_TRUE(s.Stdin("abc\n"));
  ASSERT_TRUE(s.WaitStdout("ABC\n")) << s.out() << s.err();
  ASSERT_TRUE(s.Stdin("def\n"));  // Sent only once the first line came out the far end.
  ASSERT_TRUE(s.WaitStdout("DEF\n")) << s.out() << s.err();
  ASSERT_TRUE(s.CloseStdin());
  ASSERT_TRUE(s.Finish().ok());
  EXPECT_EQ(s.out(), "ABC\nDEF\n");
  EXPECT_EQ(s.exited().exit_code(), 0);
  EXPECT_EQ(s.exited().stages_size(), 3);
}

// ---- On a pseudo-terminal ----

TEST_F(AttachTest, OnATerminalTheCommandSeesATerminalOfTheSizeAskedAndItsResizes) {
  Session s(server_->stub());
  ASSERT_TRUE(s.StartOnTerminal(
      TestServer::Request({"/bin/sh", "-c",
                           "tty; stty size; echo ready; read line; stty size; echo \"got $line\""}),
      30, 100));
  ASSERT_TRUE(s.WaitStdout("ready")) << s.out();
  EXPECT_THAT(s.out(), ::testing::HasSubstr("/dev/pts/"));
  EXPECT_THAT(s.out(), ::testing::HasSubstr("30 100\r\n"));  // The terminal adds the \r.
  ASSERT_TRUE(s.Resize(40, 120));
  ASSERT_TRUE(s.Stdin("typed\n"));
  ASSERT_TRUE(s.WaitStdout("got typed")) << s.out();
  ASSERT_TRUE(s.Finish().ok());
  EXPECT_THAT(s.out(), ::testing::HasSubstr("typed\r\n40 120\r\n"));  // Echo, new size.
  EXPECT_TRUE(s.err().empty());                                       // Everything comes as stdout.
  EXPECT_EQ(s.exited().exit_code(), 0);
}

TEST_F(AttachTest, OnATerminalPythonIsInteractiveWithoutDashIAndCtrlDEndsIt) {
  Session s(server_->stub());
  v1::ExecuteRequest python = TestServer::Request({"python3", "-q"});
  python.add_inherit_env("PATH");
  ASSERT_TRUE(s.StartOnTerminal(python, 24, 80));
  ASSERT_TRUE(s.WaitStdout(">>> ")) << s.out();  // Its prompt: stdin is a terminal.
  ASSERT_TRUE(s.Stdin("print(6 * 7)\n"));
  ASSERT_TRUE(s.WaitStdout("42\r\n")) << s.out();
  ASSERT_TRUE(s.WaitStdout("42\r\n>>> ")) << s.out();
  ASSERT_TRUE(s.CloseStdin());  // Ctrl-D at the prompt.
  ASSERT_TRUE(s.Finish().ok());
  EXPECT_EQ(s.exited().termination(), v1::EXITED);
  EXPECT_EQ(s.exited().exit_code(), 0);
}

TEST_F(AttachTest, OnATerminalCtrlCIsAByteThatInterruptsTheForegroundCommand) {
  Session s(server_->stub());
  ASSERT_TRUE(s.StartOnTerminal(TestServer::Request({"/bin/sleep", "1000"}), 24, 80));
  ASSERT_NE(s.WaitStarted(), 0);
  ASSERT_TRUE(s.Stdin("\x03"));
  ASSERT_TRUE(s.Finish().ok());
  EXPECT_EQ(s.exited().termination(), v1::SIGNALED);
  EXPECT_EQ(s.exited().signal(), SIGINT);
}

TEST_F(AttachTest, OnATerminalClosingStdinAfterAPartialLineStillEndsTheInput) {
  Session s(server_->stub());
  ASSERT_TRUE(s.StartOnTerminal(TestServer::Request({"/bin/sh", "-c", "echo ready; cat"}), 24, 80));
  ASSERT_TRUE(s.WaitStdout("ready"));
  ASSERT_TRUE(s.Stdin("partial"));
  ASSERT_TRUE(s.CloseStdin());
  ASSERT_TRUE(s.Finish().ok());
  EXPECT_THAT(s.out(), ::testing::HasSubstr("partialpartial"));  // The echo, then cat's copy.
  EXPECT_EQ(s.exited().exit_code(), 0);
}

TEST_F(AttachTest, TerminalMistakesAreInvalidArguments) {
  {
    Session s(server_->stub());
    v1::ExecuteRequest pipeline = TestServer::Request({"/bin/true"});
    pipeline.add_pipe_to()->add_argv("cat");
    ASSERT_TRUE(s.StartOnTerminal(pipeline, 24, 80));
    grpc::Status status = s.Finish();
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(status.error_message(), ::testing::HasSubstr("pipe_to"));
  }
  {
    Session s(server_->stub());
    ASSERT_TRUE(s.StartOnTerminal(TestServer::Request({"/bin/true"}), 0, 80));
    grpc::Status status = s.Finish();
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(status.error_message(), ::testing::HasSubstr("1..65535"));
  }
  {
    Session s(server_->stub());
    ASSERT_TRUE(s.Start(TestServer::Request({"/bin/sleep", "1000"})));
    const pid_t pid = s.WaitStarted();
    ASSERT_NE(pid, 0);
    ASSERT_TRUE(s.Resize(30, 100));  // No terminal to resize.
    grpc::Status status = s.Finish();
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(status.error_message(), ::testing::HasSubstr("no terminal"));
    EXPECT_TRUE(Gone(pid));
  }
}

TEST_F(AttachTest, HalfClosingTheCallGivesTheChildEndOfFile) {
  Session s(server_->stub());
  ASSERT_TRUE(s.Start(TestServer::Request({"/bin/sh", "-c", "cat; echo eof >&2; exit 3"})));
  ASSERT_NE(s.WaitStarted(), 0);
  ASSERT_TRUE(s.Stdin("data\n"));
  ASSERT_TRUE(s.WritesDone());
  ASSERT_TRUE(s.Finish().ok());
  EXPECT_EQ(s.out(), "data\n");
  EXPECT_EQ(s.err(), "eof\n");
  EXPECT_EQ(s.exited().exit_code(), 3);
}

TEST_F(AttachTest, ASignalReachesTheCommand) {
  Session s(server_->stub());
  ASSERT_TRUE(s.Start(TestServer::Request({"/bin/sleep", "1000"})));
  const pid_t pid = s.WaitStarted();
  ASSERT_NE(pid, 0);
  ASSERT_TRUE(s.Signal(SIGTERM));
  ASSERT_TRUE(s.Finish().ok());
  EXPECT_EQ(s.exited().termination(), v1::SIGNALED);
  EXPECT_EQ(s.exited().signal(), SIGTERM);
  EXPECT_TRUE(Gone(pid));
}

TEST_F(AttachTest, TheFirstMessageMustStartTheCommand) {
  Session s(server_->stub());
  ASSERT_TRUE(s.Stdin("hello"));
  grpc::Status status = s.Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("must be start"));
}

TEST_F(AttachTest, EndingTheCallBeforeTheStartIsInvalid) {
  Session s(server_->stub());
  ASSERT_TRUE(s.WritesDone());
  grpc::Status status = s.Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("send AttachRequest.start"));
}

TEST_F(AttachTest, AStartThatFailsValidationIsTheCallsStatus) {
  Session s(server_->stub());
  ASSERT_TRUE(s.Start(TestServer::Request({"/usr/bin/pyton3"})));
  grpc::Status status = s.Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_THAT(status.error_message(), HasSubstr("/usr/bin/pyton3"));
}

TEST_F(AttachTest, PoolsAndTheCacheAreRefused) {
  {
    Session s(server_->stub());
    v1::ExecuteRequest start = TestServer::Request({});
    start.set_pool("python");
    ASSERT_TRUE(s.Start(start));
    grpc::Status status = s.Finish();
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(status.error_message(), HasSubstr("pool"));
  }
  Session s(server_->stub());
  v1::ExecuteRequest start = TestServer::Request({"/bin/cat"});
  start.set_cache_policy(v1::READ_WRITE);
  ASSERT_TRUE(s.Start(start));
  grpc::Status status = s.Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("cache_policy"));
}

// Each protocol error after the start ends the call with INVALID_ARGUMENT, and the
// command is killed and reaped.
struct ProtocolError {
  const char* name;
  std::function<void(Session&)> send;
  const char* message;
};

class AttachProtocolErrorTest : public AttachTest,
                                public ::testing::WithParamInterface<ProtocolError> {};

TEST_P(AttachProtocolErrorTest, EndsTheCallAndKillsTheCommand) {
  Session s(server_->stub());
  ASSERT_TRUE(s.Start(TestServer::Request({"/bin/sleep", "1000"})));
  const pid_t pid = s.WaitStarted();
  ASSERT_NE(pid, 0);
  GetParam().send(s);
  grpc::Status status = s.Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr(GetParam().message));
  EXPECT_EQ(s.exits(), 0);
  EXPECT_TRUE(Gone(pid));
}

INSTANTIATE_TEST_SUITE_P(
    Attach, AttachProtocolErrorTest,
    ::testing::Values(ProtocolError{"SecondStart",
                                    [](Session& s) { s.Start(TestServer::Request({"/bin/true"})); },
                                    "a second start"},
                      ProtocolError{"StdinAfterClose",
                                    [](Session& s) {
                                      s.CloseStdin();
                                      s.Stdin("late");
                                    },
                                    "after close_stdin"},
                      ProtocolError{"DisallowedSignal", [](Session& s) { s.Signal(SIGSEGV); },
                                    "allowed: SIGHUP (1), SIGINT (2)"},
                      ProtocolError{"EmptyMessage", [](Session& s) { s.Send(v1::AttachRequest()); },
                                    "nothing set"}),
    [](const ::testing::TestParamInfo<ProtocolError>& info) { return info.param.name; });

TEST_F(AttachTest, CancellingTheCallKillsTheCommand) {
  auto s = std::make_unique<Session>(server_->stub());
  ASSERT_TRUE(s->Start(TestServer::Request({"/bin/sleep", "1000"})));
  const pid_t pid = s->WaitStarted();
  ASSERT_NE(pid, 0);
  s.reset();  // Cancels.
  EXPECT_TRUE(Gone(pid));
}

TEST_F(AttachTest, AChildThatClosesItsStdinKeepsTheSessionGoing) {
  Session s(server_->stub());
  ASSERT_TRUE(s.Start(TestServer::Request(
      {"/bin/sh", "-c",
       "exec <&-; trap 'echo done; exit 0' USR1; echo closed; while :; do sleep 0.01; done"})));
  ASSERT_TRUE(s.WaitStdout("closed\n"));
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(s.Stdin(std::string(256 << 10, 'x')));  // EPIPE.
  // Read after the dropped stdin: the server went on reading.
  ASSERT_TRUE(s.Signal(SIGUSR1));
  ASSERT_TRUE(s.Finish().ok());
  EXPECT_EQ(s.out(), "closed\ndone\n");
  EXPECT_EQ(s.exited().exit_code(), 0);
}

TEST_F(AttachTest, EightMegabytesGoThroughCatIntact) {
  const std::string data = testing::RandomBytes(8 << 20);
  Session s(server_->stub());
  v1::ExecuteRequest start = TestServer::Request({"/bin/cat"});
  start.mutable_limits()->set_max_output_bytes(16 << 20);
  start.set_accept_compression(v1::LZ4);
  ASSERT_TRUE(s.Start(start));
  for (size_t at = 0; at < data.size(); at += 64 << 10) {
    ASSERT_TRUE(s.Stdin(data.substr(at, 64 << 10)));
  }
  ASSERT_TRUE(s.CloseStdin());
  ASSERT_TRUE(s.Finish().ok());
  EXPECT_EQ(s.exited().exit_code(), 0);
  EXPECT_EQ(s.out().size(), data.size());
  EXPECT_TRUE(s.out() == data);
}

// Bytes waiting in the pipe that is `pid`'s stdin.
int PipeBytes(pid_t pid) {
  int fd = open(absl::StrCat("/proc/", pid, "/fd/0").c_str(), O_RDONLY | O_NONBLOCK);
  if (fd < 0) return -1;
  int n = -1;
  ioctl(fd, FIONREAD, &n);
  close(fd);
  return n;
}

TEST_F(AttachTest, AChildThatDoesNotReadStopsTheServerReading) {
  constexpr int64_t kTotal = 64 << 20;
  constexpr int64_t kChunk = 64 << 10;
  Session s(server_->stub());
  ASSERT_TRUE(s.Start(TestServer::Request({"/bin/sh", "-c", "kill -STOP $$; exec wc -c"})));
  const pid_t pid = s.WaitStarted();
  ASSERT_NE(pid, 0);
  std::atomic<int64_t> sent{0};
  std::thread writer([&] {
    const std::string chunk(kChunk, 'x');
    while (sent < kTotal && s.Stdin(chunk)) sent += kChunk;
    s.CloseStdin();
  });
  // The stopped child reads nothing: its pipe fills, then the server holds about 1 MiB
  // and stops reading, and gRPC flow control stops the writer far short of the total.
  ASSERT_TRUE(WaitFor([&] { return PipeBytes(pid) >= 65536; }, kWait)) << PipeBytes(pid);
  int64_t last = -1;
  int still = 0;
  ASSERT_TRUE(WaitFor(
      [&] {
        const int64_t now = sent;
        still = now == last ? still + 1 : 0;
        last = now;
        return still >= 40 || now >= kTotal;  // 40 polls (200 ms) without progress.
      },
      kWait));
  EXPECT_LT(sent, kTotal / 4) << "the server read on while the child read nothing";
  kill(pid, SIGCONT);
  writer.join();
  ASSERT_TRUE(s.Finish().ok());
  EXPECT_EQ(s.out(), absl::StrCat(kTotal, "\n"));
  EXPECT_EQ(s.exited().exit_code(), 0);
}

}  // namespace
}  // namespace execd
