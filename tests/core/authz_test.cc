// Authorization's checks (core/authz.h) as pure functions of a policy and a request:
// deny by default, each denial naming the identity and its rule, how a request's unset
// limits and priority come under a rule's maxima, and the loader variables an executable
// allowlist refuses. RealProgramPaths is the one that reads the file system.
#include "core/authz.h"

#include <limits.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/support/subprocess.h"

namespace execd::core {
namespace {

using ::testing::HasSubstr;

AllowedExecutable Exe(const std::string& path) { return AllowedExecutable{path, path}; }

// ci: /usr/bin/ and /bin/true, pool "python", up to NORMAL, READ_ONLY and READ_WRITE,
// 1 GiB of memory and 10 s. batch (identities batch-1 and batch-2): anything, LOW only.
AuthzPolicy TestPolicy() {
  AuthzPolicy policy;
  AuthzRule ci;
  ci.name = "ci";
  ci.executables = {Exe("/usr/bin/"), Exe("/bin/true")};
  ci.pools = {"python"};
  ci.cache[static_cast<size_t>(CachePolicy::kReadOnly)] = true;
  ci.cache[static_cast<size_t>(CachePolicy::kReadWrite)] = true;
  ci.memory_bytes = int64_t{1} << 30;
  ci.max_timeout = absl::Seconds(10);
  ci.get_status = true;
  ci.share = 3;
  AuthzRule batch;
  batch.name = "batch";
  batch.executables = {Exe("/")};
  batch.pools = {"*"};
  batch.max_priority = 0;
  policy.rules = {ci, batch};
  policy.rule_of = {{"ci", 0}, {"batch-1", 1}, {"batch-2", 1}};
  return policy;
}

Access Asking(const std::string& identity) {
  Access a;
  a.identity = identity;
  return a;
}

void ExpectDenied(const absl::Status& status, const std::string& message) {
  EXPECT_EQ(status.code(), absl::StatusCode::kPermissionDenied) << status;
  EXPECT_EQ(status.message(), message);
}

TEST(Authz, AnIdentityWithoutARuleMayDoNothing) {
  const AuthzPolicy policy = TestPolicy();
  const std::string why =
      "identity \"mallory\": no rule of the authorization policy names this identity and it "
      "has no default_rule, so it may do nothing";
  ExpectDenied(Authorize(policy, Asking("mallory")), why);
  ExpectDenied(AuthorizePrograms(policy, "mallory", {{"argv[0] \"true\"", "/bin/true"}}), why);
  ExpectDenied(AuthorizeStatus(policy, "mallory"), why);
  ExpectDenied(AuthorizeReflection(policy, "mallory"), why);
  // An empty policy refuses everyone.
  ExpectDenied(Authorize(AuthzPolicy{}, Asking("anonymous")),
               "identity \"anonymous\": no rule of the authorization policy names this "
               "identity and it has no default_rule, so it may do nothing");
}

TEST(Authz, TheDefaultRuleIsForIdentitiesNoRuleNames) {
  AuthzPolicy policy = TestPolicy();
  AuthzRule fallback;
  fallback.name = "default";
  policy.default_rule = fallback;
  EXPECT_EQ(policy.RuleFor("mallory"), &*policy.default_rule);
  EXPECT_EQ(policy.RuleFor("ci"), &policy.rules[0]);
  EXPECT_EQ(policy.RuleFor("batch-2"), &policy.rules[1]);
  EXPECT_TRUE(Authorize(policy, Asking("mallory")).ok());
  ExpectDenied(AuthorizePrograms(policy, "mallory", {{"argv[0] \"true\"", "/bin/true"}}),
               "identity \"mallory\": executable /bin/true (argv[0] \"true\") is not in rule "
               "default.executables (allowed: none)");
  ExpectDenied(AuthorizeStatus(policy, "mallory"),
               "identity \"mallory\": GetStatus is not allowed by rule default.get_status");
}

TEST(Authz, ExecutablesAreExactFilesOrWholeDirectories) {
  const AuthzPolicy policy = TestPolicy();
  EXPECT_TRUE(AuthorizePrograms(policy, "ci", {{"argv[0]", "/usr/bin/env"}}).ok());
  EXPECT_TRUE(AuthorizePrograms(policy, "ci", {{"argv[0]", "/usr/bin/sub/dir/x"}}).ok());
  EXPECT_TRUE(AuthorizePrograms(policy, "ci", {{"argv[0]", "/bin/true"}}).ok());
  ExpectDenied(AuthorizePrograms(policy, "ci", {{"argv[0] \"curl\"", "/usr/local/bin/curl"}}),
               "identity \"ci\": executable /usr/local/bin/curl (argv[0] \"curl\") is not in "
               "rule ci.executables (allowed: /usr/bin/, /bin/true)");
  // A directory allows what is under it, not what shares its name's first letters.
  for (const char* path : {"/usr/bin2/x", "/usr/bin", "/bin/true2", "/bin/tru", "/bin/false"}) {
    EXPECT_EQ(AuthorizePrograms(policy, "ci", {{"argv[0]", path}}).code(),
              absl::StatusCode::kPermissionDenied)
        << path;
  }
  // Every program of a pipeline is checked.
  ExpectDenied(
      AuthorizePrograms(policy, "ci",
                        {{"argv[0] \"env\"", "/usr/bin/env"}, {"pipe_to[0] \"sh\"", "/opt/sh"}}),
      "identity \"ci\": executable /opt/sh (pipe_to[0] \"sh\") is not in rule "
      "ci.executables (allowed: /usr/bin/, /bin/true)");
  EXPECT_TRUE(AuthorizePrograms(policy, "batch-1", {{"argv[0]", "/opt/anything"}}).ok());
}

TEST(Authz, PoolsMustBeListed) {
  const AuthzPolicy policy = TestPolicy();
  Access a = Asking("ci");
  a.pool = "python";
  EXPECT_TRUE(Authorize(policy, a).ok());
  a.pool = "node";
  ExpectDenied(Authorize(policy, a),
               "identity \"ci\": pool \"node\" is not in rule ci.pools (allowed: python)");
  Access batch = Asking("batch-1");
  batch.pool = "node";
  EXPECT_TRUE(Authorize(policy, batch).ok());  // "*".
}

TEST(Authz, AnExplicitPriorityAboveTheRulesIsRefusedAnUnsetOneLowered) {
  const AuthzPolicy policy = TestPolicy();
  Access a = Asking("batch-1");
  a.priority = 2;
  ExpectDenied(Authorize(policy, a),
               "identity \"batch-1\": priority HIGH is above rule batch.max_priority (LOW)");
  a.priority = 0;
  EXPECT_TRUE(Authorize(policy, a).ok());
  a.priority = -1;  // Unset: NORMAL after validation, LOW under the rule.
  EXPECT_TRUE(Authorize(policy, a).ok());
  Command command;
  command.priority = 1;
  ApplyRuleDefaults(policy, a, &command);
  EXPECT_EQ(command.priority, 0);
  // One the rule allows stays as asked.
  Access ci = Asking("ci");
  ci.priority = 1;
  command.priority = 1;
  ApplyRuleDefaults(policy, ci, &command);
  EXPECT_EQ(command.priority, 1);
}

TEST(Authz, CachePoliciesMustBeListedAndOffIsAlwaysAllowed) {
  const AuthzPolicy policy = TestPolicy();
  Access a = Asking("ci");
  for (CachePolicy allowed : {CachePolicy::kOff, CachePolicy::kReadOnly, CachePolicy::kReadWrite}) {
    a.cache = allowed;
    EXPECT_TRUE(Authorize(policy, a).ok());
  }
  a.cache = CachePolicy::kRefresh;
  ExpectDenied(Authorize(policy, a),
               "identity \"ci\": cache_policy REFRESH is not in rule ci.cache (allowed: "
               "READ_WRITE, READ_ONLY)");
  Access batch = Asking("batch-1");
  batch.cache = CachePolicy::kReadOnly;
  ExpectDenied(Authorize(policy, batch),
               "identity \"batch-1\": cache_policy READ_ONLY is not in rule batch.cache "
               "(allowed: none)");
}

TEST(Authz, LimitsOverTheRulesMaximaAreRefusedAndUnsetOnesLowered) {
  const AuthzPolicy policy = TestPolicy();
  Access a = Asking("ci");
  a.memory_bytes = int64_t{2} << 30;
  ExpectDenied(Authorize(policy, a),
               "identity \"ci\": limits.memory_bytes 2147483648 is over rule "
               "ci.max_limits.memory_bytes (1073741824)");
  a.memory_bytes = 0;
  a.timeout = absl::Seconds(11);
  ExpectDenied(Authorize(policy, a),
               "identity \"ci\": limits.timeout 11s is over rule ci.max_limits.timeout (10s)");
  a.timeout = absl::Seconds(5);
  ASSERT_TRUE(Authorize(policy, a).ok());

  // Validation gave the server's defaults: no memory limit, a 60 s timeout.
  Command command;
  command.limits.memory_bytes = 0;
  command.limits.timeout = absl::Seconds(5);
  command.limits.max_processes = 0;
  ApplyRuleDefaults(policy, a, &command);
  EXPECT_EQ(command.limits.memory_bytes, int64_t{1} << 30);  // Unset: the rule's maximum.
  EXPECT_EQ(command.limits.timeout, absl::Seconds(5));       // As asked.
  EXPECT_EQ(command.limits.max_processes, 0);                // No maximum in the rule.
  a.timeout = absl::ZeroDuration();
  command.limits.timeout = absl::Seconds(60);
  ApplyRuleDefaults(policy, a, &command);
  EXPECT_EQ(command.limits.timeout, absl::Seconds(10));

  // A pool's own resource limits stay the pool's.
  Command pooled;
  pooled.pool = "python";
  ApplyRuleDefaults(policy, a, &pooled);
  EXPECT_EQ(pooled.limits.memory_bytes, 0);
  EXPECT_EQ(pooled.limits.timeout, absl::Seconds(10));
}

TEST(Authz, AnExecutableAllowlistRefusesLoaderVariables) {
  const AuthzPolicy policy = TestPolicy();
  Access a = Asking("ci");
  a.env = {"HOME", "LD_PRELOAD"};
  ExpectDenied(Authorize(policy, a),
               "identity \"ci\": env LD_PRELOAD may not be set: rule ci.executables allows only "
               "listed programs, and LD_PRELOAD makes a program load or run other code (see the "
               "README's list of loader variables)");
  for (const char* name : {"LD_LIBRARY_PATH", "BASH_ENV", "ENV", "PYTHONSTARTUP", "BASH_FUNC_ls%%",
                           "NODE_OPTIONS", "GIT_CONFIG_COUNT"}) {
    a.env = {name};
    EXPECT_EQ(Authorize(policy, a).code(), absl::StatusCode::kPermissionDenied) << name;
  }
  a.env = {"HOME", "LANG", "PATH", "LDFLAGS", "ENVIRONMENT"};
  EXPECT_TRUE(Authorize(policy, a).ok());
  // Any program allowed ("/"): nothing is gained by refusing them.
  Access batch = Asking("batch-1");
  batch.env = {"LD_PRELOAD"};
  EXPECT_TRUE(Authorize(policy, batch).ok());
}

TEST(Authz, LoaderVariablesAreTheDocumentedList) {
  EXPECT_TRUE(IsLoaderVariable("LD_PRELOAD"));
  EXPECT_TRUE(IsLoaderVariable("LD_"));
  EXPECT_TRUE(IsLoaderVariable("LUA_INIT"));
  EXPECT_FALSE(IsLoaderVariable("LD"));
  EXPECT_FALSE(IsLoaderVariable("ld_preload"));
  EXPECT_FALSE(IsLoaderVariable("BASH_ENVX"));
  EXPECT_FALSE(IsLoaderVariable(""));
}

// The README's list is the one users read: it must be this one.
TEST(Authz, TheReadmeListsEveryLoaderVariable) {
  std::ifstream in(std::string(SOURCE_DIR) + "/README.md");
  const std::string readme((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  ASSERT_FALSE(readme.empty());
  for (absl::string_view name : kLoaderVariables) {
    EXPECT_NE(readme.find(absl::StrCat("`", name, "`")), std::string::npos) << name;
  }
}

TEST(Authz, StatusAndReflectionFollowTheRule) {
  const AuthzPolicy policy = TestPolicy();
  EXPECT_TRUE(AuthorizeStatus(policy, "ci").ok());
  ExpectDenied(AuthorizeReflection(policy, "ci"),
               "identity \"ci\": server reflection is not allowed by rule ci.reflection");
  ExpectDenied(AuthorizeStatus(policy, "batch-2"),
               "identity \"batch-2\": GetStatus is not allowed by rule batch.get_status");
}

TEST(Authz, SharesAreByIdentity) {
  AuthzPolicy policy = TestPolicy();
  EXPECT_EQ(policy.Shares(),
            (absl::flat_hash_map<std::string, int>{{"ci", 3}, {"batch-1", 1}, {"batch-2", 1}}));
  EXPECT_EQ(policy.DefaultShare(), 1);
  AuthzRule fallback;
  fallback.share = 5;
  policy.default_rule = fallback;
  EXPECT_EQ(policy.DefaultShare(), 5);
}

TEST(Authz, AccessTakesTheRequestsOwnValues) {
  CommandRequest request;
  request.priority = 2;
  request.memory_bytes = 7;
  request.timeout = absl::Seconds(3);
  request.env = {{"A", "1"}, {"LD_PRELOAD", "x"}};
  const Access a = Access::Of(request, "pool", CachePolicy::kRefresh, "me");
  EXPECT_EQ(a.identity, "me");
  EXPECT_EQ(a.pool, "pool");
  EXPECT_EQ(a.cache, CachePolicy::kRefresh);
  EXPECT_EQ(a.priority, 2);
  EXPECT_EQ(a.memory_bytes, 7);
  EXPECT_EQ(a.timeout, absl::Seconds(3));
  EXPECT_THAT(a.env, ::testing::ElementsAre("A", "LD_PRELOAD"));
}

// ---- RealProgramPaths: the one that reads the file system ----

TEST(RealProgramPaths, ResolveSymlinksAndDotDot) {
  testing::ScopedTempDir dir("authz_real");
  const std::string allowed = dir.path() + "/allowed";
  ASSERT_EQ(mkdir(allowed.c_str(), 0700), 0);
  ASSERT_EQ(symlink("/bin/sh", (allowed + "/innocent").c_str()), 0);
  Command command;
  command.argv = {"innocent"};
  command.executable = allowed + "/innocent";
  command.pipe_to.push_back(PipelineStage{{"cat"}, allowed + "/../allowed/./innocent", {}});
  absl::StatusOr<std::vector<ProgramPath>> programs = RealProgramPaths(command);
  ASSERT_TRUE(programs.ok()) << programs.status();
  char real_sh[PATH_MAX];
  ASSERT_NE(realpath("/bin/sh", real_sh), nullptr);
  ASSERT_EQ(programs->size(), 2u);
  EXPECT_EQ((*programs)[0].real, real_sh);
  EXPECT_EQ((*programs)[0].what, "argv[0] \"innocent\"");
  EXPECT_EQ((*programs)[1].real, real_sh);
  EXPECT_EQ((*programs)[1].what, "pipe_to[0] \"cat\"");

  command.executable = allowed + "/gone";
  EXPECT_EQ(RealProgramPaths(command).status().code(), absl::StatusCode::kNotFound);
}

TEST(RealProgramPaths, APoolsProgramIsNamedAsThePools) {
  Command command;
  command.pool = "python";
  command.executable = "/bin/sh";
  absl::StatusOr<std::vector<ProgramPath>> programs = RealProgramPaths(command);
  ASSERT_TRUE(programs.ok()) << programs.status();
  EXPECT_EQ((*programs)[0].what, "the program of pool \"python\"");
}

}  // namespace
}  // namespace execd::core
