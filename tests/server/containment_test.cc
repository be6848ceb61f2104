// Process-tree control and resource limits through a real server, under each containment
// mechanism: nothing a command starts survives it, and each limit hit is reported as such.
// Survivors are counted by scanning /proc for a marker variable every descendant inherits.
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/support/freezer.h"
#include "tests/support/subprocess.h"
#include "tests/support/test_server.h"

namespace execd {
namespace {

using ::testing::HasSubstr;
using testing::TestServer;
using Mode = core::Containment::Mode;

class ContainmentTest : public ::testing::TestWithParam<Mode> {
 protected:
  void SetUp() override {
    auto server = TestServer::Start([](server::ServerConfig& c) {
      c.containment = GetParam();
      c.kill_grace = absl::Milliseconds(100);
    });
    if (!server.ok() && GetParam() == Mode::kCgroup &&
        server.status().code() == absl::StatusCode::kFailedPrecondition) {
      GTEST_SKIP() << "no writable cgroup hierarchy on this host: " << server.status();
    }
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    marker_ = "EXECD_TEST_MARKER=" + testing::UniqueName("tree");
  }

  bool cgroups() const { return GetParam() == Mode::kCgroup; }

  // A request for the test child (or any program) carrying the survivor marker.
  v1::ExecuteRequest Marked(std::initializer_list<std::string> argv) {
    v1::ExecuteRequest request = TestServer::Request(argv);
    std::string value = marker_.substr(marker_.find('=') + 1);
    (*request.mutable_env())["EXECD_TEST_MARKER"] = value;
    return request;
  }

  v1::ExecuteResponse Run(const v1::ExecuteRequest& request) {
    v1::ExecuteResponse response;
    grpc::Status status = server_->Execute(request, &response);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return response;
  }

  // True when no process carrying this test's marker is left (bounded wait: SIGKILLed
  // processes take a moment to be torn down).
  bool NoSurvivors() {
    bool none = testing::WaitFor([&] { return testing::ProcessesWithEnv(marker_).empty(); },
                                 absl::Seconds(2));
    if (!none) ADD_FAILURE() << testing::ProcessesWithEnv(marker_).size() << " survivors";
    return none;
  }

  std::unique_ptr<TestServer> server_;
  std::string marker_;
};

TEST_P(ContainmentTest, GrandchildStormLeavesNoSurvivorsWhenTheLeaderExits) {
  v1::ExecuteResponse r = Run(Marked({TEST_CHILD_BIN, "storm", "50"}));
  EXPECT_EQ(r.termination(), v1::EXITED);
  EXPECT_EQ(r.stdout(), "stormed\n");
  EXPECT_TRUE(NoSurvivors());
}

TEST_P(ContainmentTest, GrandchildStormLeavesNoSurvivorsOnTimeout) {
  v1::ExecuteRequest request =
      Marked({"/bin/sh", "-c", absl::StrCat(TEST_CHILD_BIN, " storm 50; trap '' TERM; sleep 100")});
  request.mutable_limits()->mutable_timeout()->set_nanos(500'000'000);
  v1::ExecuteResponse r = Run(request);
  EXPECT_EQ(r.termination(), v1::TIMED_OUT);
  EXPECT_TRUE(NoSurvivors());
}

TEST_P(ContainmentTest, BackgroundChildrenDieWithTheLeader) {
  v1::ExecuteResponse r = Run(Marked({"/bin/sh", "-c", "sleep 100 & sleep 100 & echo bye"}));
  EXPECT_EQ(r.stdout(), "bye\n");
  EXPECT_TRUE(NoSurvivors());
}

TEST_P(ContainmentTest, EachProgramOfAPipelineTakesItsBackgroundChildrenWithIt) {
  v1::ExecuteRequest request = Marked({"/bin/sh", "-c", "sleep 100 & echo a"});
  for (const char* script : {"sleep 100 & cat", "sleep 100 & cat; echo b"}) {
    v1::PipeStage* stage = request.add_pipe_to();
    for (const char* a : {"/bin/sh", "-c", script}) stage->add_argv(a);
  }
  v1::ExecuteResponse r = Run(request);
  EXPECT_EQ(r.stdout(), "a\nb\n");
  EXPECT_EQ(r.stages_size(), 3);
  EXPECT_TRUE(NoSurvivors());
}

TEST_P(ContainmentTest, GrandchildStormsInEveryProgramOfAPipelineEndAtTheTimeout) {
  const std::string storm = absl::StrCat(TEST_CHILD_BIN, " storm 30; trap '' TERM; ");
  v1::ExecuteRequest request = Marked({"/bin/sh", "-c", storm + "sleep 100"});
  v1::PipeStage* stage = request.add_pipe_to();
  for (const std::string& a : {std::string("/bin/sh"), std::string("-c"), storm + "cat"}) {
    stage->add_argv(a);
  }
  request.mutable_limits()->mutable_timeout()->set_nanos(500'000'000);
  v1::ExecuteResponse r = Run(request);
  EXPECT_EQ(r.termination(), v1::TIMED_OUT);
  EXPECT_TRUE(NoSurvivors());
}

// The cgroup v2 path a command ran in, from its own /proc/self/cgroup.
// Where the cgroup v2 hierarchy is mounted ("" if nowhere), from /proc/self/mounts.
std::string CgroupV2Mount() {
  std::ifstream mounts("/proc/self/mounts");
  std::string line;
  while (std::getline(mounts, line)) {
    std::vector<std::string> fields = absl::StrSplit(line, ' ');
    if (fields.size() > 2 && fields[2] == "cgroup2") return fields[1];
  }
  return "";
}

std::string V2CgroupOf(const std::string& proc_self_cgroup) {
  for (absl::string_view line : absl::StrSplit(proc_self_cgroup, '\n')) {
    if (absl::ConsumePrefix(&line, "0::")) return std::string(line);
  }
  return "";
}

// A command whose processes have all exited leaves its cgroup to the next command without
// limits. One that left a background child is killed with cgroup.kill, and its cgroup is
// not used again: Linux 6.x SIGKILLs children created in a cgroup killed before. Background
// children die with their command either way. (The child leaves its session: one in the
// leader's process group may already be gone to the group kill when the cgroup is checked,
// which leaves the cgroup clean, never killed, and rightly reused.)
TEST_P(ContainmentTest, CommandsWithoutLimitsReuseAnEmptiedCgroupAndLeaveNoSurvivors) {
  if (!cgroups()) GTEST_SKIP() << "SKIPPED: process-group containment has no cgroups to reuse";
  auto cgroup_of_run = [&](v1::ExecuteRequest request) {
    v1::ExecuteResponse r = Run(request);
    EXPECT_EQ(r.exit_code(), 0) << r.stderr();
    EXPECT_EQ(r.termination(), v1::EXITED);
    EXPECT_TRUE(NoSurvivors());
    return V2CgroupOf(r.stdout());
  };
  const std::string clean = "cat /proc/self/cgroup";
  // The child leaves its session (field 6 of /proc/PID/stat) before the command goes on.
  const std::string leaves_a_child =
      "setsid sleep 100 & p=$!; until [ \"$(cut -d' ' -f6 /proc/$p/stat)\" = $p ]; do :; done; "
      "cat /proc/self/cgroup";
  const std::string first = cgroup_of_run(Marked({"/bin/sh", "-c", clean}));
  ASSERT_FALSE(first.empty());
  EXPECT_EQ(cgroup_of_run(Marked({"/bin/sh", "-c", clean})), first);
  // Reused once more; its background child is killed with the whole cgroup at the end.
  EXPECT_EQ(cgroup_of_run(Marked({"/bin/sh", "-c", leaves_a_child})), first);
  // So the next command gets a new cgroup, and runs there.
  const std::string second = cgroup_of_run(Marked({"/bin/sh", "-c", clean}));
  ASSERT_FALSE(second.empty());
  EXPECT_NE(second, first);
  // A command with a limit gets a cgroup of its own, set up for it.
  v1::ExecuteRequest limited = Marked({"/bin/sh", "-c", clean});
  limited.mutable_limits()->set_max_processes(50);
  EXPECT_NE(cgroup_of_run(limited), second);
  EXPECT_EQ(cgroup_of_run(Marked({"/bin/sh", "-c", clean})), second);
}

// A process that SIGKILL cannot end at once (in uninterruptible sleep on a hung
// filesystem; here, frozen by a cgroup v1 freezer) must not stall the server: the command
// that left it behind is answered (with cgroups, after execd waited its few seconds for
// the cgroup to empty), other calls are served, and the process is reaped once it can
// die (by execd's orphan sweep without cgroups).
TEST_P(ContainmentTest, AnOrphanThatCannotDieYetStallsNothingAndIsReapedLater) {
  std::string why;
  std::unique_ptr<testing::Freezer> freezer_cgroup = testing::Freezer::Create(&why);
  if (freezer_cgroup == nullptr) GTEST_SKIP() << "SKIPPED: " << why;
  const std::string& freezer = freezer_cgroup->dir();
  // The command leaves a child in a session of its own, freezes it, and exits: the sweep
  // that follows sends SIGKILL to a process that cannot act on it until it is thawed.
  const std::string script = absl::StrCat(
      "setsid sleep 100 & p=$!; until [ \"$(cut -d' ' -f6 /proc/$p/stat)\" = $p ]; do :; done; ",
      "echo $p > ", freezer, "/cgroup.procs; echo FROZEN > ", freezer, "/freezer.state; ",
      "until grep -qx FROZEN ", freezer, "/freezer.state; do :; done; echo $p; ",
      "cat /proc/self/cgroup");
  v1::ExecuteResponse response;
  grpc::Status status =
      server_->Execute(Marked({"/bin/sh", "-c", script}), &response, absl::Seconds(10));
  ASSERT_TRUE(status.ok()) << status.error_message();
  ASSERT_EQ(response.termination(), v1::EXITED) << response.stderr();
  pid_t orphan = 0;
  const std::string first_line = response.stdout().substr(0, response.stdout().find('\n'));
  ASSERT_TRUE(absl::SimpleAtoi(first_line, &orphan)) << response.stdout();
  // With cgroups, the command's own (v2) cgroup, which the frozen process keeps from being
  // removed for now.
  const std::string cgroup_dir =
      cgroups() ? absl::StrCat(CgroupV2Mount(), V2CgroupOf(response.stdout())) : "";
  EXPECT_FALSE(testing::Freezer::Reaped(orphan)) << "frozen, it cannot have died yet";
  // Another command leaves a two-level escaped tree meanwhile: a shell in a session of its
  // own, and its child. The sweeps after it still go down every level (the child comes to
  // execd only as the shell dies, and the shell's death starts the next sweep), so the
  // child dies too, and without cgroups is reaped by execd.
  const std::string grandchild_file = absl::StrCat(::testing::TempDir(), testing::UniqueName("gc"));
  const std::string tree =
      absl::StrCat("setsid /bin/sh -c 'sleep 100 & echo $! > ", grandchild_file, ".tmp; mv ",
                   grandchild_file, ".tmp ", grandchild_file, "; wait' & until [ -s ",
                   grandchild_file, " ]; do :; done; cat ", grandchild_file);
  v1::ExecuteResponse escaped;
  status = server_->Execute(Marked({"/bin/sh", "-c", tree}), &escaped, absl::Seconds(10));
  ASSERT_TRUE(status.ok()) << status.error_message();
  unlink(grandchild_file.c_str());
  pid_t grandchild = 0;
  ASSERT_TRUE(absl::SimpleAtoi(absl::StripAsciiWhitespace(escaped.stdout()), &grandchild))
      << escaped.stdout() << escaped.stderr();
  EXPECT_TRUE(testing::WaitFor(
      [&] {
        return cgroups() ? !testing::ProcessAlive(grandchild) : testing::ProcessReaped(grandchild);
      },
      absl::Seconds(10)))
      << "pid " << grandchild << " outlived the sweeps";
  // The server goes on serving meanwhile.
  for (int i = 0; i < 3; ++i) {
    v1::ExecuteResponse echo;
    status =
        server_->Execute(TestServer::Request({"/bin/echo", "served"}), &echo, absl::Seconds(10));
    ASSERT_TRUE(status.ok()) << status.error_message();
    EXPECT_EQ(echo.stdout(), "served\n");
  }
  // Thawed, it dies of the SIGKILL it got. Without cgroups execd is its parent (the
  // subreaper), and a later sweep must reap it: no zombie is left. With cgroups its parent
  // is not execd (init, or this test process once an earlier test's server made it a
  // subreaper), so dead is all that can be asked.
  ASSERT_TRUE(freezer_cgroup->Thaw());
  auto gone = [&] {
    return cgroups() ? !testing::ProcessAlive(orphan) : testing::Freezer::Reaped(orphan);
  };
  EXPECT_TRUE(testing::WaitFor(gone, absl::Seconds(10)))
      << "pid " << orphan << " is still there (a zombie nobody reaped?)";
  if (cgroups()) {
    // Its cgroup is not left behind: the next command's start removes it, empty now.
    ASSERT_FALSE(CgroupV2Mount().empty());
    EXPECT_EQ(access(cgroup_dir.c_str(), F_OK), 0) << cgroup_dir << " removed too early?";
    Run(Marked({"/bin/true"}));
    EXPECT_NE(access(cgroup_dir.c_str(), F_OK), 0) << cgroup_dir << " was left behind";
  }
}

TEST_P(ContainmentTest, StoppedLeaderIsKilledAtItsTimeout) {
  v1::ExecuteRequest request = Marked({"/bin/sh", "-c", "kill -STOP $$"});
  request.mutable_limits()->mutable_timeout()->set_nanos(300'000'000);
  absl::Time start = absl::Now();
  v1::ExecuteResponse r = Run(request);
  EXPECT_EQ(r.termination(), v1::TIMED_OUT);
  EXPECT_LT(absl::Now() - start, absl::Seconds(2));
  EXPECT_TRUE(NoSurvivors());
}

TEST_P(ContainmentTest, StoppedGrandchildIsKilledWhenTheLeaderExits) {
  v1::ExecuteResponse r = Run(Marked({"/bin/sh", "-c", "sleep 100 & kill -STOP $!; echo ok"}));
  EXPECT_EQ(r.stdout(), "ok\n");
  EXPECT_TRUE(NoSurvivors());
}

TEST_P(ContainmentTest, ChildThatClosesStdoutButKeepsRunningStillFinishes) {
  v1::ExecuteResponse r = Run(Marked({"/bin/sh", "-c", "exec >&-; sleep 0.2; echo late >&2"}));
  EXPECT_EQ(r.termination(), v1::EXITED);
  EXPECT_EQ(r.stderr(), "late\n");
  v1::ExecuteRequest request = Marked({"/bin/sh", "-c", "exec >&- 2>&-; sleep 100"});
  request.mutable_limits()->mutable_timeout()->set_nanos(300'000'000);
  EXPECT_EQ(Run(request).termination(), v1::TIMED_OUT);
  EXPECT_TRUE(NoSurvivors());
}

TEST_P(ContainmentTest, FloodThatNeverExitsIsStoppedAtTheOutputCap) {
  v1::ExecuteResponse r = Run(Marked({"/usr/bin/yes"}));
  EXPECT_EQ(r.termination(), v1::OUTPUT_LIMIT_EXCEEDED);
  EXPECT_EQ(r.stdout().size(), 1u << 20);
  EXPECT_TRUE(NoSurvivors());
}

TEST_P(ContainmentTest, CpuTimeLimitIsReported) {
  v1::ExecuteRequest request = Marked({TEST_CHILD_BIN, "cpu"});
  request.mutable_limits()->mutable_cpu_time()->set_seconds(1);
  v1::ExecuteResponse r = Run(request);
  EXPECT_EQ(r.termination(), v1::CPU_TIME_LIMIT_EXCEEDED);
  EXPECT_EQ(r.signal(), SIGXCPU);
}

TEST_P(ContainmentTest, FileSizeLimitIsReported) {
  std::string path = ::testing::TempDir() + testing::UniqueName("fsize");
  v1::ExecuteRequest request = Marked({TEST_CHILD_BIN, "write", path, "10000000"});
  request.mutable_limits()->set_max_file_size_bytes(1 << 20);
  v1::ExecuteResponse r = Run(request);
  EXPECT_EQ(r.termination(), v1::FILE_SIZE_LIMIT_EXCEEDED);
  unlink(path.c_str());
}

TEST_P(ContainmentTest, OpenFilesLimitApplies) {
  v1::ExecuteRequest request = Marked({TEST_CHILD_BIN, "open", "100"});
  request.mutable_limits()->set_max_open_files(10);
  v1::ExecuteResponse r = Run(request);
  EXPECT_EQ(r.termination(), v1::EXITED);
  EXPECT_EQ(r.stdout(), "7\n");  // 10 minus stdin, stdout and stderr.
}

TEST_P(ContainmentTest, ChildrenGetTheOrdinaryDescriptorLimitBack) {
  // execd raises its own soft limit for thousands of pipes; children must not inherit that.
  v1::ExecuteResponse r = Run(Marked({"/bin/sh", "-c", "ulimit -n"}));
  rlimit mine;
  getrlimit(RLIMIT_NOFILE, &mine);
  int64_t child_limit = 0;
  ASSERT_TRUE(absl::SimpleAtoi(absl::StripAsciiWhitespace(r.stdout()), &child_limit));
  EXPECT_LE(child_limit, static_cast<int64_t>(mine.rlim_cur));
}

TEST_P(ContainmentTest, CpuAffinityPinsTheCommand) {
  v1::ExecuteRequest request = Marked({"/bin/grep", "Cpus_allowed_list", "/proc/self/status"});
  request.mutable_limits()->add_cpu_affinity(0);
  v1::ExecuteResponse r = Run(request);
  EXPECT_THAT(r.stdout(), ::testing::MatchesRegex("Cpus_allowed_list:\\s+0\n"));
}

TEST_P(ContainmentTest, MemoryLimit) {
  v1::ExecuteRequest request = Marked({TEST_CHILD_BIN, "alloc", "256"});
  request.mutable_limits()->set_memory_bytes(64 << 20);
  v1::ExecuteResponse r = Run(request);
  if (cgroups()) {
    EXPECT_EQ(r.termination(), v1::MEMORY_LIMIT_EXCEEDED);
    EXPECT_EQ(r.signal(), SIGKILL);
  } else {
    // Without a memory cgroup the limit is the address space: allocation fails in the
    // program, which sees it and exits.
    EXPECT_EQ(r.termination(), v1::EXITED);
    EXPECT_THAT(r.stdout(), HasSubstr("malloc failed"));
  }
  EXPECT_TRUE(NoSurvivors());
}

TEST_P(ContainmentTest, ForkBombUnderMaxProcesses) {
  v1::ExecuteRequest request = Marked({TEST_CHILD_BIN, "fork", "100"});
  request.mutable_limits()->set_max_processes(10);
  v1::ExecuteResponse response;
  grpc::Status status = server_->Execute(request, &response);
  if (!cgroups()) {
    EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
    EXPECT_THAT(status.error_message(), HasSubstr("max_processes"));
    return;
  }
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(response.termination(), v1::PROCESS_LIMIT_EXCEEDED);
  EXPECT_EQ(response.stdout(), "9\n");  // The leader is one of the ten.
  EXPECT_TRUE(NoSurvivors());
  // A real shell fork bomb: held at the limit (it fizzles as its forks fail, or is killed
  // whole at its timeout), and nothing of it survives.
  v1::ExecuteRequest bomb = Marked({"/bin/sh", "-c", "f() { f | f & }; f; wait"});
  bomb.mutable_limits()->set_max_processes(32);
  bomb.mutable_limits()->mutable_timeout()->set_seconds(2);
  absl::Time start = absl::Now();
  Run(bomb);
  EXPECT_LT(absl::Now() - start, absl::Seconds(4));
  EXPECT_TRUE(NoSurvivors());
}

TEST_P(ContainmentTest, ServerKeepsServingAfterAllOfThat) {
  Run(Marked({TEST_CHILD_BIN, "storm", "10"}));
  v1::ExecuteResponse r = Run(Marked({"/bin/echo", "fine"}));
  EXPECT_EQ(r.stdout(), "fine\n");
  EXPECT_TRUE(NoSurvivors());
}

INSTANTIATE_TEST_SUITE_P(Mechanisms, ContainmentTest,
                         ::testing::Values(Mode::kCgroup, Mode::kProcessGroup),
                         [](const ::testing::TestParamInfo<Mode>& info) {
                           return info.param == Mode::kCgroup ? "Cgroup" : "ProcessGroup";
                         });

TEST(ResourceLimitMaximums, RequestsOverTheServerMaximumAreRejectedAndUnsetGetsIt) {
  auto server = TestServer::Start([](server::ServerConfig& c) {
    c.policy.max_memory_bytes = 64 << 20;
    c.policy.max_open_files = 20;
  });
  ASSERT_TRUE(server.ok()) << server.status();
  v1::ExecuteRequest request = TestServer::Request({TEST_CHILD_BIN, "open", "100"});
  request.mutable_limits()->set_max_open_files(50);
  v1::ExecuteResponse response;
  grpc::Status status = (*server)->Execute(request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("--max_open_files"));
  request.mutable_limits()->clear_max_open_files();
  ASSERT_TRUE((*server)->Execute(request, &response).ok());
  EXPECT_EQ(response.stdout(), "17\n");  // The maximum, 20, applied by default.
  for (int64_t bad : {-1LL, 1LL << 40}) {
    v1::ExecuteRequest r = TestServer::Request({"/bin/true"});
    r.mutable_limits()->set_memory_bytes(bad);
    EXPECT_EQ((*server)->Execute(r, &response).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  }
  v1::ExecuteRequest affinity = TestServer::Request({"/bin/true"});
  affinity.mutable_limits()->add_cpu_affinity(100000);
  status = (*server)->Execute(affinity, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("cpu_affinity"));
}

}  // namespace
}  // namespace execd
