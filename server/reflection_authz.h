// Server reflection under the authorization policy. gRPC's reflection service is not ours
// to change, so its calls are intercepted: a caller that is not authenticated, or whose
// rule does not allow reflection, gets none of its answers (each becomes an error response
// carrying the refusal), and the call ends UNAUTHENTICATED or PERMISSION_DENIED naming the
// rule. Calls of other methods are not intercepted. Thread-safe.
#pragma once

#include <grpcpp/grpcpp.h>
#include <grpcpp/support/server_interceptor.h>

#include "core/dispatcher.h"
#include "server/auth.h"

namespace execd::server {

class ReflectionAuthz final : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  // Both must outlive the server the interceptors serve.
  ReflectionAuthz(const core::Dispatcher& dispatcher, const Authenticator& authenticator)
      : dispatcher_(dispatcher), authenticator_(authenticator) {}

  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo* info) override;

 private:
  const core::Dispatcher& dispatcher_;
  const Authenticator& authenticator_;
};

}  // namespace execd::server
