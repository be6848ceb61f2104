#include "core/cache_key.h"

#include <openssl/evp.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstdint>
#include <memory>

#include "absl/strings/str_cat.h"
#include "core/errno_status.h"
#include "core/status_macros.h"

namespace execd::core {
namespace {

// Every field is length-prefixed (or fixed-size), so no two different commands encode to
// the same bytes.
class Encoder {
 public:
  Encoder() { out_.reserve(512); }  // A typical key in one allocation.
  void Int(int64_t v) { out_.append(reinterpret_cast<const char*>(&v), sizeof(v)); }
  void Bytes(absl::string_view s) {
    Int(static_cast<int64_t>(s.size()));
    out_.append(s.data(), s.size());
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
  const std::string& bytes() const { return out_; }

 private:
  std::string out_;
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

  // Fetched once: OpenSSL 3 looks the implementation up on every implicit use. The context
  // is one per thread, re-initialised for each key: EVP_Digest would allocate and free a
  // context and the digest's state on every call, which cost more than hashing a key.
  static EVP_MD* const sha256 = EVP_MD_fetch(nullptr, "SHA256", nullptr);
  struct ContextFree {
    void operator()(EVP_MD_CTX* context) const { EVP_MD_CTX_free(context); }
  };
  thread_local const std::unique_ptr<EVP_MD_CTX, ContextFree> context(EVP_MD_CTX_new());
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int size = 0;
  if (sha256 == nullptr || context == nullptr ||
      EVP_DigestInit_ex2(context.get(), sha256, nullptr) != 1 ||
      EVP_DigestUpdate(context.get(), e.bytes().data(), e.bytes().size()) != 1 ||
      EVP_DigestFinal_ex(context.get(), digest, &size) != 1) {
    return absl::InternalError("SHA-256 failed");
  }
  return std::string(reinterpret_cast<const char*>(digest), size);
}

}  // namespace execd::core
