#include "core/cache_key.h"

// SHA256_Init/Update/Final are deprecated since OpenSSL 3.0 in favour of EVP, and kept
// in every 3.x. They are used here because EVP, re-initialised for each key, frees and
// allocates its provider's context and takes and drops a reference to the shared
// digest: 0.8 us more server CPU per cache hit (A/B, 8 alternating runs), a few percent
// of a hit, for the same SHA-256 code underneath.
#define OPENSSL_SUPPRESS_DEPRECATED
#include <openssl/sha.h>
#include <sys/stat.h>

#include <array>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/errno_status.h"
#include "core/status_macros.h"

namespace execd::core {
namespace {

// Every field is length-prefixed (or a number), and numbers are varints, which delimit
// themselves, so no two different commands encode to the same bytes. Varints keep a
// typical command to about 100 bytes (two SHA-256 blocks; with fixed 8-byte numbers it
// took five). The key is the SHA-256 digest of the encoding, which is never held whole:
// fields are gathered in a buffer on the stack and fed to the digest a buffer at a time,
// and a field larger than the buffer (a large stdin) straight from where it lies, never
// copied.
class Encoder {
 public:
  // Zigzag (a small negative number is short too), then 7 bits a byte, low bits first.
  void Int(int64_t v) {
    uint64_t u = (static_cast<uint64_t>(v) << 1) ^ static_cast<uint64_t>(v >> 63);
    char bytes[kMaxVarint];
    // Straight into the buffer when the longest varint fits (nearly always).
    const bool direct = buffer_.size() - used_ >= kMaxVarint;
    char* const start = direct ? buffer_.data() + used_ : bytes;
    char* p = start;
    for (; u >= 0x80; u >>= 7) *p++ = static_cast<char>(u | 0x80);
    *p++ = static_cast<char>(u);
    if (direct) {
      used_ += static_cast<size_t>(p - start);
    } else {
      Put(bytes, static_cast<size_t>(p - start));
    }
  }
  void Bytes(absl::string_view s) {
    Int(static_cast<int64_t>(s.size()));
    if (!s.empty()) Put(s.data(), s.size());  // An empty view's data() may be null.
  }
  void Duration(absl::Duration d) { Int(absl::ToInt64Nanoseconds(d)); }
  // A program: its path, the identity of the file (from validation: one stat per request),
  // and its arguments.
  absl::Status Program(const std::string& executable, FileIdentity id,
                       const std::vector<std::string>& argv) {
    if (!id.known) {
      struct stat st;
      if (stat(executable.c_str(), &st) != 0) {
        return absl::FailedPreconditionError(
            absl::StrCat("cannot identify ", executable,
                         " for the cache: ", ErrnoToStatus(errno, "stat").message()));
      }
      id = FileIdentity::FromStat(st);
    }
    Bytes(executable);
    Int(id.dev);
    Int(id.ino);
    Int(id.size);
    Int(id.mtime_ns);
    Int(id.ctime_ns);
    Int(static_cast<int64_t>(argv.size()));
    for (const std::string& a : argv) Bytes(a);
    return absl::OkStatus();
  }

  // The key: the encoding's digest.
  absl::StatusOr<std::string> Finish() && {
    Flush();
    std::string key(SHA256_DIGEST_LENGTH, '\0');
    SHA256_Final(reinterpret_cast<unsigned char*>(key.data()), &digest_);
    return key;
  }

 private:
  void Put(const void* data, size_t n) {
    if (buffer_.size() - used_ >= n) [[likely]] {  // Most fields of most commands.
      std::memcpy(buffer_.data() + used_, data, n);
      used_ += n;
      return;
    }
    PutToDigest(data, n);
  }
  // The buffer is full: its bytes go to the digest, then these, straight from where they
  // are if they would not fit in the buffer either.
  [[gnu::noinline]] void PutToDigest(const void* data, size_t n) {
    Flush();
    if (n >= buffer_.size()) {
      SHA256_Update(&digest_, data, n);
      return;
    }
    std::memcpy(buffer_.data(), data, n);
    used_ = n;
  }
  void Flush() {
    SHA256_Update(&digest_, buffer_.data(), used_);
    used_ = 0;
  }

  static constexpr size_t kMaxVarint = 10;  // 64 bits, 7 a byte.

  std::array<char, 512> buffer_;  // Its first used_ bytes are encoded and not yet hashed.
  size_t used_ = 0;
  SHA256_CTX digest_ = [] {
    SHA256_CTX c;
    SHA256_Init(&c);
    return c;
  }();
};

}  // namespace

absl::StatusOr<std::string> CacheKey(const Command& command, absl::string_view salt) {
  Encoder e;
  e.Bytes("execd-cache-v2");
  e.Bytes(salt);
  e.Bytes(command.caller);
  RETURN_IF_ERROR(e.Program(command.executable, command.executable_id, command.argv));
  e.Int(static_cast<int64_t>(command.pipe_to.size()));
  for (const PipelineStage& stage : command.pipe_to) {
    RETURN_IF_ERROR(e.Program(stage.executable, stage.executable_id, stage.argv));
  }
  e.Bytes(command.pool);
  e.Bytes(command.pool_fingerprint);
  e.Int(static_cast<int64_t>(command.env.size()));  // Sorted by validation.
  for (const std::string& v : command.env) e.Bytes(v);
  e.Bytes(command.cwd);
  e.Bytes(command.stdin_data);
  const Limits& l = command.limits;
  e.Duration(l.timeout);
  // Not max_output_bytes: only untruncated results are stored, and one within a request's
  // cap is that request's result too (Lookup checks), whatever cap produced it.
  e.Duration(l.cpu_time);
#define EXECD_KEY(field, server_maximum, what) e.Int(l.field);
  EXECD_COUNT_LIMITS(EXECD_KEY)
#undef EXECD_KEY
  e.Int(static_cast<int64_t>(l.cpu_affinity.size()));
  for (int cpu : l.cpu_affinity) e.Int(cpu);
  return std::move(e).Finish();
}

}  // namespace execd::core
