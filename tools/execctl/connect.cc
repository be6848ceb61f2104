#include "tools/execctl/connect.h"

#include <iostream>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "tools/execctl/execctl.h"

namespace execd::execctl {

std::shared_ptr<grpc::Channel> Connect(const std::string& target, const client::ClientAuth& auth) {
  grpc::ChannelArguments channel_args;
  channel_args.SetMaxReceiveMessageSize(-1);
  channel_args.SetMaxSendMessageSize(-1);
  return client::CreateChannel(target, auth, channel_args);
}

int ExitForRpcError(const grpc::Status& status, const std::string& target) {
  std::cerr << "execctl: "
            << absl::StatusCodeToString(static_cast<absl::StatusCode>(status.error_code())) << ": "
            << status.error_message();
  // A connection failure, not an UNAVAILABLE the server sent (draining, a worker crash). A
  // TLS handshake that failed reads as one too, so it is looked for first.
  const bool unavailable = status.error_code() == grpc::StatusCode::UNAVAILABLE;
  if (unavailable && absl::StrContains(status.error_message(), "Ssl handshake failed")) {
    std::cerr << " (TLS: did the CA of --tls_ca sign the server's certificate, and does the "
                 "certificate name the host of --target?)";
  } else if (unavailable && absl::StrContains(status.error_message(), "Socket closed")) {
    std::cerr << " (the server closed the connection: does it want TLS (--tls_ca) or a client "
                 "certificate (--tls_cert and --tls_key)?)";
  } else if (unavailable && (absl::StrContains(status.error_message(), "failed to connect") ||
                             absl::StrContains(status.error_message(), "Connection refused"))) {
    std::cerr << " (is execd running at " << target << "?)";
  }
  std::cerr << "\n";
  switch (status.error_code()) {
    case grpc::StatusCode::NOT_FOUND:
      return kExitNotFound;
    case grpc::StatusCode::PERMISSION_DENIED:
      return kExitPermissionDenied;
    default:
      return kExitError;
  }
}

}  // namespace execd::execctl
