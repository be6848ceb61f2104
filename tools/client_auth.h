// How execd's clients (execctl, execd-loadtest) prove who they are and check whom they talk
// to: TLS, the server's certificate checked against a CA and, for mutual TLS, a client
// certificate of their own; and a bearer token sent with every call as gRPC's usual
// `authorization: Bearer TOKEN` metadata.
#pragma once

#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace execd::client {

// Where a token comes from when no --auth_token_file is given.
inline constexpr char kTokenVariable[] = "EXECD_TOKEN";

// Paths from the command line; empty: not given. Either TLS path turns TLS on.
struct ClientAuthFiles {
  std::string token_file;  // --auth_token_file: the token alone (white space around ignored).
  std::string tls_ca;      // --tls_ca: PEM CAs the server's certificate must chain to;
                           // without it, the system's.
  std::string tls_cert;    // --tls_cert: PEM client certificate, for mutual TLS.
  std::string tls_key;     // --tls_key: its private key.
};

// What a channel is made with.
struct ClientAuth {
  std::shared_ptr<grpc::ChannelCredentials> credentials;  // Null: plaintext.
  std::string token;                                      // Empty: none sent.
};

// Reads `files`. The token comes from token_file, else from `env_token` (the value of
// $EXECD_TOKEN, or null). Errors name the flag or the variable.
absl::StatusOr<ClientAuth> LoadClientAuth(const ClientAuthFiles& files, const char* env_token);

// A channel to `target` with `auth`'s credentials, sending its token with every call.
std::shared_ptr<grpc::Channel> CreateChannel(const std::string& target, const ClientAuth& auth,
                                             const grpc::ChannelArguments& args);

}  // namespace execd::client
