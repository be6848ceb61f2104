// The --authz_policy file: a good file becomes the policy it says (paths canonical, defaults
// filled in), and each bad file is refused with the file, the line, the rule and the field.
#include "server/authz_config.h"

#include <limits.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/support/subprocess.h"

namespace execd::server {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

std::string Real(const std::string& path) {
  char real[PATH_MAX];
  return realpath(path.c_str(), real) == nullptr ? path : std::string(real);
}

class AuthzConfigTest : public ::testing::Test {
 protected:
  AuthzConfigTest() { server_.max_memory_bytes = int64_t{8} << 30; }

  absl::StatusOr<std::shared_ptr<const core::AuthzPolicy>> Parse(const std::string& text) {
    return ParseAuthzPolicy(text, "policy.textproto", server_);
  }
  // The parse fails with exactly `message`.
  void ExpectError(const std::string& text, const std::string& message) {
    auto policy = Parse(text);
    ASSERT_FALSE(policy.ok()) << text;
    EXPECT_EQ(policy.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(policy.status().message(), message);
  }

  core::RequestPolicy server_;
};

TEST_F(AuthzConfigTest, TheDeployedExampleLoads) {
  auto policy = LoadAuthzPolicy(std::string(SOURCE_DIR) + "/deploy/policy.textproto", server_);
  ASSERT_TRUE(policy.ok()) << policy.status();
  ASSERT_EQ((*policy)->rules.size(), 2u);
  EXPECT_EQ((*policy)->RuleFor("ci-runner-2")->name, "ci");
  EXPECT_EQ((*policy)->RuleFor("oncall")->name, "oncall");
  EXPECT_EQ((*policy)->RuleFor("anonymous")->name, "default");
  EXPECT_EQ((*policy)->Shares().at("ci-runner-1"), 3);
}

TEST_F(AuthzConfigTest, AGoodFileBecomesThePolicyItSays) {
  testing::ScopedTempDir dir("authz_config");
  ASSERT_EQ(symlink("/bin", (dir.path() + "/bin-link").c_str()), 0);
  auto policy = Parse(absl::StrCat(R"(
    rule {
      name: "ci"
      identity: "ci-1"
      identity: "ci-2"
      executables: "/usr/bin"
      executables: ")",
                                   dir.path(), R"(/bin-link/true"
      executables: "/not/installed/yet/"
      pools: "python"
      max_priority: PRIORITY_HIGH
      cache: READ_ONLY
      cache: REFRESH
      max_limits { timeout { seconds: 5 } memory_bytes: 1048576 }
      get_status: true
      share: 4
    }
    rule { name: "solo" }
    default_rule { reflection: true }
  )"));
  ASSERT_TRUE(policy.ok()) << policy.status();
  const core::AuthzRule& ci = *(*policy)->RuleFor("ci-2");
  EXPECT_EQ(ci.name, "ci");
  ASSERT_EQ(ci.executables.size(), 3u);
  // A directory is one whether or not it was written with '/'; symlinks are resolved.
  EXPECT_EQ(ci.executables[0].written, "/usr/bin");
  EXPECT_EQ(ci.executables[0].path, Real("/usr/bin") + "/");
  EXPECT_EQ(ci.executables[1].path, Real("/bin/true"));
  EXPECT_EQ(ci.executables[2].path, "/not/installed/yet/");  // Kept as written.
  EXPECT_THAT(ci.pools, ElementsAre("python"));
  EXPECT_EQ(ci.max_priority, 2);
  EXPECT_TRUE(ci.cache[static_cast<size_t>(core::CachePolicy::kReadOnly)]);
  EXPECT_TRUE(ci.cache[static_cast<size_t>(core::CachePolicy::kRefresh)]);
  EXPECT_FALSE(ci.cache[static_cast<size_t>(core::CachePolicy::kReadWrite)]);
  EXPECT_EQ(ci.max_timeout, absl::Seconds(5));
  EXPECT_EQ(ci.memory_bytes, 1048576);
  EXPECT_EQ(ci.max_processes, 0);
  EXPECT_TRUE(ci.get_status);
  EXPECT_FALSE(ci.reflection);
  EXPECT_EQ(ci.share, 4);
  // A rule without identities is for the identity of its name; defaults are the strictest.
  const core::AuthzRule& solo = *(*policy)->RuleFor("solo");
  EXPECT_EQ(solo.name, "solo");
  EXPECT_TRUE(solo.executables.empty());
  EXPECT_EQ(solo.max_priority, 1);
  EXPECT_EQ(solo.share, 1);
  EXPECT_FALSE(solo.get_status);
  EXPECT_EQ((*policy)->RuleFor("ci"), (*policy)->RuleFor("someone"));  // The default rule.
  EXPECT_EQ((*policy)->RuleFor("someone")->name, "default");
  EXPECT_TRUE((*policy)->RuleFor("someone")->reflection);
}

TEST_F(AuthzConfigTest, AnEmptyFileAllowsNothing) {
  auto policy = Parse("");
  ASSERT_TRUE(policy.ok()) << policy.status();
  EXPECT_EQ((*policy)->RuleFor("anonymous"), nullptr);
}

TEST_F(AuthzConfigTest, EachErrorNamesTheLineTheRuleAndTheField) {
  ExpectError("rule { name: \"ci\"\n  executables: 7 }",
              "policy.textproto: line 2:16: Expected string, got: 7");
  ExpectError("rule {\n  nmae: \"ci\" }",
              "policy.textproto: line 2:7: Message type \"execd.v1.AuthzRule\" has no field "
              "named \"nmae\".");
  ExpectError("rule { name: \"ci\" }\nrule {\n  name: \"c i\" }",
              "policy.textproto: line 3: rule \"c i\": name must be 1 to 128 of A-Z, a-z, 0-9, "
              "'_', '.', '@', ':' and '-'");
  ExpectError("rule {\n}",
              "policy.textproto: line 1: rule (no name): name must be 1 to 128 "
              "of A-Z, a-z, 0-9, '_', '.', '@', ':' and '-'");
  ExpectError("rule { name: \"default\" }",
              "policy.textproto: line 1: rule \"default\": name \"default\" is the default "
              "rule's; use default_rule");
  ExpectError("rule { name: \"a\" }\nrule {\n  name: \"a\" }",
              "policy.textproto: line 3: rule \"a\": name is used by an earlier rule");
  ExpectError(
      "rule { name: \"a\" identity: \"x\" }\nrule { name: \"b\"\n  identity: \"y\"\n"
      "  identity: \"x\" }",
      "policy.textproto: line 4: rule \"b\": identity \"x\" is already in rule \"a\"; "
      "an identity has one rule");
  ExpectError("rule { name: \"a\" identity: \"x\"\n  identity: \"x\" }",
              "policy.textproto: line 2: rule \"a\": identity \"x\" is listed twice");
  ExpectError("rule { name: \"a\"\n  identity: \"\" }",
              "policy.textproto: line 2: rule \"a\": identity[0] \"\" must be 1 to 256 bytes "
              "without control characters");
  ExpectError("rule { name: \"a\"\n  executables: \"/bin/\"\n  executables: \"usr/bin\" }",
              "policy.textproto: line 3: rule \"a\": executables[1] \"usr/bin\" is not an "
              "absolute path (give /usr/bin/ or /bin/true)");
  ExpectError("rule { name: \"a\"\n  pools: \"\" }",
              "policy.textproto: line 2: rule \"a\": pools[0] is empty; name a pool, or \"*\" for "
              "every pool");
  ExpectError("rule { name: \"a\"\n  max_priority: 9 }",
              "policy.textproto: line 2: rule \"a\": max_priority 9 is not PRIORITY_LOW, "
              "PRIORITY_NORMAL or PRIORITY_HIGH");
  ExpectError("rule { name: \"a\"\n  cache: READ_ONLY\n  cache: 8 }",
              "policy.textproto: line 3: rule \"a\": cache[1] 8 is not CACHE_OFF, READ_WRITE, "
              "READ_ONLY or REFRESH");
  ExpectError("rule { name: \"a\"\n  max_limits {\n    cpu_affinity: 0 } }",
              "policy.textproto: line 3: rule \"a\": max_limits.cpu_affinity is not a maximum; "
              "leave it unset");
  ExpectError("rule { name: \"a\"\n  max_limits {\n    memory_bytes: 9000000000 } }",
              "policy.textproto: line 3: rule \"a\": max_limits.memory_bytes is over the server's "
              "maximum (--max_memory_bytes); a rule can only tighten it");
  ExpectError("rule { name: \"a\" max_limits {\n  timeout { seconds: 3600 } } }",
              "policy.textproto: line 2: rule \"a\": max_limits.timeout is over the server's "
              "maximum (--max_timeout); a rule can only tighten it");
  ExpectError("rule { name: \"a\" max_limits {\n  max_open_files: -1 } }",
              "policy.textproto: line 2: rule \"a\": max_limits.max_open_files is negative");
  ExpectError("rule { name: \"a\"\n  share: 1001 }",
              "policy.textproto: line 2: rule \"a\": share 1001 is over 1000");
  ExpectError("default_rule {\n  name: \"other\" }",
              "policy.textproto: line 2: default_rule: name: the default rule is always named "
              "\"default\"");
  ExpectError("default_rule {\n  identity: \"x\" }",
              "policy.textproto: line 2: default_rule: identity: the default rule is for every "
              "identity no rule names; remove it");
}

TEST_F(AuthzConfigTest, AnUnreadableFileIsNamed) {
  auto policy = LoadAuthzPolicy("/no/such/policy.textproto", server_);
  EXPECT_EQ(policy.status().message(),
            "--authz_policy: cannot read \"/no/such/policy.textproto\"; give a readable file");
}

}  // namespace
}  // namespace execd::server
