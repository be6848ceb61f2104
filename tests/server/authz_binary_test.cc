// The shipped execd under --authz_policy, as an operator runs it: a bad file stops start-up
// with its line, SIGHUP re-reads the file (a bad one is logged and changes nothing), and
// server reflection answers only callers the policy allows it. Every caller of this binary
// is "anonymous" (no authentication).
#include <grpcpp/grpcpp.h>
#include <signal.h>

#include <fstream>
#include <string>
#include <vector>

#include "execd/v1/execd.grpc.pb.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "reflection_client.grpc.pb.h"
#include "tests/support/subprocess.h"

namespace execd {
namespace {

using ::testing::HasSubstr;
namespace reflection = grpc::reflection::v1alpha;

class AuthzBinaryTest : public ::testing::Test {
 protected:
  void Write(const std::string& text) { std::ofstream(path_, std::ios::trunc) << text; }

  // Starts execd under the policy file (and `flags`), and a client of it.
  void Start(std::vector<std::string> flags = {}) {
    flags.push_back("--authz_policy=" + path_);
    server_ = std::make_unique<testing::ServerProcess>(EXECD_BIN, flags);
    ASSERT_TRUE(server_->ok()) << server_->log();
    channel_ = grpc::CreateChannel(server_->target(), grpc::InsecureChannelCredentials());
  }

  grpc::Status Run(const std::string& program) {
    auto stub = v1::Executor::NewStub(channel_);
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
    v1::ExecuteRequest request;
    request.add_argv(program);
    v1::ExecuteResponse response;
    return stub->Execute(&context, request, &response);
  }

  // Reloads the policy and waits for the server to log `event`.
  void Reload(const std::string& event) {
    const size_t before = Count(event);
    kill(server_->pid(), SIGHUP);
    ASSERT_TRUE(testing::WaitFor([&] { return Count(event) > before; }, absl::Seconds(10)))
        << server_->log();
  }
  size_t Count(const std::string& text) {
    const std::string log = server_->log();
    size_t n = 0;
    for (size_t at = log.find(text); at != std::string::npos; at = log.find(text, at + 1)) ++n;
    return n;
  }

  testing::ScopedTempDir dir_{"authz_binary"};
  const std::string path_ = dir_.path() + "/policy.textproto";
  std::unique_ptr<testing::ServerProcess> server_;
  std::shared_ptr<grpc::Channel> channel_;
};

TEST_F(AuthzBinaryTest, ABadPolicyStopsStartUpNamingTheLine) {
  Write("default_rule {\n  executables: \"/bin/true\"\n  share: 5000 }\n");
  testing::ProcessResult r =
      testing::RunProcess({EXECD_BIN, "--listen=127.0.0.1:0", "--authz_policy=" + path_});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.err, HasSubstr(path_ + ": line 3: default_rule: share 5000 is over 1000"));
}

TEST_F(AuthzBinaryTest, SighupReloadsThePolicyAndABadFileKeepsTheOldOne) {
  Write("default_rule { executables: \"/bin/echo\" }");
  Start();
  EXPECT_TRUE(
      server_->WaitForLog("event=authz_policy rules=0 default_rule=true", absl::Seconds(10)));
  EXPECT_TRUE(Run("/bin/echo").ok());
  EXPECT_EQ(Run("/bin/true").error_code(), grpc::StatusCode::PERMISSION_DENIED);

  Write("default_rule { executables: \"/bin/true\" }");
  Reload("event=authz_policy_reloaded");
  EXPECT_TRUE(Run("/bin/true").ok());
  grpc::Status echo = Run("/bin/echo");
  EXPECT_EQ(echo.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_THAT(echo.error_message(), HasSubstr("is not in rule default.executables (allowed: "
                                              "/bin/true)"));

  Write("default_rule { executables: \"/bin/echo\" share: -1 }");
  Reload("event=authz_policy_reload_failed");
  EXPECT_THAT(server_->log(), HasSubstr("kept=previous"));
  EXPECT_TRUE(Run("/bin/true").ok());
  EXPECT_EQ(Run("/bin/echo").error_code(), grpc::StatusCode::PERMISSION_DENIED);
}

// A reflection call: the services listed, then the descriptor of execd.v1.Executor. Its
// answers, and its status in `status`.
std::vector<reflection::ServerReflectionResponse> ListServices(
    const std::shared_ptr<grpc::Channel>& channel, grpc::Status* status,
    const std::string& token = "") {
  auto stub = reflection::ServerReflection::NewStub(channel);
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
  if (!token.empty()) context.AddMetadata("authorization", "Bearer " + token);
  auto stream = stub->ServerReflectionInfo(&context);
  reflection::ServerReflectionRequest request;
  request.set_list_services("");
  stream->Write(request);
  request.set_file_containing_symbol("execd.v1.Executor");
  stream->Write(request);
  stream->WritesDone();
  std::vector<reflection::ServerReflectionResponse> responses;
  for (reflection::ServerReflectionResponse r; stream->Read(&r);) responses.push_back(r);
  *status = stream->Finish();
  return responses;
}

TEST_F(AuthzBinaryTest, ReflectionAnswersOnlyWhomThePolicyAllows) {
  Write("default_rule { executables: \"/bin/true\" }");
  Start();
  grpc::Status status;
  std::vector<reflection::ServerReflectionResponse> denied = ListServices(channel_, &status);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(status.error_message(),
            "identity \"anonymous\": server reflection is not allowed by rule "
            "default.reflection");
  // Each answer was replaced by the denial: nothing of the services got out.
  for (const auto& r : denied) {
    EXPECT_TRUE(r.has_error_response());
    EXPECT_EQ(r.error_response().error_code(), grpc::StatusCode::PERMISSION_DENIED);
    EXPECT_EQ(r.list_services_response().service_size(), 0);
    EXPECT_EQ(r.file_descriptor_response().file_descriptor_proto_size(), 0);
  }

  Write("default_rule { reflection: true }");
  Reload("event=authz_policy_reloaded");
  std::vector<reflection::ServerReflectionResponse> allowed = ListServices(channel_, &status);
  ASSERT_TRUE(status.ok()) << status.error_message();
  ASSERT_EQ(allowed.size(), 2u);
  std::vector<std::string> services;
  for (const auto& s : allowed[0].list_services_response().service()) services.push_back(s.name());
  EXPECT_THAT(services, ::testing::Contains("execd.v1.Executor"));
  EXPECT_GT(allowed[1].file_descriptor_response().file_descriptor_proto_size(), 0);
}

// With authentication, reflection under a policy needs a caller who proves who it is.
TEST_F(AuthzBinaryTest, ReflectionUnderAPolicyNeedsAnAuthenticatedCaller) {
  const std::string tokens = dir_.path() + "/tokens";
  std::ofstream(tokens) << "ops ops-token-0123456789abcdef\nci ci-token-0123456789abcdef\n";
  Write("rule { name: \"ops\" reflection: true } rule { name: \"ci\" }");
  Start({"--auth_tokens_file=" + tokens});
  grpc::Status status;
  std::vector<reflection::ServerReflectionResponse> answers = ListServices(channel_, &status);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED) << status.error_message();
  for (const auto& r : answers) EXPECT_TRUE(r.has_error_response());
  answers = ListServices(channel_, &status, "ci-token-0123456789abcdef");
  EXPECT_EQ(status.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(status.error_message(),
            "identity \"ci\": server reflection is not allowed by rule ci.reflection");
  answers = ListServices(channel_, &status, "ops-token-0123456789abcdef");
  ASSERT_TRUE(status.ok()) << status.error_message();
  ASSERT_EQ(answers.size(), 2u);
  EXPECT_GT(answers[0].list_services_response().service_size(), 0);
}

}  // namespace
}  // namespace execd
