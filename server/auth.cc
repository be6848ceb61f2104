#include "server/auth.h"

#include <arpa/inet.h>
#include <openssl/crypto.h>
#include <openssl/sha.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <utility>

#include "absl/algorithm/container.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "core/status_macros.h"
#include "server/tls.h"

namespace execd::server {
namespace {

constexpr size_t kMaxIdentityLength = 256;
constexpr size_t kMaxSecretLength = 4096;
constexpr size_t kMaxSecretsFileBytes = 16 << 20;

bool PrintableAscii(absl::string_view s, bool spaces) {
  return absl::c_all_of(s,
                        [spaces](char c) { return (c > ' ' && c <= '~') || (spaces && c == ' '); });
}

absl::Status Unauthenticated(absl::string_view why) { return absl::UnauthenticatedError(why); }

absl::StatusOr<SecretTable> LoadSecrets(absl::string_view flag, const std::string& path,
                                        SecretTable::Kind kind) {
  ASSIGN_OR_RETURN(std::string text, ReadFlagFile(flag, path, kMaxSecretsFileBytes));
  absl::StatusOr<SecretTable> table = SecretTable::Parse(text, path, kind);
  if (!table.ok()) {
    return absl::Status(table.status().code(),
                        absl::StrCat("--", flag, "=", table.status().message()));
  }
  return table;
}

// The identity a verified client certificate gives: its subject Common Name.
absl::StatusOr<std::string> CertificateIdentity(const grpc::ServerContextBase& context) {
  const std::shared_ptr<const grpc::AuthContext> auth = context.auth_context();
  std::vector<grpc::string_ref> names;
  if (auth != nullptr && auth->IsPeerAuthenticated()) {
    names = auth->FindPropertyValues("x509_common_name");
  }
  if (names.empty()) {
    return Unauthenticated(
        "no verified client certificate with a subject CN (CN=NAME names the caller): "
        "connect with a certificate the server's --tls_client_ca signed (execctl: --tls_cert "
        "and --tls_key)");
  }
  std::string name(names.front().data(), names.front().size());
  if (name.empty() || name.size() > kMaxIdentityLength || !PrintableAscii(name, true) ||
      name == kAnonymous) {
    return Unauthenticated(absl::StrCat(
        "the client certificate's subject CN cannot name a caller: it must be 1 to ",
        kMaxIdentityLength, " printable ASCII characters and not \"", kAnonymous, "\""));
  }
  return name;
}

}  // namespace

absl::StatusOr<std::string> ReadFlagFile(absl::string_view flag, const std::string& path,
                                         size_t max_bytes) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", flag, "=", path, ": cannot read it (", strerror(errno), ")"));
  }
  std::ostringstream text;
  text << in.rdbuf();
  if (text.str().size() > max_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", flag, "=", path, ": larger than ", max_bytes, " bytes"));
  }
  return text.str();
}

SecretTable::Digest SecretTable::Sha256(absl::string_view data) {
  Digest digest;
  SHA256(reinterpret_cast<const unsigned char*>(data.data()), data.size(), digest.data());
  return digest;
}

absl::StatusOr<SecretTable> SecretTable::Parse(absl::string_view text, absl::string_view path,
                                               Kind kind) {
  const bool tokens = kind == Kind::kTokens;
  const absl::string_view name_word = tokens ? "IDENTITY" : "USER";
  const absl::string_view secret_word = tokens ? "TOKEN" : "PASSWORD";
  SecretTable table;
  absl::flat_hash_map<std::string, int> name_lines;
  absl::flat_hash_map<std::string, std::pair<std::string, int>> secret_owners;
  int line_number = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_number;
    line = absl::StripAsciiWhitespace(line);
    if (line.empty() || line.front() == '#') continue;
    auto error = [&](auto... what) {
      return absl::InvalidArgumentError(absl::StrCat(path, ":", line_number, ": ", what...));
    };
    const std::vector<absl::string_view> fields =
        absl::StrSplit(line, absl::ByAnyChar(" \t"), absl::SkipEmpty());
    if (fields.size() != 2) {
      return error("want `", name_word, " ", secret_word, "`, got ", fields.size(),
                   fields.size() == 1 ? " field" : " fields",
                   fields.size() == 1 ? absl::StrCat(" (no ", secret_word, ")")
                                      : absl::StrCat(" (a ", secret_word, " has no spaces)"));
    }
    const std::string name(fields[0]);
    const absl::string_view secret = fields[1];
    if (name.size() > kMaxIdentityLength || !PrintableAscii(name, false)) {
      return error(name_word, " must be 1 to ", kMaxIdentityLength, " printable ASCII characters");
    }
    if (tokens && name == kAnonymous) {
      return error(name_word, " \"", kAnonymous,
                   "\" is reserved for the callers of a server without authentication");
    }
    if (!tokens && absl::StrContains(name, ':')) {
      return error(name_word, " \"", name, "\" has a ':', which HTTP basic auth cannot send");
    }
    if (secret.size() < kMinSecretLength || secret.size() > kMaxSecretLength ||
        !PrintableAscii(secret, false)) {
      return error("the ", secret_word, " of \"", name, "\" must be ", kMinSecretLength, " to ",
                   kMaxSecretLength,
                   " printable ASCII characters (make one with `openssl rand -hex 32`)");
    }
    if (auto [at, added] = name_lines.try_emplace(name, line_number); !added) {
      return error(name_word, " \"", name, "\" again (first on line ", at->second, ")");
    }
    Entry entry{name, Sha256(name), Sha256(secret)};
    const std::string digest(entry.secret_digest.begin(), entry.secret_digest.end());
    if (auto [at, added] = secret_owners.try_emplace(digest, name, line_number); !added && tokens) {
      return error("the ", secret_word, " of \"", name, "\" is also that of \"", at->second.first,
                   "\" (line ", at->second.second, "); give each ", name_word, " its own");
    }
    table.entries_.push_back(std::move(entry));
  }
  if (table.entries_.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": no `", name_word, " ", secret_word,
                                                   "` line, so nobody could get in"));
  }
  return table;
}

std::optional<std::string> SecretTable::NameOf(absl::string_view secret) const {
  const Digest digest = Sha256(secret);
  const Entry* found = nullptr;
  // Every entry is compared, each in constant time: how long this takes says nothing about
  // which entry, if any, is close.
  for (const Entry& e : entries_) {
    if (CRYPTO_memcmp(e.secret_digest.data(), digest.data(), digest.size()) == 0) found = &e;
  }
  if (found == nullptr) return std::nullopt;
  return found->name;
}

bool SecretTable::Matches(absl::string_view name, absl::string_view secret) const {
  const Digest name_digest = Sha256(name);
  const Digest secret_digest = Sha256(secret);
  int matched = 0;
  for (const Entry& e : entries_) {
    const int same_name =
        CRYPTO_memcmp(e.name_digest.data(), name_digest.data(), name_digest.size()) == 0;
    const int same_secret =
        CRYPTO_memcmp(e.secret_digest.data(), secret_digest.data(), secret_digest.size()) == 0;
    matched |= same_name & same_secret;
  }
  return matched != 0;
}

absl::StatusOr<absl::string_view> BearerToken(absl::string_view header) {
  constexpr absl::string_view kScheme = "Bearer";
  const absl::string_view value = absl::StripAsciiWhitespace(header);
  const bool scheme = value.size() > kScheme.size() &&
                      absl::EqualsIgnoreCase(value.substr(0, kScheme.size()), kScheme) &&
                      absl::ascii_isspace(value[kScheme.size()]);
  const absl::string_view token =
      scheme ? absl::StripLeadingAsciiWhitespace(value.substr(kScheme.size())) : "";
  if (token.empty() || absl::c_any_of(token, absl::ascii_isspace)) {
    return absl::InvalidArgumentError(
        "the authorization header is not `Bearer TOKEN` (the word Bearer, a space, one token)");
  }
  return token;
}

bool OnlyLocallyReachable(absl::string_view address) {
  if (absl::StartsWith(address, "unix:") || absl::StartsWith(address, "unix-abstract:")) {
    return true;
  }
  const size_t colon = address.rfind(':');
  absl::string_view host = colon == absl::string_view::npos ? address : address.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  if (absl::EqualsIgnoreCase(host, "localhost")) return true;
  const std::string text(host);
  in_addr v4;
  if (inet_pton(AF_INET, text.c_str(), &v4) == 1) return (ntohl(v4.s_addr) >> 24) == 127;
  in6_addr v6;
  if (inet_pton(AF_INET6, text.c_str(), &v6) == 1) {
    return IN6_IS_ADDR_LOOPBACK(&v6) || (IN6_IS_ADDR_V4MAPPED(&v6) && v6.s6_addr[12] == 127);
  }
  return false;
}

struct Authenticator::Loaded {
  Trusted trusted;
  std::optional<ServerTls::Material> tls;
};

absl::StatusOr<Authenticator::Loaded> Authenticator::Load(const AuthConfig& config) {
  Loaded loaded;
  if (!config.tokens_file.empty()) {
    ASSIGN_OR_RETURN(loaded.trusted.tokens, LoadSecrets("auth_tokens_file", config.tokens_file,
                                                        SecretTable::Kind::kTokens));
  }
  if (!config.metrics_auth_file.empty()) {
    ASSIGN_OR_RETURN(loaded.trusted.metrics_users,
                     LoadSecrets("metrics_auth_file", config.metrics_auth_file,
                                 SecretTable::Kind::kMetricsUsers));
  }
  if (config.tls()) {
    ASSIGN_OR_RETURN(loaded.tls,
                     ServerTls::Read({config.tls_cert, config.tls_key, config.tls_client_ca}));
  }
  return loaded;
}

std::string Authenticator::Summary(const Loaded& loaded) {
  std::string summary = absl::StrCat(
      "tokens=", loaded.trusted.tokens ? loaded.trusted.tokens->size() : 0,
      " metrics_users=", loaded.trusted.metrics_users ? loaded.trusted.metrics_users->size() : 0);
  if (loaded.tls.has_value()) absl::StrAppend(&summary, " ", loaded.tls->summary);
  return summary;
}

Authenticator::Authenticator(AuthConfig config) : config_(std::move(config)) {}

Authenticator::~Authenticator() = default;

absl::StatusOr<std::unique_ptr<Authenticator>> Authenticator::Create(const AuthConfig& config) {
  ASSIGN_OR_RETURN(Loaded loaded, Load(config));
  std::unique_ptr<Authenticator> authenticator(new Authenticator(config));
  if (loaded.tls.has_value()) {
    ASSIGN_OR_RETURN(authenticator->tls_, ServerTls::Create(*loaded.tls));
  }
  absl::MutexLock lock(&authenticator->mu_);
  authenticator->summary_ = Summary(loaded);
  authenticator->trusted_ = std::make_shared<const Trusted>(std::move(loaded.trusted));
  return authenticator;
}

std::shared_ptr<const Authenticator::Trusted> Authenticator::trusted() const {
  absl::ReaderMutexLock lock(&mu_);
  return trusted_;
}

std::string Authenticator::summary() const {
  absl::ReaderMutexLock lock(&mu_);
  return summary_;
}

absl::StatusOr<std::string> Authenticator::Authenticate(
    const grpc::ServerContextBase& context) const {
  if (!config_.authenticates()) return std::string(kAnonymous);
  const auto [first, last] = context.client_metadata().equal_range("authorization");
  // Without --auth_tokens_file a token is not looked at: callers are known by their
  // certificates alone.
  if (first == last || config_.tokens_file.empty()) {
    if (config_.mutual_tls()) return CertificateIdentity(context);
    return Unauthenticated(
        "no credentials: this server needs a bearer token, sent as `authorization: Bearer "
        "TOKEN` (execctl and execd-loadtest: --auth_token_file=FILE or $EXECD_TOKEN)");
  }
  if (std::next(first) != last) {
    return Unauthenticated(
        "more than one authorization header; send one, `authorization: Bearer TOKEN`");
  }
  absl::StatusOr<absl::string_view> token =
      BearerToken(absl::string_view(first->second.data(), first->second.size()));
  if (!token.ok()) return Unauthenticated(token.status().message());
  std::optional<std::string> identity = trusted()->tokens->NameOf(*token);
  if (!identity.has_value()) {
    return Unauthenticated(
        "the bearer token is not one this server accepts (mistyped, or revoked): check the "
        "token the client sends (execctl: --auth_token_file or $EXECD_TOKEN)");
  }
  return *std::move(identity);
}

bool Authenticator::CheckMetricsUser(const std::string& user, const std::string& password) const {
  const std::shared_ptr<const Trusted> now = trusted();
  return now->metrics_users.has_value() && now->metrics_users->Matches(user, password);
}

std::shared_ptr<grpc::ServerCredentials> Authenticator::ServerCredentials() const {
  return tls_ != nullptr ? tls_->credentials() : grpc::InsecureServerCredentials();
}

absl::StatusOr<std::string> Authenticator::Reload() {
  if (!config_.any_file()) {
    return absl::FailedPreconditionError(
        "no --auth_tokens_file, --tls_cert or --metrics_auth_file: nothing to reload");
  }
  ASSIGN_OR_RETURN(Loaded loaded, Load(config_));
  if (tls_ != nullptr) RETURN_IF_ERROR(tls_->Install(*loaded.tls));
  std::string summary = Summary(loaded);
  absl::MutexLock lock(&mu_);
  summary_ = summary;
  trusted_ = std::make_shared<const Trusted>(std::move(loaded.trusted));
  return summary;
}

}  // namespace execd::server
