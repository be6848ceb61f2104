// The shipped binaries as a user runs them: execd started as a process, execctl and
// execd-loadtest pointed at it.
#include <fcntl.h>
#include <grpcpp/grpcpp.h>
#include <poll.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#include <fstream>
#include <iterator>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "execd/v1/execd.grpc.pb.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "reflection_client.grpc.pb.h"
#include "tests/support/subprocess.h"
#include "tests/support/terminal.h"

namespace execd {
namespace {

using ::testing::HasSubstr;
using testing::OnTerminal;
using testing::ProcessResult;
using testing::ReadUntil;
using testing::RunProcess;
using testing::ServerProcess;
using testing::StartOnTerminal;
using testing::WaitEnd;

// Waits (bounded) for a live child of `server` running the program named `comm`, and
// returns its pid (0 if none came). A command's process, not any child: execd also starts
// a short-lived probe of its own.
pid_t WaitForCommandProcess(pid_t server, const std::string& comm) {
  pid_t found = 0;
  testing::WaitFor(
      [&] {
        for (pid_t child : testing::ChildrenOf(server)) {
          std::string name;
          std::getline(std::ifstream(absl::StrCat("/proc/", child, "/comm")), name);
          if (name == comm && testing::ProcessAlive(child)) found = child;
        }
        return found != 0;
      },
      absl::Seconds(10));
  return found;
}

class BinariesTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(server_.ok()) << server_.log(); }

  ProcessResult Execctl(std::vector<std::string> args, const std::string& stdin_data = "") {
    args.insert(args.begin(), {EXECCTL_BIN, "--target=" + server_.target()});
    return RunProcess(args, stdin_data);
  }

  ServerProcess server_{EXECD_BIN, {"--kill_grace=200ms", "--drain_timeout=2s"}};
};

TEST_F(BinariesTest, RunEchoPrintsHelloAndExitsZero) {
  ProcessResult r = Execctl({"run", "--", "/bin/echo", "hello"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "hello\n");
}

TEST_F(BinariesTest, RunExitsWithTheCommandsExitCode) {
  ProcessResult r = Execctl({"run", "--", "/bin/sh", "-c", "exit 3"});
  EXPECT_EQ(r.exit_code, 3);
}

TEST_F(BinariesTest, RunWithTimeoutReturnsWithinASecondAsTimedOut) {
  ProcessResult r = Execctl({"run", "--timeout=200ms", "--", "/bin/sleep", "10"});
  EXPECT_EQ(r.exit_code, 124);
  EXPECT_THAT(r.err, HasSubstr("timed out"));
  EXPECT_LT(r.elapsed, absl::Seconds(1.5));
}

TEST_F(BinariesTest, MissingBinaryIsNotFoundWithItsPath) {
  ProcessResult r = Execctl({"run", "--", "/usr/bin/pyton3"});
  EXPECT_EQ(r.exit_code, 127);
  EXPECT_THAT(r.err, HasSubstr("/usr/bin/pyton3"));
  EXPECT_THAT(r.err, HasSubstr("NOT_FOUND"));
}

TEST_F(BinariesTest, FloodOnBothStreamsCompletesAndReportsTruncation) {
  ProcessResult r = Execctl(
      {"run", "--", "/bin/sh", "-c", "head -c 50000000 /dev/zero; head -c 50000000 /dev/zero >&2"});
  EXPECT_FALSE(r.timed_out);
  EXPECT_EQ(r.out.size(), 1u << 20);
  EXPECT_THAT(r.err, HasSubstr("output truncated (stdout"));
  EXPECT_EQ(r.exit_code, 128 + SIGKILL);
}

// The chunk size reaches the server: in range the output arrives whole, out of range the
// server's reason is printed.
TEST_F(BinariesTest, RunStreamChunkBytesGoesToTheServer) {
  const std::string seq = testing::RunProcess({"/usr/bin/seq", "1", "20000"}).out;
  ProcessResult r =
      Execctl({"run", "--stream", "--stream_chunk_bytes=1000", "--", "/usr/bin/seq", "1", "20000"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(r.out == seq) << r.out.size() << " bytes, want " << seq.size();
  r = Execctl({"run", "--stream", "--stream_chunk_bytes=1000000000", "--", "/bin/true"});
  EXPECT_EQ(r.exit_code, 125);
  EXPECT_THAT(r.err, HasSubstr("stream_chunk_bytes"));
}

TEST_F(BinariesTest, StdinEnvAndStream) {
  ProcessResult r = Execctl({"run", "--stdin=-", "--env", "WHO=world", "--stream", "--", "/bin/sh",
                             "-c", "cat; echo \"hello $WHO\" >&2"},
                            "piped\n");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "piped\n");
  EXPECT_EQ(r.err, "hello world\n");
}

TEST_F(BinariesTest, RunPipesAtQuotedBarsWithoutAShell) {
  ProcessResult r = Execctl(
      {"run", "--stdin=-", "--", "sort", "|", "uniq", "-c", "|", "sort", "-rn", "|", "head", "-n1"},
      "b\na\nb\n");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "      2 b\n");
  // The last program's code, or with --pipefail the last failing one's.
  EXPECT_EQ(Execctl({"run", "--", "/bin/sh", "-c", "exit 3", "|", "cat"}).exit_code, 0);
  EXPECT_EQ(Execctl({"run", "--pipefail", "--", "/bin/sh", "-c", "exit 3", "|", "cat"}).exit_code,
            3);
  ProcessResult dangling = Execctl({"run", "--", "cat", "|"});
  EXPECT_EQ(dangling.exit_code, 125);
  EXPECT_THAT(dangling.err, HasSubstr("no program after it"));
}

// --cache=read-write: the second identical run is answered from the server's cache (the
// command appends to a file each time it really runs), with the same output and exit.
TEST_F(BinariesTest, RunWithCacheAnswersTheSecondIdenticalRunFromTheCache) {
  char dir[] = "/tmp/execctl-cache-XXXXXX";
  ASSERT_NE(mkdtemp(dir), nullptr);
  const std::string counter = absl::StrCat(dir, "/runs");
  const std::vector<std::string> run = {"run",
                                        "--cache=read-write",
                                        "--cache_ttl=1m",
                                        "--",
                                        "/bin/sh",
                                        "-c",
                                        absl::StrCat("echo ran >> ", counter, "; echo result")};
  ProcessResult first = Execctl(run);
  ProcessResult second = Execctl(run);
  EXPECT_EQ(first.exit_code, 0) << first.err;
  EXPECT_EQ(second.exit_code, 0) << second.err;
  EXPECT_EQ(first.out, "result\n");
  EXPECT_EQ(second.out, "result\n");
  std::ifstream in(counter);
  std::string runs((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(runs, "ran\n");  // Ran once.
  // refresh runs it again.
  std::vector<std::string> refresh = run;
  refresh[1] = "--cache=refresh";
  EXPECT_EQ(Execctl(refresh).exit_code, 0);
  std::ifstream again(counter);
  runs.assign(std::istreambuf_iterator<char>(again), std::istreambuf_iterator<char>());
  EXPECT_EQ(runs, "ran\nran\n");
  unlink(counter.c_str());
  rmdir(dir);
}

TEST_F(BinariesTest, SignalledCommandExitsWith128PlusSignal) {
  ProcessResult r = Execctl({"run", "--", "/bin/sh", "-c", "kill -KILL $$"});
  EXPECT_EQ(r.exit_code, 128 + SIGKILL);
}

TEST_F(BinariesTest, StatusReportsTheResultCache) {
  ASSERT_EQ(Execctl({"run", "--cache=read-write", "--", "/bin/echo", "hi"}).exit_code, 0);
  ProcessResult r = Execctl({"status"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("cache "));
  EXPECT_THAT(r.out, HasSubstr(" 1 entries"));
  // Nothing runs: nothing is reserved, of a budget the server set at start.
  EXPECT_THAT(r.out, ::testing::ContainsRegex("memory 0 of [1-9][0-9]* bytes reserved"));
}

// Output execctl could not write is a failure of execctl's, not the command's success.
TEST_F(BinariesTest, OutputThatCannotBeWrittenIsAnError) {
  for (const char* mode : {"--timeout=30s", "--stream"}) {
    ProcessResult r =
        RunProcess({"/bin/sh", "-c", "exec \"$@\" > /dev/full", "sh", EXECCTL_BIN,
                    "--target=" + server_.target(), "run", mode, "--", "/bin/echo", "hi"});
    EXPECT_EQ(r.exit_code, 125) << mode << ": " << r.err;
    EXPECT_THAT(r.err, HasSubstr("cannot write the command's stdout")) << mode;
  }
}

TEST_F(BinariesTest, HealthPrintsServing) {
  ProcessResult r = Execctl({"health"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "SERVING\n");
}

TEST_F(BinariesTest, UnreachableServerIsADistinctErrorWithAHint) {
  ProcessResult r = RunProcess({EXECCTL_BIN, "--target=127.0.0.1:1", "run", "--", "/bin/true"});
  EXPECT_EQ(r.exit_code, 125);
  EXPECT_THAT(r.err, HasSubstr("is execd running"));
}

TEST_F(BinariesTest, UsageErrorsExplainThemselves) {
  ProcessResult r = Execctl({"run", "--timeout=soon", "--", "/bin/true"});
  EXPECT_EQ(r.exit_code, 125);
  EXPECT_THAT(r.err, HasSubstr("--timeout"));
  r = Execctl({"run"});
  EXPECT_EQ(r.exit_code, 125);
  EXPECT_THAT(r.err, HasSubstr("run needs a command"));
}

TEST_F(BinariesTest, LoadtestReportsThroughputAndLatencyForExecuteAndPing) {
  for (const std::vector<std::string>& mode :
       {std::vector<std::string>{"--", "/bin/true"}, std::vector<std::string>{"--ping"}}) {
    std::vector<std::string> args = {LOADTEST_BIN, "--target=" + server_.target(),
                                     "--concurrency=4", "--requests=200", "--json"};
    args.insert(args.end(), mode.begin(), mode.end());
    ProcessResult r = RunProcess(args);
    EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
    EXPECT_THAT(r.out, HasSubstr("\"requests\":200,\"errors\":0"));
    EXPECT_THAT(r.out, HasSubstr("\"p99_ms\":"));
    // Execute: the server's own share of each request, which cannot exceed the whole.
    auto field = [&](absl::string_view name) {
      const std::string key = absl::StrCat("\"", name, "\":");
      double value = -1;
      size_t at = r.out.find(key);
      if (at == std::string::npos ||
          !absl::SimpleAtod(r.out.substr(at + key.size(), r.out.find(',', at) - at - key.size()),
                            &value)) {
        ADD_FAILURE() << "no " << name << " in " << r.out;
      }
      return value;
    };
    const double server_p50 = field("server_p50_ms");
    if (mode[0] == "--ping") {
      EXPECT_EQ(server_p50, 0) << r.out;
    } else {
      EXPECT_GT(server_p50, 0) << r.out;
      EXPECT_LE(server_p50, field("p50_ms")) << r.out;
    }
  }
}

TEST_F(BinariesTest, RequestLogHasOneLinePerRequest) {
  ASSERT_EQ(Execctl({"run", "--request_id=req-42", "--", "/bin/sh", "-c", "exit 7"}).exit_code, 7);
  ASSERT_TRUE(server_.WaitForLog("request_id=\"req-42\"", absl::Seconds(5)));
  std::string log = server_.log();
  std::string line = log.substr(log.find("request_id=\"req-42\""));
  line = line.substr(0, line.find('\n'));
  EXPECT_THAT(line, HasSubstr("argv0=\"/bin/sh\""));
  EXPECT_THAT(line, HasSubstr("termination=EXITED exit=7"));
  EXPECT_THAT(line, HasSubstr("total_ms="));
}

TEST_F(BinariesTest, ReflectionListsTheExecutorAndHealthServices) {
  auto channel = grpc::CreateChannel(server_.target(), grpc::InsecureChannelCredentials());
  auto stub = grpc::reflection::v1alpha::ServerReflection::NewStub(channel);
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
  auto stream = stub->ServerReflectionInfo(&context);
  grpc::reflection::v1alpha::ServerReflectionRequest request;
  request.set_list_services("");
  ASSERT_TRUE(stream->Write(request));
  // What grpcurl does next: fetch the descriptor of a service to build requests from.
  request.set_file_containing_symbol("execd.v1.Executor");
  ASSERT_TRUE(stream->Write(request));
  stream->WritesDone();
  grpc::reflection::v1alpha::ServerReflectionResponse response;
  std::vector<std::string> services;
  ASSERT_TRUE(stream->Read(&response));
  for (const auto& service : response.list_services_response().service()) {
    services.push_back(service.name());
  }
  ASSERT_TRUE(stream->Read(&response));
  EXPECT_GT(response.file_descriptor_response().file_descriptor_proto_size(), 0);
  while (stream->Read(&response)) {
  }
  EXPECT_TRUE(stream->Finish().ok());
  EXPECT_THAT(services, ::testing::IsSupersetOf({"execd.v1.Executor", "grpc.health.v1.Health"}));
}

TEST(ServerFlags, FlagfileIsRead) {
  std::string path = ::testing::TempDir() + "execd_flags_" + std::to_string(getpid());
  std::ofstream(path) << "--max_concurrency=3\n--kill_grace=50ms\n";
  ServerProcess server(EXECD_BIN, {"--flagfile=" + path});
  ASSERT_TRUE(server.ok()) << server.log();
  EXPECT_THAT(server.log(), HasSubstr("max_concurrency=3"));
  unlink(path.c_str());
}

TEST(ServerFlags, InconsistentFlagsStopStartUpWithAReason) {
  ProcessResult r = RunProcess({EXECD_BIN, "--listen=127.0.0.1:0", "--max_output_bytes=100000000"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.err, HasSubstr("--max_output_bytes"));
  EXPECT_THAT(r.err, HasSubstr("--max_message_bytes"));
  r = RunProcess({EXECD_BIN, "--listen=not-an-address"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.err, HasSubstr("--listen=not-an-address needs a port"));
  // A host name counts as reachable from other machines: --insecure gets past that check.
  r = RunProcess({EXECD_BIN, "--listen=not-an-address:50051", "--insecure"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.err, HasSubstr("cannot listen on --listen=not-an-address:50051"));
  r = RunProcess({EXECD_BIN, "--listen=127.0.0.1:0", "--max_queue=-1"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.err, HasSubstr("--max_queue must not be negative"));
  r = RunProcess({EXECD_BIN, "--listen=127.0.0.1:0", "--spawn_threads=-1"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.err, HasSubstr("--spawn_threads must be from 1 to 256"));
  r = RunProcess({EXECD_BIN, "--listen=127.0.0.1:0", "--spawn_threads=100000"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.err, HasSubstr("--spawn_threads must be from 1 to 256"));
  r = RunProcess({EXECD_BIN, "--listen=127.0.0.1:0", "--tuner", "--tuner_min=5", "--tuner_max=3"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.err, HasSubstr("--tuner_min (5) at most --tuner_max (3)"));
  r = RunProcess({EXECD_BIN, "--listen=127.0.0.1:0", "--tuner", "--tuner_target_p99=-1s"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.err, HasSubstr("--tuner_target_p99 must not be negative"));
}

// What an operator reads: the tuner's bounds at start-up, then a line per move with the
// window that decided it.
TEST(ServerFlags, TheTunerLogsItsBoundsAndEveryMoveWithItsReason) {
  ServerProcess server(EXECD_BIN, {"--tuner", "--max_concurrency=1", "--tuner_min=1",
                                   "--tuner_max=2", "--metrics_listen="});
  ASSERT_TRUE(server.ok()) << server.log();
  EXPECT_THAT(server.log(), HasSubstr("event=tuner_on start=1 min=1 max=2 max_from=tuner_max"));
  auto channel = grpc::CreateChannel(server.target(), grpc::InsecureChannelCredentials());
  auto stub = v1::Executor::NewStub(channel);
  const std::string gate = ::testing::TempDir() + "tuner_log_gate_" + std::to_string(getpid());
  unlink(gate.c_str());
  std::vector<grpc::Status> statuses(3);
  std::vector<std::thread> calls;
  for (grpc::Status& status : statuses) {
    calls.emplace_back([&] {
      v1::ExecuteRequest request;
      request.add_argv("/bin/sh");
      request.add_argv("-c");
      request.add_argv("while [ ! -e " + gate + " ]; do sleep 0.01; done");
      grpc::ClientContext context;
      context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
      v1::ExecuteResponse response;
      status = stub->Execute(&context, request, &response);
    });
  }
  EXPECT_TRUE(server.WaitForLog("event=tuner from=1 to=2 reason=queueing running=1 queued=2",
                                absl::Seconds(20)))
      << server.log();
  std::ofstream(gate) << "open";
  for (std::thread& call : calls) call.join();  // Bounded by the calls' deadline.
  for (const grpc::Status& status : statuses) EXPECT_TRUE(status.ok()) << status.error_message();
  unlink(gate.c_str());
}

TEST(ServerCrash, SigkillOfTheServerKillsItsDirectChildren) {
  ServerProcess server(EXECD_BIN, {});
  ASSERT_TRUE(server.ok()) << server.log();
  auto stub = v1::Executor::NewStub(
      grpc::CreateChannel(server.target(), grpc::InsecureChannelCredentials()));
  grpc::ClientContext context;
  v1::ExecuteRequest request;
  request.add_argv("/bin/sleep");
  request.add_argv("100");
  auto reader = stub->ExecuteStream(&context, request);
  v1::ExecuteEvent event;
  ASSERT_TRUE(reader->Read(&event));
  ASSERT_TRUE(event.has_started());
  pid_t child = event.started().pid();
  ASSERT_TRUE(testing::ProcessAlive(child));
  EXPECT_EQ(server.Stop(SIGKILL, absl::Seconds(10)), -1);
  // The parent-death signal takes the child with the server.
  EXPECT_TRUE(testing::WaitFor([&] { return !testing::ProcessAlive(child); }, absl::Seconds(5)));
  context.TryCancel();
}

TEST(ServerShutdown, SigtermLetsRunningCommandsFinishThenExitsZero) {
  ServerProcess server(EXECD_BIN, {"--drain_timeout=10s"});
  ASSERT_TRUE(server.ok()) << server.log();
  // A command that finishes on its own once released by the test: it waits for a file.
  std::string gate = ::testing::TempDir() + "execd_gate_" + std::to_string(getpid());
  unlink(gate.c_str());
  ProcessResult result;
  std::thread client([&] {
    result =
        RunProcess({EXECCTL_BIN, "--target=" + server.target(), "run", "--", "/bin/sh", "-c",
                    absl::StrCat("while [ ! -e ", gate, " ]; do sleep 0.01; done; echo finished")});
  });
  // Wait until the command runs (its sh is a child of execd), then ask execd to stop.
  ASSERT_NE(WaitForCommandProcess(server.pid(), "sh"), 0);
  kill(server.pid(), SIGTERM);
  ASSERT_TRUE(server.WaitForLog("event=draining", absl::Seconds(5)));
  FILE* f = fopen(gate.c_str(), "w");
  fclose(f);
  client.join();
  EXPECT_EQ(result.exit_code, 0) << result.err;
  EXPECT_EQ(result.out, "finished\n");
  EXPECT_EQ(server.Stop(0, absl::Seconds(10)), 0);
  unlink(gate.c_str());
}

TEST(ServerShutdown, SigtermKillsCommandsStillRunningAfterTheDrainTimeout) {
  ServerProcess server(EXECD_BIN, {"--drain_timeout=300ms", "--kill_grace=100ms"});
  ASSERT_TRUE(server.ok()) << server.log();
  std::string pid_file = ::testing::TempDir() + "execd_drain_" + std::to_string(getpid());
  unlink(pid_file.c_str());
  ProcessResult result;
  std::thread client([&] {
    result = RunProcess({EXECCTL_BIN, "--target=" + server.target(), "run", "--", "/bin/sh", "-c",
                         absl::StrCat("echo $$ > ", pid_file, ".tmp; mv ", pid_file, ".tmp ",
                                      pid_file, "; exec sleep 100")});
  });
  pid_t pid = 0;
  ASSERT_TRUE(testing::WaitFor(
      [&] {
        FILE* f = fopen(pid_file.c_str(), "r");
        if (f == nullptr) return false;
        bool ok = fscanf(f, "%d", &pid) == 1;
        fclose(f);
        return ok;
      },
      absl::Seconds(10)));
  kill(server.pid(), SIGTERM);
  EXPECT_EQ(server.Stop(0, absl::Seconds(10)), 0);
  client.join();
  EXPECT_NE(result.exit_code, 0);
  EXPECT_TRUE(testing::WaitFor([&] { return !testing::ProcessAlive(pid); }, absl::Seconds(2)));
  unlink(pid_file.c_str());
}

// An operator who sends a second SIGTERM (or presses Ctrl-C twice) wants the server gone
// now, not after a drain timeout of an hour.
TEST(ServerShutdown, SecondSigtermCutsTheDrainShort) {
  ServerProcess server(EXECD_BIN, {"--drain_timeout=1h", "--kill_grace=100ms"});
  ASSERT_TRUE(server.ok()) << server.log();
  ProcessResult result;
  std::thread client([&] {
    result =
        RunProcess({EXECCTL_BIN, "--target=" + server.target(), "run", "--", "/bin/sleep", "1000"});
  });
  const pid_t sleep = WaitForCommandProcess(server.pid(), "sleep");
  ASSERT_NE(sleep, 0);
  kill(server.pid(), SIGTERM);
  ASSERT_TRUE(server.WaitForLog("event=draining", absl::Seconds(5)));
  EXPECT_TRUE(testing::ProcessAlive(sleep));  // The first signal drains: it runs on.
  EXPECT_EQ(server.Stop(SIGTERM, absl::Seconds(20)), 0) << server.log();
  client.join();
  EXPECT_THAT(server.log(), HasSubstr("event=drain_cut_short"));
  EXPECT_NE(result.exit_code, 0) << result.out;
  EXPECT_TRUE(testing::WaitFor([&] { return !testing::ProcessAlive(sleep); }, absl::Seconds(2)));
}

TEST_F(BinariesTest, AttachForwardsStdinPrintsOutputAndExitsWithTheCommandsCode) {
  ProcessResult r = Execctl({"attach", "--", "/bin/cat"}, "hello\nworld\n");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "hello\nworld\n");
  r = Execctl({"attach", "--", "/bin/sh", "-c", "cat >&2; exit 3"}, "to stderr\n");
  EXPECT_EQ(r.exit_code, 3) << r.err;
  EXPECT_EQ(r.err, "to stderr\n");
  r = Execctl({"attach", "--", "/bin/sh", "-c", "kill -TERM $$"});
  EXPECT_EQ(r.exit_code, 128 + SIGTERM);
}

// A user at a terminal: execctl attach runs a remote Python REPL; Ctrl-C typed at the
// terminal interrupts the remote statement, not execctl; Ctrl-D ends the session.
TEST_F(BinariesTest, AttachDrivesARemoteReplFromATerminal) {
  OnTerminal t = StartOnTerminal({EXECCTL_BIN, "--target=" + server_.target(), "attach", "--",
                                  "/usr/bin/python3", "-i", "-q", "-u"});
  ASSERT_GE(t.pid, 0);
  auto type = [&](const std::string& keys) {
    return write(t.master, keys.data(), keys.size()) == static_cast<ssize_t>(keys.size());
  };
  std::string seen;
  // The echo of what is typed never contains the answers waited for.
  ASSERT_TRUE(type("x = 6 * 7\nprint('x is', x)\n"));
  EXPECT_TRUE(ReadUntil(t.master, &seen, "x is 42", absl::Seconds(30))) << seen;
  // Then it waits for a signal, for the Ctrl-C to interrupt.
  ASSERT_TRUE(type("import signal; print('wait' + 'ing'); signal.pause()\n"));
  EXPECT_TRUE(ReadUntil(t.master, &seen, "waiting", absl::Seconds(30))) << seen;
  ASSERT_TRUE(type("\x03"));  // Ctrl-C: the terminal sends execctl SIGINT.
  EXPECT_TRUE(ReadUntil(t.master, &seen, "KeyboardInterrupt", absl::Seconds(30))) << seen;
  ASSERT_TRUE(type("print('still', 'here')\n"));
  EXPECT_TRUE(ReadUntil(t.master, &seen, "still here", absl::Seconds(30))) << seen;
  ASSERT_TRUE(type("\x04"));  // Ctrl-D: end of input.
  const int status = WaitEnd(t.pid);
  close(t.master);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status << "\n" << seen;
}

// attach -t: the command gets a remote terminal of the local one's size; keys go through
// raw (the remote terminal echoes and interprets them), and the local terminal is restored.
TEST_F(BinariesTest, AttachWithTtyGivesTheCommandARemoteTerminal) {
  OnTerminal t = StartOnTerminal({EXECCTL_BIN, "--target=" + server_.target(), "attach", "-t", "--",
                                  "/bin/sh", "-c", "stty size; exec /usr/bin/python3 -q"},
                                 33, 77);
  ASSERT_GE(t.pid, 0);
  auto type = [&](const std::string& keys) {
    return write(t.master, keys.data(), keys.size()) == static_cast<ssize_t>(keys.size());
  };
  std::string seen;
  EXPECT_TRUE(ReadUntil(t.master, &seen, "33 77", absl::Seconds(30))) << seen;
  EXPECT_TRUE(ReadUntil(t.master, &seen, ">>> ", absl::Seconds(30))) << seen;  // No -i needed.
  ASSERT_TRUE(type("print(6 * 7)\r"));  // Enter, as a raw terminal sends it.
  EXPECT_TRUE(ReadUntil(t.master, &seen, "42", absl::Seconds(30))) << seen;
  ASSERT_TRUE(type("\x04"));  // Ctrl-D at the prompt ends python.
  const int status = WaitEnd(t.pid);
  termios after{};
  ASSERT_EQ(tcgetattr(t.master, &after), 0);
  close(t.master);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status << "\n" << seen;
  EXPECT_NE(after.c_lflag & ICANON, 0u) << "execctl left the terminal raw";
}

// execd started from a user's terminal (by a shell, so not its session leader): its
// commands share its session but cannot open that terminal as /dev/tty to read what the user
// types or write to it.
TEST(ServerTerminal, CommandsCannotReachTheTerminalExecdWasStartedFrom) {
  OnTerminal t = StartOnTerminal(
      {"/bin/sh", "-c",
       absl::StrCat(EXECD_BIN,
                    " --listen=127.0.0.1:0 --metrics_listen=127.0.0.1:0 --log_requests=false; :")});
  ASSERT_GE(t.pid, 0);
  std::string seen;
  ASSERT_TRUE(ReadUntil(t.master, &seen, "event=listening", absl::Seconds(20))) << seen;
  ASSERT_TRUE(ReadUntil(t.master, &seen, "\n", absl::Seconds(5)));
  const size_t at = seen.find(" port=");
  ASSERT_NE(at, std::string::npos) << seen;
  const std::string target =
      absl::StrCat("127.0.0.1:", seen.substr(at + 6, seen.find_first_of(" \r\n", at + 6) - at - 6));
  ProcessResult r =
      RunProcess({EXECCTL_BIN, "--target=" + target, "run", "--", "/bin/sh", "-c",
                  "if (: <>/dev/tty) 2>/dev/null; then echo reached; else echo unreachable; fi; "
                  "cat /proc/$$/stat"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, ::testing::StartsWith("unreachable\n"));
  // After "pid (comm)": state ppid pgrp session: the shell's session, the terminal's.
  const std::string stat = r.out.substr(r.out.find('\n') + 1);
  std::vector<std::string> fields = absl::StrSplit(stat.substr(stat.rfind(')') + 2), ' ');
  ASSERT_GE(fields.size(), 4u) << stat;
  EXPECT_EQ(fields[3], absl::StrCat(t.pid)) << "session";
  kill(-t.pid, SIGTERM);  // execd is in the shell's process group.
  EXPECT_NE(WaitEnd(t.pid), -1);
  close(t.master);
}

// The pools file is re-read on SIGHUP: a changed pool retires its workers; a broken file
// is logged and changes nothing; the server keeps serving throughout.
TEST(ServerPools, SighupReloadsThePoolsFile) {
  testing::ScopedTempDir dir("pools");
  const std::string path = dir.path() + "/pools.textproto";
  auto write = [&](const std::string& tag) {
    std::ofstream(path) << "pool { name: \"w\" kind: PERSISTENT argv: \"" << TEST_WORKER_BIN
                        << "\" env { key: \"TAG\" value: \"" << tag
                        << "\" } min_idle: 1 max_size: 1 }\n";
  };
  write("one");
  testing::ServerProcess server(EXECD_BIN, {"--pools_config=" + path});
  ASSERT_TRUE(server.ok()) << server.log();
  auto stub = v1::Executor::NewStub(
      grpc::CreateChannel(server.target(), grpc::InsecureChannelCredentials()));
  auto worker_pid = [&]() -> int {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    v1::ExecuteRequest request;
    request.set_pool("w");
    request.add_argv("pid");
    v1::ExecuteResponse response;
    grpc::Status status = stub->Execute(&context, request, &response);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return response.pid();
  };
  auto generation = [&]() -> int64_t {
    grpc::ClientContext context;
    v1::StatusResponse response;
    EXPECT_TRUE(stub->GetStatus(&context, v1::StatusRequest(), &response).ok());
    return response.pools_size() == 1 ? response.pools(0).generation() : -1;
  };
  const int first = worker_pid();
  EXPECT_EQ(worker_pid(), first);  // Reused while nothing changes.

  std::ofstream(path) << "pool { name: \"w\" kind: PERSISTENT max_size: 0 }\n";  // Broken.
  kill(server.pid(), SIGHUP);
  ASSERT_TRUE(testing::WaitFor(
      [&] { return server.log().find("pools_reload_failed") != std::string::npos; },
      absl::Seconds(10)))
      << server.log();
  EXPECT_THAT(server.log(), HasSubstr("max_size must be at least 1"));
  EXPECT_EQ(worker_pid(), first);  // Still the old configuration.

  write("two");
  kill(server.pid(), SIGHUP);
  // Waits for the log line, not the generation: the line is written only after the reload
  // returns, and the new generation can show before it. Once the line is there the
  // generation shows too: the reload returns only once the pool has taken it.
  ASSERT_TRUE(server.WaitForLog("event=pools_reloaded changed=\"w\"", absl::Seconds(10)))
      << server.log();
  EXPECT_EQ(generation(), 1);
  const int second = worker_pid();
  EXPECT_NE(second, first);
  EXPECT_TRUE(testing::WaitFor([&] { return !testing::ProcessAlive(first); }, absl::Seconds(5)));

  write("two");  // Unchanged: nothing is retired.
  kill(server.pid(), SIGHUP);
  ASSERT_TRUE(testing::WaitFor(
      [&] { return server.log().find("changed=\"\"") != std::string::npos; }, absl::Seconds(10)));
  EXPECT_EQ(worker_pid(), second);
}

// Without --pools_config a SIGHUP has nothing to reload: the log says so, and the server
// keeps serving.
TEST_F(BinariesTest, SighupWithoutAPoolsFileSaysThereIsNothingToReload) {
  kill(server_.pid(), SIGHUP);
  ASSERT_TRUE(server_.WaitForLog("event=pools_reload_skipped", absl::Seconds(10))) << server_.log();
  ProcessResult r = Execctl({"run", "--", "/bin/echo", "still here"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "still here\n");
}

// A command execd stopped is no success, whatever its own exit code: a persistent worker
// that answers exit 0 with more output than the cap.
TEST(Execctl, ACommandStoppedAtALimitNeverExitsZero) {
  testing::ScopedTempDir dir("pools");
  const std::string path = dir.path() + "/pools.textproto";
  std::ofstream(path) << "pool { name: \"w\" kind: PERSISTENT argv: \"" << TEST_WORKER_BIN
                      << "\" max_size: 1 }\n";
  testing::ServerProcess server(EXECD_BIN, {"--pools_config=" + path});
  ASSERT_TRUE(server.ok()) << server.log();
  testing::ProcessResult r =
      testing::RunProcess({EXECCTL_BIN, "--target=" + server.target(), "run", "--pool=w",
                           "--max_output_bytes=5", "--", "print"});
  EXPECT_EQ(r.out, "hello");
  EXPECT_THAT(r.err, HasSubstr("output limit exceeded"));
  EXPECT_EQ(r.exit_code, 125);
}

// execctl asks for lz4 and decompresses: what it prints is the command's output, exactly.
TEST(Execctl, CompressedOutputIsPrintedAsTheCommandWroteIt) {
  testing::ServerProcess server(EXECD_BIN, {});
  ASSERT_TRUE(server.ok()) << server.log();
  // 588 KB: under the default 1 MiB cap, and compressible.
  const std::string want = testing::RunProcess({"/usr/bin/seq", "1", "100000"}).out;
  for (const char* mode : {"--timeout=30s", "--stream"}) {
    testing::ProcessResult r =
        testing::RunProcess({EXECCTL_BIN, "--target=" + server.target(), "run", mode, "--",
                             "/usr/bin/seq", "1", "100000"});
    EXPECT_EQ(r.exit_code, 0) << r.err;
    EXPECT_TRUE(r.out == want) << mode << ": " << r.out.size() << " bytes, want " << want.size();
  }
}

}  // namespace
}  // namespace execd
