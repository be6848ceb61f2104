// Authentication: who a call comes from. An Authenticator holds what execd trusts, read from
// the files the flags name (bearer tokens; the TLS certificate, key and client CA; the users of
// /metrics), and turns a call's credentials into the caller's identity: the name the request
// log shows and core::CallOptions::caller carries.
//
// A caller's identity is, in this order: the IDENTITY of the bearer token it sends
// (`authorization: Bearer TOKEN`); with mutual TLS, the subject Common Name of its client
// certificate, which the TLS handshake has verified; with no authentication configured,
// kAnonymous. With --auth_tokens_file, a call that sends a token is judged by the token
// alone; without it, a token is not looked at.
//
// Thread-safety: every method may be called from any thread; Reload swaps what is trusted
// while calls are being authenticated, and is called by one thread at a time.
#pragma once

#include <grpcpp/grpcpp.h>

#include <array>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"

namespace execd::server {

class ServerTls;

// The caller of a server that authenticates nobody (the loopback quick start).
inline constexpr char kAnonymous[] = "anonymous";

// Paths from the flags; empty: not given.
struct AuthConfig {
  std::string tokens_file;        // --auth_tokens_file: `IDENTITY TOKEN` lines.
  std::string tls_cert;           // --tls_cert: PEM certificate chain, leaf first.
  std::string tls_key;            // --tls_key: its PEM private key.
  std::string tls_client_ca;      // --tls_client_ca: PEM CAs client certificates chain to.
  std::string metrics_auth_file;  // --metrics_auth_file: `USER PASSWORD` lines.

  bool tls() const { return !tls_cert.empty(); }
  bool mutual_tls() const { return !tls_client_ca.empty(); }
  // Whether callers must prove who they are; otherwise every one is kAnonymous.
  bool authenticates() const { return !tokens_file.empty() || mutual_tls(); }
  bool any_file() const { return tls() || authenticates() || !metrics_auth_file.empty(); }
};

// Names and their secrets from a file of `NAME SECRET` lines ('#' starts a comment line;
// blank lines are skipped). Secrets are kept only as SHA-256 digests and looked up by
// comparing the digest with every entry's in constant time.
class SecretTable {
 public:
  enum class Kind {
    kTokens,        // IDENTITY TOKEN; the identity kAnonymous is reserved.
    kMetricsUsers,  // USER PASSWORD; a user has no ':' (HTTP basic auth splits there).
  };
  static constexpr size_t kMinSecretLength = 16;

  // The table in `text`, the contents of `path`. Errors name the path and the line, and
  // never quote a secret.
  static absl::StatusOr<SecretTable> Parse(absl::string_view text, absl::string_view path,
                                           Kind kind);

  // The name whose secret is `secret`, if any.
  std::optional<std::string> NameOf(absl::string_view secret) const;
  // Whether `name` has the secret `secret`.
  bool Matches(absl::string_view name, absl::string_view secret) const;
  size_t size() const { return entries_.size(); }

 private:
  using Digest = std::array<unsigned char, 32>;
  struct Entry {
    std::string name;
    Digest name_digest;
    Digest secret_digest;
  };
  static Digest Sha256(absl::string_view data);
  std::vector<Entry> entries_;
};

// The token of an `authorization` header value "Bearer TOKEN" (the scheme in any case, one
// or more spaces after it, surrounding white space ignored), or INVALID_ARGUMENT saying
// what the value should look like, without quoting it.
absl::StatusOr<absl::string_view> BearerToken(absl::string_view header);

// The contents of the file `path` that the flag --`flag` names, at most `max_bytes` of it;
// errors name the flag and the path.
absl::StatusOr<std::string> ReadFlagFile(absl::string_view flag, const std::string& path,
                                         size_t max_bytes);

// Whether `address` (a --listen or --metrics_listen value) can be reached only from this
// machine: a loopback address (127.0.0.0/8, ::1, localhost) or a Unix socket. Anything else,
// including a host name, counts as reachable from the network.
bool OnlyLocallyReachable(absl::string_view address);

class Authenticator {
 public:
  // Reads and checks every file `config` names; an error names the flag, the file and what
  // is wrong with it.
  static absl::StatusOr<std::unique_ptr<Authenticator>> Create(const AuthConfig& config);
  ~Authenticator();

  // The identity of the caller of `context`'s call, or UNAUTHENTICATED saying what to send.
  absl::StatusOr<std::string> Authenticate(const grpc::ServerContextBase& context) const;

  // /metrics' HTTP basic auth: whether `user` has `password` in --metrics_auth_file.
  bool CheckMetricsUser(const std::string& user, const std::string& password) const;

  // The main listener's credentials: TLS with --tls_cert (following Reload), else plaintext.
  std::shared_ptr<grpc::ServerCredentials> ServerCredentials() const;

  // Re-reads every file, all or nothing: when one is wrong, nothing changes and the error
  // says why. On success, a logfmt summary of what is now trusted. FAILED_PRECONDITION when
  // no file was given.
  absl::StatusOr<std::string> Reload();

  const AuthConfig& config() const { return config_; }
  // What is trusted now, as Reload's summary.
  std::string summary() const;

 private:
  // Everything read from the files, checked.
  struct Trusted {
    std::optional<SecretTable> tokens;
    std::optional<SecretTable> metrics_users;
  };
  struct Loaded;
  static absl::StatusOr<Loaded> Load(const AuthConfig& config);
  static std::string Summary(const Loaded& loaded);

  explicit Authenticator(AuthConfig config);
  std::shared_ptr<const Trusted> trusted() const;

  const AuthConfig config_;
  mutable absl::Mutex mu_;
  std::shared_ptr<const Trusted> trusted_ ABSL_GUARDED_BY(mu_);
  std::string summary_ ABSL_GUARDED_BY(mu_);
  std::unique_ptr<ServerTls> tls_;  // Null without --tls_cert.
};

}  // namespace execd::server
