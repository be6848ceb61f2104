// Fuzzes the --authz_policy text format: ParseAuthzPolicy on arbitrary text either rejects
// it (INVALID_ARGUMENT naming the file) or returns a policy that keeps every documented
// bound, and which the checks evaluate without failing any other way than a denial.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/match.h"
#include "core/authz.h"
#include "core/validate.h"
#include "server/authz_config.h"

namespace {

void Check(bool ok) {
  if (!ok) std::abort();
}

// OK or a denial: the only outcomes of a check.
void CheckOutcome(const absl::Status& status) {
  Check(status.ok() || status.code() == absl::StatusCode::kPermissionDenied);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const execd::core::RequestPolicy* const server = [] {
    auto* p = new execd::core::RequestPolicy();
    p->max_memory_bytes = int64_t{8} << 30;
    return p;
  }();
  const std::string text(reinterpret_cast<const char*>(data), size);
  auto policy = execd::server::ParseAuthzPolicy(text, "fuzz.textproto", *server);
  if (!policy.ok()) {
    Check(policy.status().code() == absl::StatusCode::kInvalidArgument);
    Check(absl::StartsWith(policy.status().message(), "fuzz.textproto: "));
    return 0;
  }
  const execd::core::AuthzPolicy& p = **policy;
  absl::flat_hash_set<std::string> names;
  auto check_rule = [&](const execd::core::AuthzRule& rule) {
    Check(!rule.name.empty());
    Check(rule.share >= 1 && rule.share <= 1000);
    Check(rule.max_priority >= 0 && rule.max_priority <= 2);
    Check(rule.cache[0]);  // CACHE_OFF is always allowed.
    Check(rule.max_timeout >= absl::ZeroDuration() && rule.max_timeout <= server->max_timeout);
    Check(rule.max_output_bytes >= 0);
    Check(rule.memory_bytes >= 0 && rule.memory_bytes <= server->max_memory_bytes);
    for (const execd::core::AllowedExecutable& e : rule.executables) {
      Check(!e.path.empty() && e.path[0] == '/' && !e.written.empty());
    }
  };
  for (const execd::core::AuthzRule& rule : p.rules) {
    check_rule(rule);
    Check(rule.name != "default" && names.insert(rule.name).second);
  }
  if (p.default_rule.has_value()) {
    check_rule(*p.default_rule);
    Check(p.default_rule->name == "default");
  }
  for (const auto& [identity, index] : p.rule_of) {
    Check(index < p.rules.size() && p.RuleFor(identity) == &p.rules[index]);
  }
  // The checks on whatever the policy says.
  execd::core::Access access;
  access.identity = p.rule_of.empty() ? "anonymous" : p.rule_of.begin()->first;
  access.pool = "python";
  access.priority = 2;
  access.cache = execd::core::CachePolicy::kRefresh;
  access.memory_bytes = 1 << 20;
  access.env = {"LD_PRELOAD", "HOME"};
  CheckOutcome(execd::core::Authorize(p, access));
  CheckOutcome(execd::core::AuthorizePrograms(p, access.identity, {{"argv[0]", "/usr/bin/env"}}));
  CheckOutcome(execd::core::AuthorizeStatus(p, access.identity));
  CheckOutcome(execd::core::AuthorizeReflection(p, access.identity));
  return 0;
}
