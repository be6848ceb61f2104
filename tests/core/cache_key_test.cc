#include "core/cache_key.h"

#include <algorithm>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "gtest/gtest.h"

namespace execd::core {
namespace {

Command Base() {
  Command c;
  c.argv = {"/bin/echo", "hello"};
  c.executable = "/bin/echo";
  c.executable_id = FileIdentity::Of("/bin/echo");
  return c;
}

std::string Key(const Command& c, absl::string_view salt = "salt") {
  absl::StatusOr<std::string> key = CacheKey(c, salt);
  EXPECT_TRUE(key.ok()) << key.status();
  return key.ok() ? *key : "";
}

// A key is the encoding itself up to this length, else a 32-byte SHA-256 digest.
constexpr size_t kMaxPlainKey = 512;
constexpr size_t kDigest = 32;

// Each field that can change a result, changed in a command whose key is kept as it is
// and in one whose key is a digest (a stdin that makes the encoding long): no two share a
// key, and equal commands do.
TEST(CacheKey, DiffersInEveryFieldForShortAndDigestedKeys) {
  const std::vector<std::pair<std::string, std::function<void(Command&)>>> changes = {
      {"argv", [](Command& c) { c.argv.push_back("extra"); }},
      {"argv split", [](Command& c) { c.argv = {"/bin/echo", "hel", "lo"}; }},
      {"executable", [](Command& c) { c.executable = "/bin/true"; }},
      {"executable identity", [](Command& c) { c.executable_id.mtime_ns += 1; }},
      {"env", [](Command& c) { c.env = {"X=1"}; }},
      {"cwd", [](Command& c) { c.cwd = "/tmp"; }},
      {"stdin", [](Command& c) { c.stdin_data += "x"; }},
      {"stdin's last byte", [](Command& c) { c.stdin_data.back() ^= 1; }},
      {"timeout", [](Command& c) { c.limits.timeout += absl::Seconds(1); }},
      {"cpu_time", [](Command& c) { c.limits.cpu_time = absl::Seconds(3); }},
      {"memory", [](Command& c) { c.limits.memory_bytes = 1 << 20; }},
      {"processes", [](Command& c) { c.limits.max_processes = 4; }},
      {"open files", [](Command& c) { c.limits.max_open_files = 64; }},
      {"file size", [](Command& c) { c.limits.max_file_size_bytes = 1 << 10; }},
      {"cpu_affinity", [](Command& c) { c.limits.cpu_affinity = {0}; }},
      {"pool", [](Command& c) { c.pool = "python"; }},
      {"pool configuration", [](Command& c) { c.pool_fingerprint = "v2"; }},
      {"pipe_to",
       [](Command& c) {
         c.pipe_to.push_back({.argv = {"/bin/cat"},
                              .executable = "/bin/cat",
                              .executable_id = FileIdentity::Of("/bin/cat")});
       }},
  };
  for (const size_t stdin_bytes : {size_t{1}, size_t{4} << 20}) {
    Command base = Base();
    base.stdin_data.assign(stdin_bytes, 's');
    const std::string key = Key(base);
    EXPECT_EQ(key.size() == kDigest, stdin_bytes > kMaxPlainKey) << key.size();
    EXPECT_EQ(Key(base), key);
    EXPECT_NE(Key(base, "another salt"), key);
    for (const auto& [field, change] : changes) {
      Command changed = base;
      change(changed);
      EXPECT_NE(Key(changed), key) << field << ", stdin of " << stdin_bytes << " bytes";
    }
  }
}

// Around the length where keys change kind: every length gives a different key, and a
// plain key (never 32 bytes long) cannot equal a digest.
TEST(CacheKey, KeysEitherSideOfThePlainLengthNeverCollide) {
  std::vector<std::string> keys;
  for (size_t n = 0; n < 2 * kMaxPlainKey; ++n) {
    Command c = Base();
    c.stdin_data.assign(n, 's');
    keys.push_back(Key(c));
    EXPECT_TRUE(keys.back().size() == kDigest || keys.back().size() > kDigest) << n;
    EXPECT_LE(keys.back().size(), kMaxPlainKey) << n;
  }
  EXPECT_GT(keys.front().size(), kDigest);  // The shortest command is kept as it is.
  EXPECT_EQ(keys.back().size(), kDigest);   // A long one is digested.
  std::sort(keys.begin(), keys.end());
  EXPECT_EQ(std::unique(keys.begin(), keys.end()), keys.end());
}

TEST(CacheKey, AnExecutableThatIsGoneIsAnError) {
  Command c = Base();
  c.executable = "/nonexistent/program";
  c.executable_id = FileIdentity();
  absl::StatusOr<std::string> key = CacheKey(c, "salt");
  EXPECT_EQ(key.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(key.status().message().find("/nonexistent/program"), std::string::npos);
}

}  // namespace
}  // namespace execd::core
