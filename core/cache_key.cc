#include "core/cache_key.h"

#include <openssl/evp.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <memory>

#include "absl/strings/str_cat.h"
#include "core/errno_status.h"
#include "core/status_macros.h"

namespace execd::core {
namespace {

// Every field is length-prefixed (or fixed-size), so no two different commands encode to
// the same bytes. A typical command encodes to a few hundred bytes, which are its key as
// they are: hashing them would cost more than comparing them on a hit. A longer encoding
// (a large stdin, a long argv) is replaced by its SHA-256 digest, fed as it is encoded, so
// a large stdin is hashed in place and never copied. An encoding is longer than a digest
// (the version tag and the fixed-size fields alone are), so the two kinds of key never
// meet.
class Encoder {
 public:
  // The longest encoding kept as the key; anything longer is hashed.
  static constexpr size_t kMaxPlainKey = 512;

  Encoder() { buffer_.resize(kMaxPlainKey); }  // A typical key in one allocation.
  void Int(int64_t v) { Put(&v, sizeof(v)); }
  void Bytes(absl::string_view s) {
    Int(static_cast<int64_t>(s.size()));
    Put(s.data(), s.size());
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
    Int(static_cast<int64_t>(argv.size()));
    for (const std::string& a : argv) Bytes(a);
    return absl::OkStatus();
  }

  // The key: the encoding itself, or its digest.
  absl::StatusOr<std::string> Finish() && {
    if (digest_ == nullptr && used_ <= kMaxPlainKey) {
      buffer_.resize(used_);
      return std::move(buffer_);
    }
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int size = 0;
    if (!Flush() || EVP_DigestFinal_ex(digest_, digest, &size) != 1) {
      return absl::InternalError("SHA-256 failed");
    }
    return std::string(reinterpret_cast<const char*>(digest), size);
  }

 private:
  void Put(const void* data, size_t n) {
    if (buffer_.size() - used_ >= n) [[likely]] {
      std::memcpy(buffer_.data() + used_, data, n);
      used_ += n;
      return;
    }
    PutToDigest(data, n);
  }
  // Past the plain key's length: from here on the bytes go to the digest, in buffer-sized
  // pieces, and a piece larger than the buffer straight from where it is.
  [[gnu::noinline]] void PutToDigest(const void* data, size_t n) {
    if (!Flush()) return;
    if (n >= buffer_.size()) {
      ok_ = ok_ && EVP_DigestUpdate(digest_, data, n) == 1;
      return;
    }
    std::memcpy(buffer_.data(), data, n);
    used_ = n;
  }
  // Starts the digest if it has not started and feeds it the buffered bytes.
  bool Flush() {
    if (digest_ == nullptr) digest_ = StartDigest();
    ok_ = ok_ && digest_ != nullptr && EVP_DigestUpdate(digest_, buffer_.data(), used_) == 1;
    used_ = 0;
    return ok_;
  }
  // Fetched once: OpenSSL 3 looks the implementation up on every implicit use. The context
  // is one per thread, re-initialised for each key: EVP_Digest would allocate and free a
  // context and the digest's state on every call.
  static EVP_MD_CTX* StartDigest() {
    static EVP_MD* const sha256 = EVP_MD_fetch(nullptr, "SHA256", nullptr);
    struct ContextFree {
      void operator()(EVP_MD_CTX* context) const { EVP_MD_CTX_free(context); }
    };
    thread_local const std::unique_ptr<EVP_MD_CTX, ContextFree> context(EVP_MD_CTX_new());
    if (sha256 == nullptr || context == nullptr ||
        EVP_DigestInit_ex2(context.get(), sha256, nullptr) != 1) {
      return nullptr;
    }
    return context.get();
  }

  std::string buffer_;  // Its first used_ bytes are encoded and not yet hashed.
  size_t used_ = 0;
  EVP_MD_CTX* digest_ = nullptr;  // Once the encoding outgrew kMaxPlainKey.
  bool ok_ = true;
};

}  // namespace

absl::StatusOr<std::string> CacheKey(const Command& command, absl::string_view salt) {
  Encoder e;
  e.Bytes("execd-cache-v1");
  e.Bytes(salt);
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
  e.Int(l.memory_bytes);
  e.Int(l.max_processes);
  e.Int(l.max_open_files);
  e.Int(l.max_file_size_bytes);
  e.Int(static_cast<int64_t>(l.cpu_affinity.size()));
  for (int cpu : l.cpu_affinity) e.Int(cpu);
  return std::move(e).Finish();
}

}  // namespace execd::core
