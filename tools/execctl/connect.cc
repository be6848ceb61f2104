#include "tools/execctl/connect.h"

#include <iostream>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "tools/execctl/execctl.h"

namespace execd::execctl {

std::shared_ptr<grpc::Channel> Connect(const std::string& target) {
  grpc::ChannelArguments channel_args;
  channel_args.SetMaxReceiveMessageSize(-1);
  channel_args.SetMaxSendMessageSize(-1);
  return grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), channel_args);
}

int ExitForRpcError(const grpc::Status& status, const std::string& target) {
  std::cerr << "execctl: "
            << absl::StatusCodeToString(static_cast<absl::StatusCode>(status.error_code())) << ": "
            << status.error_message();
  // A connection failure, not an UNAVAILABLE the server sent (draining, a worker crash).
  if (status.error_code() == grpc::StatusCode::UNAVAILABLE &&
      (absl::StrContains(status.error_message(), "failed to connect") ||
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
