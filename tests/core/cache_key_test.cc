#include "core/cache_key.h"

#include <algorithm>
#include <cstdint>
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

// The encoding is fed to SHA-256 through a buffer of this size; a field that does not fit
// goes to the digest straight from where it is.
constexpr size_t kBuffer = 512;
constexpr size_t kDigest = 32;

// Each field that can change a result, changed in a command whose encoding fits the
// encoder's buffer and in one whose stdin does not: no two share a key, and equal
// commands do.
TEST(CacheKey, DiffersInEveryFieldForShortAndLongEncodings) {
  const std::vector<std::pair<std::string, std::function<void(Command&)>>> changes = {
      {"argv", [](Command& c) { c.argv.push_back("extra"); }},
      {"argv split",
       [](Command& c) {
         c.argv = {"/bin/echo", "hel", "lo"};
       }},
      {"executable", [](Command& c) { c.executable = "/bin/true"; }},
      {"executable identity", [](Command& c) { c.executable_id.mtime_ns += 1; }},
      // What `touch -d` cannot forge: a rewritten file set back to its old mtime.
      {"executable change time", [](Command& c) { c.executable_id.ctime_ns += 1; }},
      {"caller", [](Command& c) { c.caller = "someone else"; }},
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
    EXPECT_EQ(key.size(), kDigest);
    EXPECT_EQ(Key(base), key);
    EXPECT_NE(Key(base, "another salt"), key);
    for (const auto& [field, change] : changes) {
      Command changed = base;
      change(changed);
      EXPECT_NE(Key(changed), key) << field << ", stdin of " << stdin_bytes << " bytes";
    }
  }
}

// Around the buffer's size, where fields start to go to the digest in pieces and then
// straight: every length of stdin gives its own key, and so does every content (its last
// byte changed, and the field after it, the timeout).
TEST(CacheKey, EveryLengthAroundTheBufferSizeHasItsOwnKey) {
  std::vector<std::string> keys;
  for (size_t n = 0; n < 2 * kBuffer; ++n) {
    Command c = Base();
    c.stdin_data.assign(n, 's');
    keys.push_back(Key(c));
    EXPECT_EQ(keys.back().size(), kDigest) << n;
    Command timeout = c;
    timeout.limits.timeout += absl::Nanoseconds(1);
    EXPECT_NE(Key(timeout), keys.back()) << n;
    if (n == 0) continue;
    Command last = c;
    last.stdin_data.back() = 't';
    EXPECT_NE(Key(last), keys.back()) << n;
  }
  std::sort(keys.begin(), keys.end());
  EXPECT_EQ(std::unique(keys.begin(), keys.end()), keys.end());
}

// Numbers are encoded as varints: values either side of each length (one byte, two, ...,
// ten), negative ones, and the extremes all give their own keys, in two numeric fields
// (the first limit, and the last before the affinity list), with a stdin that puts them
// anywhere from well inside the encoder's buffer to across its end.
TEST(CacheKey, NumbersOfEveryEncodedLengthHaveTheirOwnKeys) {
  std::vector<int64_t> values = {0, -1, 1, INT64_MIN, INT64_MAX, INT64_MIN + 1, INT64_MAX - 1};
  for (int bits = 6; bits < 63; bits += 7) {
    const int64_t edge = int64_t{1} << bits;
    for (int64_t v : {edge - 1, edge, -edge, -edge - 1}) values.push_back(v);
  }
  for (size_t stdin_bytes : {size_t{0}, size_t{380}, size_t{400}, size_t{420}, size_t{490},
                             size_t{500}, size_t{503}, size_t{506}, size_t{509}, size_t{511}}) {
    for (int64_t Limits::*field : {&Limits::memory_bytes, &Limits::max_file_size_bytes}) {
      std::vector<std::string> keys;
      for (int64_t v : values) {
        Command c = Base();
        c.stdin_data.assign(stdin_bytes, 's');
        c.limits.*field = v;
        keys.push_back(Key(c));
      }
      std::sort(keys.begin(), keys.end());
      EXPECT_EQ(std::unique(keys.begin(), keys.end()), keys.end())
          << "stdin of " << stdin_bytes << " bytes";
    }
  }
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
