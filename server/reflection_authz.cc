#include "server/reflection_authz.h"

#include <optional>
#include <string>

#include "absl/strings/match.h"
#include "server/convert.h"

namespace execd::server {
namespace {

using grpc::experimental::InterceptionHookPoints;

// Appends a protobuf varint.
void Varint(uint64_t v, std::string* out) {
  for (; v >= 0x80; v >>= 7) out->push_back(static_cast<char>(v | 0x80));
  out->push_back(static_cast<char>(v));
}

// A grpc.reflection.v1alpha.ServerReflectionResponse holding only
// `error_response { error_code: code error_message: message }` (field 7; 1 and 2 inside),
// encoded by hand: the reflection messages' classes are gRPC's own, not in its headers.
std::string ErrorResponse(const absl::Status& status) {
  std::string error;
  error.push_back(0x08);  // error_code, varint.
  Varint(static_cast<uint64_t>(status.code()), &error);
  error.push_back(0x12);  // error_message, length-delimited.
  Varint(status.message().size(), &error);
  error.append(status.message().data(), status.message().size());
  std::string response;
  response.push_back(0x3a);  // error_response (7), length-delimited.
  Varint(error.size(), &response);
  response += error;
  return response;
}

class Interceptor final : public grpc::experimental::Interceptor {
 public:
  Interceptor(grpc::experimental::ServerRpcInfo* info, const core::Dispatcher& dispatcher,
              const Authenticator& authenticator)
      : info_(info), dispatcher_(dispatcher), authenticator_(authenticator) {}

  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_SEND_MESSAGE) &&
        !Decision().ok()) {
      const std::string bytes = ErrorResponse(Decision());
      grpc::Slice slice(bytes);
      *methods->GetSerializedSendMessage() = grpc::ByteBuffer(&slice, 1);
    }
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_SEND_STATUS) &&
        !Decision().ok()) {
      methods->ModifySendStatus(ToGrpcStatus(Decision()));
    }
    methods->Proceed();
  }

 private:
  // Decided once per call, when the caller is known (its metadata has come).
  const absl::Status& Decision() {
    if (!decision_.has_value()) {
      absl::StatusOr<std::string> caller = authenticator_.Authenticate(*info_->server_context());
      decision_ = caller.ok() ? dispatcher_.CheckReflection(*caller) : caller.status();
    }
    return *decision_;
  }

  grpc::experimental::ServerRpcInfo* const info_;
  const core::Dispatcher& dispatcher_;
  const Authenticator& authenticator_;
  std::optional<absl::Status> decision_;
};

}  // namespace

grpc::experimental::Interceptor* ReflectionAuthz::CreateServerInterceptor(
    grpc::experimental::ServerRpcInfo* info) {
  if (!absl::StartsWith(info->method(), "/grpc.reflection.")) return nullptr;
  return new Interceptor(info, dispatcher_, authenticator_);
}

}  // namespace execd::server
