#include "server/pools_config.h"

#include <google/protobuf/io/tokenizer.h>
#include <google/protobuf/text_format.h>

#include <fstream>
#include <limits>
#include <sstream>
#include <utility>

#include "absl/algorithm/container.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "core/report_channel.h"
#include "execd/v1/pools.pb.h"
#include "server/convert.h"

namespace execd::server {
namespace {

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

bool ValidName(const std::string& name) {
  if (name.empty()) return false;
  for (char c : name) {
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-')) return false;
  }
  return true;
}

}  // namespace

absl::StatusOr<std::vector<core::PoolSpec>> ParsePoolsConfig(const std::string& text,
                                                             const std::string& path,
                                                             const core::RequestPolicy& policy) {
  v1::PoolsConfig config;
  TextFormat::Parser parser;
  Errors errors;
  parser.RecordErrorsTo(&errors);
  TextFormat::ParseInfoTree tree;
  parser.WriteLocationsTo(&tree);
  if (!parser.ParseFromString(text, &config)) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", errors.first()));
  }
  const auto* pool_field = v1::PoolsConfig::descriptor()->FindFieldByName("pool");
  std::vector<core::PoolSpec> specs;
  absl::flat_hash_set<std::string> names;
  for (int i = 0; i < config.pool_size(); ++i) {
    const v1::PoolConfig& p = config.pool(i);
    const int line = tree.GetLocation(pool_field, i).line + 1;
    auto error = [&](absl::string_view message) {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ": line ", line, ": pool ",
          p.name().empty() ? absl::StrCat("#", i + 1) : absl::StrCat("\"", p.name(), "\""), ": ",
          message));
    };
    if (!ValidName(p.name())) {
      return error("name must be non-empty and use only a-z, 0-9, '_' and '-'");
    }
    if (!names.insert(p.name()).second) return error("name is used by an earlier pool");
    core::PoolSpec spec;
    spec.name = p.name();
    switch (p.kind()) {
      case v1::PoolConfig::PREWARMED:
        spec.kind = core::PoolSpec::Kind::kPrewarmed;
        break;
      case v1::PoolConfig::PERSISTENT:
        spec.kind = core::PoolSpec::Kind::kPersistent;
        break;
      default:
        return error("kind must be PREWARMED or PERSISTENT");
    }
    if (p.max_size() < 1) return error("max_size must be at least 1");
    if (p.max_size() > 4096) return error("max_size must be at most 4096");
    if (p.min_idle() > p.max_size()) {
      return error(
          absl::StrCat("min_idle (", p.min_idle(), ") exceeds max_size (", p.max_size(), ")"));
    }
    spec.max_size = static_cast<int>(p.max_size());
    spec.min_idle = static_cast<int>(p.min_idle());
    if (p.max_requests() > static_cast<uint32_t>(std::numeric_limits<int>::max())) {
      return error(absl::StrCat("max_requests must be at most ", std::numeric_limits<int>::max(),
                                " (0 is unlimited)"));
    }
    spec.max_requests = static_cast<int>(p.max_requests());
    if (spec.kind == core::PoolSpec::Kind::kPrewarmed && p.max_requests() > 1) {
      return error("max_requests applies to PERSISTENT pools; PREWARMED processes serve one");
    }
    if (p.exit_report() && spec.kind != core::PoolSpec::Kind::kPrewarmed) {
      return error("exit_report applies to PREWARMED pools; a PERSISTENT worker answers in frames");
    }
    spec.exit_report = p.exit_report();
    auto positive = [&](const google::protobuf::Duration& d, absl::Duration fallback,
                        absl::string_view field) -> absl::StatusOr<absl::Duration> {
      absl::Duration v = DurationFromProto(d);
      if (v < absl::ZeroDuration()) return error(absl::StrCat(field, " must not be negative"));
      return v == absl::ZeroDuration() ? fallback : v;
    };
    auto idle_timeout = positive(p.idle_timeout(), absl::Seconds(60), "idle_timeout");
    if (!idle_timeout.ok()) return idle_timeout.status();
    spec.idle_timeout = *idle_timeout;
    auto startup_timeout = positive(p.startup_timeout(), absl::Seconds(10), "startup_timeout");
    if (!startup_timeout.ok()) return startup_timeout.status();
    spec.startup_timeout = *startup_timeout;
    auto timeout = positive(p.timeout(), policy.default_timeout, "timeout");
    if (!timeout.ok()) return timeout.status();
    if (*timeout > policy.max_timeout) {
      return error(absl::StrCat("timeout ", absl::FormatDuration(*timeout),
                                " exceeds the server's --max_timeout of ",
                                absl::FormatDuration(policy.max_timeout)));
    }
    spec.timeout = *timeout;
    if (p.max_output_bytes() < 0) return error("max_output_bytes must not be negative");
    if (p.max_output_bytes() > policy.max_output_bytes) {
      return error(absl::StrCat("max_output_bytes ", p.max_output_bytes(),
                                " exceeds the server's --max_output_bytes of ",
                                policy.max_output_bytes));
    }
    spec.max_output_bytes =
        p.max_output_bytes() == 0 ? policy.default_max_output_bytes : p.max_output_bytes();

    // The worker's command is checked like a request's: executable, env, cwd, limits.
    v1::ExecuteRequest as_request;
    *as_request.mutable_argv() = p.argv();
    *as_request.mutable_env() = p.env();
    *as_request.mutable_inherit_env() = p.inherit_env();
    if (spec.exit_report) {
      if (p.env().contains(core::kExitReportFdVariable) ||
          absl::c_linear_search(p.inherit_env(), core::kExitReportFdVariable)) {
        return error(absl::StrCat(core::kExitReportFdVariable,
                                  " is set by execd for exit_report; remove it"));
      }
      // Where the process finds its report descriptor.
      (*as_request.mutable_env())[core::kExitReportFdVariable] = absl::StrCat(core::kExitReportFd);
    }
    as_request.set_cwd(p.cwd());
    *as_request.mutable_limits() = p.limits();
    as_request.mutable_limits()->clear_timeout();
    as_request.mutable_limits()->clear_max_output_bytes();
    auto command = core::ValidateRequest(CommandRequestFromProto(as_request), policy);
    if (!command.ok()) return error(command.status().message());
    spec.command = *std::move(command);
    // Text format prints map entries sorted, so equal configurations print equal.
    TextFormat::PrintToString(p, &spec.fingerprint);
    specs.push_back(std::move(spec));
  }
  return specs;
}

absl::StatusOr<std::vector<core::PoolSpec>> LoadPoolsConfig(const std::string& path,
                                                            const core::RequestPolicy& policy) {
  std::ifstream in(path);
  if (!in) {
    return absl::InvalidArgumentError(
        absl::StrCat("--pools_config: cannot read \"", path, "\"; give a readable file"));
  }
  std::stringstream text;
  text << in.rdbuf();
  return ParsePoolsConfig(text.str(), path, policy);
}

}  // namespace execd::server
