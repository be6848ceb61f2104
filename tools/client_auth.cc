#include "tools/client_auth.h"

#include <grpcpp/support/client_interceptor.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/algorithm/container.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

namespace execd::client {
namespace {

absl::StatusOr<std::string> ReadFile(const std::string& flag, const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::InvalidArgumentError(
        absl::StrCat(flag, "=", path, ": cannot read it (", strerror(errno), ")"));
  }
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

// The token in `text` (a file's contents or a variable's value), named `source` in errors.
absl::StatusOr<std::string> Token(const std::string& source, absl::string_view text) {
  const absl::string_view token = absl::StripAsciiWhitespace(text);
  if (token.empty()) return absl::InvalidArgumentError(absl::StrCat(source, " is empty"));
  if (absl::c_any_of(token, absl::ascii_isspace)) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, " holds more than one word; it should hold the token alone"));
  }
  return std::string(token);
}

// Adds the token to every call's metadata. An interceptor rather than gRPC's call
// credentials, which gRPC sends only over TLS: a token also reaches a loopback server
// without TLS.
class BearerTokenInterceptor final : public grpc::experimental::Interceptor {
 public:
  explicit BearerTokenInterceptor(const std::string& header) : header_(header) {}
  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(
            grpc::experimental::InterceptionHookPoints::PRE_SEND_INITIAL_METADATA)) {
      methods->GetSendInitialMetadata()->emplace("authorization", header_);
    }
    methods->Proceed();
  }

 private:
  const std::string& header_;
};

class BearerTokenFactory final : public grpc::experimental::ClientInterceptorFactoryInterface {
 public:
  explicit BearerTokenFactory(const std::string& token) : header_("Bearer " + token) {}
  grpc::experimental::Interceptor* CreateClientInterceptor(
      grpc::experimental::ClientRpcInfo*) override {
    return new BearerTokenInterceptor(header_);
  }

 private:
  const std::string header_;  // Outlives every call: the channel holds the factory.
};

}  // namespace

absl::StatusOr<ClientAuth> LoadClientAuth(const ClientAuthFiles& files, const char* env_token) {
  ClientAuth auth;
  if (!files.token_file.empty()) {
    absl::StatusOr<std::string> text = ReadFile("--auth_token_file", files.token_file);
    if (!text.ok()) return text.status();
    absl::StatusOr<std::string> token =
        Token(absl::StrCat("--auth_token_file=", files.token_file), *text);
    if (!token.ok()) return token.status();
    auth.token = *std::move(token);
  } else if (env_token != nullptr && *env_token != '\0') {
    absl::StatusOr<std::string> token = Token(absl::StrCat("$", kTokenVariable), env_token);
    if (!token.ok()) return token.status();
    auth.token = *std::move(token);
  }
  if (files.tls_cert.empty() != files.tls_key.empty()) {
    return absl::InvalidArgumentError(
        "--tls_cert and --tls_key go together: give both (a client certificate and its key) "
        "or neither");
  }
  if (files.tls_ca.empty() && files.tls_cert.empty()) return auth;
  grpc::SslCredentialsOptions options;
  for (const auto& [flag, path, out] :
       {std::tuple{"--tls_ca", &files.tls_ca, &options.pem_root_certs},
        std::tuple{"--tls_cert", &files.tls_cert, &options.pem_cert_chain},
        std::tuple{"--tls_key", &files.tls_key, &options.pem_private_key}}) {
    if (path->empty()) continue;
    absl::StatusOr<std::string> text = ReadFile(flag, *path);
    if (!text.ok()) return text.status();
    *out = *std::move(text);
  }
  auth.credentials = grpc::SslCredentials(options);
  return auth;
}

std::shared_ptr<grpc::Channel> CreateChannel(const std::string& target, const ClientAuth& auth,
                                             const grpc::ChannelArguments& args) {
  std::shared_ptr<grpc::ChannelCredentials> credentials =
      auth.credentials != nullptr ? auth.credentials : grpc::InsecureChannelCredentials();
  if (auth.token.empty()) return grpc::CreateCustomChannel(target, credentials, args);
  std::vector<std::unique_ptr<grpc::experimental::ClientInterceptorFactoryInterface>> factories;
  factories.push_back(std::make_unique<BearerTokenFactory>(auth.token));
  return grpc::experimental::CreateCustomChannelWithInterceptors(target, credentials, args,
                                                                 std::move(factories));
}

}  // namespace execd::client
