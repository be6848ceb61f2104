#include "core/validate.h"

#include <sys/stat.h>
#include <unistd.h>

#include <fstream>

#include "core/pool.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/support/subprocess.h"

namespace execd::core {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

class ValidateTest : public ::testing::Test {
 protected:
  ValidateTest() {
    policy_.server_env = {{"PATH", "/usr/bin:/bin"}, {"HOME", "/root"}, {"LANG", "C.UTF-8"}};
    policy_.max_timeout = absl::Minutes(10);
    policy_.max_output_bytes = 16 << 20;
    policy_.max_argv_env_bytes = 4096;
  }

  static CommandRequest Request(std::vector<std::string> argv) {
    CommandRequest r;
    r.argv = std::move(argv);
    return r;
  }

  // Validates and expects failure with `code` and a message containing `part`.
  void ExpectError(CommandRequest r, absl::StatusCode code, const std::string& part) {
    auto cmd = ValidateRequest(std::move(r), policy_);
    ASSERT_FALSE(cmd.ok());
    EXPECT_EQ(cmd.status().code(), code) << cmd.status();
    EXPECT_THAT(cmd.status().message(), HasSubstr(part));
  }

  RequestPolicy policy_;
  testing::ScopedTempDir dir_{"execd_validate"};
};

TEST_F(ValidateTest, AcceptsAPlainCommandAndAppliesDefaults) {
  auto cmd = ValidateRequest(Request({"/bin/echo", "hi"}), policy_);
  ASSERT_TRUE(cmd.ok()) << cmd.status();
  EXPECT_EQ(cmd->executable, "/bin/echo");
  EXPECT_THAT(cmd->argv, ElementsAre("/bin/echo", "hi"));
  EXPECT_TRUE(cmd->env.empty());
  EXPECT_EQ(cmd->limits.timeout, policy_.default_timeout);
  EXPECT_EQ(cmd->limits.max_output_bytes, policy_.default_max_output_bytes);
  EXPECT_EQ(cmd->priority, 1);
  EXPECT_EQ(cmd->max_queue_time, absl::InfiniteDuration());
}

TEST_F(ValidateTest, RejectsEmptyArgvAndEmptyProgram) {
  ExpectError(Request({}), absl::StatusCode::kInvalidArgument, "argv is empty");
  ExpectError(Request({""}), absl::StatusCode::kInvalidArgument, "argv[0] is empty");
}

TEST_F(ValidateTest, RejectsNulBytesNamingTheField) {
  ExpectError(Request({"/bin/echo", std::string("a\0b", 3)}), absl::StatusCode::kInvalidArgument,
              "argv[1]");
  CommandRequest env_value = Request({"/bin/true"});
  env_value.env = {{"X", std::string("a\0b", 3)}};
  ExpectError(env_value, absl::StatusCode::kInvalidArgument, "NUL");
  CommandRequest env_name = Request({"/bin/true"});
  env_name.env = {{std::string("X\0Y", 3), "v"}};
  ExpectError(env_name, absl::StatusCode::kInvalidArgument, "NUL");
  CommandRequest cwd = Request({"/bin/true"});
  cwd.cwd = std::string("/tmp\0x", 6);
  ExpectError(cwd, absl::StatusCode::kInvalidArgument, "cwd");
}

TEST_F(ValidateTest, RejectsBadEnvironmentNames) {
  CommandRequest eq = Request({"/bin/true"});
  eq.env = {{"A=B", "c"}};
  ExpectError(eq, absl::StatusCode::kInvalidArgument, "contains '='");
  CommandRequest empty = Request({"/bin/true"});
  empty.env = {{"", "c"}};
  ExpectError(empty, absl::StatusCode::kInvalidArgument, "empty variable name");
  CommandRequest inherit = Request({"/bin/true"});
  inherit.inherit_env = {"A=B"};
  ExpectError(inherit, absl::StatusCode::kInvalidArgument, "inherit_env");
}

TEST_F(ValidateTest, EnvironmentIsExactlyTheGivenPlusInheritedSorted) {
  policy_.inheritable_env.push_back("NOT_ON_SERVER");
  CommandRequest r = Request({"/bin/true"});
  r.env = {{"ZED", "1"}, {"HOME", "/custom"}};
  r.inherit_env = {"HOME", "LANG", "NOT_ON_SERVER"};
  auto cmd = ValidateRequest(std::move(r), policy_);
  ASSERT_TRUE(cmd.ok()) << cmd.status();
  // env wins over inherited; unknown inherited names are skipped; PATH is not passed.
  EXPECT_THAT(cmd->env, ElementsAre("HOME=/custom", "LANG=C.UTF-8", "ZED=1"));
}

TEST_F(ValidateTest, OnlyInheritableServerVariablesMayBeInherited) {
  policy_.server_env["SECRET_TOKEN"] = "hunter2";
  CommandRequest r = Request({"/bin/true"});
  r.inherit_env = {"PATH", "SECRET_TOKEN"};
  ExpectError(r, absl::StatusCode::kPermissionDenied,
              "inherit_env \"SECRET_TOKEN\" is not inheritable on this server "
              "(--inheritable_env=PATH,LANG,LC_ALL,TZ,TERM,HOME)");
  policy_.inheritable_env = {};
  r.inherit_env = {"PATH"};
  ExpectError(r, absl::StatusCode::kPermissionDenied, "(--inheritable_env=)");
}

TEST_F(ValidateTest, CwdMustBeAnExistingAbsoluteDirectory) {
  CommandRequest relative = Request({"/bin/true"});
  relative.cwd = "tmp";
  ExpectError(relative, absl::StatusCode::kInvalidArgument, "absolute");
  CommandRequest missing = Request({"/bin/true"});
  missing.cwd = "/no/such/dir";
  ExpectError(missing, absl::StatusCode::kNotFound, "/no/such/dir");
  std::string file = dir_.path() + "/file";
  std::ofstream(file) << "x";
  CommandRequest not_dir = Request({"/bin/true"});
  not_dir.cwd = file;
  ExpectError(not_dir, absl::StatusCode::kInvalidArgument, "not a directory");
}

TEST_F(ValidateTest, LimitsOutOfRangeNameTheField) {
  CommandRequest negative = Request({"/bin/true"});
  negative.timeout = absl::Seconds(-1);
  ExpectError(negative, absl::StatusCode::kInvalidArgument, "limits.timeout");
  CommandRequest huge = Request({"/bin/true"});
  huge.timeout = absl::Hours(24);
  ExpectError(huge, absl::StatusCode::kInvalidArgument, "server maximum");
  CommandRequest bytes = Request({"/bin/true"});
  bytes.max_output_bytes = -1;
  ExpectError(bytes, absl::StatusCode::kInvalidArgument, "limits.max_output_bytes");
  bytes.max_output_bytes = 1LL << 40;
  ExpectError(bytes, absl::StatusCode::kInvalidArgument, "limits.max_output_bytes");
  CommandRequest priority = Request({"/bin/true"});
  priority.priority = 7;
  ExpectError(priority, absl::StatusCode::kInvalidArgument, "priority");
  CommandRequest queue = Request({"/bin/true"});
  queue.max_queue_time = absl::Seconds(-1);
  ExpectError(queue, absl::StatusCode::kInvalidArgument, "max_queue_time");
  CommandRequest files = Request({"/bin/true"});
  files.max_open_files = 2;
  ExpectError(files, absl::StatusCode::kInvalidArgument, "at least 3");
  CommandRequest memory = Request({"/bin/true"});
  memory.memory_bytes = 1000;
  ExpectError(memory, absl::StatusCode::kInvalidArgument, "at least 1 MiB");
}

TEST_F(ValidateTest, ArgvAndEnvTooLargeIsRejected) {
  ExpectError(Request({"/bin/echo", std::string(5000, 'x')}), absl::StatusCode::kInvalidArgument,
              "over the limit");
}

TEST_F(ValidateTest, RequestIdTooLongIsRejected) {
  CommandRequest r = Request({"/bin/true"});
  r.request_id = std::string(200, 'r');
  ExpectError(r, absl::StatusCode::kInvalidArgument, "request_id");
}

TEST_F(ValidateTest, BareNamesAreFoundOnTheServersPath) {
  auto cmd = ValidateRequest(Request({"true"}), policy_);
  ASSERT_TRUE(cmd.ok()) << cmd.status();
  EXPECT_TRUE(cmd->executable == "/usr/bin/true" || cmd->executable == "/bin/true")
      << cmd->executable;
  EXPECT_EQ(cmd->argv[0], "true");  // argv[0] stays as the caller gave it.
  ExpectError(Request({"pyton3"}), absl::StatusCode::kNotFound, "\"pyton3\" not found");
  ExpectError(Request({"/usr/bin/pyton3"}), absl::StatusCode::kNotFound, "/usr/bin/pyton3");
}

TEST_F(ValidateTest, NonExecutableFilesAndDirectoriesArePermissionDenied) {
  std::string script = dir_.path() + "/script.sh";
  std::ofstream(script) << "#!/bin/sh\n";
  chmod(script.c_str(), 0644);
  ExpectError(Request({script}), absl::StatusCode::kPermissionDenied, "not executable");
  ExpectError(Request({dir_.path()}), absl::StatusCode::kPermissionDenied, "is a directory");
}

// Validation remembers files it found executable; a permission change must still be seen
// by the very next request.
TEST_F(ValidateTest, ExecutePermissionChangesAreSeenAtOnce) {
  std::string program = dir_.path() + "/tool";
  std::ofstream(program) << "#!/bin/sh\n";
  ASSERT_EQ(chmod(program.c_str(), 0755), 0);
  for (int i = 0; i < 2; ++i) {
    ASSERT_TRUE(ValidateRequest(Request({program}), policy_).ok());
  }
  ASSERT_EQ(chmod(program.c_str(), 0644), 0);
  ExpectError(Request({program}), absl::StatusCode::kPermissionDenied, "not executable");
  ASSERT_EQ(chmod(program.c_str(), 0755), 0);
  EXPECT_TRUE(ValidateRequest(Request({program}), policy_).ok());
  // Replaced by a file that is not executable, under the same name.
  ASSERT_EQ(unlink(program.c_str()), 0);
  std::ofstream(program) << "#!/bin/sh\n";
  ASSERT_EQ(chmod(program.c_str(), 0600), 0);
  ExpectError(Request({program}), absl::StatusCode::kPermissionDenied, "not executable");
}

TEST_F(ValidateTest, RelativeProgramPathsResolveAgainstCwd) {
  std::string program = dir_.path() + "/tool";
  std::ofstream(program) << "#!/bin/sh\n";
  chmod(program.c_str(), 0755);
  CommandRequest r = Request({"./tool"});
  r.cwd = dir_.path();
  auto cmd = ValidateRequest(std::move(r), policy_);
  ASSERT_TRUE(cmd.ok()) << cmd.status();
  EXPECT_EQ(cmd->executable, dir_.path() + "/./tool");
}

TEST_F(ValidateTest, ResourceLimitsDefaultToTheServerMaximum) {
  policy_.max_memory_bytes = 64 << 20;
  policy_.max_cpu_time = absl::Seconds(5);
  auto cmd = ValidateRequest(Request({"/bin/true"}), policy_);
  ASSERT_TRUE(cmd.ok());
  EXPECT_EQ(cmd->limits.memory_bytes, 64 << 20);
  EXPECT_EQ(cmd->limits.cpu_time, absl::Seconds(5));
  CommandRequest over = Request({"/bin/true"});
  over.memory_bytes = 128 << 20;
  ExpectError(over, absl::StatusCode::kInvalidArgument, "--max_memory_bytes");
  CommandRequest cpu = Request({"/bin/true"});
  cpu.cpu_time = absl::Seconds(10);
  ExpectError(cpu, absl::StatusCode::kInvalidArgument, "--max_cpu_time");
}

TEST_F(ValidateTest, EveryProgramOfAPipelineIsResolvedAndCountedInTheArgvBudget) {
  CommandRequest r = Request({"sort"});
  r.pipe_to = {{"uniq", "-c"}, {"/bin/cat"}};
  auto cmd = ValidateRequest(r, policy_);
  ASSERT_TRUE(cmd.ok()) << cmd.status();
  ASSERT_EQ(cmd->pipe_to.size(), 2u);
  EXPECT_EQ(cmd->pipe_to[0].executable, "/usr/bin/uniq");
  EXPECT_THAT(cmd->pipe_to[0].argv, ElementsAre("uniq", "-c"));
  EXPECT_TRUE(cmd->pipe_to[0].executable_id.known);
  EXPECT_EQ(cmd->pipe_to[1].executable, "/bin/cat");

  CommandRequest big = Request({"/bin/true"});
  big.pipe_to = {{"/bin/cat", std::string(policy_.max_argv_env_bytes, 'x')}};
  ExpectError(big, absl::StatusCode::kInvalidArgument, "argv and env");
  CommandRequest dir = Request({"/bin/true"});
  dir.pipe_to = {{"/bin/cat"}, {"/tmp"}};
  ExpectError(dir, absl::StatusCode::kPermissionDenied, "pipe_to[1]: argv[0] \"/tmp\"");
}

TEST_F(ValidateTest, APooledRequestCannotBeAPipeline) {
  PoolSpec pool;
  pool.name = "py";
  pool.kind = PoolSpec::Kind::kPersistent;
  CommandRequest r = Request({"x"});
  r.pipe_to = {{"cat"}};
  auto cmd = ValidatePooledRequest(r, pool, policy_);
  ASSERT_FALSE(cmd.ok());
  EXPECT_EQ(cmd.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(cmd.status().message(),
              HasSubstr("pipe_to must be empty in a request to pool \"py\""));
}

TEST_F(ValidateTest, CpuAffinityMustBeWithinTheServersCpus) {
  policy_.allowed_cpus = {0, 1};
  CommandRequest ok = Request({"/bin/true"});
  ok.cpu_affinity = {1};
  EXPECT_TRUE(ValidateRequest(ok, policy_).ok());
  CommandRequest bad = Request({"/bin/true"});
  bad.cpu_affinity = {5};
  ExpectError(bad, absl::StatusCode::kInvalidArgument, "CPU 5");
}

}  // namespace
}  // namespace execd::core
