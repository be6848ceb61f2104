#include "server/authz_config.h"

#include <google/protobuf/io/tokenizer.h>
#include <google/protobuf/text_format.h>
#include <limits.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <algorithm>
#include <fstream>
#include <sstream>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "core/status_macros.h"
#include "execd/v1/policy.pb.h"
#include "server/convert.h"

namespace execd::server {
namespace {

using google::protobuf::Descriptor;
using google::protobuf::FieldDescriptor;
using google::protobuf::TextFormat;

class Errors final : public google::protobuf::io::ErrorCollector {
 public:
  void AddError(int line, int column, const std::string& message) override {
    if (first_.empty()) first_ = absl::StrCat("line ", line + 1, ":", column + 1, ": ", message);
  }
  const std::string& first() const { return first_; }

 private:
  std::string first_;
};

bool ValidRuleName(const std::string& name) {
  if (name.empty() || name.size() > 128) return false;
  for (char c : name) {
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
          c == '.' || c == '@' || c == ':' || c == '-')) {
      return false;
    }
  }
  return true;
}

bool ValidIdentity(const std::string& identity) {
  if (identity.empty() || identity.size() > 256) return false;
  for (unsigned char c : identity) {
    if (c < 0x20 || c == 0x7f) return false;
  }
  return true;
}

std::string Quote(const std::string& s) { return absl::StrCat("\"", absl::CHexEscape(s), "\""); }

// Where one rule's fields are in the file, for messages.
class RuleLocation {
 public:
  RuleLocation(const TextFormat::ParseInfoTree* tree, int line) : tree_(tree), line_(line) {}
  // The line of `field` (occurrence `index` of a repeated one) in this rule, else the rule's.
  int Line(absl::string_view field, int index = -1) const {
    const FieldDescriptor* f = v1::AuthzRule::descriptor()->FindFieldByName(std::string(field));
    if (tree_ == nullptr || f == nullptr) return line_;
    const int line = tree_->GetLocation(f, f->is_repeated() ? index : -1).line;
    return line < 0 ? line_ : line + 1;
  }
  // The line of max_limits.`field`.
  int LimitLine(absl::string_view field) const {
    const FieldDescriptor* limits = v1::AuthzRule::descriptor()->FindFieldByName("max_limits");
    const FieldDescriptor* f = v1::Limits::descriptor()->FindFieldByName(std::string(field));
    const TextFormat::ParseInfoTree* sub =
        tree_ == nullptr ? nullptr : tree_->GetTreeForNested(limits, -1);
    if (sub == nullptr || f == nullptr) return Line("max_limits");
    const int line = sub->GetLocation(f, f->is_repeated() ? 0 : -1).line;
    return line < 0 ? Line("max_limits") : line + 1;
  }

 private:
  const TextFormat::ParseInfoTree* tree_;
  int line_;
};

// An allowed program as the policy wrote it, canonical: symlinks resolved, a directory
// ending in '/'. One that does not exist (yet) is kept as written.
absl::StatusOr<core::AllowedExecutable> Canonical(const std::string& written) {
  core::AllowedExecutable allowed{written, written};
  if (written.empty() || written[0] != '/') {
    return absl::InvalidArgumentError(
        absl::StrCat(Quote(written), " is not an absolute path (give /usr/bin/ or /bin/true)"));
  }
  if (written.find('\0') != std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat(Quote(written), " contains a NUL byte"));
  }
  char real[PATH_MAX];
  struct stat st;
  if (realpath(written.c_str(), real) != nullptr && stat(real, &st) == 0) {
    allowed.path = real;
    if (S_ISDIR(st.st_mode) && allowed.path != "/") allowed.path += '/';
  }
  return allowed;
}

// The rule `r` as core's, or why not. `is_default`: the policy's default_rule.
absl::StatusOr<core::AuthzRule> ToRule(const v1::AuthzRule& r, bool is_default,
                                       const RuleLocation& where, const std::string& path,
                                       const core::RequestPolicy& server) {
  const std::string label =
      is_default ? "default_rule"
                 : absl::StrCat("rule ", r.name().empty() ? "(no name)" : Quote(r.name()));
  auto error = [&](int line, absl::string_view message) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": line ", line, ": ", label, ": ", message));
  };
  core::AuthzRule rule;
  if (is_default) {
    if (!r.name().empty() && r.name() != "default") {
      return error(where.Line("name"), "name: the default rule is always named \"default\"");
    }
    if (r.identity_size() > 0) {
      return error(where.Line("identity", 0),
                   "identity: the default rule is for every identity no rule names; remove it");
    }
    rule.name = "default";
  } else {
    if (!ValidRuleName(r.name())) {
      return error(where.Line("name"),
                   "name must be 1 to 128 of A-Z, a-z, 0-9, '_', '.', '@', ':' and '-'");
    }
    if (r.name() == "default") {
      return error(where.Line("name"), "name \"default\" is the default rule's; use default_rule");
    }
    rule.name = r.name();
  }
  for (int i = 0; i < r.identity_size(); ++i) {
    if (!ValidIdentity(r.identity(i))) {
      return error(where.Line("identity", i),
                   absl::StrCat("identity[", i, "] ", Quote(r.identity(i)),
                                " must be 1 to 256 bytes without control characters"));
    }
  }
  for (int i = 0; i < r.executables_size(); ++i) {
    absl::StatusOr<core::AllowedExecutable> allowed = Canonical(r.executables(i));
    if (!allowed.ok()) {
      return error(where.Line("executables", i),
                   absl::StrCat("executables[", i, "] ", allowed.status().message()));
    }
    rule.executables.push_back(*std::move(allowed));
  }
  for (int i = 0; i < r.pools_size(); ++i) {
    if (r.pools(i).empty()) {
      return error(where.Line("pools", i),
                   absl::StrCat("pools[", i, "] is empty; name a pool, or \"*\" for every pool"));
    }
    rule.pools.push_back(r.pools(i));
  }
  switch (r.max_priority()) {
    case v1::PRIORITY_UNSPECIFIED:
    case v1::PRIORITY_NORMAL:
      rule.max_priority = 1;
      break;
    case v1::PRIORITY_LOW:
      rule.max_priority = 0;
      break;
    case v1::PRIORITY_HIGH:
      rule.max_priority = 2;
      break;
    default:
      return error(where.Line("max_priority"),
                   absl::StrCat("max_priority ", r.max_priority(),
                                " is not PRIORITY_LOW, PRIORITY_NORMAL or PRIORITY_HIGH"));
  }
  for (int i = 0; i < r.cache_size(); ++i) {
    absl::StatusOr<core::CachePolicy> cache = CachePolicyFromProto(r.cache(i));
    if (!cache.ok()) {
      return error(where.Line("cache", i),
                   absl::StrCat("cache[", i, "] ", r.cache(i),
                                " is not CACHE_OFF, READ_WRITE, READ_ONLY or REFRESH"));
    }
    rule.cache[static_cast<size_t>(*cache)] = true;
  }
  const v1::Limits& l = r.max_limits();
  if (l.cpu_affinity_size() > 0) {
    return error(where.LimitLine("cpu_affinity"),
                 "max_limits.cpu_affinity is not a maximum; leave it unset");
  }
  // A maximum in range: not negative, and within the server's (zero there: none).
  auto bounded = [&](absl::string_view field, auto value, auto server_max,
                     absl::string_view flag) -> absl::Status {
    using T = decltype(value);
    if (value < T()) {
      return error(where.LimitLine(field), absl::StrCat("max_limits.", field, " is negative"));
    }
    if (server_max != T() && value > server_max) {
      return error(where.LimitLine(field),
                   absl::StrCat("max_limits.", field, " is over the server's maximum (", flag,
                                "); a rule can only tighten it"));
    }
    return absl::OkStatus();
  };
  rule.max_timeout = DurationFromProto(l.timeout());
  RETURN_IF_ERROR(bounded("timeout", rule.max_timeout, server.max_timeout, "--max_timeout"));
  rule.max_output_bytes = l.max_output_bytes();
  RETURN_IF_ERROR(bounded("max_output_bytes", rule.max_output_bytes,
                          std::max(server.max_output_bytes, server.max_stream_output_bytes),
                          "--max_output_bytes, --max_stream_output_bytes"));
  rule.max_cpu_time = DurationFromProto(l.cpu_time());
  RETURN_IF_ERROR(bounded("cpu_time", rule.max_cpu_time, server.max_cpu_time, "--max_cpu_time"));
#define EXECD_RULE_LIMIT(field, server_maximum, what) \
  rule.field = l.field();                             \
  RETURN_IF_ERROR(bounded(#field, rule.field, server.server_maximum, "--" #server_maximum));
  EXECD_COUNT_LIMITS(EXECD_RULE_LIMIT)
#undef EXECD_RULE_LIMIT
  rule.get_status = r.get_status();
  rule.reflection = r.reflection();
  if (r.share() > 1000) {
    return error(where.Line("share"), absl::StrCat("share ", r.share(), " is over 1000"));
  }
  rule.share = r.share() == 0 ? 1 : static_cast<int>(r.share());
  return rule;
}

}  // namespace

absl::StatusOr<std::shared_ptr<const core::AuthzPolicy>> ParseAuthzPolicy(
    const std::string& text, const std::string& path, const core::RequestPolicy& server) {
  v1::AuthzPolicy config;
  TextFormat::Parser parser;
  Errors errors;
  parser.RecordErrorsTo(&errors);
  TextFormat::ParseInfoTree tree;
  parser.WriteLocationsTo(&tree);
  if (!parser.ParseFromString(text, &config)) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", errors.first()));
  }
  const Descriptor* policy = v1::AuthzPolicy::descriptor();
  const FieldDescriptor* rule_field = policy->FindFieldByName("rule");
  const FieldDescriptor* default_field = policy->FindFieldByName("default_rule");
  auto result = std::make_shared<core::AuthzPolicy>();
  absl::flat_hash_set<std::string> rule_names;
  for (int i = 0; i < config.rule_size(); ++i) {
    const v1::AuthzRule& r = config.rule(i);
    const RuleLocation where(tree.GetTreeForNested(rule_field, i),
                             tree.GetLocation(rule_field, i).line + 1);
    absl::StatusOr<core::AuthzRule> rule = ToRule(r, /*is_default=*/false, where, path, server);
    if (!rule.ok()) return rule.status();
    auto error = [&](int line, absl::string_view message) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": line ", line, ": rule ", Quote(r.name()), ": ", message));
    };
    if (!rule_names.insert(r.name()).second) {
      return error(where.Line("name"), "name is used by an earlier rule");
    }
    std::vector<std::string> identities(r.identity().begin(), r.identity().end());
    if (identities.empty()) identities.push_back(r.name());
    for (size_t j = 0; j < identities.size(); ++j) {
      auto [it, inserted] = result->rule_of.emplace(identities[j], result->rules.size());
      if (!inserted && it->second == result->rules.size()) {
        return error(where.Line("identity", static_cast<int>(j)),
                     absl::StrCat("identity ", Quote(identities[j]), " is listed twice"));
      }
      if (!inserted) {
        return error(
            where.Line("identity", static_cast<int>(j)),
            absl::StrCat("identity ", Quote(identities[j]), " is already in rule ",
                         Quote(result->rules[it->second].name), "; an identity has one rule"));
      }
    }
    result->rules.push_back(*std::move(rule));
  }
  if (config.has_default_rule()) {
    const RuleLocation where(tree.GetTreeForNested(default_field, -1),
                             tree.GetLocation(default_field, -1).line + 1);
    absl::StatusOr<core::AuthzRule> rule =
        ToRule(config.default_rule(), /*is_default=*/true, where, path, server);
    if (!rule.ok()) return rule.status();
    result->default_rule = *std::move(rule);
  }
  return std::shared_ptr<const core::AuthzPolicy>(std::move(result));
}

absl::StatusOr<std::shared_ptr<const core::AuthzPolicy>> LoadAuthzPolicy(
    const std::string& path, const core::RequestPolicy& server) {
  std::ifstream in(path);
  if (!in) {
    return absl::InvalidArgumentError(
        absl::StrCat("--authz_policy: cannot read \"", path, "\"; give a readable file"));
  }
  std::stringstream text;
  text << in.rdbuf();
  return ParseAuthzPolicy(text.str(), path, server);
}

}  // namespace execd::server
