#include "tools/execctl/args.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace execd::execctl {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Pair;

absl::StatusOr<Args> Parse(std::vector<std::string> args) { return ParseArgs(args, ""); }

TEST(ExecctlArgs, RunTakesFlagsThenTheCommandAfterDoubleDash) {
  auto a = Parse({"--target=h:1", "run", "--timeout=200ms", "--env", "A=1", "--env=B=x=y",
                  "--stream", "--", "/bin/echo", "--not-a-flag"});
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->target, "h:1");
  EXPECT_EQ(a->command, Args::Command::kRun);
  EXPECT_EQ(a->timeout, absl::Milliseconds(200));
  EXPECT_THAT(a->env, ElementsAre(Pair("A", "1"), Pair("B", "x=y")));
  EXPECT_TRUE(a->stream);
  EXPECT_THAT(a->argv, ElementsAre("/bin/echo", "--not-a-flag"));
}

TEST(ExecctlArgs, CredentialsAreGlobalFlagsBeforeTheCommand) {
  auto a = Parse({"--auth_token_file=/t", "--tls_ca", "/ca.pem", "--tls_cert=/c.pem",
                  "--tls_key=/c.key", "ping"});
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->command, Args::Command::kPing);
  EXPECT_EQ(a->auth.token_file, "/t");
  EXPECT_EQ(a->auth.tls_ca, "/ca.pem");
  EXPECT_EQ(a->auth.tls_cert, "/c.pem");
  EXPECT_EQ(a->auth.tls_key, "/c.key");
  EXPECT_FALSE(Parse({"ping", "--tls_ca=/ca.pem"}).ok());
}

TEST(ExecctlArgs, StreamChunkBytesIsACount) {
  auto a = Parse({"run", "--stream", "--stream_chunk_bytes=1048576", "--", "/bin/true"});
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->stream_chunk_bytes, 1048576);
  EXPECT_FALSE(Parse({"run", "--stream_chunk_bytes=lots", "--", "/bin/true"}).ok());
}

TEST(ExecctlArgs, CommandWithoutDoubleDashStartsAtTheFirstNonFlag) {
  auto a = Parse({"run", "/bin/ls", "-l"});
  ASSERT_TRUE(a.ok());
  EXPECT_THAT(a->argv, ElementsAre("/bin/ls", "-l"));
}

TEST(ExecctlArgs, LimitsAndScheduling) {
  auto a = Parse({"run", "--priority=high", "--max_queue_time=1s", "--cpu_time", "2s",
                  "--memory_bytes=1048576", "--max_processes=10", "--max_open_files=20",
                  "--max_file_size_bytes=30", "--cpu_affinity=0,2", "--", "x"});
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->priority, "high");
  EXPECT_EQ(a->max_queue_time, absl::Seconds(1));
  EXPECT_EQ(a->cpu_time, absl::Seconds(2));
  EXPECT_EQ(a->memory_bytes, 1048576);
  EXPECT_EQ(a->max_processes, 10);
  EXPECT_EQ(a->max_open_files, 20);
  EXPECT_EQ(a->max_file_size_bytes, 30);
  EXPECT_THAT(a->cpu_affinity, ElementsAre(0, 2));
}

TEST(ExecctlArgs, CachePolicyAndTtl) {
  auto a = Parse({"run", "--cache=read-only", "--cache_ttl", "90s", "--", "x"});
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->cache, "read-only");
  EXPECT_EQ(a->cache_ttl, absl::Seconds(90));
  auto none = Parse({"run", "--", "x"});
  ASSERT_TRUE(none.ok());
  EXPECT_EQ(none->cache, "");
}

TEST(ExecctlArgs, DefaultTargetComesFromTheEnvironmentValue) {
  auto a = ParseArgs({"health"}, "other:9");
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->target, "other:9");
  EXPECT_EQ(a->command, Args::Command::kHealth);
}

TEST(ExecctlArgs, ErrorsNameTheFlagAndTheValue) {
  struct Case {
    std::vector<std::string> args;
    std::string message;
  };
  for (const Case& c : std::vector<Case>{
           {{"run", "--timeout=soon", "--", "x"}, "--timeout wants a duration"},
           {{"run", "--env", "NOEQUALS", "--", "x"}, "--env wants NAME=VALUE"},
           {{"run", "--priority=urgent", "--", "x"}, "--priority wants low, normal or high"},
           {{"run", "--memory_bytes=-1", "--", "x"}, "--memory_bytes wants a non-negative"},
           {{"run", "--cpu_affinity=a", "--", "x"}, "--cpu_affinity wants CPU numbers"},
           {{"run", "--cache=maybe", "--", "x"}, "--cache wants off, read-write, read-only"},
           {{"run", "--cache_ttl=later", "--", "x"}, "--cache_ttl wants a duration"},
           {{"attach", "--cache=read-write", "--", "cat"}, "unknown flag \"--cache=read-write\""},
           {{"run", "--bogus", "--", "x"}, "unknown flag \"--bogus\" for run"},
           {{"run", "--timeout"}, "--timeout needs a value"},
           {{"run"}, "run needs a command"},
           {{"attach"}, "attach needs a command"},
           {{"attach", "--stdin=-", "--", "cat"}, "unknown flag \"--stdin=-\" for attach"},
           {{"explode"}, "unknown command \"explode\""},
           {{"health", "extra"}, "unexpected argument \"extra\""},
           {{"top", "--interval=0s"}, "--interval wants a positive duration"},
           {{"top", "--interval=often"}, "--interval wants a positive duration"},
           {{"top", "--iterations=-2"}, "--iterations wants a non-negative number"},
           {{"top", "--timeout=1s"}, "unknown flag \"--timeout=1s\" for top"},
       }) {
    auto a = Parse(c.args);
    ASSERT_FALSE(a.ok()) << c.message;
    EXPECT_EQ(a.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(a.status().message(), HasSubstr(c.message));
  }
}

TEST(ExecctlArgs, TopRefreshesEverySecondUntilInterruptedUnlessTold) {
  auto a = Parse({"--target=h:1", "top"});
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->command, Args::Command::kTop);
  EXPECT_EQ(a->target, "h:1");
  EXPECT_EQ(a->interval, absl::Seconds(1));
  EXPECT_EQ(a->iterations, 0);
  a = Parse({"top", "--interval", "250ms", "--iterations=3"});
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->interval, absl::Milliseconds(250));
  EXPECT_EQ(a->iterations, 3);
}

TEST(ExecctlArgs, AttachTakesRunsFlagsAndTheCommand) {
  auto a = Parse({"attach", "--timeout=10m", "--inherit_env", "PATH", "--", "python3", "-i"});
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->command, Args::Command::kAttach);
  EXPECT_EQ(a->timeout, absl::Minutes(10));
  EXPECT_EQ(a->inherit_env, std::vector<std::string>{"PATH"});
  EXPECT_EQ(a->argv, (std::vector<std::string>{"python3", "-i"}));
}

TEST(ExecctlArgs, AttachTtyIsOptInAndOnlyForAttach) {
  auto plain = Parse({"attach", "--", "bash"});
  ASSERT_TRUE(plain.ok()) << plain.status();
  EXPECT_FALSE(plain->tty);
  for (const char* flag : {"-t", "--tty"}) {
    auto a = Parse({"attach", flag, "--", "bash"});
    ASSERT_TRUE(a.ok()) << a.status();
    EXPECT_TRUE(a->tty) << flag;
    EXPECT_EQ(a->argv, std::vector<std::string>{"bash"});
  }
  auto run = Parse({"run", "-t", "--", "bash"});
  EXPECT_FALSE(run.ok());  // run has no terminal.
  auto pipeline = Parse({"run", "--", "sort", "|", "uniq", "-c"});
  ASSERT_TRUE(pipeline.ok()) << pipeline.status();
  EXPECT_EQ(pipeline->argv, std::vector<std::string>{"sort"});
  EXPECT_EQ(pipeline->pipe_to, (std::vector<std::vector<std::string>>{{"uniq", "-c"}}));
}

TEST(ExecctlArgs, NoCommandIsHelp) {
  auto a = Parse({});
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->command, Args::Command::kHelp);
}

}  // namespace
}  // namespace execd::execctl
