#include "core/authz.h"

#include <stdlib.h>

#include <algorithm>
#include <cerrno>
#include <memory>

#include "absl/algorithm/container.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/errno_status.h"
#include "core/status_macros.h"

namespace execd::core {
namespace {

constexpr absl::string_view kPriorityNames[] = {"LOW", "NORMAL", "HIGH"};
constexpr absl::string_view kCacheNames[] = {"CACHE_OFF", "READ_WRITE", "READ_ONLY", "REFRESH"};

absl::Status Denied(absl::string_view identity, absl::string_view what) {
  return absl::PermissionDeniedError(absl::StrCat("identity \"", identity, "\": ", what));
}

// "none" for an empty list.
template <typename List, typename Format>
std::string Listed(const List& list, Format format) {
  return list.empty() ? "none" : absl::StrJoin(list, ", ", format);
}

absl::Status NoRule(absl::string_view identity) {
  return Denied(identity,
                "no rule of the authorization policy names this identity and it has no "
                "default_rule, so it may do nothing");
}

// A request's own value against a rule's maximum (zero: none). `show` formats a value.
template <typename T, typename Show>
absl::Status CheckMaximum(const AuthzRule& rule, const Access& access, absl::string_view field,
                          T asked, T maximum, Show show) {
  if (maximum == T() || asked <= maximum) return absl::OkStatus();
  return Denied(access.identity,
                absl::StrCat("limits.", field, " ", show(asked), " is over rule ", rule.name,
                             ".max_limits.", field, " (", show(maximum), ")"));
}

absl::Status CheckLimits(const AuthzRule& rule, const Access& a) {
  auto duration = [](absl::Duration d) { return absl::FormatDuration(d); };
  auto number = [](int64_t n) { return absl::StrCat(n); };
  RETURN_IF_ERROR(CheckMaximum(rule, a, "timeout", a.timeout, rule.max_timeout, duration));
  RETURN_IF_ERROR(
      CheckMaximum(rule, a, "max_output_bytes", a.max_output_bytes, rule.max_output_bytes, number));
  RETURN_IF_ERROR(CheckMaximum(rule, a, "cpu_time", a.cpu_time, rule.max_cpu_time, duration));
#define EXECD_CHECK_MAX(field, server_maximum, what) \
  RETURN_IF_ERROR(CheckMaximum(rule, a, #field, a.field, rule.field, number));
  EXECD_COUNT_LIMITS(EXECD_CHECK_MAX)
#undef EXECD_CHECK_MAX
  return absl::OkStatus();
}

bool Allows(const AllowedExecutable& allowed, absl::string_view real) {
  return allowed.directory() ? absl::StartsWith(real, allowed.path) : real == allowed.path;
}

// Lowers a value the request left unset to the rule's maximum; zero is "none" for both.
template <typename T>
void Lower(T asked, T maximum, T* value) {
  if (asked != T() || maximum == T()) return;
  if (*value == T() || *value > maximum) *value = maximum;
}

}  // namespace

bool IsLoaderVariable(absl::string_view name) {
  for (absl::string_view v : kLoaderVariables) {
    if (absl::EndsWith(v, "*") ? absl::StartsWith(name, v.substr(0, v.size() - 1)) : name == v) {
      return true;
    }
  }
  return false;
}

bool AuthzRule::AnyExecutable() const {
  return absl::c_any_of(executables, [](const AllowedExecutable& e) { return e.path == "/"; });
}

bool AuthzRule::AllowsPool(absl::string_view pool) const {
  return absl::c_any_of(pools, [pool](const std::string& p) { return p == "*" || p == pool; });
}

const AuthzRule* AuthzPolicy::RuleFor(absl::string_view identity) const {
  auto it = rule_of.find(identity);
  if (it != rule_of.end()) return &rules[it->second];
  return default_rule.has_value() ? &*default_rule : nullptr;
}

absl::flat_hash_map<std::string, int> AuthzPolicy::Shares() const {
  absl::flat_hash_map<std::string, int> shares;
  for (const auto& [identity, index] : rule_of) shares[identity] = rules[index].share;
  return shares;
}

Access Access::Of(const CommandRequest& request, absl::string_view pool, CachePolicy cache,
                  absl::string_view identity) {
  Access a;
  a.identity = std::string(identity);
  a.pool = std::string(pool);
  a.cache = cache;
  a.priority = request.priority;
  a.timeout = request.timeout;
  a.max_output_bytes = request.max_output_bytes;
  a.cpu_time = request.cpu_time;
#define EXECD_ACCESS_FROM(field, server_maximum, what) a.field = request.field;
  EXECD_COUNT_LIMITS(EXECD_ACCESS_FROM)
#undef EXECD_ACCESS_FROM
  a.env.reserve(request.env.size());
  for (const auto& [name, value] : request.env) a.env.push_back(name);
  return a;
}

absl::Status Authorize(const AuthzPolicy& policy, const Access& a) {
  const AuthzRule* rule = policy.RuleFor(a.identity);
  if (rule == nullptr) return NoRule(a.identity);
  const std::string& r = rule->name;
  if (!a.pool.empty() && !rule->AllowsPool(a.pool)) {
    return Denied(a.identity,
                  absl::StrCat("pool \"", a.pool, "\" is not in rule ", r, ".pools (allowed: ",
                               Listed(rule->pools, absl::AlphaNumFormatter()), ")"));
  }
  // A priority out of range is validation's to refuse.
  if (a.priority > rule->max_priority && a.priority <= 2) {
    return Denied(a.identity,
                  absl::StrCat("priority ", kPriorityNames[a.priority], " is above rule ", r,
                               ".max_priority (", kPriorityNames[rule->max_priority], ")"));
  }
  if (!rule->cache[static_cast<size_t>(a.cache)]) {
    std::vector<absl::string_view> allowed;
    for (size_t i = 1; i < rule->cache.size(); ++i) {
      if (rule->cache[i]) allowed.push_back(kCacheNames[i]);
    }
    return Denied(
        a.identity,
        absl::StrCat("cache_policy ", kCacheNames[static_cast<size_t>(a.cache)], " is not in rule ",
                     r, ".cache (allowed: ", Listed(allowed, absl::AlphaNumFormatter()), ")"));
  }
  RETURN_IF_ERROR(CheckLimits(*rule, a));
  if (!rule->AnyExecutable()) {
    for (const std::string& name : a.env) {
      if (!IsLoaderVariable(name)) continue;
      return Denied(a.identity,
                    absl::StrCat("env ", name, " may not be set: rule ", r,
                                 ".executables allows only listed programs, and ", name,
                                 " makes a program load or run other code (see the README's "
                                 "list of loader variables)"));
    }
  }
  return absl::OkStatus();
}

absl::Status AuthorizePrograms(const AuthzPolicy& policy, absl::string_view identity,
                               const std::vector<ProgramPath>& programs) {
  const AuthzRule* rule = policy.RuleFor(identity);
  if (rule == nullptr) return NoRule(identity);
  for (const ProgramPath& program : programs) {
    if (absl::c_any_of(rule->executables,
                       [&](const AllowedExecutable& e) { return Allows(e, program.real); })) {
      continue;
    }
    return Denied(identity, absl::StrCat("executable ", program.real, " (", program.what,
                                         ") is not in rule ", rule->name, ".executables (allowed: ",
                                         Listed(rule->executables,
                                                [](std::string* out, const AllowedExecutable& e) {
                                                  absl::StrAppend(out, e.written);
                                                }),
                                         ")"));
  }
  return absl::OkStatus();
}

void ApplyRuleDefaults(const AuthzPolicy& policy, const Access& a, Command* command) {
  const AuthzRule* rule = policy.RuleFor(a.identity);
  if (rule == nullptr) return;
  if (a.priority < 0) command->priority = std::min(command->priority, rule->max_priority);
  Limits& l = command->limits;
  Lower(a.timeout, rule->max_timeout, &l.timeout);
  Lower(a.max_output_bytes, rule->max_output_bytes, &l.max_output_bytes);
  // A pool's resource limits are its own (a pooled request may not set them).
  if (!command->pool.empty()) return;
  Lower(a.cpu_time, rule->max_cpu_time, &l.cpu_time);
#define EXECD_LOWER(field, server_maximum, what) Lower(a.field, rule->field, &l.field);
  EXECD_COUNT_LIMITS(EXECD_LOWER)
#undef EXECD_LOWER
}

absl::Status AuthorizeStatus(const AuthzPolicy& policy, absl::string_view identity) {
  const AuthzRule* rule = policy.RuleFor(identity);
  if (rule == nullptr) return NoRule(identity);
  if (rule->get_status) return absl::OkStatus();
  return Denied(identity,
                absl::StrCat("GetStatus is not allowed by rule ", rule->name, ".get_status"));
}

absl::Status AuthorizeReflection(const AuthzPolicy& policy, absl::string_view identity) {
  const AuthzRule* rule = policy.RuleFor(identity);
  if (rule == nullptr) return NoRule(identity);
  if (rule->reflection) return absl::OkStatus();
  return Denied(identity, absl::StrCat("server reflection is not allowed by rule ", rule->name,
                                       ".reflection"));
}

absl::StatusOr<std::vector<ProgramPath>> RealProgramPaths(const Command& command) {
  std::vector<ProgramPath> programs;
  auto add = [&](std::string what, const std::string& path) -> absl::Status {
    std::unique_ptr<char, decltype(&free)> real(realpath(path.c_str(), nullptr), &free);
    if (real == nullptr) {
      return ErrnoToStatus(errno, absl::StrCat(what, ": realpath ", path));
    }
    programs.push_back(ProgramPath{std::move(what), real.get()});
    return absl::OkStatus();
  };
  const std::string first =
      command.pool.empty()
          ? absl::StrCat("argv[0] \"", command.argv.empty() ? "" : command.argv[0], "\"")
          : absl::StrCat("the program of pool \"", command.pool, "\"");
  RETURN_IF_ERROR(add(first, command.executable));
  for (size_t i = 0; i < command.pipe_to.size(); ++i) {
    const PipelineStage& stage = command.pipe_to[i];
    const absl::string_view name =
        stage.argv.empty() ? absl::string_view() : absl::string_view(stage.argv[0]);
    RETURN_IF_ERROR(add(absl::StrCat("pipe_to[", i, "] \"", name, "\""), stage.executable));
  }
  return programs;
}

}  // namespace execd::core
