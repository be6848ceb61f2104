// Worker pools through a real server and gRPC channel: pre-warmed one-shot processes and
// persistent workers (the C++ test worker, examples/workers/cpp), their sizing, recycling,
// recovery from crashes, hangs and garbage, retirement on a new executable, deadlines and
// cancels. Pools are configured through the same text format --pools_config reads.
#include <fcntl.h>
#include <grpcpp/grpcpp.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <deque>
#include <filesystem>
#include <fstream>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "core/containment.h"
#include "core/event_loop.h"
#include "core/pool.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/convert.h"
#include "server/pools_config.h"
#include "tests/support/deadline.h"
#include "tests/support/file_times.h"
#include "tests/support/freezer.h"
#include "tests/support/manual_clock.h"
#include "tests/support/subprocess.h"
#include "tests/support/test_server.h"

namespace execd {
namespace {

using ::execd::testing::AsyncCall;
using ::execd::testing::ExpectStoppedAtTheDeadline;
using ::execd::testing::ProcessAlive;
using ::execd::testing::TestServer;
using ::execd::testing::WaitFor;
using ::testing::HasSubstr;

// The pids a test's worker wrote to `path`, one per line ("echo $$ >>path").
std::vector<pid_t> PidsIn(const std::string& path) {
  std::vector<pid_t> pids;
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);) {
    pid_t pid = 0;
    if (absl::SimpleAtoi(line, &pid) && pid > 0) pids.push_back(pid);
  }
  return pids;
}

// The first pid a worker writes to `path`, once it has, within 10 s; 0 if none did.
pid_t AwaitPidIn(const std::string& path) {
  pid_t pid = 0;
  WaitFor(
      [&] {
        const std::vector<pid_t> pids = PidsIn(path);
        pid = pids.empty() ? 0 : pids.front();
        return pid > 0;
      },
      absl::Seconds(10));
  return pid;
}

// Writes `data` to the FIFO at `path` once a reader has it open (a process the test
// lets go on), within `timeout`: false if none did.
bool WriteToFifo(const std::string& path, const std::string& data, absl::Duration timeout) {
  int fd = -1;
  if (!WaitFor(
          [&] {
            fd = open(path.c_str(), O_WRONLY | O_NONBLOCK | O_CLOEXEC);
            return fd >= 0;  // ENXIO while nobody reads it.
          },
          timeout)) {
    return false;
  }
  const bool written = write(fd, data.data(), data.size()) == static_cast<ssize_t>(data.size());
  close(fd);
  return written;
}

std::string PersistentPool(const std::string& name, const std::string& extra,
                           const std::string& binary = TEST_WORKER_BIN) {
  return absl::StrCat("pool { name: \"", name, "\" kind: PERSISTENT argv: \"", binary, "\" ", extra,
                      " }\n");
}

class PoolsTest : public ::testing::Test {
 protected:
  static bool HavePython() { return access("/usr/bin/python3", X_OK) == 0; }
  static constexpr char kNoPython[] =
      "SKIPPED: /usr/bin/python3 is not installed (deploy/install-deps.sh installs it)";

  // Starts a server with a PERSISTENT pool "py" of one worker built on the shipped Python
  // library, whose handle(arguments, stdin) has the body `handler` (indented by four).
  void StartPythonWorker(const std::string& handler) {
    python_dir_ = std::make_unique<testing::ScopedTempDir>("pools");
    const std::string worker = python_dir_->path() + "/worker.py";
    std::ofstream(worker) << "import os, sys\n"
                          << "sys.path.insert(0, '" << SOURCE_DIR << "/examples/workers/python')\n"
                          << "import execd_worker\n"
                          << "def handle(arguments, stdin):\n"
                          << handler << "execd_worker.serve(handle)\n";
    StartWith(PersistentPool("py", absl::StrCat("argv: \"", worker, "\" min_idle: 1 max_size: 1"),
                             "/usr/bin/python3"));
  }

  // Starts a server with the pools of `config` (text format).
  void StartWith(const std::string& config, int max_concurrency = 8,
                 core::Containment::Mode containment = core::Containment::Mode::kAuto) {
    // One server at a time: servers of one process would share their cgroup's name.
    server_.reset();
    auto server = TestServer::Start([&](server::ServerConfig& c) {
      auto pools = server::ParsePoolsConfig(config, "test.textproto", c.policy);
      ASSERT_TRUE(pools.ok()) << pools.status();
      c.pools = *std::move(pools);
      c.max_concurrency = max_concurrency;
      c.containment = containment;
    });
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
  }

  core::PoolStats Stats(const std::string& pool) {
    for (const auto& p : server_->server().engine().PoolStatuses()) {
      if (p.name == pool) return p.stats;
    }
    ADD_FAILURE() << "no pool " << pool;
    return {};
  }

  // Waits (bounded) until the pool's stats satisfy `condition`.
  bool WaitForStats(const std::string& pool,
                    const std::function<bool(const core::PoolStats&)>& condition) {
    return WaitFor([&] { return condition(Stats(pool)); }, absl::Seconds(20));
  }

  v1::ExecuteRequest Pooled(const std::string& pool, std::vector<std::string> args,
                            const std::string& stdin_data = "") {
    v1::ExecuteRequest r;
    r.set_pool(pool);
    for (auto& a : args) r.add_argv(a);
    r.set_stdin(stdin_data);
    return r;
  }

  // Runs a request that must succeed with exit 0; returns its stdout.
  std::string Run(const v1::ExecuteRequest& request) {
    v1::ExecuteResponse response;
    grpc::Status status = server_->Execute(request, &response);
    EXPECT_TRUE(status.ok()) << status.error_message();
    EXPECT_EQ(response.termination(), v1::EXITED);
    EXPECT_EQ(response.exit_code(), 0) << response.stderr();
    return response.stdout();
  }

  pid_t WorkerPid(const std::string& pool) {
    std::string out = Run(Pooled(pool, {"pid"}));
    int pid = 0;
    EXPECT_TRUE(absl::SimpleAtoi(out, &pid)) << out;
    return pid;
  }

  // This process's live children: the pools' processes of this (in-process) server. Not
  // zombies: once a process-group test has made this process a subreaper, what earlier
  // tests' commands left behind with cgroups comes to it and is never reaped.
  static std::vector<pid_t> LiveChildren() {
    std::vector<pid_t> live;
    for (pid_t child : testing::ChildrenOf(getpid())) {
      if (ProcessAlive(child)) live.push_back(child);
    }
    return live;
  }

  std::unique_ptr<testing::ScopedTempDir> python_dir_;  // Outlives the server using it.
  std::unique_ptr<TestServer> server_;
};

// ---- PREWARMED ----

TEST_F(PoolsTest, PrewarmedProcessesWaitAheadOfDemandAndTheRequestGetsOne) {
  StartWith(R"pb(
    pool {
      name: "sh"
      kind: PREWARMED
      argv: "/bin/sh"
      argv: "-c"
      argv: "echo $$; exec cat"
      min_idle: 2
      max_size: 4
    })pb");
  ASSERT_TRUE(WaitForStats("sh", [](const core::PoolStats& s) { return s.idle == 2; }));
  // The processes exist before any request: children of this (in-process) server.
  std::vector<pid_t> before = LiveChildren();
  v1::ExecuteResponse response;
  ASSERT_TRUE(server_->Execute(Pooled("sh", {}, "hello"), &response).ok());
  std::vector<std::string> lines = absl::StrSplit(response.stdout(), '\n');
  ASSERT_EQ(lines.size(), 2u) << response.stdout();
  EXPECT_EQ(lines[1], "hello");
  EXPECT_EQ(std::to_string(response.pid()), lines[0]);
  EXPECT_THAT(before, ::testing::Contains(response.pid())) << "the request got a fresh spawn";
  EXPECT_EQ(response.termination(), v1::EXITED);
  // One-shot: it is gone, and the pool refills to min_idle.
  EXPECT_FALSE(ProcessAlive(response.pid()));
  ASSERT_TRUE(
      WaitForStats("sh", [](const core::PoolStats& s) { return s.idle == 2 && s.started == 3; }));
  v1::ExecuteResponse second;
  ASSERT_TRUE(server_->Execute(Pooled("sh", {}, "again"), &second).ok());
  EXPECT_NE(second.pid(), response.pid());
  EXPECT_THAT(second.stdout(), HasSubstr("again"));
  EXPECT_THAT(second.stdout(), ::testing::Not(HasSubstr("hello")));
}

TEST_F(PoolsTest, PrewarmedBurstGrowsTheReserveAndEveryRequestIsServed) {
  StartWith(R"pb(
    pool { name: "cat" kind: PREWARMED argv: "/bin/cat" min_idle: 1 max_size: 8 })pb");
  ASSERT_TRUE(WaitForStats("cat", [](const core::PoolStats& s) { return s.idle == 1; }));
  std::vector<std::unique_ptr<AsyncCall>> calls;
  for (int i = 0; i < 6; ++i) {
    calls.push_back(std::make_unique<AsyncCall>());
    calls.back()->request = Pooled("cat", {}, absl::StrCat("input ", i));
    calls.back()->Start(server_->stub());
  }
  for (int i = 0; i < 6; ++i) {
    ASSERT_TRUE(calls[i]->Wait());
    ASSERT_TRUE(calls[i]->status.ok()) << calls[i]->status.error_message();
    EXPECT_EQ(calls[i]->response.stdout(), absl::StrCat("input ", i));
  }
  core::PoolStats s = Stats("cat");
  EXPECT_EQ(s.served, 6);
  EXPECT_GE(s.misses, 1);  // The burst outran min_idle...
  // ...so the pool keeps more than min_idle ready afterwards.
  EXPECT_TRUE(WaitForStats("cat", [](const core::PoolStats& s) { return s.idle >= 2; }));
}

TEST_F(PoolsTest, PrewarmedDeadlineKillsTheProcess) {
  StartWith(R"pb(
    pool {
      name: "slow"
      kind: PREWARMED
      argv: "/bin/sh"
      argv: "-c"
      argv: "cat >/dev/null; exec sleep 30"
      min_idle: 1
      max_size: 2
    })pb");
  ASSERT_TRUE(WaitForStats("slow", [](const core::PoolStats& s) { return s.idle == 1; }));
  std::set<pid_t> before;
  for (pid_t p : LiveChildren()) before.insert(p);
  v1::ExecuteResponse response;
  absl::Time start = absl::Now();
  grpc::Status status =
      server_->Execute(Pooled("slow", {}), &response, /*deadline=*/absl::Milliseconds(300));
  ExpectStoppedAtTheDeadline(status, response);
  EXPECT_LT(absl::Now() - start, absl::Seconds(2));
  // The process that took the request is killed and reaped.
  ASSERT_EQ(before.size(), 1u);  // The one pre-warmed process: it took the request.
  EXPECT_TRUE(WaitFor([&] { return !ProcessAlive(*before.begin()); }, absl::Seconds(5)));
  EXPECT_TRUE(WaitForStats("slow", [](const core::PoolStats& s) { return s.busy == 0; }));
}

// The caller gives up (a cancel) while its pre-warmed process runs: the process and what
// it started are killed and reaped, and the pool serves the next request.
TEST_F(PoolsTest, PrewarmedCancelKillsTheProcess) {
  StartWith(R"pb(
    pool {
      name: "slow"
      kind: PREWARMED
      argv: "/bin/sh"
      argv: "-c"
      argv: "read x; sleep 100 & echo $!; exec sleep 100"
      min_idle: 1
      max_size: 1
    })pb");
  ASSERT_TRUE(WaitForStats("slow", [](const core::PoolStats& s) { return s.idle == 1; }));
  const std::vector<pid_t> before = LiveChildren();
  ASSERT_EQ(before.size(), 1u);  // The one pre-warmed process: it takes the request.
  AsyncCall call;
  call.request = Pooled("slow", {}, "go\n");
  call.Start(server_->stub());
  ASSERT_TRUE(WaitForStats("slow", [](const core::PoolStats& s) { return s.busy == 1; }));
  // Its background child exists once the shell forked it: a child of the shell.
  pid_t left = 0;
  ASSERT_TRUE(WaitFor(
      [&] {
        std::vector<pid_t> children = testing::ChildrenOf(before[0]);
        if (!children.empty()) left = children[0];
        return left != 0;
      },
      absl::Seconds(10)));
  call.context.TryCancel();
  ASSERT_TRUE(call.Wait());
  EXPECT_EQ(call.status.error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_TRUE(
      WaitFor([&] { return !ProcessAlive(before[0]) && !ProcessAlive(left); }, absl::Seconds(5)));
  EXPECT_TRUE(WaitForStats("slow", [](const core::PoolStats& s) { return s.busy == 0; }));
  // The pool refills and serves again (its one slot was given back).
  ASSERT_TRUE(WaitForStats("slow", [](const core::PoolStats& s) { return s.idle == 1; }));
}

TEST_F(PoolsTest, PrewarmedRequestTakesNoArguments) {
  StartWith(R"pb(
    pool { name: "cat" kind: PREWARMED argv: "/bin/cat" max_size: 1 })pb");
  v1::ExecuteResponse response;
  grpc::Status status = server_->Execute(Pooled("cat", {"x"}), &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("send the input as stdin"));
}

// With exit_report, a process that reports its exit (after its output ended) is answered
// at once, with the code and resource use it reported, and killed and reaped afterwards:
// this one would otherwise sleep into its timeout.
TEST_F(PoolsTest, PrewarmedExitReportAnswersBeforeTheProcessEnds) {
  for (auto mode : {core::Containment::Mode::kAuto, core::Containment::Mode::kProcessGroup}) {
    SCOPED_TRACE(mode == core::Containment::Mode::kAuto ? "auto" : "process groups");
    // It leaves a child behind (not holding its output), and sleeps after its report.
    StartWith(R"pb(
                pool {
                  name: "sh"
                  kind: PREWARMED
                  argv: "/bin/sh"
                  argv: "-c"
                  argv: "echo ready >&3; read x; sleep 100 </dev/null >/dev/null 2>&1 & "
                        "echo got $x fd=$EXECD_EXIT_FD left=$!; echo err >&2; "
                        "exec 1>&- 2>&-; echo 'exit 7 1500 2500 3000' >&3; exec sleep 100"
                  exit_report: true
                  min_idle: 1
                  max_size: 2
                  timeout { seconds: 20 }
                })pb",
              8, mode);
    v1::ExecuteResponse response;
    ASSERT_TRUE(server_->Execute(Pooled("sh", {}, "hi\n"), &response).ok());
    EXPECT_EQ(response.termination(), v1::EXITED);
    EXPECT_EQ(response.exit_code(), 7);
    EXPECT_THAT(response.stdout(), ::testing::StartsWith("got hi fd=3 left="));
    EXPECT_EQ(response.stderr(), "err\n");
    EXPECT_EQ(server::DurationFromProto(response.usage().user_cpu()), absl::Microseconds(1500));
    EXPECT_EQ(server::DurationFromProto(response.usage().system_cpu()), absl::Microseconds(2500));
    EXPECT_EQ(response.usage().max_rss_bytes(), 3000 * 1024);
    int left = 0;
    ASSERT_TRUE(absl::SimpleAtoi(
        absl::StripAsciiWhitespace(response.stdout().substr(response.stdout().find("left=") + 5)),
        &left))
        << response.stdout();
    // Neither the process (sleeping after its report) nor the child it left outlives the
    // answer by long.
    EXPECT_TRUE(WaitFor([&] { return !ProcessAlive(response.pid()) && !ProcessAlive(left); },
                        absl::Seconds(5)));
    EXPECT_TRUE(WaitForStats("sh", [](const core::PoolStats& s) { return s.busy == 0; }));
  }
}

// The report line's grammar: "exit CODE USER_US SYSTEM_US MAX_RSS_KIB" and a newline,
// CODE 0-255, the rest non-negative and in range. Anything else is no report: the real
// exit status (9 here) is the answer. The request's stdin is the line the worker reports.
// The worker exits only once execd has read the line and closed the pipe (its `cat`
// then dies of SIGPIPE): exiting at once, its exit could be seen before its report.
TEST_F(PoolsTest, OnlyAWellFormedReportLineIsTakenForTheExit) {
  StartWith(R"pb(
    pool {
      name: "sh"
      kind: PREWARMED
      argv: "/bin/sh"
      argv: "-c"
      argv: "echo ready >&3; IFS= read -r line; read -r end; exec 1>&- 2>&-; "
            "if [ $end = newline ]; then printf '%s\\n' \"$line\" >&3; "
            "else printf '%s' \"$line\" >&3; fi; cat /dev/zero >&3; exit 9"
      exit_report: true
      min_idle: 1
      max_size: 4
    })pb");
  struct Case {
    std::string line;  // Sent with its newline unless `no_newline`.
    int want;
    bool no_newline = false;
  } cases[] = {
      {"exit 4 10 20 30", 4},
      {"exit 0 0 0 0", 0},
      {"exit 255 0 0 0", 255},
      {"exit 4 10 20 30", 9, /*no_newline=*/true},
      {"exit 256 0 0 0", 9},
      {"exit -1 0 0 0", 9},
      {"exit 4 -1 0 0", 9},
      {"exit 4 0 0", 9},
      {"exit 4 0 0 0 0", 9},
      {"exit 4 x 0 0", 9},
      {"Exit 4 0 0 0", 9},
      {"exit  4 0 0 0", 9},
      {"exit 4 1125899906842625 0 0", 9},  // 2^50 + 1 us: not a CPU time.
      {"exit 4 0 0 0 " + std::string(200, 'x'), 9},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.line);
    v1::ExecuteResponse response;
    const std::string stdin_data = c.line + (c.no_newline ? "\nnone\n" : "\nnewline\n");
    ASSERT_TRUE(server_->Execute(Pooled("sh", {}, stdin_data), &response).ok());
    EXPECT_EQ(response.termination(), v1::EXITED);
    EXPECT_EQ(response.exit_code(), c.want);
  }
}

// With exit_report, a process's start-up check is its "ready" line: until then it is
// starting, not idle, and a request waits for it rather than being handed a process that
// is still warming up (as long to answer as a cold start). This one warms up until the
// test writes to its FIFO, and its line comes in two writes.
TEST_F(PoolsTest, APrewarmedProcessWithAReportServesOnlyOnceItSaysReady) {
  testing::ScopedTempDir dir("ready");
  const std::string fifo = dir.path() + "/go";
  ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0);
  StartWith(absl::StrCat(
      "pool { name: \"sh\" kind: PREWARMED argv: \"/bin/sh\" argv: \"-c\" ",
      "argv: \"printf rea >&3; read go <", fifo, "; echo dy >&3; read x; echo got $x; ",
      "exec 1>&- 2>&-; echo 'exit 0 0 0 0' >&3\" ", "exit_report: true min_idle: 1 max_size: 1 }"));
  ASSERT_TRUE(WaitForStats("sh", [](const core::PoolStats& s) { return s.started == 1; }));
  EXPECT_EQ(Stats("sh").idle, 0);
  EXPECT_EQ(Stats("sh").starting, 1);
  AsyncCall call;
  call.request = Pooled("sh", {}, "hi\n");
  call.Start(server_->stub());
  ASSERT_TRUE(WaitForStats("sh", [](const core::PoolStats& s) { return s.misses == 1; }))
      << "the request was handed the process before it was ready";
  ASSERT_TRUE(WriteToFifo(fifo, "go\n", absl::Seconds(10)));
  ASSERT_TRUE(call.Wait());
  ASSERT_TRUE(call.status.ok()) << call.status.error_message();
  EXPECT_EQ(call.response.stdout(), "got hi\n");
  EXPECT_EQ(call.response.exit_code(), 0);
  EXPECT_EQ(Stats("sh").crashed, 0);
}

// A process that will not be ready (it says something else, exits first, or stays silent
// past startup_timeout) is killed and counted as crashed; the request waiting for it gets
// a clear error rather than a process that never warmed up.
TEST_F(PoolsTest, APrewarmedProcessThatNeverSaysReadyIsReplacedAndTheRequestToldWhy) {
  struct Case {
    std::string script;
    std::string why;
  } cases[] = {
      {"echo hello >&3; exec cat", "wrote \"hello\" on its report descriptor"},
      {"exit 0", "closed its report descriptor, or exited, before it reported"},
      {"exec cat", "did not report \"ready\" within the startup_timeout of 200ms"},
      {"printf 'ready\\\\nexit 0 0 0 0\\\\n' >&3; exec cat", "wrote more after \"ready\""},
      {"printf %0200d 0 >&3; exec cat", "too long a line"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.script);
    StartWith(absl::StrCat("pool { name: \"sh\" kind: PREWARMED argv: \"/bin/sh\" argv: \"-c\" ",
                           "argv: \"", c.script, "\" exit_report: true max_size: 1 ",
                           "startup_timeout { nanos: 200000000 } }"));
    v1::ExecuteResponse response;
    grpc::Status status = server_->Execute(Pooled("sh", {}, "x\n"), &response, absl::Seconds(10));
    EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << status.error_message();
    EXPECT_THAT(status.error_message(), HasSubstr("could not start a worker"));
    EXPECT_THAT(status.error_message(), HasSubstr(c.why));
    EXPECT_GE(Stats("sh").crashed, 1);
    EXPECT_EQ(Stats("sh").served, 0);
    EXPECT_TRUE(WaitForStats("sh", [](const core::PoolStats& s) { return s.started >= 2; }))
        << "no replacement was started";
  }
}

// A new configuration retires a process still warming up, as it does idle ones: killed,
// counted as recycled, and the request is served under the new configuration.
TEST_F(PoolsTest, AReloadRetiresAProcessStillWarmingUp) {
  testing::ScopedTempDir dir("ready");
  const std::string fifo = dir.path() + "/go";
  ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0);
  auto config = [&](const std::string& before_ready) {
    return absl::StrCat("pool { name: \"sh\" kind: PREWARMED argv: \"/bin/sh\" argv: \"-c\" ",
                        "argv: \"echo $$ >>", dir.path(), "/pids; ", before_ready,
                        "echo ready >&3; read x; echo $x; exec 1>&- 2>&-; ",
                        "echo 'exit 0 0 0 0' >&3\" exit_report: true min_idle: 1 max_size: 1 }");
  };
  StartWith(config(absl::StrCat("read go <", fifo, "; echo old; ")));
  ASSERT_TRUE(WaitForStats("sh", [](const core::PoolStats& s) { return s.starting == 1; }));
  const pid_t old_pid = AwaitPidIn(dir.path() + "/pids");
  ASSERT_GT(old_pid, 0);
  auto reloaded =
      server::ParsePoolsConfig(config(""), "t", core::RequestPolicy::FromProcessEnvironment());
  ASSERT_TRUE(reloaded.ok()) << reloaded.status();
  auto changed = server_->server().engine().ReloadPools(*std::move(reloaded));
  ASSERT_TRUE(changed.ok()) << changed.status();
  ASSERT_TRUE(WaitForStats("sh", [](const core::PoolStats& s) {
    return s.recycled == 1 && s.idle == 1 && s.starting == 0;
  }));
  EXPECT_TRUE(WaitFor([&] { return !ProcessAlive(old_pid); }, absl::Seconds(5)));
  EXPECT_EQ(Run(Pooled("sh", {}, "new\n")), "new\n");
  EXPECT_EQ(Stats("sh").crashed, 0);
}

// A PREWARMED process that cannot say it is ready (no exit_report) counts as idle from
// its spawn, maybe still starting up: the oldest is handed out first, not the refill
// that has just been spawned.
TEST_F(PoolsTest, APrewarmedPoolWithoutReadinessHandsOutItsOldestProcess) {
  testing::ScopedTempDir dir("oldest");
  const std::string pids = dir.path() + "/pids";
  StartWith(absl::StrCat("pool { name: \"sh\" kind: PREWARMED argv: \"/bin/sh\" argv: \"-c\" ",
                         "argv: \"echo $$ >>", pids, "; exec cat\" min_idle: 2 max_size: 3 }"),
            8, core::Containment::Mode::kProcessGroup);
  ASSERT_TRUE(WaitForStats("sh", [](const core::PoolStats& s) { return s.idle == 2; }));
  std::vector<pid_t> first;
  ASSERT_TRUE(WaitFor([&] { return (first = PidsIn(pids)).size() == 2; }, absl::Seconds(10)));
  v1::ExecuteResponse one;
  ASSERT_TRUE(server_->Execute(Pooled("sh", {}, "1"), &one).ok());
  ASSERT_TRUE(
      WaitForStats("sh", [](const core::PoolStats& s) { return s.started == 3 && s.idle == 2; }));
  v1::ExecuteResponse two;
  ASSERT_TRUE(server_->Execute(Pooled("sh", {}, "2"), &two).ok());
  EXPECT_THAT(first, ::testing::Contains(one.pid()));
  EXPECT_THAT(first, ::testing::Contains(two.pid())) << "the refill was handed out first";
  EXPECT_NE(one.pid(), two.pid());
}

// Without cgroup joins by write (here, process groups: no cgroup at all) each process
// taken is replaced at once, not when half the pool is gone: the next request gets one
// that has just warmed up, and no batch of start-ups competes with it.
TEST_F(PoolsTest, APrewarmedPoolReplacesEachProcessItHandsOut) {
  StartWith(R"pb(
              pool { name: "cat" kind: PREWARMED argv: "/bin/cat" min_idle: 3 max_size: 4 })pb",
            8, core::Containment::Mode::kProcessGroup);
  ASSERT_TRUE(WaitForStats("cat", [](const core::PoolStats& s) { return s.idle == 3; }));
  EXPECT_EQ(Run(Pooled("cat", {}, "x")), "x");
  EXPECT_TRUE(WaitForStats(
      "cat", [](const core::PoolStats& s) { return s.started == 4 && s.idle == 3 && s.busy == 0; }))
      << "not replaced: idle " << Stats("cat").idle << ", started " << Stats("cat").started;
}

// With process-group containment the engine tracks each command's leader until it is
// reaped, so the orphan sweep leaves it alone (and no kill aims at its pid once free). A
// leader answered from its report is still being torn down, here frozen: it stays tracked.
TEST_F(PoolsTest, AProcessAnsweredFromItsReportStaysTrackedUntilReaped) {
  std::string why;
  std::unique_ptr<testing::Freezer> freezer = testing::Freezer::Create(&why);
  if (freezer == nullptr) GTEST_SKIP() << why;
  testing::ScopedTempDir dir("report");
  const std::string fifo = dir.path() + "/go";
  ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0);
  // The leader becomes `sleep`; a background subshell reports once the test says so.
  StartWith(absl::StrCat("pool { name: \"sh\" kind: PREWARMED argv: \"/bin/sh\" argv: \"-c\" ",
                         "argv: \"echo $$ >", dir.path(), "/pid; echo ready >&3; read x; ",
                         "( exec 1>&- 2>&-; read go <", fifo,
                         "; echo 'exit 7 0 0 0' >&3 ) & exec 1>&- 2>&-; exec sleep 100\" ",
                         "exit_report: true min_idle: 1 max_size: 1 }"),
            8, core::Containment::Mode::kProcessGroup);
  const pid_t leader = AwaitPidIn(dir.path() + "/pid");
  ASSERT_GT(leader, 0);
  AsyncCall call;
  call.request = Pooled("sh", {}, "go\n");
  call.Start(server_->stub());
  ASSERT_TRUE(WaitFor(
      [&] {
        std::string comm;
        std::getline(std::ifstream(absl::StrCat("/proc/", leader, "/comm")), comm);
        return comm == "sleep";
      },
      absl::Seconds(10)));
  ASSERT_TRUE(freezer->Freeze(leader));
  core::Engine& engine = server_->server().engine();
  ASSERT_TRUE(engine.Tracks(leader));
  std::ofstream(fifo) << "go\n";  // Opens once the subshell reads: then it reports.
  ASSERT_TRUE(call.Wait());
  ASSERT_TRUE(call.status.ok()) << call.status.error_message();
  EXPECT_EQ(call.response.exit_code(), 7);
  EXPECT_FALSE(testing::Freezer::Reaped(leader));
  EXPECT_TRUE(engine.Tracks(leader)) << "untracked while still unreaped";
  // The pool counts it until then: its one place is not free for a refill yet.
  EXPECT_EQ(Stats("sh").busy, 1);
  ASSERT_TRUE(freezer->ThawAndAwaitReaped(leader));
  EXPECT_TRUE(WaitFor([&] { return !engine.Tracks(leader); }, absl::Seconds(5)));
  EXPECT_TRUE(WaitForStats("sh", [](const core::PoolStats& s) { return s.busy == 0; }));
}

// With process-group containment, a process that left the command's process groups (a
// daemon in a session of its own) is found by the orphan sweep once its parent is gone.
// A leader answered from its report dies after the answer: the sweep comes then too.
TEST_F(PoolsTest, AReportedCommandsEscapedProcessIsSweptWithoutCgroups) {
  testing::ScopedTempDir dir("report");
  StartWith(
      absl::StrCat("pool { name: \"sh\" kind: PREWARMED argv: \"/bin/sh\" argv: \"-c\" ",
                   "argv: \"echo ready >&3; read x; setsid sleep 100 </dev/null >/dev/null 2>&1 & ",
                   "echo $! >", dir.path(), "/daemon; exec 1>&- 2>&-; ",
                   "echo 'exit 0 0 0 0' >&3; exec sleep 100\" ",
                   "exit_report: true min_idle: 1 max_size: 1 }"),
      8, core::Containment::Mode::kProcessGroup);
  v1::ExecuteResponse response;
  ASSERT_TRUE(server_->Execute(Pooled("sh", {}, "go\n"), &response).ok());
  EXPECT_EQ(response.exit_code(), 0);
  const std::vector<pid_t> daemons = PidsIn(dir.path() + "/daemon");
  ASSERT_EQ(daemons.size(), 1u) << "the command wrote no daemon pid";
  const pid_t daemon = daemons.front();
  EXPECT_TRUE(WaitFor([&] { return !ProcessAlive(daemon); }, absl::Seconds(5)))
      << "the daemon the command started outlived it";
}

// A report is believed only when it is a well-formed line and the command's output has
// ended; otherwise the exit is waited for and its real status reported. Without
// exit_report the process has no descriptor 3 and no EXECD_EXIT_FD.
TEST_F(PoolsTest, AnExitReportCountsOnlyWhenWellFormedAndTheOutputHasEnded) {
  StartWith(R"pb(
    pool {
      name: "garbage"
      kind: PREWARMED
      argv: "/bin/sh"
      argv: "-c"
      argv: "echo ready >&3; read x; exec 1>&- 2>&-; echo 'exit seven 0 0 0' >&3; exit 5"
      exit_report: true
      max_size: 1
    }
    pool {
      name: "held"
      kind: PREWARMED
      argv: "/bin/sh"
      argv: "-c"
      # A child keeps stdout open: the report cannot end the command.
      argv: "echo ready >&3; read x; sleep 100 & echo 'exit 9 0 0 0' >&3; exit 3"
      exit_report: true
      max_size: 1
    }
    pool {
      name: "plain"
      kind: PREWARMED
      argv: "/bin/sh"
      argv: "-c"
      argv: "read x; echo \"[$EXECD_EXIT_FD]\"; echo 'exit 9 0 0 0' >&3 || exit 6"
      max_size: 1
    })pb");
  v1::ExecuteResponse garbage;
  ASSERT_TRUE(server_->Execute(Pooled("garbage", {}, "\n"), &garbage).ok());
  EXPECT_EQ(garbage.termination(), v1::EXITED);
  EXPECT_EQ(garbage.exit_code(), 5);
  v1::ExecuteResponse held;
  ASSERT_TRUE(server_->Execute(Pooled("held", {}, "\n"), &held).ok());
  EXPECT_EQ(held.termination(), v1::EXITED);
  EXPECT_EQ(held.exit_code(), 3);
  v1::ExecuteResponse plain;
  ASSERT_TRUE(server_->Execute(Pooled("plain", {}, "\n"), &plain).ok());
  EXPECT_EQ(plain.exit_code(), 6);
  EXPECT_EQ(plain.stdout(), "[]\n");
  EXPECT_THAT(plain.stderr(), HasSubstr("3"));  // The shell's "Bad file descriptor".
}

// ---- PERSISTENT ----

TEST_F(PoolsTest, PersistentWorkerServesManyRequestsWithNothingLeakingBetweenThem) {
  StartWith(PersistentPool("w", "min_idle: 1 max_size: 1"));
  ASSERT_TRUE(WaitForStats("w", [](const core::PoolStats& s) { return s.idle == 1; }));
  const pid_t pid = WorkerPid("w");
  v1::ExecuteResponse first;
  ASSERT_TRUE(server_->Execute(Pooled("w", {"stderr", "secret-one"}), &first).ok());
  EXPECT_EQ(first.stderr(), "secret-one");
  for (int i = 0; i < 20; ++i) {
    v1::ExecuteResponse r;
    ASSERT_TRUE(server_->Execute(Pooled("w", {"arg", std::to_string(i)}, "in"), &r).ok());
    EXPECT_EQ(r.stdout(), absl::StrCat("in|arg ", i));  // Its own output only...
    EXPECT_EQ(r.stderr(), "");                          // ...and none of another's.
    EXPECT_EQ(r.pid(), pid);
  }
  v1::ExecuteResponse code;
  ASSERT_TRUE(server_->Execute(Pooled("w", {"exit", "7"}), &code).ok());
  EXPECT_EQ(code.termination(), v1::EXITED);
  EXPECT_EQ(code.exit_code(), 7);
  EXPECT_EQ(WorkerPid("w"), pid);
  core::PoolStats s = Stats("w");
  EXPECT_EQ(s.started, 1);
  EXPECT_EQ(s.crashed, 0);
}

TEST_F(PoolsTest, PersistentWorkerIsRecycledAfterMaxRequests) {
  StartWith(PersistentPool("w", "min_idle: 1 max_size: 1 max_requests: 3"));
  std::vector<pid_t> pids;
  for (int i = 0; i < 7; ++i) pids.push_back(WorkerPid("w"));
  EXPECT_EQ(pids[0], pids[1]);
  EXPECT_EQ(pids[1], pids[2]);
  EXPECT_NE(pids[2], pids[3]);
  EXPECT_EQ(pids[3], pids[5]);
  EXPECT_NE(pids[5], pids[6]);
  EXPECT_TRUE(WaitFor([&] { return !ProcessAlive(pids[0]); }, absl::Seconds(5)));
  EXPECT_EQ(Stats("w").recycled, 2);
}

TEST_F(PoolsTest, IdleWorkersAboveMinIdleExitAfterIdleTimeout) {
  StartWith(PersistentPool("w", "min_idle: 1 max_size: 3 idle_timeout { nanos: 200000000 }"));
  ASSERT_TRUE(WaitForStats("w", [](const core::PoolStats& s) { return s.idle == 1; }));
  // Three at once need three workers.
  std::vector<std::unique_ptr<AsyncCall>> calls;
  for (int i = 0; i < 3; ++i) {
    calls.push_back(std::make_unique<AsyncCall>());
    calls.back()->request = Pooled("w", {"sleep", "200"});
    calls.back()->Start(server_->stub());
  }
  std::set<pid_t> pids;
  for (auto& c : calls) {
    ASSERT_TRUE(c->Wait());
    ASSERT_TRUE(c->status.ok()) << c->status.error_message();
    pids.insert(c->response.pid());
  }
  EXPECT_EQ(pids.size(), 3u);
  // Unused, they shrink back to min_idle, and the processes are gone.
  ASSERT_TRUE(WaitForStats("w", [](const core::PoolStats& s) {
    return s.idle == 1 && s.busy == 0 && s.starting == 0 && s.recycled >= 2;
  }));
  EXPECT_TRUE(WaitFor(
      [&] {
        int alive = 0;
        for (pid_t p : pids) alive += ProcessAlive(p) ? 1 : 0;
        return alive <= 1;
      },
      absl::Seconds(5)));
}

TEST_F(PoolsTest, ACrashingWorkerGivesAClearErrorAndIsReplaced) {
  StartWith(PersistentPool("w", "min_idle: 1 max_size: 1"));
  const pid_t first = WorkerPid("w");
  v1::ExecuteResponse response;
  grpc::Status status = server_->Execute(Pooled("w", {"crash"}), &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_THAT(status.error_message(), HasSubstr("exited with code 3"));
  EXPECT_THAT(status.error_message(), HasSubstr("replaced"));
  EXPECT_FALSE(ProcessAlive(first));
  const pid_t second = WorkerPid("w");
  EXPECT_NE(second, first);
  EXPECT_EQ(Stats("w").crashed, 1);
}

TEST_F(PoolsTest, AHungWorkerTimesOutTheRequestAndIsReplaced) {
  StartWith(PersistentPool("w", "min_idle: 1 max_size: 1 timeout { nanos: 300000000 }"));
  const pid_t first = WorkerPid("w");
  v1::ExecuteResponse response;
  absl::Time start = absl::Now();
  ASSERT_TRUE(server_->Execute(Pooled("w", {"hang"}), &response).ok());
  EXPECT_EQ(response.termination(), v1::TIMED_OUT);
  EXPECT_LT(absl::Now() - start, absl::Seconds(2));
  // Killed before the answer, and reaped once it has died (the answer does not wait).
  EXPECT_TRUE(WaitFor([&] { return testing::ProcessReaped(first); }, absl::Seconds(5)));
  EXPECT_NE(WorkerPid("w"), first);
}

// A worker that hangs in the kernel (uninterruptible sleep on a hung filesystem; here,
// frozen by a cgroup v1 freezer) cannot die of SIGKILL until it comes out. Its request
// still times out on time, the pool serves on with a new worker meanwhile, and the old
// one is reaped once it can die: execd never waits for it in waitpid.
TEST_F(PoolsTest, AWorkerStuckInTheKernelTimesOutWithoutStallingTheServer) {
  std::string why;
  std::unique_ptr<testing::Freezer> freezer = testing::Freezer::Create(&why);
  if (freezer == nullptr) GTEST_SKIP() << "SKIPPED: " << why;
  StartWith(PersistentPool("w", "min_idle: 1 max_size: 1 timeout { nanos: 300000000 }"));
  const pid_t stuck = WorkerPid("w");
  ASSERT_TRUE(freezer->Freeze(stuck));
  v1::ExecuteResponse response;
  const absl::Time start = absl::Now();
  grpc::Status status = server_->Execute(Pooled("w", {"echo"}), &response, absl::Seconds(10));
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(response.termination(), v1::TIMED_OUT);
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  // Served meanwhile, by a new worker, while the old one is still there.
  const pid_t next = WorkerPid("w");
  EXPECT_NE(next, stuck);
  EXPECT_EQ(Run(Pooled("w", {"print"})), "hello from print\n");
  EXPECT_FALSE(testing::Freezer::Reaped(stuck)) << "frozen, it cannot have died yet";
  // Unreaped, it is still execd's own: no orphan sweep may take it meanwhile.
  core::Engine& engine = server_->server().engine();
  EXPECT_TRUE(engine.Tracks(stuck));
  // Thawed, it dies of its SIGKILL and is reaped (no zombie is left), and only then is its
  // pid let go.
  EXPECT_TRUE(freezer->ThawAndAwaitReaped(stuck)) << stuck << " left unreaped";
  EXPECT_TRUE(testing::WaitFor([&] { return !engine.Tracks(stuck); }, absl::Seconds(5)));
}

// Without cgroups execd sweeps the children it adopted when a command ends, killing all
// but those it knows: pool workers, idle or replaced, are never taken for orphans.
TEST_F(PoolsTest, OrphanSweepsLeaveWorkersAloneWithoutCgroups) {
  StartWith(PersistentPool("w", "min_idle: 1 max_size: 1 timeout { nanos: 300000000 }") +
                "pool { name: \"p\" kind: PREWARMED argv: \"/bin/cat\" min_idle: 1 max_size: 2 }",
            8, core::Containment::Mode::kProcessGroup);
  const pid_t worker = WorkerPid("w");
  // A command that leaves an escaped child: the sweep after it kills that child.
  for (int i = 0; i < 3; ++i) {
    v1::ExecuteResponse r;
    ASSERT_TRUE(
        server_->Execute(TestServer::Request({"/bin/sh", "-c", "setsid sleep 100 &"}), &r).ok());
    EXPECT_EQ(Run(Pooled("p", {}, "cat")), "cat");  // Pre-warmed processes too.
  }
  EXPECT_EQ(WorkerPid("w"), worker);  // The same worker, alive through every sweep.
  // A worker killed and replaced: the sweeps go on sparing the new one.
  v1::ExecuteResponse hung;
  ASSERT_TRUE(server_->Execute(Pooled("w", {"hang"}), &hung).ok());
  EXPECT_EQ(hung.termination(), v1::TIMED_OUT);
  const pid_t replacement = WorkerPid("w");
  EXPECT_NE(replacement, worker);
  v1::ExecuteResponse r;
  ASSERT_TRUE(
      server_->Execute(TestServer::Request({"/bin/sh", "-c", "setsid sleep 100 &"}), &r).ok());
  EXPECT_EQ(WorkerPid("w"), replacement);
  EXPECT_EQ(Stats("w").crashed, 1);  // The hung one only.
}

// The same for a pre-warmed process that hangs in the kernel while it waits (its warm-up
// reading a hung filesystem, say): retiring it (here, by a reload) must not wait for it.
TEST_F(PoolsTest, RetiringAPrewarmedProcessStuckInTheKernelStallsNothing) {
  std::string why;
  std::unique_ptr<testing::Freezer> freezer = testing::Freezer::Create(&why);
  if (freezer == nullptr) GTEST_SKIP() << "SKIPPED: " << why;
  auto pool = [](int max_size) {
    return absl::StrCat("pool { name: \"p\" kind: PREWARMED argv: \"/bin/cat\" min_idle: 1 ",
                        "max_size: ", max_size, " }");
  };
  StartWith(pool(1));
  ASSERT_TRUE(WaitForStats("p", [](const core::PoolStats& s) { return s.idle == 1; }));
  std::vector<pid_t> idle;  // The pool's one process: this (in-process) server's cat.
  for (pid_t child : LiveChildren()) {
    std::string comm;
    std::getline(std::ifstream(absl::StrCat("/proc/", child, "/comm")), comm);
    if (comm == "cat") idle.push_back(child);
  }
  ASSERT_EQ(idle.size(), 1u);
  const pid_t stuck = idle[0];
  ASSERT_TRUE(freezer->Freeze(stuck));
  auto changed =
      server::ParsePoolsConfig(pool(2), "t", core::RequestPolicy::FromProcessEnvironment());
  ASSERT_TRUE(changed.ok()) << changed.status();
  ASSERT_TRUE(server_->server().engine().ReloadPools(*std::move(changed)).ok());
  // Served meanwhile by a new process, and cold commands run.
  EXPECT_EQ(Run(Pooled("p", {}, "served")), "served");
  EXPECT_EQ(Run(TestServer::Request({"/bin/echo", "cold"})), "cold\n");
  EXPECT_FALSE(testing::Freezer::Reaped(stuck)) << "frozen, it cannot have died yet";
  core::Engine& engine = server_->server().engine();
  EXPECT_TRUE(engine.Tracks(stuck));  // Execd's own until reaped, as above.
  EXPECT_TRUE(freezer->ThawAndAwaitReaped(stuck)) << stuck << " left unreaped";
  EXPECT_TRUE(testing::WaitFor([&] { return !engine.Tracks(stuck); }, absl::Seconds(5)));
}

TEST_F(PoolsTest, AWorkerWritingGarbageIsKilledAndReplaced) {
  StartWith(PersistentPool("w", "min_idle: 1 max_size: 1"));
  for (const char* how : {"garbage", "printstdout"}) {
    const pid_t before = WorkerPid("w");
    v1::ExecuteRequest request = Pooled("w", {how});
    request.mutable_limits()->mutable_timeout()->set_seconds(2);
    v1::ExecuteResponse response;
    grpc::Status status = server_->Execute(request, &response);
    // Bytes that cannot be a frame header are caught at once; bytes that can (printstdout's
    // "noise" reads as a 110-byte frame) are caught by the request's timeout.
    if (status.ok()) {
      EXPECT_EQ(response.termination(), v1::TIMED_OUT) << how;
    } else {
      EXPECT_EQ(status.error_code(), grpc::StatusCode::INTERNAL) << how;
      EXPECT_THAT(status.error_message(), HasSubstr("broke the protocol"));
    }
    EXPECT_TRUE(WaitFor([&] { return testing::ProcessReaped(before); }, absl::Seconds(5))) << how;
    EXPECT_NE(WorkerPid("w"), before) << how;
  }
}

TEST_F(PoolsTest, AWorkerThatFailsItsHealthCheckNeverServes) {
  StartWith(PersistentPool("dead", "max_size: 1", "/bin/true") +
            PersistentPool("mute", "argv: \"100\" max_size: 1 startup_timeout { nanos: 200000000 }",
                           "/bin/sleep"));  // Never answers the health check.
  v1::ExecuteResponse response;
  grpc::Status status = server_->Execute(Pooled("dead", {}), &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_THAT(status.error_message(), HasSubstr("could not start a worker"));
  status = server_->Execute(Pooled("mute", {}), &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_THAT(status.error_message(), HasSubstr("could not start a worker"));
  EXPECT_GE(Stats("dead").crashed, 1);
}

TEST_F(PoolsTest, CancelledRequestIsAnsweredByTheWorkerWhichStaysInService) {
  StartWith(PersistentPool("w", "min_idle: 1 max_size: 1"));
  const pid_t pid = WorkerPid("w");
  AsyncCall call;
  call.request = Pooled("w", {"hang"});
  call.Start(server_->stub());
  ASSERT_TRUE(WaitForStats("w", [](const core::PoolStats& s) { return s.busy == 1; }));
  absl::Time start = absl::Now();
  call.context.TryCancel();
  ASSERT_TRUE(call.Wait());
  EXPECT_EQ(call.status.error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_LT(absl::Now() - start, absl::Seconds(1));
  // The test worker honours cancel, so it was not killed.
  ASSERT_TRUE(WaitForStats("w", [](const core::PoolStats& s) { return s.idle == 1; }));
  EXPECT_EQ(WorkerPid("w"), pid);
  EXPECT_EQ(Stats("w").crashed, 0);
}

TEST_F(PoolsTest, DeadlineOnAPersistentRequestEndsItAndFreesTheWorker) {
  StartWith(PersistentPool("w", "min_idle: 1 max_size: 1"));
  const pid_t pid = WorkerPid("w");
  v1::ExecuteResponse response;
  absl::Time start = absl::Now();
  grpc::Status status =
      server_->Execute(Pooled("w", {"sleep", "30000"}), &response, absl::Milliseconds(300));
  ExpectStoppedAtTheDeadline(status, response);
  EXPECT_LT(absl::Now() - start, absl::Seconds(2));
  // Whichever came first, the server's timer (the worker is killed) or the call's cancel
  // (this worker answers it and stays), the pool serves again at once, not in 30 s.
  ASSERT_TRUE(WaitForStats("w", [](const core::PoolStats& s) { return s.busy == 0; }));
  start = absl::Now();
  const pid_t after = WorkerPid("w");
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  if (after != pid) {
    EXPECT_TRUE(WaitFor([&] { return testing::ProcessReaped(pid); }, absl::Seconds(5)));
  }
}

TEST_F(PoolsTest, OverMaxSizeRequestsQueueAndRunInTurn) {
  StartWith(PersistentPool("w", "min_idle: 1 max_size: 1"));
  AsyncCall first, second;
  first.request = Pooled("w", {"sleep", "300"}, "1");
  second.request = Pooled("w", {}, "2");
  first.Start(server_->stub());
  ASSERT_TRUE(WaitForStats("w", [](const core::PoolStats& s) { return s.busy == 1; }));
  second.Start(server_->stub());
  ASSERT_TRUE(
      WaitFor([&] { return server_->server().engine().stats().queued == 1; }, absl::Seconds(10)));
  ASSERT_TRUE(first.Wait());
  ASSERT_TRUE(second.Wait());
  EXPECT_TRUE(first.status.ok());
  ASSERT_TRUE(second.status.ok()) << second.status.error_message();
  EXPECT_EQ(second.response.stdout(), "2|");
  EXPECT_EQ(first.response.pid(), second.response.pid());
}

TEST_F(PoolsTest, ANewExecutableRetiresTheOldWorkers) {
  testing::ScopedTempDir dir("pools");
  const std::string binary = dir.path() + "/worker";
  std::filesystem::copy_file(TEST_WORKER_BIN, binary);
  std::filesystem::permissions(binary, std::filesystem::perms::owner_all);
  StartWith(PersistentPool("w", "min_idle: 1 max_size: 2", binary));
  const pid_t old_pid = WorkerPid("w");
  // Deploy a new build the way installers do: write aside, rename over.
  std::filesystem::copy_file(TEST_WORKER_BIN, binary + ".new");
  std::filesystem::permissions(binary + ".new", std::filesystem::perms::owner_all);
  std::filesystem::rename(binary + ".new", binary);
  const pid_t new_pid = WorkerPid("w");
  EXPECT_NE(new_pid, old_pid);
  EXPECT_TRUE(WaitFor([&] { return !ProcessAlive(old_pid); }, absl::Seconds(5)));
  core::PoolStats s = Stats("w");
  EXPECT_EQ(s.generation, 1);
  EXPECT_GE(s.recycled, 1);
  EXPECT_NE(WorkerPid("w"), old_pid);  // Only the new generation serves from now on.
  EXPECT_EQ(Stats("w").generation, 1);
}

// `touch -d` sets a file's modification time to anything, so a binary rewritten in place
// could keep its old one (and its size and inode); its change time it cannot keep. A running
// worker's binary cannot be rewritten (ETXTBSY): forging the time alone changes the same.
TEST_F(PoolsTest, AForgedModificationTimeDoesNotHideAChangedExecutable) {
  testing::ScopedTempDir dir("pools");
  const std::string binary = dir.path() + "/worker";
  std::filesystem::copy_file(TEST_WORKER_BIN, binary);
  std::filesystem::permissions(binary, std::filesystem::perms::owner_all);
  struct stat before;
  ASSERT_EQ(stat(binary.c_str(), &before), 0);
  StartWith(PersistentPool("w", "min_idle: 1 max_size: 1", binary));
  const pid_t old_pid = WorkerPid("w");
  ASSERT_TRUE(testing::ForgeModificationTime(binary, before.st_mtim, before.st_ctim));
  EXPECT_NE(WorkerPid("w"), old_pid);
  EXPECT_EQ(Stats("w").generation, 1);
}

TEST_F(PoolsTest, PooledRequestsMayNotOverrideWhatThePoolFixes) {
  StartWith(PersistentPool("w", "max_size: 1 timeout { seconds: 5 }"));
  struct Case {
    std::function<void(v1::ExecuteRequest&)> set;
    std::string field;
  } cases[] = {
      {[](v1::ExecuteRequest& r) { (*r.mutable_env())["A"] = "1"; }, "env"},
      {[](v1::ExecuteRequest& r) { r.set_cwd("/tmp"); }, "cwd"},
      {[](v1::ExecuteRequest& r) { r.mutable_limits()->set_memory_bytes(1 << 30); },
       "limits.memory_bytes"},
      {[](v1::ExecuteRequest& r) { r.mutable_limits()->mutable_timeout()->set_seconds(6); },
       "limits.timeout"},
  };
  for (const Case& c : cases) {
    v1::ExecuteRequest request = Pooled("w", {});
    c.set(request);
    v1::ExecuteResponse response;
    grpc::Status status = server_->Execute(request, &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << c.field;
    EXPECT_THAT(status.error_message(), HasSubstr(c.field));
  }
  v1::ExecuteResponse response;
  grpc::Status status = server_->Execute(Pooled("nope", {}), &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_THAT(status.error_message(), HasSubstr("\"w\""));
}

TEST_F(PoolsTest, AWorkerThatFailsItsHealthCheckFailsTheRequestWhileAnotherStarts) {
  // /bin/true exits at once. Two workers start for the request (max_size 2), and each
  // failure starts a replacement, so another worker is always starting when one fails.
  StartWith(PersistentPool("dead", "max_size: 2", "/bin/true"));
  v1::ExecuteResponse response;
  grpc::Status status = server_->Execute(Pooled("dead", {}), &response, absl::Seconds(10));
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << status.error_message();
  EXPECT_THAT(status.error_message(), HasSubstr("could not start a worker"));
  EXPECT_LT(Stats("dead").started, 50) << "the pool kept spawning for the request";
}

TEST_F(PoolsTest, AWorkerThatDiesRightAfterItsHealthCheckIsNotRespawnedWithoutEnd) {
  // It answers the health check (one empty frame: a single zero byte), then exits.
  StartWith(R"pb(
    pool {
      name: "flaky"
      kind: PERSISTENT
      argv: "/bin/sh"
      argv: "-c"
      argv: "head -c 1 >/dev/null; printf '\\000'; exit 1"
      min_idle: 1
      max_size: 1
    })pb");
  ASSERT_TRUE(WaitForStats("flaky", [](const core::PoolStats& s) { return s.crashed >= 1; }));
  // Like a worker that fails its health check: a few tries, then the shrink timer's pace
  // (every 5 s with the default idle_timeout), not a spawn loop.
  EXPECT_FALSE(WaitFor([&] { return Stats("flaky").started >= 50; }, absl::Seconds(3)))
      << Stats("flaky").started << " workers started";
}

// A worker that closes its stdout but lives on can answer nothing more: it is killed and
// replaced within the kill grace, and a request it gets fails at once with the reason,
// rather than the worker holding its place until a request times out on it.
TEST_F(PoolsTest, AWorkerThatClosesItsStdoutButLivesOnIsReplaced) {
  StartWith(R"pb(
    pool {
      name: "mute"
      kind: PERSISTENT
      argv: "/bin/sh"
      argv: "-c"
      argv: "head -c 1 >/dev/null; printf '\\000'; exec >&-; exec sleep 1000"
      min_idle: 1
      max_size: 1
      timeout { seconds: 60 }
    })pb");
  ASSERT_TRUE(WaitForStats("mute", [](const core::PoolStats& s) { return s.crashed >= 1; }));
  v1::ExecuteResponse response;
  const absl::Time start = absl::Now();
  grpc::Status status = server_->Execute(Pooled("mute", {"x"}), &response, absl::Seconds(60));
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INTERNAL) << status.error_message();
  EXPECT_THAT(status.error_message(), HasSubstr("closed its stdout"));
  EXPECT_LT(absl::Now() - start, absl::Seconds(30)) << "the request waited for its timeout";
}

// A worker's own stderr (not the protocol's) goes into the error of the request it fails;
// what it wrote while serving another caller's request does not.
TEST_F(PoolsTest, AWorkersErrorCarriesNoneOfAnEarlierRequestsStderr) {
  if (!HavePython()) GTEST_SKIP() << kNoPython;
  StartPythonWorker(
      "    sys.stderr.write(arguments[1] + '\\n')\n"
      "    sys.stderr.flush()\n"
      "    if arguments[0] == 'crash':\n"
      "        os._exit(3)\n"
      "    return 0\n");
  Run(Pooled("py", {"log", "secret-of-the-first-caller"}));
  v1::ExecuteResponse response;
  grpc::Status status = server_->Execute(Pooled("py", {"crash", "own-last-words"}), &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_THAT(status.error_message(), HasSubstr("own-last-words"));
  EXPECT_THAT(status.error_message(), ::testing::Not(HasSubstr("secret-of-the-first-caller")));
}

TEST_F(PoolsTest, AReloadThatChangesAPoolsKindNeverRunsARequestWithoutItsInput) {
  // The request waits for a worker that does not pass its health check...
  StartWith(PersistentPool("p", "argv: \"100\" max_size: 1 startup_timeout { seconds: 30 }",
                           "/bin/sleep"));
  AsyncCall call;
  call.request = Pooled("p", {}, "hello");
  call.Start(server_->stub(), absl::Seconds(20));
  ASSERT_TRUE(
      WaitForStats("p", [](const core::PoolStats& s) { return s.misses == 1 && s.starting == 1; }));
  // ...when a reload makes the pool PREWARMED.
  auto prewarmed = server::ParsePoolsConfig(
      "pool { name: \"p\" kind: PREWARMED argv: \"/bin/cat\" max_size: 1 }", "t",
      core::RequestPolicy::FromProcessEnvironment());
  ASSERT_TRUE(prewarmed.ok()) << prewarmed.status();
  auto changed = server_->server().engine().ReloadPools(*std::move(prewarmed));
  if (!changed.ok()) {  // Refused: the request stays with the pool it was checked for.
    EXPECT_EQ(changed.status().code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_THAT(changed.status().message(), HasSubstr("kind"));
    EXPECT_EQ(server_->server().engine().FindPool("p")->kind, core::PoolSpec::Kind::kPersistent);
    call.context.TryCancel();
    ASSERT_TRUE(call.Wait());
    return;
  }
  ASSERT_TRUE(call.Wait());
  ASSERT_TRUE(call.status.ok()) << call.status.error_message();
  EXPECT_EQ(call.response.stdout(), "hello") << "the request ran without its stdin";
}

// ---- core::Pool on its own, with the spawns run when the test says ----

class PoolUnitTest : public ::testing::Test {
 protected:
  void SetUp() override {
    StartLoop(core::MonotonicClock::Get());
    auto containment = core::Containment::Create(core::Containment::Mode::kAuto);
    ASSERT_TRUE(containment.ok()) << containment.status();
    containment_ = *std::move(containment);
  }
  void TearDown() override {
    OnLoop([&] { pool_.reset(); });
    RunSpawns();
    OnLoop([] {});
    OnLoop([] {});
    OnLoop([&] {  // What is still dying is reaped, as the engine's destructor does.
      if (reaper_ != nullptr) reaper_->Drain(absl::Seconds(5));
      reaper_.reset();
    });
  }

  // The pool's configuration, changed (a reload of it retires its workers).
  std::shared_ptr<const core::PoolSpec> Changed() const {
    auto changed = std::make_shared<core::PoolSpec>(*spec_);
    changed->fingerprint += "# changed";
    return changed;
  }
  // Kills a worker and waits until it has exited, unreaped: its pidfd is readable.
  static void KillUnreaped(pid_t pid) {
    kill(pid, SIGKILL);
    siginfo_t info;
    waitid(P_PID, pid, &info, WEXITED | WNOWAIT);
  }
  void StartLoop(const core::Clock& clock) {
    auto loop = core::EventLoop::Start(clock);
    ASSERT_TRUE(loop.ok()) << loop.status();
    loop_ = *std::move(loop);
  }
  size_t PendingSpawns() {
    absl::MutexLock lock(&mu_);
    return spawns_.size();
  }
  static core::PoolSpec Parse(const std::string& config) {
    auto specs =
        server::ParsePoolsConfig(config, "t", core::RequestPolicy::FromProcessEnvironment());
    EXPECT_TRUE(specs.ok()) << specs.status();
    return specs.ok() ? (*specs)[0] : core::PoolSpec{};
  }
  void Make(const std::string& config) { Make(Parse(config)); }
  void Make(core::PoolSpec spec) {
    spec_ = std::make_shared<const core::PoolSpec>(std::move(spec));
    core::Pool::Deps deps;
    // Killed workers that do not die at once are reaped on the loop, as the engine's are.
    reaper_ = std::make_unique<core::Reaper>(*loop_);
    deps.reap_later = [this](core::UniqueFd pidfd, absl::AnyInvocable<void() &&> reaped) {
      reaper_->Adopt(std::move(pidfd), std::move(reaped));
    };
    deps.loop = loop_.get();
    deps.os = &core::SystemProcessOs();
    deps.containment = containment_.get();
    deps.kill_grace = absl::Milliseconds(200);
    deps.run_blocking = [this](absl::AnyInvocable<void() &&> task) {
      absl::MutexLock lock(&mu_);
      spawns_.push_back(std::move(task));
    };
    deps.track = [](pid_t) {};
    deps.untrack = [](pid_t) {};
    pool_ = std::make_unique<core::Pool>(spec_, deps);
  }

  // Runs `f` on the loop thread and waits for it.
  void OnLoop(absl::AnyInvocable<void() &&> f) {
    absl::Notification done;
    loop_->Post([&]() mutable {
      std::move(f)();
      done.Notify();
    });
    done.WaitForNotification();
  }
  // Runs the spawns the pool asked for, on this thread (which outlives their processes).
  void RunSpawns() {
    std::deque<absl::AnyInvocable<void() &&>> spawns;
    {
      absl::MutexLock lock(&mu_);
      spawns.swap(spawns_);
    }
    for (auto& spawn : spawns) std::move(spawn)();
  }
  // Starts the pool, which has min_idle 1, and returns its worker's pid once it is idle.
  pid_t StartOneWorker() {
    std::vector<pid_t> before = testing::ChildrenOf(getpid());
    OnLoop([&] { pool_->Start(); });
    RunSpawns();
    EXPECT_TRUE(WaitFor([&] { return Stats().idle == 1; }, absl::Seconds(10)));
    for (pid_t pid : testing::ChildrenOf(getpid())) {
      if (std::find(before.begin(), before.end(), pid) == before.end()) return pid;
    }
    ADD_FAILURE() << "no worker process";
    return -1;
  }
  core::PoolStats Stats() {
    core::PoolStats s;
    OnLoop([&] { s = pool_->stats(); });
    return s;
  }

  testing::ManualClock manual_clock_;  // For a test that starts the loop on it.
  std::unique_ptr<core::EventLoop> loop_;
  std::unique_ptr<core::Containment> containment_;
  std::shared_ptr<const core::PoolSpec> spec_;
  std::unique_ptr<core::Reaper> reaper_;  // Loop thread only.
  std::unique_ptr<core::Pool> pool_;
  absl::Mutex mu_;
  std::deque<absl::AnyInvocable<void() &&>> spawns_;
};

class FakeRequest final : public core::Pool::Request {
 public:
  void OnProcess(std::unique_ptr<core::ChildProcess>) override { ADD_FAILURE() << "OnProcess"; }
  void OnStarted(pid_t) override {}
  void OnDone(absl::StatusOr<core::Result> result) override {
    result_ = std::move(result);
    done_.Notify();
  }
  bool done() const { return done_.HasBeenNotified(); }
  absl::StatusOr<core::Result> result_ = absl::UnknownError("none");

 private:
  absl::Notification done_;
};

TEST_F(PoolUnitTest, AFailedStartOfARetiredConfigurationDoesNotFailAWaitingRequest) {
  core::PoolSpec broken = Parse(PersistentPool("w", "max_size: 1"));
  const core::PoolSpec fixed = broken;
  broken.command.executable = "/nonexistent/worker";
  broken.fingerprint += "# broken";
  Make(broken);
  OnLoop([&] { pool_->Start(); });
  FakeRequest request;
  core::Pool::Call call;
  call.arguments = {"x"};
  call.stdin_data = "in";
  call.max_output_bytes = 1 << 20;
  call.timeout = absl::Seconds(10);
  OnLoop([&] { pool_->Acquire(&request, std::move(call)); });  // Starts a broken worker.
  // The configuration is fixed before that start fails.
  OnLoop([&] { pool_->Reconfigure(std::make_shared<const core::PoolSpec>(fixed)); });
  ASSERT_TRUE(WaitFor(
      [&] {
        RunSpawns();
        return request.done();
      },
      absl::Seconds(20)));
  ASSERT_TRUE(request.result_.ok()) << request.result_.status();
  EXPECT_EQ(request.result_->stdout_data, "in|x");
}

// A worker that never passes its start-up is replaced at once a few times, then retried
// with a growing delay, as a crash-looping container is restarted: not at every tick of
// the shrink timer for ever. Time is the loop's manual clock, so each step is exact.
TEST_F(PoolUnitTest, AWorkerThatNeverStartsIsRetriedWithAGrowingDelay) {
  StartLoop(manual_clock_);
  // idle_timeout 80 ms: the shrink timer ticks every 20 ms.
  Make(R"pb(pool {
              name: "w"
              kind: PERSISTENT
              argv: "/bin/false"
              min_idle: 1
              max_size: 1
              idle_timeout { nanos: 80000000 }
            })pb");
  OnLoop([&] { pool_->Start(); });
  auto failed = [&](int n) {
    return WaitFor([&] { return Stats().crashed == n; }, absl::Seconds(10));
  };
  // Three failures are replaced at once.
  for (int n = 1; n <= 4; ++n) {
    ASSERT_EQ(PendingSpawns(), 1u) << "failure " << n - 1;
    RunSpawns();
    ASSERT_TRUE(failed(n)) << "crashed " << Stats().crashed << ", want " << n;
  }
  // Then 1 s, 2 s: none before, one after.
  for (absl::Duration delay : {absl::Seconds(1), absl::Seconds(2)}) {
    EXPECT_EQ(PendingSpawns(), 0u);
    manual_clock_.Advance(delay - absl::Milliseconds(100));  // Many ticks, all too early.
    OnLoop([] {});
    OnLoop([] {});
    EXPECT_EQ(PendingSpawns(), 0u) << "retried before " << delay;
    manual_clock_.Advance(absl::Milliseconds(200));
    ASSERT_TRUE(WaitFor([&] { return PendingSpawns() == 1; }, absl::Seconds(10)))
        << "not retried after " << delay;
    const int crashed = Stats().crashed;
    RunSpawns();
    ASSERT_TRUE(failed(crashed + 1));
  }
}

// The loop runs what a turn posts on its next turn, after the descriptors that turn found
// ready: a retired worker's destruction, posted as it is retired, comes after them.
TEST_F(PoolUnitTest, ARetiredWorkerThatDiesBeforeItIsDestroyedIsNotCountedAsCrashed) {
  Make(PersistentPool("w", "min_idle: 1 max_size: 1"));
  const pid_t worker = StartOneWorker();
  ASSERT_GT(worker, 0);
  OnLoop([&] {
    pool_->Reconfigure(Changed());  // Retires the idle worker.
    KillUnreaped(worker);           // It dies before its destruction runs.
  });
  OnLoop([] {});
  OnLoop([] {});
  core::PoolStats s = Stats();
  EXPECT_EQ(s.recycled, 1);
  EXPECT_EQ(s.crashed, 0);
}

// Killing is not waited for, on the loop; a killed worker holds its place in max_size until
// it is reaped, so its replacement never runs beside it. (Frozen by a cgroup v1 freezer, it
// cannot die of its SIGKILL until thawed; the loop's clock does not move, so the kill grace
// cannot end its count meanwhile.)
TEST_F(PoolUnitTest, AKilledWorkerHoldsItsPlaceUntilItIsReaped) {
  std::string why;
  std::unique_ptr<testing::Freezer> freezer = testing::Freezer::Create(&why);
  if (freezer == nullptr) GTEST_SKIP() << "SKIPPED: " << why;
  StartLoop(manual_clock_);
  Make(PersistentPool("w", "min_idle: 1 max_size: 1"));
  const pid_t worker = StartOneWorker();
  ASSERT_GT(worker, 0);
  ASSERT_TRUE(freezer->Freeze(worker));
  OnLoop([&] { pool_->Reconfigure(Changed()); });  // Retires (kills) the idle worker.
  OnLoop([] {});                                   // Its destruction hands it to the reaper.
  EXPECT_EQ(PendingSpawns(), 0u) << "a replacement started beside a worker still alive";
  EXPECT_FALSE(testing::ProcessReaped(worker));
  // Thawed, it dies; its reaping starts the replacement.
  ASSERT_TRUE(freezer->ThawAndAwaitReaped(worker));
  EXPECT_TRUE(WaitFor([&] { return PendingSpawns() == 1; }, absl::Seconds(10)));
}

// One that cannot die (stuck in the kernel) counts for the kill grace only: then the pool
// serves again, with a replacement, while it is still there.
TEST_F(PoolUnitTest, AKilledWorkerThatCannotDieStopsCountingAfterTheKillGrace) {
  std::string why;
  std::unique_ptr<testing::Freezer> freezer = testing::Freezer::Create(&why);
  if (freezer == nullptr) GTEST_SKIP() << "SKIPPED: " << why;
  StartLoop(manual_clock_);
  Make(PersistentPool("w", "min_idle: 1 max_size: 1"));  // kill_grace 200 ms.
  const pid_t worker = StartOneWorker();
  ASSERT_GT(worker, 0);
  ASSERT_TRUE(freezer->Freeze(worker));
  OnLoop([&] { pool_->Reconfigure(Changed()); });
  manual_clock_.Advance(absl::Milliseconds(190));
  OnLoop([] {});
  OnLoop([] {});
  EXPECT_EQ(PendingSpawns(), 0u) << "stopped counting before the kill grace";
  manual_clock_.Advance(absl::Milliseconds(20));
  EXPECT_TRUE(WaitFor([&] { return PendingSpawns() == 1; }, absl::Seconds(10)));
  EXPECT_FALSE(testing::ProcessReaped(worker)) << "frozen, it cannot have died yet";
  EXPECT_TRUE(freezer->ThawAndAwaitReaped(worker)) << worker << " left unreaped";
}

// A worker whose health check finds its stdin closed (the write fails) has one timer armed,
// its kill once an exit would have come, not that and the start-up timeout too: a timer
// left behind would fire on the worker after it is gone.
TEST_F(PoolUnitTest, AWorkerThatClosedItsStdinBeforeItsHealthCheckLeavesNoTimerBehind) {
  StartLoop(manual_clock_);  // No timer fires.
  const core::PoolSpec spec = Parse(PersistentPool(
      "w", R"(argv: "-c" argv: "exec 0<&-; exec sleep 100" max_size: 1)", "/bin/sh"));
  class Listener final : public core::PersistentWorker::Listener {
    void OnWorkerReady(core::PersistentWorker*) override {}
    void OnWorkerResponse(core::PersistentWorker*, worker::v1::WorkResponse) override {}
    void OnWorkerFailed(core::PersistentWorker*, absl::Status) override {}
  } listener;
  auto group = containment_->NewGroup(0, 0);
  ASSERT_TRUE(group.ok()) << group.status();
  auto worker = core::PersistentWorker::Spawn(*loop_, core::SystemProcessOs(), spec.command, {},
                                              *std::move(group), &listener);
  ASSERT_TRUE(worker.ok()) << worker.status();
  const std::string its_stdin = absl::StrCat("/proc/", (*worker)->pid(), "/fd/0");
  ASSERT_TRUE(WaitFor([&] { return access(its_stdin.c_str(), F_OK) != 0; }, absl::Seconds(10)));
  size_t armed = 0;
  OnLoop([&] {
    EXPECT_TRUE((*worker)->Start().ok());
    armed = loop_->timer_count();
  });
  EXPECT_EQ(armed, 1u);
  size_t left = 1;
  OnLoop([&] {
    worker->reset();
    left = loop_->timer_count();
  });
  EXPECT_EQ(left, 0u);
}

TEST_F(PoolUnitTest, APoolDestroyedJustAfterARetireIsNotCalledByTheRetiredWorker) {
  Make(PersistentPool("w", "min_idle: 1 max_size: 1"));
  const pid_t worker = StartOneWorker();
  ASSERT_GT(worker, 0);
  // A reload, then the engine's shutdown, in one turn of the loop.
  OnLoop([&] {
    pool_->Reconfigure(Changed());
    pool_.reset();
    KillUnreaped(worker);  // The retired worker dies before its destruction runs.
  });
  OnLoop([] {});  // Under ASan: a heap-use-after-free of the pool, if the worker calls it.
  OnLoop([] {});
  EXPECT_TRUE(WaitFor([&] { return !ProcessAlive(worker); }, absl::Seconds(5)));
}

// ---- configuration ----

TEST(PoolsConfig, ErrorsNameTheLineAndTheFix) {
  core::RequestPolicy policy = core::RequestPolicy::FromProcessEnvironment();
  struct Case {
    std::string text;
    std::string want;
  } cases[] = {
      {"pool { name: \"a\" kind: PREWARMED argv: \"/bin/cat\" max_size: 1 ", "line 1"},
      {"pool { nmae: \"a\" }", "nmae"},
      {"\npool { name: \"a\" kind: PREWARMED argv: \"/bin/cat\" max_size: 0 }",
       "line 2: pool \"a\": max_size must be at least 1"},
      {"pool { name: \"a\" kind: PREWARMED argv: \"/bin/cat\" max_size: 1 min_idle: 2 }",
       "min_idle (2) exceeds max_size (1)"},
      {"pool { name: \"A b\" kind: PREWARMED argv: \"/bin/cat\" max_size: 1 }", "name must"},
      {"pool { name: \"a\" kind: PREWARMED argv: \"/bin/cat\" max_size: 1 }\n"
       "pool { name: \"a\" kind: PREWARMED argv: \"/bin/cat\" max_size: 1 }",
       "line 2: pool \"a\": name is used by an earlier pool"},
      {"pool { name: \"a\" argv: \"/bin/cat\" max_size: 1 }", "kind must be"},
      {"pool { name: \"a\" kind: PERSISTENT argv: \"/no/such/worker\" max_size: 1 }",
       "/no/such/worker"},
      {"pool { name: \"a\" kind: PREWARMED argv: \"/bin/cat\" max_size: 1 max_requests: 5 }",
       "max_requests applies to PERSISTENT"},
      {"pool { name: \"a\" kind: PERSISTENT argv: \"/bin/cat\" max_size: 1 exit_report: true }",
       "exit_report applies to PREWARMED"},
      {"pool { name: \"a\" kind: PREWARMED argv: \"/bin/cat\" max_size: 1 exit_report: true "
       "env { key: \"EXECD_EXIT_FD\" value: \"4\" } }",
       "EXECD_EXIT_FD is set by execd for exit_report"},
      {"pool { name: \"a\" kind: PERSISTENT argv: \"/bin/cat\" max_size: 1 "
       "max_requests: 3000000000 }",
       "max_requests must be at most 2147483647"},
      {"pool { name: \"a\" kind: PREWARMED argv: \"/bin/cat\" max_size: 1 "
       "timeout { seconds: 100000 } }",
       "--max_timeout"},
  };
  for (const Case& c : cases) {
    auto pools = server::ParsePoolsConfig(c.text, "pools.textproto", policy);
    ASSERT_FALSE(pools.ok()) << c.text;
    EXPECT_EQ(pools.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(pools.status().message(), HasSubstr("pools.textproto"));
    EXPECT_THAT(pools.status().message(), HasSubstr(c.want)) << c.text;
  }
}

TEST(PoolsConfig, TheShippedExampleParses) {
  core::RequestPolicy policy = core::RequestPolicy::FromProcessEnvironment();
  std::filesystem::current_path(SOURCE_DIR);  // Its worker paths are relative to the repo.
  auto pools = server::LoadPoolsConfig("deploy/pools.textproto", policy);
  ASSERT_TRUE(pools.ok()) << pools.status();
  EXPECT_GE(pools->size(), 2u);
}

// The shipped Python worker library, end to end through the server.
TEST_F(PoolsTest, ThePythonExampleWorkerServesRequests) {
  if (!HavePython()) GTEST_SKIP() << kNoPython;
  StartWith(PersistentPool(
      "py",
      absl::StrCat("argv: \"", SOURCE_DIR, "/examples/workers/python/echo_worker.py\" ",
                   "min_idle: 1 max_size: 1"),
      "/usr/bin/python3"));
  const pid_t pid = WorkerPid("py");
  EXPECT_EQ(Run(Pooled("py", {"a", "b"}, "in")), "in|a b");
  EXPECT_EQ(Run(Pooled("py", {"print"})), "hello from print\n");
  // Bytes written straight to fd 1, as a child process would: the library made fd 1 a
  // copy of stderr, so the frames are unharmed.
  EXPECT_EQ(Run(Pooled("py", {"garbage"})), "");
  v1::ExecuteResponse response;
  ASSERT_TRUE(server_->Execute(Pooled("py", {"exit", "4"}), &response).ok());
  EXPECT_EQ(response.exit_code(), 4);
  EXPECT_EQ(WorkerPid("py"), pid) << "the worker was replaced";
}

// A handler's mistakes are its request's failure, never the worker's, and never a silent
// empty success: closing sys.stdout, returning something that is not an answer, raising
// an exception that is not an Exception.
TEST_F(PoolsTest, ThePythonWorkerLibrarySurvivesAndReportsAHandlersMistakes) {
  if (!HavePython()) GTEST_SKIP() << kNoPython;
  StartPythonWorker(
      "    if arguments[0] == 'pid':\n"
      "        return 0, str(os.getpid()), b''\n"
      "    if arguments[0] == 'close':\n"
      "        print('before close')\n"
      "        sys.stdout.close()\n"
      "        return 0\n"
      "    if arguments[0] == 'bytes':\n"
      "        return stdin.upper()\n"
      "    if arguments[0] == 'interrupt':\n"
      "        raise KeyboardInterrupt\n");
  const pid_t pid = WorkerPid("py");
  EXPECT_EQ(Run(Pooled("py", {"close"})), "before close\n");
  v1::ExecuteResponse bytes;
  ASSERT_TRUE(server_->Execute(Pooled("py", {"bytes"}, "hi"), &bytes).ok());
  EXPECT_EQ(bytes.exit_code(), 1);
  EXPECT_THAT(bytes.stderr(), HasSubstr("TypeError: handler returned bytes"));
  v1::ExecuteResponse interrupted;
  ASSERT_TRUE(server_->Execute(Pooled("py", {"interrupt"}), &interrupted).ok());
  EXPECT_EQ(interrupted.exit_code(), 1);
  EXPECT_THAT(interrupted.stderr(), HasSubstr("KeyboardInterrupt"));
  EXPECT_EQ(WorkerPid("py"), pid) << "the worker died of a handler's mistake";
}

// The shipped pre-warming script: each request is a Python program on stdin, run in a
// process that imported its modules (and warmed up) before the request came.
TEST_F(PoolsTest, ThePythonPrewarmScriptRunsEachProgramLikePython) {
  if (!HavePython()) GTEST_SKIP() << kNoPython;
  // The same with and without exit_report: the program cannot tell.
  for (bool exit_report : {false, true}) {
    SCOPED_TRACE(absl::StrCat("exit_report: ", exit_report));
    StartWith(absl::StrCat("pool { name: \"py\" kind: PREWARMED argv: \"/usr/bin/python3\" ",
                           "argv: \"", SOURCE_DIR, "/examples/workers/python/prewarm.py\" ",
                           "argv: \"json\" min_idle: 2 max_size: 2 exit_report: ", exit_report,
                           " }"));
    // Only the program's output: the warm-up prints nothing. The named module is imported.
    EXPECT_EQ(Run(Pooled("py", {}, "import sys\nprint(6 * 7, 'json' in sys.modules)\n")),
              "42 True\n");
    v1::ExecuteResponse exited;
    ASSERT_TRUE(server_->Execute(Pooled("py", {}, "import sys\nsys.exit(3)\n"), &exited).ok());
    EXPECT_EQ(exited.exit_code(), 3);
    v1::ExecuteResponse raised;
    ASSERT_TRUE(server_->Execute(Pooled("py", {}, "raise ValueError('boom')\n"), &raised).ok());
    EXPECT_EQ(raised.exit_code(), 1);
    EXPECT_THAT(raised.stderr(), HasSubstr("ValueError: boom"));
    // The program runs as __main__, each in a fresh process.
    EXPECT_EQ(Run(Pooled("py", {}, "print(__name__, 'x' in globals())\nx = 1\n")),
              "__main__ False\n");
    EXPECT_EQ(Run(Pooled("py", {}, "print('x' in globals())\n")), "False\n");
    // What python3 does at exit: wait for the program's threads, run its atexit functions.
    EXPECT_EQ(Run(Pooled("py", {},
                         "import atexit, threading\n"
                         "atexit.register(print, 'at exit')\n"
                         "go = threading.Event()\n"
                         "threading.Thread(target=lambda: (go.wait(), print('thread'))).start()\n"
                         "print('main')\n"
                         "go.set()\n")),
              "main\nthread\nat exit\n");
    // Its sys.path[0] is the working directory, as for `python3 -`.
    EXPECT_EQ(Run(Pooled("py", {}, "import sys\nprint(repr(sys.path[0]))\n")), "''\n");
    // A program that closed its stdout still exits with its own status.
    v1::ExecuteResponse closed;
    ASSERT_TRUE(
        server_->Execute(Pooled("py", {}, "import sys\nsys.stdout.close()\nsys.exit(4)\n"), &closed)
            .ok());
    EXPECT_EQ(closed.exit_code(), 4) << closed.stderr();
    // No trace of the report's descriptor: the first file opened is 3, as in `python3 -`.
    EXPECT_EQ(Run(Pooled("py", {},
                         "import os\nprint(os.open('/dev/null', os.O_RDONLY), "
                         "'EXECD_EXIT_FD' in os.environ)\n")),
              "3 False\n");
    // Its resource use is its own, reported either way.
    v1::ExecuteResponse busy;
    ASSERT_TRUE(
        server_->Execute(Pooled("py", {}, "x = bytearray(64 << 20)\nsum(range(3000000))\n"), &busy)
            .ok());
    EXPECT_EQ(busy.exit_code(), 0) << busy.stderr();
    EXPECT_GT(server::DurationFromProto(busy.usage().user_cpu()), absl::Milliseconds(1));
    EXPECT_GT(busy.usage().max_rss_bytes(), 64 << 20);
    // A child the program forked ends through the same script: its exit is not the
    // program's.
    v1::ExecuteResponse forked;
    ASSERT_TRUE(server_
                    ->Execute(Pooled("py", {},
                                     "import os, sys\n"
                                     "pid = os.fork()\n"
                                     "if pid == 0:\n"
                                     "    sys.exit(5)\n"
                                     "os.waitpid(pid, 0)\n"
                                     "print('parent')\n"
                                     "sys.exit(3)\n"),
                              &forked)
                    .ok());
    EXPECT_EQ(forked.exit_code(), 3) << forked.stderr();
    EXPECT_EQ(forked.stdout(), "parent\n");
    // A program that closes every inherited descriptor (as daemons do), then opens files
    // (the second takes the report's old number, 4) still exits with its own status, and
    // the file gets only what the program wrote.
    testing::ScopedTempDir dir("prewarm");
    const std::string file = dir.path() + "/file";
    v1::ExecuteResponse closer;
    ASSERT_TRUE(server_
                    ->Execute(Pooled("py", {},
                                     absl::StrCat("import os\n"
                                                  "os.closerange(3, 1024)\n"
                                                  "null = open('/dev/null')\n"  // Takes 3.
                                                  "f = open('",
                                                  file,
                                                  "', 'w')\n"
                                                  "f.write('mine')\n"
                                                  "f.flush()\n"
                                                  "os.kept = f\n"  // Open to the end.
                                                  "print('ok')\n")),
                              &closer)
                    .ok());
    EXPECT_EQ(closer.exit_code(), 0) << closer.stderr();
    EXPECT_EQ(closer.stdout(), "ok\n");
    std::string written;
    std::getline(std::ifstream(file), written);
    EXPECT_EQ(written, "mine");
  }
}

// What prewarm.py writes on EXECD_EXIT_FD (here a file, appended to: the refill opens it
// too): "ready" once warmed up, then one report line with the program's exit code and its
// resource use, after its output.
TEST_F(PoolsTest, ThePythonPrewarmScriptReportsItsProgramsExit) {
  if (!HavePython()) GTEST_SKIP() << kNoPython;
  testing::ScopedTempDir dir("prewarm");
  const std::string report = dir.path() + "/report";
  StartWith(absl::StrCat(
      "pool { name: \"py\" kind: PREWARMED argv: \"/bin/sh\" argv: \"-c\" argv: \"exec ",
      "/usr/bin/python3 ", SOURCE_DIR, "/examples/workers/python/prewarm.py 3>>", report,
      "\" env { key: \"EXECD_EXIT_FD\" value: \"3\" } min_idle: 1 max_size: 1 }"));
  v1::ExecuteResponse response;
  ASSERT_TRUE(
      server_
          ->Execute(Pooled("py", {}, "print('out')\nsum(range(3000000))\nraise SystemExit(3)\n"),
                    &response)
          .ok());
  EXPECT_EQ(response.exit_code(), 3);
  EXPECT_EQ(response.stdout(), "out\n");
  // First its "ready", once warmed up; then the report (the refill's "ready" may follow).
  std::ifstream lines(report);
  std::string line;
  std::getline(lines, line);
  EXPECT_EQ(line, "ready");
  std::getline(lines, line);
  std::vector<std::string> words = absl::StrSplit(line, ' ');
  ASSERT_EQ(words.size(), 5u) << line;
  EXPECT_EQ(words[0], "exit");
  EXPECT_EQ(words[1], "3");
  int64_t user_us = 0, max_rss_kib = 0;
  EXPECT_TRUE(absl::SimpleAtoi(words[2], &user_us) && user_us > 1000) << line;
  EXPECT_TRUE(absl::SimpleAtoi(words[4], &max_rss_kib) && max_rss_kib > 1000) << line;
}

TEST_F(PoolsTest, AReloadRetiresOnlyThePoolsWhoseConfigurationChanged) {
  const std::string a = PersistentPool("a", "min_idle: 1 max_size: 1");
  StartWith(a + PersistentPool("b", "min_idle: 1 max_size: 1"));
  const pid_t a1 = WorkerPid("a"), b1 = WorkerPid("b");
  const core::RequestPolicy policy = core::RequestPolicy::FromProcessEnvironment();
  auto changed_b = server::ParsePoolsConfig(
      a + PersistentPool("b", "min_idle: 1 max_size: 2 env { key: \"X\" value: \"1\" }"), "t",
      policy);
  ASSERT_TRUE(changed_b.ok()) << changed_b.status();
  auto changed = server_->server().engine().ReloadPools(*std::move(changed_b));
  ASSERT_TRUE(changed.ok()) << changed.status();
  EXPECT_THAT(*changed, ::testing::ElementsAre("b"));
  EXPECT_EQ(WorkerPid("a"), a1);
  EXPECT_NE(WorkerPid("b"), b1);
  EXPECT_EQ(server_->server().engine().FindPool("b")->max_size, 2);
  // Adding or removing pools takes a restart; nothing changes.
  auto only_a = server::ParsePoolsConfig(a, "t", policy);
  ASSERT_TRUE(only_a.ok());
  auto refused = server_->server().engine().ReloadPools(*std::move(only_a));
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(refused.status().message(), HasSubstr("removed: b"));
  EXPECT_NE(server_->server().engine().FindPool("b"), nullptr);
}

}  // namespace
}  // namespace execd
