// Authorization: what each caller's identity may do, as the --authz_policy file says
// (protos/execd/v1/policy.proto; server/authz_config.h builds an AuthzPolicy from it), and
// the checks of a call against it. The checks are pure functions of plain values: a policy
// holds the paths it allows with symlinks resolved when it was loaded, and a call's programs
// come resolved by RealProgramPaths, so tests need neither a server nor files. A denial is
// PERMISSION_DENIED naming the identity and the rule ("rule ci.executables").
//
// Thread-safety: a policy is immutable once built (a reload builds a new one); every
// function here may be called from any thread.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "core/cache_policy.h"
#include "core/command.h"

namespace execd::core {

// Environment variables that make a program load or run code other than its own: the
// dynamic loader's, shells' start-up files and options, interpreters' module paths and
// option variables. A name ending in '*' is a prefix. Under an executable allowlist a
// request may not set them: they would turn an allowed program into any program.
inline constexpr absl::string_view kLoaderVariables[] = {
    "LD_*",
    "BASH_FUNC_*",
    "BASH_ENV",
    "ENV",
    "SHELLOPTS",
    "BASHOPTS",
    "PS4",
    "PROMPT_COMMAND",
    "GCONV_PATH",
    "PYTHONSTARTUP",
    "PYTHONPATH",
    "PYTHONHOME",
    "PYTHONUSERBASE",
    "PYTHONBREAKPOINT",
    "PYTHONINSPECT",
    "PERL5LIB",
    "PERLLIB",
    "PERL5OPT",
    "PERL5DB",
    "RUBYLIB",
    "RUBYOPT",
    "NODE_OPTIONS",
    "NODE_PATH",
    "JAVA_TOOL_OPTIONS",
    "_JAVA_OPTIONS",
    "JDK_JAVA_OPTIONS",
    "CLASSPATH",
    "LUA_*",
    "PHPRC",
    "PHP_INI_SCAN_DIR",
    "OPENSSL_CONF",
    "OPENSSL_ENGINES",
    "OPENSSL_MODULES",
    "GIT_CONFIG_*",
    "GIT_EXEC_PATH",
    "GIT_SSH",
    "GIT_SSH_COMMAND",
    "GIT_ASKPASS",
    "GIT_EDITOR",
    "GIT_PAGER",
    "GIT_EXTERNAL_DIFF",
    "GIT_PROXY_COMMAND",
    "GIT_TEMPLATE_DIR",
};

// Whether `name` is one of kLoaderVariables.
bool IsLoaderVariable(absl::string_view name);

// A program a rule allows: as the policy file wrote it, and canonical (absolute, symlinks
// resolved when the policy was loaded); a directory's path ends in '/' and allows every
// file under it.
struct AllowedExecutable {
  std::string written;
  std::string path;
  bool directory() const { return !path.empty() && path.back() == '/'; }
};

// What the identities of one rule may do. Every list allows only what it holds.
struct AuthzRule {
  std::string name;  // "default" for the policy's default rule.
  std::vector<AllowedExecutable> executables;
  std::vector<std::string> pools;  // "*": every pool.
  int max_priority = 1;            // 0 (LOW) .. 2 (HIGH).
  // By CachePolicy; kOff is always allowed.
  std::array<bool, 4> cache = {true, false, false, false};
  // Maxima a request may ask for; zero: the server's.
  absl::Duration max_timeout = absl::ZeroDuration();
  int64_t max_output_bytes = 0;
  absl::Duration max_cpu_time = absl::ZeroDuration();
#define EXECD_RULE_MAX(field, server_maximum, what) int64_t field = 0;
  EXECD_COUNT_LIMITS(EXECD_RULE_MAX)
#undef EXECD_RULE_MAX
  bool get_status = false;
  bool reflection = false;
  int share = 1;  // Weight in fair queuing, 1 .. 1000.

  // "/" is allowed: any program.
  bool AnyExecutable() const;
  bool AllowsPool(absl::string_view pool) const;
};

struct AuthzPolicy {
  std::vector<AuthzRule> rules;
  absl::flat_hash_map<std::string, size_t> rule_of;  // Identity to its rule in `rules`.
  std::optional<AuthzRule> default_rule;

  // The rule of `identity`, or null when it has none (it may do nothing).
  const AuthzRule* RuleFor(absl::string_view identity) const;
  // Each named identity's share, and that of the rest, for Engine::SetShares.
  absl::flat_hash_map<std::string, int> Shares() const;
  int DefaultShare() const { return default_rule.has_value() ? default_rule->share : 1; }
};

// What a call asks for, as authorization sees it: the request's own values, before
// validation fills in the server's (zero, empty or -1 where the request left a field unset).
struct Access {
  std::string identity;
  std::string pool;
  CachePolicy cache = CachePolicy::kOff;
  int priority = -1;
  absl::Duration timeout = absl::ZeroDuration();
  int64_t max_output_bytes = 0;
  absl::Duration cpu_time = absl::ZeroDuration();
#define EXECD_ACCESS_LIMIT(field, server_maximum, what) int64_t field = 0;
  EXECD_COUNT_LIMITS(EXECD_ACCESS_LIMIT)
#undef EXECD_ACCESS_LIMIT
  std::vector<std::string> env;  // Names of the variables the request sets.

  static Access Of(const CommandRequest& request, absl::string_view pool, CachePolicy cache,
                   absl::string_view identity);
};

// A program a call would run: what the request named (for messages: `argv[0] "curl"`, or a
// pool), and its canonical path (realpath).
struct ProgramPath {
  std::string what;
  std::string real;
};

// Everything a request asks that needs no file looked at: that the identity has a rule,
// and the rule allows its pool, priority, cache policy, limits and environment.
absl::Status Authorize(const AuthzPolicy& policy, const Access& access);
// The programs a call would run (after validation resolved them): each must be allowed by
// the identity's rule.
absl::Status AuthorizePrograms(const AuthzPolicy& policy, absl::string_view identity,
                               const std::vector<ProgramPath>& programs);
// Lowers what the request left to the server (`access` says which) to the identity's
// rule's maxima: limits, and the priority.
void ApplyRuleDefaults(const AuthzPolicy& policy, const Access& access, Command* command);
absl::Status AuthorizeStatus(const AuthzPolicy& policy, absl::string_view identity);
absl::Status AuthorizeReflection(const AuthzPolicy& policy, absl::string_view identity);

// The canonical paths of the programs `command` runs (its executable, or its pool's, and
// each of a pipeline's), resolved now; NOT_FOUND when one is gone.
absl::StatusOr<std::vector<ProgramPath>> RealProgramPaths(const Command& command);

}  // namespace execd::core
