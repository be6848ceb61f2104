// The spawn core through core::Engine, without gRPC: exit statuses, signals, timeouts,
// output caps, large stdin and output both ways, environment and cwd, spawn-time errors,
// streaming, and no leaked descriptor or zombie after a thousand runs.
#include "core/engine.h"

#include <dirent.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <fstream>
#include <functional>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "core/errno_status.h"
#include "core/validate.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/support/freezer.h"
#include "tests/support/manual_clock.h"
#include "tests/support/subprocess.h"

namespace execd::core {
namespace {

using ::testing::HasSubstr;

class Collector final : public Engine::Observer {
 public:
  void OnStarted(pid_t pid, absl::Duration) override { pid_ = pid; }
  void OnOutput(OutputStream stream, absl::string_view data) override {
    absl::MutexLock lock(&mu_);
    ++chunks_;
    (stream == OutputStream::kStdout ? out_ : err_).append(data.data(), data.size());
  }
  void OnFinished(absl::StatusOr<Result> result) override {
    result_ = std::move(result);
    done_.Notify();
  }
  absl::StatusOr<Result> Get(absl::Duration timeout = absl::Seconds(30)) {
    if (!done_.WaitForNotificationWithTimeout(timeout)) {
      return absl::DeadlineExceededError("no result in time");
    }
    return result_;
  }
  std::string streamed_out() {
    absl::MutexLock lock(&mu_);
    return out_;
  }
  int chunks() {
    absl::MutexLock lock(&mu_);
    return chunks_;
  }
  pid_t pid() const { return pid_; }

 private:
  absl::Notification done_;
  absl::StatusOr<Result> result_ = absl::UnknownError("none");
  absl::Mutex mu_;
  std::string out_, err_;
  int chunks_ = 0;
  std::atomic<pid_t> pid_{0};
};

class EngineTest : public ::testing::Test {
 protected:
  void SetUp() override {
    Engine::Options options;
    options.kill_grace = absl::Milliseconds(200);
    options.memfd_stdin_bytes = memfd_stdin_bytes_;
    ASSERT_EQ(Restart(options), absl::OkStatus());
    policy_ = RequestPolicy::FromProcessEnvironment();
    policy_.server_env["PATH"] = "/usr/bin:/bin";
  }

  // Replaces the engine with one made with `options` (engines of one process share its
  // cgroup directory: one at a time).
  absl::Status Restart(const Engine::Options& options) {
    engine_.reset();
    auto engine = Engine::Create(options);
    if (!engine.ok()) return engine.status();
    engine_ = *std::move(engine);
    return absl::OkStatus();
  }

  absl::StatusOr<Result> Run(CommandRequest request, bool stream = false,
                             Collector* collector = nullptr) {
    auto command = ValidateRequest(std::move(request), policy_);
    if (!command.ok()) return command.status();
    command->stream_output = stream;
    Collector local;
    Collector& c = collector != nullptr ? *collector : local;
    auto execution = engine_->Submit(*std::move(command), &c);
    if (!execution.ok()) return execution.status();
    return c.Get();
  }
  absl::StatusOr<Result> Run(std::vector<std::string> argv) {
    CommandRequest r;
    r.argv = std::move(argv);
    return Run(std::move(r));
  }

  std::unique_ptr<Engine> engine_;
  RequestPolicy policy_;
  int64_t memfd_stdin_bytes_ = 1 << 20;
};

// stdin through a pipe (threshold 0) and, from 1 MiB, through a sealed memfd.
class EngineStdinTest : public EngineTest, public ::testing::WithParamInterface<int64_t> {
 protected:
  void SetUp() override {
    memfd_stdin_bytes_ = GetParam();
    EngineTest::SetUp();
  }
};
INSTANTIATE_TEST_SUITE_P(PipeAndMemfd, EngineStdinTest, ::testing::Values(0, 1 << 20),
                         [](const auto& info) { return info.param == 0 ? "Pipe" : "Memfd"; });

TEST_P(EngineStdinTest, LargeStdinArrivesWholeThroughTheExpectedChannel) {
  std::string input(3 << 20, '\0');
  for (size_t i = 0; i < input.size(); ++i) input[i] = static_cast<char>(i * 7 + i / 4096);
  CommandRequest r;
  // What fd 0 is, then the bytes themselves.
  r.argv = {"/bin/sh", "-c", "readlink /proc/self/fd/0 >&2; cat"};
  r.stdin_data = input;
  r.max_output_bytes = 8 << 20;
  auto result = Run(r);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->termination, Termination::kExited);
  EXPECT_TRUE(result->stdout_data == input) << result->stdout_data.size();
  EXPECT_THAT(result->stderr_data,
              ::testing::HasSubstr(GetParam() == 0 ? "pipe:" : "memfd:execd-stdin"));
}

// A fresh command admitted at once goes from the submitting thread to a spawn thread, and
// from there to the loop that watches it: two hand-offs inside the engine (the answer's
// return to the caller's thread is the third).
TEST_F(EngineTest, AFreshCommandIsHandedBetweenThreadsTwice) {
  auto r = Run({"/bin/true"});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->thread_handoffs, 2);
}

TEST_F(EngineTest, ExitCodesAreReported) {
  for (int code : {0, 3, 255}) {
    auto r = Run({"/bin/sh", "-c", absl::StrCat("exit ", code)});
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->termination, Termination::kExited);
    EXPECT_TRUE(r->status.exited);
    EXPECT_EQ(r->status.code, code);
  }
}

TEST_F(EngineTest, DeathBySignalIsReportedAsSignaled) {
  auto r = Run({"/bin/sh", "-c", "kill -9 $$"});
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->termination, Termination::kSignaled);
  EXPECT_FALSE(r->status.exited);
  EXPECT_EQ(r->status.signal, SIGKILL);
}

TEST_F(EngineTest, ChildGetsDefaultSignalDispositions) {
  // The server ignores SIGPIPE; a child must not inherit that.
  auto r = Run({"/bin/sh", "-c", "grep -E '^Sig(Ign|Blk)' /proc/self/status"});
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->stdout_data, "SigBlk:\t0000000000000000\nSigIgn:\t0000000000000000\n");
}

// A process group of its own (what the process-tree kill signals), but not a session of its
// own: a session is a scheduler autogroup, and one per child would make each compete as a
// group against whoever loads the machine. No controlling terminal either.
TEST_F(EngineTest, ChildLeadsItsOwnProcessGroupInTheServersSessionWithoutATerminal) {
  auto r = Run({"/bin/sh", "-c", "echo $$; cat /proc/$$/stat"});
  ASSERT_TRUE(r.ok()) << r.status();
  std::vector<std::string> lines = absl::StrSplit(r->stdout_data, '\n');
  ASSERT_GE(lines.size(), 2u) << r->stdout_data;
  // After "pid (comm)": state ppid pgrp session tty_nr ...
  std::vector<std::string> fields = absl::StrSplit(lines[1].substr(lines[1].rfind(')') + 2), ' ');
  ASSERT_GE(fields.size(), 5u) << lines[1];
  EXPECT_EQ(fields[2], lines[0]) << "process group";
  EXPECT_EQ(fields[3], absl::StrCat(getsid(0))) << "session";
  EXPECT_EQ(fields[4], "0") << "controlling terminal";
}

TEST_F(EngineTest, ChildHasOnlyThreeDescriptors) {
  auto r = Run({"/bin/ls", "/proc/self/fd"});
  ASSERT_TRUE(r.ok());
  // 0, 1, 2, and the directory ls opened to list them.
  EXPECT_EQ(r->stdout_data, "0\n1\n2\n3\n");
}

TEST_F(EngineTest, TimeoutTerminatesAndTermIgnoringChildIsKilledAfterTheGrace) {
  CommandRequest r;
  r.argv = {"/bin/sleep", "10"};
  r.timeout = absl::Milliseconds(200);
  absl::Time start = absl::Now();
  auto result = Run(r);
  ASSERT_TRUE(result.ok());
  EXPECT_EQ(result->termination, Termination::kTimedOut);
  EXPECT_EQ(result->status.signal, SIGTERM);
  EXPECT_LT(absl::Now() - start, absl::Seconds(2));

  r.argv = {"/bin/sh", "-c", "trap '' TERM; sleep 10"};
  start = absl::Now();
  result = Run(r);
  ASSERT_TRUE(result.ok());
  EXPECT_EQ(result->termination, Termination::kTimedOut);
  EXPECT_EQ(result->status.signal, SIGKILL);
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(400));  // Timeout plus grace.
  EXPECT_LT(absl::Now() - start, absl::Seconds(2));
}

TEST_F(EngineTest, OutputOverTheCapKeepsTheFirstBytesAndStopsTheChild) {
  CommandRequest r;
  r.argv = {"/bin/sh", "-c", "echo first; head -c 5000000 /dev/zero"};
  r.max_output_bytes = 1000;
  auto result = Run(r);
  ASSERT_TRUE(result.ok());
  EXPECT_EQ(result->termination, Termination::kOutputLimitExceeded);
  EXPECT_EQ(result->stdout_data.size(), 1000u);
  EXPECT_EQ(result->stdout_data.substr(0, 6), "first\n");
  EXPECT_TRUE(result->stdout_truncated);
  EXPECT_FALSE(result->stderr_truncated);
}

// The real OS, except that Spawn returns only once the child has exited: the engine first
// looks at a child that is gone with its output waiting in the pipe, an order a loaded
// machine produces for short commands.
class ExitBeforeWatchOs final : public ProcessOs {
 public:
  absl::StatusOr<std::pair<UniqueFd, UniqueFd>> Pipe() override { return SystemProcessOs().Pipe(); }
  absl::StatusOr<SpawnedProcess> Spawn(const SpawnSpec& spec) override {
    absl::StatusOr<SpawnedProcess> spawned = SystemProcessOs().Spawn(spec);
    if (spawned.ok()) {
      pollfd exited{spawned->pidfd.get(), POLLIN, 0};
      EXPECT_EQ(poll(&exited, 1, 10'000), 1) << "the child did not exit within 10 s";
    }
    return spawned;
  }
};

TEST_F(EngineTest, OutputOverTheCapIsReportedAsSuchWhenTheChildExitedBeforeItWasRead) {
  ExitBeforeWatchOs os;
  Engine::Options options;
  options.os = &os;
  ASSERT_EQ(Restart(options), absl::OkStatus());
  CommandRequest r;
  r.argv = {"/usr/bin/printf", "0123456789"};
  r.max_output_bytes = 4;
  auto result = Run(r);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->termination, Termination::kOutputLimitExceeded);
  EXPECT_EQ(result->stdout_data, "0123");
  EXPECT_TRUE(result->stdout_truncated);
  EXPECT_EQ(result->status.code, 0);  // It did exit on its own, with its own status.
}

TEST_F(EngineTest, OutputExactlyAtTheCapIsNotTruncated) {
  CommandRequest r;
  r.argv = {"/usr/bin/head", "-c", "1000", "/dev/zero"};
  r.max_output_bytes = 1000;
  auto result = Run(r);
  ASSERT_TRUE(result.ok());
  EXPECT_EQ(result->termination, Termination::kExited);
  EXPECT_EQ(result->stdout_data.size(), 1000u);
  EXPECT_FALSE(result->stdout_truncated);
}

TEST_P(EngineStdinTest, LargeStdinAndLargeOutputOnBothStreamsDoNotDeadlock) {
  std::string input(8 << 20, 'i');
  CommandRequest r;
  // Writes megabytes to stderr while stdin is still being fed and echoed to stdout.
  r.argv = {"/bin/sh", "-c", "head -c 4000000 /dev/zero >&2 & cat; wait"};
  r.stdin_data = input;
  r.max_output_bytes = 16 << 20;
  auto result = Run(r);
  ASSERT_TRUE(result.ok());
  EXPECT_EQ(result->termination, Termination::kExited);
  EXPECT_TRUE(result->stdout_data == input);
  EXPECT_EQ(result->stderr_data.size(), 4000000u);
}

TEST_F(EngineTest, EmptyStdinIsEndOfFile) {
  auto r = Run({"/bin/cat"});
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->termination, Termination::kExited);
  EXPECT_EQ(r->stdout_data, "");
}

TEST_P(EngineStdinTest, ChildThatDoesNotReadStdinStillFinishes) {
  CommandRequest r;
  r.argv = {"/bin/true"};
  r.stdin_data = std::string(4 << 20, 'x');  // More than a pipe holds; the child never reads.
  auto result = Run(r);
  ASSERT_TRUE(result.ok());
  EXPECT_EQ(result->termination, Termination::kExited);
}

TEST_F(EngineTest, EnvironmentIsIsolatedAndCwdHonoured) {
  CommandRequest r;
  r.argv = {"/usr/bin/env"};
  r.env = {{"ONLY", "this"}};
  auto result = Run(r);
  ASSERT_TRUE(result.ok());
  EXPECT_EQ(result->stdout_data, "ONLY=this\n");
  CommandRequest cwd;
  cwd.argv = {"/bin/pwd"};
  cwd.cwd = "/usr";
  result = Run(cwd);
  ASSERT_TRUE(result.ok());
  EXPECT_EQ(result->stdout_data, "/usr\n");
}

TEST_F(EngineTest, ProgramRemovedAfterValidationIsNotFoundAtSpawn) {
  testing::ScopedTempDir dir("execd_engine");
  std::string program = dir.path() + "/gone";
  std::ofstream(program) << "#!/bin/sh\necho hi\n";
  chmod(program.c_str(), 0755);
  CommandRequest r;
  r.argv = {program};
  auto command = ValidateRequest(r, policy_);
  ASSERT_TRUE(command.ok());
  unlink(program.c_str());
  Collector c;
  ASSERT_TRUE(engine_->Submit(*std::move(command), &c).ok());
  auto result = c.Get();
  EXPECT_EQ(result.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(result.status().message(), HasSubstr(program));
}

TEST_F(EngineTest, ScriptWithoutInterpreterLineIsInvalidArgument) {
  testing::ScopedTempDir dir("execd_engine");
  std::string program = dir.path() + "/noshebang";
  std::ofstream(program) << "echo hi\n";
  chmod(program.c_str(), 0755);
  auto result = Run({program});
  EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(result.status().message(), HasSubstr("#!"));
}

TEST_F(EngineTest, StreamedOutputArrivesInChunksAndIsNotCollected) {
  CommandRequest r;
  r.argv = {"/bin/sh", "-c", "for i in 1 2 3; do echo line$i; done; head -c 300000 /dev/zero"};
  Collector c;
  auto result = Run(r, /*stream=*/true, &c);
  ASSERT_TRUE(result.ok());
  EXPECT_EQ(result->stdout_data, "");
  std::string out = c.streamed_out();
  EXPECT_EQ(out.substr(0, 18), "line1\nline2\nline3\n");
  EXPECT_EQ(out.size(), 18u + 300000u);
  EXPECT_GE(c.chunks(), 2);
}

// The real OS, except that a hook runs in the `at`-th spawn (0-based) before it goes on, or
// fails with EAGAIN when `fail` is set: for orders a loaded machine produces rarely.
class HookedSpawnOs final : public ProcessOs {
 public:
  int at = 0;
  bool fail = false;
  std::function<void()> hook;
  absl::StatusOr<std::pair<UniqueFd, UniqueFd>> Pipe() override { return SystemProcessOs().Pipe(); }
  absl::StatusOr<SpawnedProcess> Spawn(const SpawnSpec& spec) override {
    if (spawns_.fetch_add(1) == at) {
      if (hook) hook();
      if (fail) return ErrnoToStatus(EAGAIN, "clone");
    }
    return SystemProcessOs().Spawn(spec);
  }
  void Reset() { spawns_ = 0; }

 private:
  std::atomic<int> spawns_{0};
};

// The first program of a pipeline started a process that left its session; the second
// program then fails to spawn. Nothing the command started may outlive its (failed) start.
TEST_F(EngineTest, ProcessesOfAPipelineWhoseLaterProgramFailedToSpawnDoNotSurvive) {
  for (Containment::Mode mode : {Containment::Mode::kProcessGroup, Containment::Mode::kAuto}) {
    const std::string marker = ::execd::testing::UniqueName("escapee");
    HookedSpawnOs os;
    os.at = 1;
    os.fail = true;
    os.hook = [&] {
      // Wait until the first program's background processes have left its session (setsid
      // execs sleep only after setsid()).
      EXPECT_TRUE(testing::WaitFor(
          [&] {
            int sleeping = 0;
            for (pid_t pid : testing::ProcessesWithEnv("EXECD_TEST_MARKER=" + marker)) {
              std::ifstream comm(absl::StrCat("/proc/", pid, "/comm"));
              std::string name;
              if (comm >> name && name == "sleep") ++sleeping;
            }
            return sleeping == 50;
          },
          absl::Seconds(10)));
    };
    Engine::Options options;
    options.os = &os;
    options.containment = mode;
    ASSERT_EQ(Restart(options), absl::OkStatus());
    CommandRequest r;
    // Many, so that they take a while to die once killed.
    r.argv = {"/bin/sh", "-c", "for i in $(seq 50); do setsid sleep 1000 & done; wait"};
    r.pipe_to = {{"/bin/cat"}};
    r.env = {{"EXECD_TEST_MARKER", marker}};
    auto result = Run(r);
    EXPECT_EQ(result.status().code(), absl::StatusCode::kResourceExhausted) << result.status();
    const bool gone = testing::WaitFor(
        [&] { return testing::ProcessesWithEnv("EXECD_TEST_MARKER=" + marker).empty(); },
        absl::Seconds(5));
    EXPECT_TRUE(gone) << "a process of the failed pipeline survived, containment "
                      << static_cast<int>(mode);
    for (pid_t pid : testing::ProcessesWithEnv("EXECD_TEST_MARKER=" + marker)) {
      kill(pid, SIGKILL);
      waitpid(pid, nullptr, 0);
    }
    engine_.reset();
  }
}

// The cgroup directories under the engine's own, or nothing without cgroup v2.
std::vector<std::string> CommandCgroups(const Engine& engine) {
  std::vector<std::string> found;
  const std::string describe = engine.containment().Describe();
  if (!absl::StartsWith(describe, "cgroup: v2 ")) return found;
  const std::string v2 = describe.substr(11, describe.find_first_of(" ;", 11) - 11);
  if (DIR* d = opendir(v2.c_str())) {
    while (dirent* e = readdir(d)) {
      if (e->d_type == DT_DIR && e->d_name[0] != '.') found.push_back(v2 + "/" + e->d_name);
    }
    closedir(d);
  }
  return found;
}

// A pipeline whose second program fails to spawn, while its first cannot die yet (stuck in
// the kernel; here frozen by a cgroup v1 freezer): the failure is reported at once, not
// after a spawn thread waited for the first program to die, and the program is reaped
// once it can die.
TEST_F(EngineTest, APipelineThatFailedToStartIsAnsweredWhileItsFirstProgramCannotDieYet) {
  std::string why;
  std::unique_ptr<testing::Freezer> freezer = testing::Freezer::Create(&why);
  if (freezer == nullptr) GTEST_SKIP() << "SKIPPED: " << why;
  for (Containment::Mode mode : {Containment::Mode::kProcessGroup, Containment::Mode::kAuto}) {
    const std::string marker = ::execd::testing::UniqueName("stuck");
    std::atomic<pid_t> frozen{0};
    HookedSpawnOs os;
    os.at = 1;
    os.fail = true;
    os.hook = [&] {  // Between the two spawns: the first program is running `sleep`.
      std::vector<pid_t> pids;
      ASSERT_TRUE(testing::WaitFor(
          [&] {
            pids = testing::ProcessesWithEnv("EXECD_TEST_MARKER=" + marker);
            return pids.size() == 1;
          },
          absl::Seconds(10)));
      ASSERT_TRUE(freezer->Freeze(pids[0]));
      frozen = pids[0];
    };
    Engine::Options options;
    options.os = &os;
    options.containment = mode;
    ASSERT_EQ(Restart(options), absl::OkStatus());
    CommandRequest r;
    r.argv = {"/bin/sleep", "1000"};
    r.pipe_to = {{"/bin/cat"}};
    r.env = {{"EXECD_TEST_MARKER", marker}};
    auto command = ValidateRequest(std::move(r), policy_);
    ASSERT_TRUE(command.ok()) << command.status();
    Collector collector;
    ASSERT_TRUE(engine_->Submit(*std::move(command), &collector).ok());
    absl::StatusOr<Result> result = collector.Get(absl::Seconds(5));
    const bool answered = result.status().code() != absl::StatusCode::kDeadlineExceeded;
    EXPECT_EQ(result.status().code(), absl::StatusCode::kResourceExhausted)
        << result.status() << ", containment " << static_cast<int>(mode);
    ASSERT_NE(frozen.load(), 0);
    EXPECT_FALSE(testing::Freezer::Reaped(frozen)) << "frozen, it cannot have died yet";
    // Thawed, it dies of its SIGKILL, and execd, its parent, reaps it: no zombie is left.
    EXPECT_TRUE(freezer->ThawAndAwaitReaped(frozen)) << "pid " << frozen << " was not reaped";
    if (!answered) (void)collector.Get();  // The blocked start ends before the engine goes.
    engine_.reset();
  }
}

// As above with cgroups: the cgroup of the failed command is removed, not left behind
// because its killed processes had not quite gone yet.
TEST_F(EngineTest, CgroupOfAPipelineWhoseLaterProgramFailedToSpawnIsRemoved) {
  HookedSpawnOs os;
  os.at = 1;
  os.fail = true;
  Engine::Options options;
  options.os = &os;
  options.containment = Containment::Mode::kCgroup;
  if (absl::Status started = Restart(options); !started.ok()) {
    GTEST_SKIP() << "SKIPPED: no cgroups here: " << started;
  }
  if (!absl::StartsWith(engine_->containment().Describe(), "cgroup: v2 ")) {
    engine_.reset();
    GTEST_SKIP() << "SKIPPED: no cgroup v2 hierarchy";
  }
  for (int attempt = 0; attempt < 10; ++attempt) {
    const std::string marker = ::execd::testing::UniqueName("escapee");
    os.hook = [&] {
      EXPECT_TRUE(testing::WaitFor(
          [&] { return testing::ProcessesWithEnv("EXECD_TEST_MARKER=" + marker).size() >= 21; },
          absl::Seconds(10)));
    };
    os.Reset();
    CommandRequest r;
    r.argv = {"/bin/sh", "-c", "for i in $(seq 20); do sleep 1000 & done; wait"};
    r.pipe_to = {{"/bin/cat"}};
    r.env = {{"EXECD_TEST_MARKER", marker}};
    r.max_processes = 1000;  // A cgroup with a limit is never kept for reuse.
    auto result = Run(r);
    if (result.status().code() == absl::StatusCode::kFailedPrecondition) {
      engine_.reset();
      GTEST_SKIP() << "SKIPPED: " << result.status();
    }
    EXPECT_EQ(result.status().code(), absl::StatusCode::kResourceExhausted) << result.status();
    // Not kept for reuse (it has a limit), so none may be left.
    EXPECT_THAT(CommandCgroups(*engine_), ::testing::IsEmpty()) << "attempt " << attempt;
  }
  engine_.reset();
}

// With cgroups, a command that leaves a process behind which cannot die yet (stuck in
// the kernel; here frozen by a cgroup v1 freezer) is answered once empty_wait has passed,
// and no later: dropping its cgroup, on the loop, does not wait for the process again.
TEST_F(EngineTest, ACommandWhoseProcessCannotDieIsAnsweredAfterEmptyWaitAndNoLater) {
  std::string why;
  std::unique_ptr<testing::Freezer> freezer = testing::Freezer::Create(&why);
  if (freezer == nullptr) GTEST_SKIP() << "SKIPPED: " << why;
  Engine::Options options;
  options.containment = Containment::Mode::kCgroup;
  options.empty_wait = absl::Milliseconds(50);
  if (absl::Status started = Restart(options); !started.ok()) {
    GTEST_SKIP() << "SKIPPED: no cgroups here: " << started;
  }
  CommandRequest r;
  const std::string& f = freezer->dir();
  r.argv = {"/bin/sh", "-c",
            absl::StrCat("sleep 100 & p=$!; echo $p > ", f, "/cgroup.procs; echo FROZEN > ", f,
                         "/freezer.state; until grep -qx FROZEN ", f,
                         "/freezer.state; do :; done; echo $p")};
  const absl::Time start = absl::Now();
  auto result = Run(r);
  const absl::Duration elapsed = absl::Now() - start;
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->termination, Termination::kExited) << result->stderr_data;
  pid_t frozen = 0;
  ASSERT_TRUE(absl::SimpleAtoi(absl::StripAsciiWhitespace(result->stdout_data), &frozen))
      << result->stdout_data;
  EXPECT_TRUE(testing::ProcessAlive(frozen)) << "frozen, it cannot have died";
  // After the shell's exit: empty_wait (50 ms), not also the 200 ms a cgroup's removal
  // waits for it to empty.
  const absl::Duration after_exit = elapsed - result->queued - result->spawn - result->run;
  EXPECT_LT(after_exit, absl::Milliseconds(200));
  EXPECT_GE(after_exit, absl::Milliseconds(50));
  // Thawed, it dies of its SIGKILL.
  ASSERT_TRUE(freezer->Thaw());
  EXPECT_TRUE(testing::WaitFor([&] { return !testing::ProcessAlive(frozen); }, absl::Seconds(10)));
  engine_.reset();
}

// Process-group containment: a command's process left its session and started a child of
// its own, then the command ended. The orphan sweep kills the escapee; its child, which
// comes to execd only when the escapee dies, must not survive either.
TEST_F(EngineTest, ChildOfAnEscapedProcessDoesNotSurviveTheCommand) {
  testing::ScopedTempDir dir("execd_engine");
  const std::string marker = ::execd::testing::UniqueName("escapee");
  Engine::Options options;
  options.containment = Containment::Mode::kProcessGroup;
  ASSERT_EQ(Restart(options), absl::OkStatus());
  CommandRequest r;
  // The command ends once the escapee has started its child.
  r.argv = {"/bin/sh", "-c",
            "mkfifo f; setsid sh -c 'sleep 1000 & echo started > f; wait' & read x < f"};
  r.cwd = dir.path();
  r.env = {{"EXECD_TEST_MARKER", marker}};
  auto result = Run(r);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->termination, Termination::kExited);
  EXPECT_TRUE(testing::WaitFor(
      [&] { return testing::ProcessesWithEnv("EXECD_TEST_MARKER=" + marker).empty(); },
      absl::Seconds(5)))
      << "a process of the command survived it";
  for (pid_t pid : testing::ProcessesWithEnv("EXECD_TEST_MARKER=" + marker)) {
    kill(pid, SIGKILL);
    waitpid(pid, nullptr, 0);
  }
  engine_.reset();
}

// Process-group containment: a running command's background process that stayed in its
// process group but lost its parent (a double fork) came to execd. Another command ending
// meanwhile must not kill it: it is the running command's, and goes with that command.
TEST_F(EngineTest, AnotherCommandEndingLeavesARunningCommandsOrphanedChildAlone) {
  testing::ScopedTempDir dir("execd_engine");
  Engine::Options options;
  options.containment = Containment::Mode::kProcessGroup;
  ASSERT_EQ(Restart(options), absl::OkStatus());
  ASSERT_EQ(mkfifo((dir.path() + "/go").c_str(), 0600), 0);
  CommandRequest a;
  // Starts a background sleep whose parent exits at once, waits for the test, then says
  // whether the sleep is still there.
  a.argv = {"/bin/sh", "-c",
            "(sleep 1000 & echo $! > pid.tmp; mv pid.tmp pid); read x < go; "
            "kill -0 $(cat pid) && echo alive; kill $(cat pid)"};
  a.cwd = dir.path();
  auto command = ValidateRequest(a, policy_);
  ASSERT_TRUE(command.ok()) << command.status();
  Collector c;
  auto execution = engine_->Submit(*std::move(command), &c);
  ASSERT_TRUE(execution.ok());
  // Until the sleep's parent (the subshell) has exited and it came to execd.
  ASSERT_TRUE(testing::WaitFor(
      [&] {
        pid_t pid = 0;
        if (!(std::ifstream(dir.path() + "/pid") >> pid)) return false;
        std::ifstream stat(absl::StrCat("/proc/", pid, "/stat"));
        std::string line;
        std::getline(stat, line);
        // "pid (comm) state ppid ...": comm is "sleep", no spaces.
        std::istringstream fields(line);
        std::string skip;
        pid_t ppid = 0;
        fields >> skip >> skip >> skip >> ppid;
        return ppid == getpid();
      },
      absl::Seconds(10)));
  auto other = Run({"/bin/true"});
  ASSERT_TRUE(other.ok()) << other.status();
  {
    std::ofstream go(dir.path() + "/go");  // Opens once the command waits on it.
    go << "\n";
  }
  auto result = c.Get();
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->stdout_data, "alive\n") << "the running command's process was killed";
  engine_.reset();
}

// A cancel that reaches the loop while the child is still being spawned stops it as soon
// as the spawn completes.
TEST_F(EngineTest, CancelDuringTheSpawnStopsTheChildOnceSpawned) {
  absl::Notification in_spawn, release;
  HookedSpawnOs os;
  os.hook = [&] {
    in_spawn.Notify();
    EXPECT_TRUE(release.WaitForNotificationWithTimeout(absl::Seconds(10)));
  };
  Engine::Options options;
  options.os = &os;
  ASSERT_EQ(Restart(options), absl::OkStatus());
  CommandRequest r;
  r.argv = {"/bin/sleep", "1000"};
  auto command = ValidateRequest(r, policy_);
  ASSERT_TRUE(command.ok());
  Collector c;
  auto execution = engine_->Submit(*std::move(command), &c);
  ASSERT_TRUE(execution.ok());
  ASSERT_TRUE(in_spawn.WaitForNotificationWithTimeout(absl::Seconds(10)));
  engine_->Cancel(*execution);
  engine_->AwaitLoop();  // The cancel has reached the loop.
  release.Notify();
  auto result = c.Get();
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->termination, Termination::kCancelled);
  engine_.reset();
}

// The caller's deadline passes while the child is still being spawned (a spawn thread
// busy with other spawns, a slow clone): the child must not run past the deadline for as
// long again.
TEST_F(EngineTest, DeadlineThatPassedDuringTheSpawnStopsTheChildAtOnce) {
  testing::ManualClock clock;
  HookedSpawnOs os;
  os.hook = [&] { clock.Advance(absl::Seconds(10)); };  // The spawn took ten seconds.
  Engine::Options options;
  options.os = &os;
  options.clock = &clock;
  ASSERT_EQ(Restart(options), absl::OkStatus());
  CommandRequest r;
  r.argv = {"/bin/sleep", "1000"};
  auto command = ValidateRequest(r, policy_);
  ASSERT_TRUE(command.ok());
  command->deadline = clock.Now() + absl::Seconds(1);
  Collector c;
  auto execution = engine_->Submit(*std::move(command), &c);
  ASSERT_TRUE(execution.ok());
  auto result = c.Get(absl::Seconds(5));
  if (!result.ok() && result.status().code() == absl::StatusCode::kDeadlineExceeded) {
    engine_->Cancel(*execution);  // Still running at the deadline plus the spawn time.
    ADD_FAILURE() << "the child outlived the caller's deadline: " << result.status();
    (void)c.Get();
    engine_.reset();  // Before the clock and the OS it uses.
    return;
  }
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->termination, Termination::kTimedOut);
  EXPECT_EQ(result->status.signal, SIGKILL);  // A passed deadline kills at once.
  engine_.reset();
}

int ZombieChildren() {
  int zombies = 0;
  for (pid_t pid : testing::ChildrenOf(getpid())) {
    if (!testing::ProcessAlive(pid)) ++zombies;
  }
  return zombies;
}

TEST_F(EngineTest, AThousandRunsLeakNoDescriptorAndLeaveNoZombie) {
  ASSERT_TRUE(Run({"/bin/true"}).ok());  // The engine's own descriptors exist now.
  const int before = testing::OpenDescriptors();
  CommandRequest with_stdin;
  with_stdin.argv = {"/bin/cat"};
  with_stdin.stdin_data = "x";
  for (int i = 0; i < 1000; ++i) {
    auto r = i % 2 == 0 ? Run({"/bin/true"}) : Run(with_stdin);
    ASSERT_TRUE(r.ok()) << r.status();
  }
  // Children are destroyed on the loop just after their result is delivered.
  EXPECT_TRUE(
      testing::WaitFor([&] { return testing::OpenDescriptors() == before; }, absl::Seconds(5)))
      << testing::OpenDescriptors() << " descriptors open, " << before << " before";
  EXPECT_EQ(ZombieChildren(), 0);
  EXPECT_TRUE(testing::ChildrenOf(getpid()).empty());
}

}  // namespace
}  // namespace execd::core
