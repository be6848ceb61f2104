// Fuzzes the --pools_config text format: ParsePoolsConfig on arbitrary text either rejects
// it (INVALID_ARGUMENT naming the file) or returns pools that keep every documented bound.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/match.h"
#include "core/validate.h"
#include "server/pools_config.h"

namespace {

void Check(bool ok) {
  if (!ok) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const execd::core::RequestPolicy* const policy = [] {
    auto* p = new execd::core::RequestPolicy();
    p->server_env = {{"PATH", "/usr/bin:/bin"}};
    return p;
  }();
  const std::string text(reinterpret_cast<const char*>(data), size);
  auto specs = execd::server::ParsePoolsConfig(text, "fuzz.textproto", *policy);
  if (!specs.ok()) {
    Check(specs.status().code() == absl::StatusCode::kInvalidArgument);
    Check(absl::StartsWith(specs.status().message(), "fuzz.textproto: "));
    return 0;
  }
  absl::flat_hash_set<std::string> names;
  for (const execd::core::PoolSpec& spec : *specs) {
    Check(!spec.name.empty() && names.insert(spec.name).second);
    Check(spec.max_size >= 1 && spec.max_size <= 4096);
    Check(spec.min_idle >= 0 && spec.min_idle <= spec.max_size);
    Check(spec.max_requests >= 0);
    Check(spec.idle_timeout > absl::ZeroDuration());
    Check(spec.startup_timeout > absl::ZeroDuration());
    Check(spec.timeout > absl::ZeroDuration() && spec.timeout <= policy->max_timeout);
    Check(spec.max_output_bytes > 0 && spec.max_output_bytes <= policy->max_output_bytes);
    Check(!spec.command.executable.empty() && !spec.fingerprint.empty());
  }
  return 0;
}
