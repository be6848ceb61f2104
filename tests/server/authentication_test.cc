// Authentication end to end, as an operator runs it: execd started as a process with TLS,
// mutual TLS, bearer tokens and a health port, over certificates made with openssl for the
// test; gRPC clients, execctl and execd-loadtest pointed at it.
#include <arpa/inet.h>
#include <grpcpp/grpcpp.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "execd/v1/execd.grpc.pb.h"
#include "gmock/gmock.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "gtest/gtest.h"
#include "reflection_client.grpc.pb.h"
#include "tests/support/certificates.h"
#include "tests/support/subprocess.h"

namespace execd {
namespace {

using grpc::health::v1::HealthCheckResponse;
using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::Not;
using testing::ProcessResult;
using testing::RunProcess;
using testing::ServerProcess;
using HealthStatus = HealthCheckResponse::ServingStatus;

constexpr char kAliceToken[] = "alice-0123456789abcdef";
constexpr char kBobToken[] = "bob-0123456789abcdef01";
constexpr char kWrongToken[] = "mallory-0123456789abcd";

// The certificates of tests/support/certificates.h, made once for the whole binary.
class Pki {
 public:
  static const Pki& Get() {
    static const Pki pki;
    return pki;
  }
  const absl::Status& status() const { return status_; }
  std::string Path(const std::string& file) const { return dir_.path() + "/" + file; }

 private:
  Pki() : dir_("authn_pki"), status_(testing::MakeTestCertificates(dir_.path())) {}
  testing::ScopedTempDir dir_;
  absl::Status status_;
};

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

void WriteFile(const std::string& path, const std::string& text) { std::ofstream(path) << text; }

int Count(const std::string& text, const std::string& what) {
  int n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

// The request log lines of `rpc`.
std::vector<std::string> LinesOf(const std::string& log, const std::string& rpc) {
  std::vector<std::string> lines;
  for (absl::string_view line : absl::StrSplit(log, '\n')) {
    if (absl::StrContains(line, absl::StrCat(" rpc=", rpc, " "))) lines.emplace_back(line);
  }
  return lines;
}

// A connection of its own to `target`: plaintext when `ca` is empty, else TLS trusting the
// CA `ca` and presenting the certificate of `client`, if any (names of Pki files).
std::shared_ptr<grpc::Channel> Connect(const std::string& target, const std::string& ca = "",
                                       const std::string& client = "") {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  if (ca.empty())
    return grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args);
  const Pki& pki = Pki::Get();
  grpc::SslCredentialsOptions options;
  options.pem_root_certs = ReadFile(pki.Path(ca + ".pem"));
  if (!client.empty()) {
    options.pem_cert_chain = ReadFile(pki.Path(client + ".pem"));
    options.pem_private_key = ReadFile(pki.Path(client + ".key"));
  }
  return grpc::CreateCustomChannel(target, grpc::SslCredentials(options), args);
}

void Prepare(grpc::ClientContext& context, const std::vector<std::string>& authorization) {
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(20)));
  for (const std::string& value : authorization) context.AddMetadata("authorization", value);
}

std::vector<std::string> Bearer(const std::string& token) { return {"Bearer " + token}; }

grpc::Status Ping(const std::shared_ptr<grpc::Channel>& channel,
                  const std::vector<std::string>& authorization = {}) {
  grpc::ClientContext context;
  Prepare(context, authorization);
  v1::PingResponse response;
  return v1::Executor::NewStub(channel)->Ping(&context, v1::PingRequest(), &response);
}

grpc::Status Execute(const std::shared_ptr<grpc::Channel>& channel,
                     const std::vector<std::string>& authorization,
                     const std::vector<std::string>& argv, v1::ExecuteResponse* response) {
  grpc::ClientContext context;
  Prepare(context, authorization);
  v1::ExecuteRequest request;
  for (const std::string& a : argv) request.add_argv(a);
  return v1::Executor::NewStub(channel)->Execute(&context, request, response);
}

grpc::Status ExecuteStream(const std::shared_ptr<grpc::Channel>& channel,
                           const std::vector<std::string>& authorization,
                           const std::vector<std::string>& argv) {
  grpc::ClientContext context;
  Prepare(context, authorization);
  v1::ExecuteRequest request;
  for (const std::string& a : argv) request.add_argv(a);
  auto reader = v1::Executor::NewStub(channel)->ExecuteStream(&context, request);
  v1::ExecuteEvent event;
  while (reader->Read(&event)) {
  }
  return reader->Finish();
}

// An ExecuteBatch of one item per argv; `item_codes` gets each item's status code.
grpc::Status ExecuteBatch(const std::shared_ptr<grpc::Channel>& channel,
                          const std::vector<std::string>& authorization,
                          const std::vector<std::vector<std::string>>& items,
                          std::vector<int>* item_codes = nullptr) {
  grpc::ClientContext context;
  Prepare(context, authorization);
  v1::BatchRequest batch;
  for (const auto& argv : items) {
    v1::ExecuteRequest* request = batch.add_requests();
    for (const std::string& a : argv) request->add_argv(a);
  }
  auto reader = v1::Executor::NewStub(channel)->ExecuteBatch(&context, batch);
  v1::BatchResult result;
  while (reader->Read(&result)) {
    if (item_codes != nullptr) item_codes->push_back(result.status_code());
  }
  return reader->Finish();
}

grpc::Status Attach(const std::shared_ptr<grpc::Channel>& channel,
                    const std::vector<std::string>& authorization,
                    const std::vector<std::string>& argv) {
  grpc::ClientContext context;
  Prepare(context, authorization);
  auto stream = v1::Executor::NewStub(channel)->Attach(&context);
  v1::AttachRequest start;
  for (const std::string& a : argv) start.mutable_start()->add_argv(a);
  v1::AttachRequest close;
  close.mutable_close_stdin();
  if (stream->Write(start)) stream->Write(close);
  stream->WritesDone();
  v1::AttachEvent event;
  while (stream->Read(&event)) {
  }
  return stream->Finish();
}

absl::StatusOr<HealthStatus> Health(const std::shared_ptr<grpc::Channel>& channel,
                                    const std::string& service = "") {
  grpc::ClientContext context;
  Prepare(context, {});
  grpc::health::v1::HealthCheckRequest request;
  request.set_service(service);
  grpc::health::v1::HealthCheckResponse response;
  grpc::Status status =
      grpc::health::v1::Health::NewStub(channel)->Check(&context, request, &response);
  if (!status.ok()) {
    return absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
  }
  return response.status();
}

std::string Target(int port) { return absl::StrCat("127.0.0.1:", port); }

// The HTTP status of GET /metrics on `port`, with basic auth `user_password` ("USER:PASSWORD")
// when not empty; 0 when there is no answer.
int MetricsStatus(int port, const std::string& user_password = "") {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::string response;
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
    std::string get = "GET /metrics HTTP/1.0\r\nHost: localhost\r\n";
    if (!user_password.empty()) {
      absl::StrAppend(&get, "Authorization: Basic ", absl::Base64Escape(user_password), "\r\n");
    }
    get += "\r\n";
    if (write(fd, get.data(), get.size()) == static_cast<ssize_t>(get.size())) {
      char buf[65536];
      ssize_t n;
      while ((n = read(fd, buf, sizeof(buf))) > 0) response.append(buf, static_cast<size_t>(n));
    }
  }
  close(fd);
  // "HTTP/1.1 200 OK"
  const std::vector<std::string> words = absl::StrSplit(response, ' ');
  int code = 0;
  if (words.size() > 1) (void)absl::SimpleAtoi(words[1], &code);
  return code;
}

class AuthenticationTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(pki_.status().ok()) << pki_.status(); }

  // Flags for TLS with the test's server certificate, and a health port.
  std::vector<std::string> TlsFlags() const {
    return {"--tls_cert=" + pki_.Path("server.pem"), "--tls_key=" + pki_.Path("server.key"),
            "--health_listen=127.0.0.1:0"};
  }
  // A tokens file for alice and bob.
  std::string TokensFile() {
    const std::string path = dir_.path() + "/tokens";
    WriteFile(path, absl::StrCat("# test callers\nalice ", kAliceToken, "\nbob ", kBobToken, "\n"));
    return path;
  }

  ProcessResult Execctl(const ServerProcess& server, std::vector<std::string> args,
                        const std::vector<std::string>& env = {}) {
    args.insert(args.begin(), {EXECCTL_BIN, "--target=" + server.target()});
    return RunProcess(args, "", absl::Seconds(30), env);
  }

  const Pki& pki_ = Pki::Get();
  testing::ScopedTempDir dir_{"authn"};
};

TEST_F(AuthenticationTest, WithoutAuthenticationEveryCallerIsAnonymous) {
  ServerProcess server(EXECD_BIN, {});
  ASSERT_TRUE(server.ok()) << server.log();
  ProcessResult r = Execctl(server, {"run", "--request_id=anon", "--", "/bin/true"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  ASSERT_TRUE(server.WaitForLog("request_id=\"anon\"", absl::Seconds(10)));
  EXPECT_THAT(LinesOf(server.log(), "Execute").back(), HasSubstr(" identity=\"anonymous\" "));
  EXPECT_THAT(server.log(), HasSubstr("event=authentication mode=none tls=off"));
}

TEST_F(AuthenticationTest, TokensRightWrongAndMissing) {
  std::vector<std::string> flags = TlsFlags();
  flags.push_back("--auth_tokens_file=" + TokensFile());
  ServerProcess server(EXECD_BIN, flags);
  ASSERT_TRUE(server.ok()) << server.log();
  auto tls = Connect(server.target(), "ca");

  EXPECT_TRUE(Ping(tls, Bearer(kAliceToken)).ok());
  EXPECT_TRUE(Ping(tls, {absl::StrCat("bearer ", kBobToken)}).ok());
  EXPECT_TRUE(Ping(tls, {absl::StrCat("BEARER    ", kBobToken, "  ")}).ok());

  grpc::Status missing = Ping(tls);
  EXPECT_EQ(missing.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_THAT(missing.error_message(),
              AllOf(HasSubstr("no credentials"), HasSubstr("authorization: Bearer TOKEN")));
  grpc::Status wrong = Ping(tls, Bearer(kWrongToken));
  EXPECT_EQ(wrong.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_THAT(wrong.error_message(), HasSubstr("not one this server accepts"));

  const std::string alice = kAliceToken;
  for (const std::vector<std::string>& refused :
       std::vector<std::vector<std::string>>{Bearer(alice.substr(0, alice.size() - 1)),
                                             Bearer(alice + "x"),
                                             {alice},
                                             {"Basic " + absl::Base64Escape("alice:" + alice)},
                                             {"Bearer"},
                                             {"Bearer " + alice + " " + alice},
                                             {"Bearer " + alice, "Bearer " + alice},
                                             Bearer(std::string(8 << 10, 'a'))}) {
    grpc::Status status = Ping(tls, refused);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED)
        << refused.front().substr(0, 40) << ": " << status.error_message();
  }
  // Past the server's metadata limit gRPC refuses the call itself and drops that
  // connection; other callers' connections go on.
  auto other = Connect(server.target(), "ca");
  ASSERT_TRUE(Ping(other, Bearer(kBobToken)).ok());
  EXPECT_EQ(Ping(tls, Bearer(std::string(20 << 10, 'a'))).error_code(),
            grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_TRUE(Ping(other, Bearer(kBobToken)).ok());

  // The TLS port speaks nothing else.
  EXPECT_EQ(Ping(Connect(server.target()), Bearer(kAliceToken)).error_code(),
            grpc::StatusCode::UNAVAILABLE);
  // Refusals are logged, without the token.
  ASSERT_TRUE(testing::WaitFor([&] { return Count(server.log(), "status=UNAUTHENTICATED") >= 10; },
                               absl::Seconds(10)))
      << server.log();
  EXPECT_THAT(server.log(), AllOf(Not(HasSubstr(kAliceToken)), Not(HasSubstr(kWrongToken)),
                                  Not(HasSubstr(alice.substr(0, alice.size() - 1)))));
}

TEST_F(AuthenticationTest, AnUnauthenticatedCallDoesNoWork) {
  std::vector<std::string> flags = TlsFlags();
  flags.push_back("--auth_tokens_file=" + TokensFile());
  ServerProcess server(EXECD_BIN, flags);
  ASSERT_TRUE(server.ok()) << server.log();
  auto tls = Connect(server.target(), "ca");
  auto touch = [&](const std::string& name) {
    return std::vector<std::string>{"/usr/bin/touch", dir_.path() + "/" + name};
  };
  v1::ExecuteResponse response;
  EXPECT_EQ(Execute(tls, Bearer(kWrongToken), touch("execute"), &response).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(ExecuteStream(tls, {}, touch("stream")).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  std::vector<int> items;
  EXPECT_EQ(ExecuteBatch(tls, Bearer(kWrongToken), {touch("batch1"), touch("batch2")}, &items)
                .error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_TRUE(items.empty());
  EXPECT_EQ(Attach(tls, {"Basic x"}, touch("attach")).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);

  // A call that is let in runs, and after it the refused ones have still done nothing.
  ASSERT_TRUE(Execute(tls, Bearer(kAliceToken), touch("alice"), &response).ok());
  EXPECT_EQ(access((dir_.path() + "/alice").c_str(), F_OK), 0);
  for (const char* name : {"execute", "stream", "batch1", "batch2", "attach"}) {
    EXPECT_NE(access((dir_.path() + "/" + name).c_str(), F_OK), 0) << name;
  }
  grpc::ClientContext context;
  Prepare(context, Bearer(kAliceToken));
  v1::StatusResponse status;
  ASSERT_TRUE(v1::Executor::NewStub(tls)->GetStatus(&context, v1::StatusRequest(), &status).ok());
  EXPECT_EQ(status.running(), 0);
  EXPECT_EQ(status.queued(), 0);
  EXPECT_EQ(status.memory_in_use_bytes(), 0);
  EXPECT_EQ(Count(server.log(), "status=UNAUTHENTICATED"), 4) << server.log();
}

TEST_F(AuthenticationTest, TheIdentityIsInTheLogLineOfEveryKindOfCall) {
  // Tokens without TLS: allowed on loopback.
  ServerProcess server(EXECD_BIN, {"--auth_tokens_file=" + TokensFile()});
  ASSERT_TRUE(server.ok()) << server.log();
  auto channel = Connect(server.target());
  v1::ExecuteResponse response;
  ASSERT_TRUE(Execute(channel, Bearer(kBobToken), {"/bin/true"}, &response).ok());
  ASSERT_TRUE(ExecuteStream(channel, Bearer(kBobToken), {"/bin/true"}).ok());
  ASSERT_TRUE(ExecuteBatch(channel, Bearer(kAliceToken), {{"/bin/true"}, {"/bin/echo"}}).ok());
  ASSERT_TRUE(Attach(channel, Bearer(kBobToken), {"/bin/cat"}).ok());
  ASSERT_TRUE(testing::WaitFor([&] { return LinesOf(server.log(), "Attach").size() == 1; },
                               absl::Seconds(10)));
  const std::string log = server.log();
  for (const char* rpc : {"Execute", "ExecuteStream", "Attach"}) {
    ASSERT_EQ(LinesOf(log, rpc).size(), 1u) << rpc << "\n" << log;
    EXPECT_THAT(LinesOf(log, rpc)[0], HasSubstr(" identity=\"bob\" ")) << rpc;
  }
  ASSERT_EQ(LinesOf(log, "ExecuteBatch").size(), 2u) << log;
  for (const std::string& line : LinesOf(log, "ExecuteBatch")) {
    EXPECT_THAT(line, HasSubstr(" identity=\"alice\" "));
  }
}

TEST_F(AuthenticationTest, SighupRevokesATokenAndKeepsTheOldFileWhenTheNewOneIsBad) {
  const std::string tokens = TokensFile();
  ServerProcess server(EXECD_BIN, {"--auth_tokens_file=" + tokens});
  ASSERT_TRUE(server.ok()) << server.log();
  auto channel = Connect(server.target());
  ASSERT_TRUE(Ping(channel, Bearer(kBobToken)).ok());

  WriteFile(tokens, absl::StrCat("alice ", kAliceToken, "\n"));
  kill(server.pid(), SIGHUP);
  ASSERT_TRUE(server.WaitForLog("event=auth_reloaded tokens=1", absl::Seconds(10))) << server.log();
  EXPECT_EQ(Ping(channel, Bearer(kBobToken)).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_TRUE(Ping(channel, Bearer(kAliceToken)).ok());

  // A duplicate, then a line without its token: each reload fails, saying where, and the
  // file that was good stays in force.
  int failures = 0;
  for (const std::string& bad :
       {absl::StrCat("alice ", kAliceToken, "\nbob ", kBobToken, "\nbob ", kWrongToken, "\n"),
        absl::StrCat("alice ", kAliceToken, "\nbob\n")}) {
    WriteFile(tokens, bad);
    kill(server.pid(), SIGHUP);
    ++failures;
    ASSERT_TRUE(testing::WaitFor(
        [&] { return Count(server.log(), "event=auth_reload_failed") == failures; },
        absl::Seconds(10)))
        << server.log();
    EXPECT_TRUE(Ping(channel, Bearer(kAliceToken)).ok());
    EXPECT_EQ(Ping(channel, Bearer(kBobToken)).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  }
  EXPECT_THAT(server.log(), AllOf(HasSubstr(tokens + ":3: IDENTITY \\\"bob\\\" again"),
                                  HasSubstr(tokens + ":2: want `IDENTITY TOKEN`, got 1 field")));
  EXPECT_THAT(server.log(), Not(HasSubstr(kWrongToken)));
}

TEST_F(AuthenticationTest, MutualTlsNamesTheCallerByItsCertificate) {
  std::vector<std::string> flags = TlsFlags();
  flags.push_back("--tls_client_ca=" + pki_.Path("ca.pem"));
  ServerProcess server(EXECD_BIN, flags);
  ASSERT_TRUE(server.ok()) << server.log();
  v1::ExecuteResponse response;
  // Without --auth_tokens_file a token is not looked at.
  ASSERT_TRUE(Execute(Connect(server.target(), "ca", "alice"), Bearer(kWrongToken), {"/bin/true"},
                      &response)
                  .ok());
  ASSERT_TRUE(server.WaitForLog("identity=\"alice\"", absl::Seconds(10))) << server.log();

  for (const char* refused : {"mallory", "expired", ""}) {
    EXPECT_EQ(Ping(Connect(server.target(), "ca", refused)).error_code(),
              grpc::StatusCode::UNAVAILABLE)
        << refused;
  }
  // execctl presents a certificate with --tls_cert and --tls_key.
  const std::vector<std::string> tls = {"--tls_ca=" + pki_.Path("ca.pem"),
                                        "--tls_cert=" + pki_.Path("bob.pem"),
                                        "--tls_key=" + pki_.Path("bob.key")};
  std::vector<std::string> args = tls;
  args.insert(args.end(), {"run", "--request_id=by-bob", "--", "/bin/echo", "hello"});
  ProcessResult r = Execctl(server, args);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "hello\n");
  ASSERT_TRUE(server.WaitForLog("request_id=\"by-bob\"", absl::Seconds(10)));
  EXPECT_THAT(LinesOf(server.log(), "Execute").back(), HasSubstr(" identity=\"bob\" "));
  r = Execctl(server, {"--tls_ca=" + pki_.Path("ca.pem"), "ping"});
  EXPECT_EQ(r.exit_code, 125);
  EXPECT_THAT(r.err, HasSubstr("--tls_cert and --tls_key"));
  r = Execctl(server,
              {"--tls_ca=" + pki_.Path("ca.pem"), "--tls_cert=" + pki_.Path("bob.pem"), "ping"});
  EXPECT_EQ(r.exit_code, 125);
  EXPECT_THAT(r.err, HasSubstr("go together"));
}

TEST_F(AuthenticationTest, WithMutualTlsAndTokensATokenNamesTheCallerElseTheCertificate) {
  std::vector<std::string> flags = TlsFlags();
  flags.push_back("--tls_client_ca=" + pki_.Path("ca.pem"));
  flags.push_back("--auth_tokens_file=" + TokensFile());
  ServerProcess server(EXECD_BIN, flags);
  ASSERT_TRUE(server.ok()) << server.log();
  auto alice = Connect(server.target(), "ca", "alice");
  v1::ExecuteResponse response;
  ASSERT_TRUE(Execute(alice, Bearer(kBobToken), {"/bin/true"}, &response).ok());
  ASSERT_TRUE(Execute(alice, {}, {"/bin/true"}, &response).ok());
  EXPECT_EQ(Execute(alice, Bearer(kWrongToken), {"/bin/true"}, &response).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  ASSERT_TRUE(testing::WaitFor([&] { return LinesOf(server.log(), "Execute").size() == 3; },
                               absl::Seconds(10)));
  const std::vector<std::string> lines = LinesOf(server.log(), "Execute");
  EXPECT_THAT(lines[0], HasSubstr(" identity=\"bob\" "));
  EXPECT_THAT(lines[1], HasSubstr(" identity=\"alice\" "));
  EXPECT_THAT(lines[2], AllOf(HasSubstr(" identity=\"\" "), HasSubstr("status=UNAUTHENTICATED")));
}

TEST_F(AuthenticationTest, SighupSwapsCertificatesAndKeepsThemWhenTheNewOnesAreBad) {
  const std::string cert = dir_.path() + "/cert.pem";
  const std::string key = dir_.path() + "/key.pem";
  const std::string client_ca = dir_.path() + "/clients.pem";
  WriteFile(cert, ReadFile(pki_.Path("server.pem")));
  WriteFile(key, ReadFile(pki_.Path("server.key")));
  WriteFile(client_ca, ReadFile(pki_.Path("ca.pem")));
  ServerProcess server(EXECD_BIN, {"--tls_cert=" + cert, "--tls_key=" + key,
                                   "--tls_client_ca=" + client_ca, "--health_listen=127.0.0.1:0"});
  ASSERT_TRUE(server.ok()) << server.log();
  ASSERT_TRUE(Ping(Connect(server.target(), "ca", "alice")).ok());

  // A certificate with another certificate's key: refused, the old pair stays.
  WriteFile(cert, ReadFile(pki_.Path("other_server.pem")));
  kill(server.pid(), SIGHUP);
  ASSERT_TRUE(server.WaitForLog("event=auth_reload_failed", absl::Seconds(10))) << server.log();
  EXPECT_THAT(server.log(), HasSubstr("is not the key of the certificate"));
  EXPECT_TRUE(Ping(Connect(server.target(), "ca", "alice")).ok());

  // A matching pair from another CA, and that CA for clients: new connections take it up
  // within gRPC's refresh interval.
  WriteFile(key, ReadFile(pki_.Path("other_server.key")));
  WriteFile(client_ca, ReadFile(pki_.Path("other_ca.pem")));
  kill(server.pid(), SIGHUP);
  ASSERT_TRUE(server.WaitForLog("event=auth_reloaded", absl::Seconds(10))) << server.log();
  EXPECT_THAT(server.log(), HasSubstr("tls_subject=\"CN=other_server\""));
  EXPECT_TRUE(
      testing::WaitFor([&] { return Ping(Connect(server.target(), "other_ca", "mallory")).ok(); },
                       absl::Seconds(10)));
  EXPECT_FALSE(Ping(Connect(server.target(), "ca", "alice")).ok());
  EXPECT_FALSE(Ping(Connect(server.target(), "other_ca", "alice")).ok());
}

TEST_F(AuthenticationTest, TheHealthPortServesOnlyHealthInPlaintext) {
  std::vector<std::string> flags = TlsFlags();
  flags.push_back("--auth_tokens_file=" + TokensFile());
  ServerProcess server(EXECD_BIN, flags);
  ASSERT_TRUE(server.ok()) << server.log();
  ASSERT_GT(server.health_port(), 0);
  auto health = Connect(Target(server.health_port()));
  EXPECT_EQ(Health(health).value_or(HealthCheckResponse::UNKNOWN), HealthCheckResponse::SERVING);
  EXPECT_EQ(Health(health, "execd.v1.Executor").value_or(HealthCheckResponse::UNKNOWN),
            HealthCheckResponse::SERVING);
  EXPECT_EQ(Ping(health, Bearer(kAliceToken)).error_code(), grpc::StatusCode::UNIMPLEMENTED);
  {
    grpc::ClientContext context;
    Prepare(context, {});
    auto stream =
        grpc::reflection::v1alpha::ServerReflection::NewStub(health)->ServerReflectionInfo(
            &context);
    grpc::reflection::v1alpha::ServerReflectionRequest request;
    request.set_list_services("");
    stream->Write(request);
    stream->WritesDone();
    grpc::reflection::v1alpha::ServerReflectionResponse response;
    while (stream->Read(&response)) {
    }
    EXPECT_EQ(stream->Finish().error_code(), grpc::StatusCode::UNIMPLEMENTED);
  }
  // The main port needs TLS, even for health.
  EXPECT_FALSE(Health(Connect(server.target())).ok());
  EXPECT_EQ(Health(Connect(server.target(), "ca")).value_or(HealthCheckResponse::UNKNOWN),
            HealthCheckResponse::SERVING);
  ProcessResult r = RunProcess({EXECCTL_BIN, "--target=" + Target(server.health_port()), "health"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "SERVING\n");
}

TEST_F(AuthenticationTest, TheHealthPortTurnsNotServingWhileTheServerDrains) {
  std::vector<std::string> flags = TlsFlags();
  flags.insert(flags.end(), {"--auth_tokens_file=" + TokensFile(), "--drain_timeout=3s"});
  ServerProcess server(EXECD_BIN, flags);
  ASSERT_TRUE(server.ok()) << server.log();
  auto tls = Connect(server.target(), "ca");
  grpc::Status long_call;
  v1::ExecuteResponse long_response;
  std::thread caller([&] {
    long_call = Execute(tls, Bearer(kAliceToken), {"/bin/sleep", "30"}, &long_response);
  });
  ASSERT_TRUE(testing::WaitFor(
      [&] {
        grpc::ClientContext context;
        Prepare(context, Bearer(kAliceToken));
        v1::StatusResponse status;
        return v1::Executor::NewStub(tls)->GetStatus(&context, v1::StatusRequest(), &status).ok() &&
               status.running() == 1;
      },
      absl::Seconds(10)));
  auto health = Connect(Target(server.health_port()));
  EXPECT_EQ(Health(health).value_or(HealthCheckResponse::UNKNOWN), HealthCheckResponse::SERVING);
  kill(server.pid(), SIGTERM);
  EXPECT_TRUE(testing::WaitFor(
      [&] {
        return Health(health).value_or(HealthCheckResponse::UNKNOWN) ==
                   HealthCheckResponse::NOT_SERVING &&
               Health(health, "execd.v1.Executor").value_or(HealthCheckResponse::UNKNOWN) ==
                   HealthCheckResponse::NOT_SERVING;
      },
      absl::Seconds(5)))
      << server.log();
  caller.join();
  EXPECT_TRUE(long_call.ok()) << long_call.error_message();
  EXPECT_EQ(long_response.termination(), v1::CANCELLED);  // Killed at the drain's end.
  EXPECT_TRUE(server.WaitForLog("event=stopped", absl::Seconds(10))) << server.log();
}

TEST_F(AuthenticationTest, MetricsTakeBasicAuth) {
  const std::string users = dir_.path() + "/metrics_users";
  WriteFile(users, absl::StrCat("prometheus ", kAliceToken, "\n"));
  // Reachable from the network, which the password allows without --insecure.
  ServerProcess server(EXECD_BIN, {"--metrics_listen=0.0.0.0:0", "--metrics_auth_file=" + users});
  ASSERT_TRUE(server.ok()) << server.log();
  EXPECT_THAT(server.log(), Not(HasSubstr("event=insecure")));
  EXPECT_EQ(MetricsStatus(server.metrics_port()), 401);
  EXPECT_EQ(MetricsStatus(server.metrics_port(), absl::StrCat("prometheus:", kBobToken)), 401);
  EXPECT_EQ(MetricsStatus(server.metrics_port(), absl::StrCat("grafana:", kAliceToken)), 401);
  EXPECT_EQ(MetricsStatus(server.metrics_port(), absl::StrCat("prometheus:", kAliceToken)), 200);

  WriteFile(users, absl::StrCat("prometheus ", kBobToken, "\n"));
  kill(server.pid(), SIGHUP);
  ASSERT_TRUE(server.WaitForLog("event=auth_reloaded", absl::Seconds(10))) << server.log();
  EXPECT_EQ(MetricsStatus(server.metrics_port(), absl::StrCat("prometheus:", kAliceToken)), 401);
  EXPECT_EQ(MetricsStatus(server.metrics_port(), absl::StrCat("prometheus:", kBobToken)), 200);
}

TEST_F(AuthenticationTest, ClientsTakeATokenFromAFileOrTheEnvironment) {
  std::vector<std::string> flags = TlsFlags();
  flags.push_back("--auth_tokens_file=" + TokensFile());
  ServerProcess server(EXECD_BIN, flags);
  ASSERT_TRUE(server.ok()) << server.log();
  const std::string ca = "--tls_ca=" + pki_.Path("ca.pem");
  const std::string token_file = dir_.path() + "/alice.token";
  WriteFile(token_file, absl::StrCat(kAliceToken, "\n"));
  const std::string wrong_file = dir_.path() + "/wrong.token";
  WriteFile(wrong_file, kWrongToken);

  ProcessResult r = Execctl(
      server, {ca, "--auth_token_file=" + token_file, "run", "--", "/bin/echo", "from a file"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "from a file\n");
  r = Execctl(server, {ca, "run", "--", "/bin/echo", "from the environment"},
              {absl::StrCat("EXECD_TOKEN=", kBobToken)});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "from the environment\n");
  r = Execctl(server, {ca, "--auth_token_file=" + wrong_file, "run", "--", "/bin/true"});
  EXPECT_EQ(r.exit_code, 125);
  EXPECT_THAT(r.err, HasSubstr("UNAUTHENTICATED"));
  r = Execctl(server, {ca, "run", "--", "/bin/true"});
  EXPECT_EQ(r.exit_code, 125);
  EXPECT_THAT(r.err, HasSubstr("no credentials"));
  r = Execctl(server, {"--auth_token_file=" + token_file, "ping"});  // No TLS.
  EXPECT_EQ(r.exit_code, 125);
  EXPECT_THAT(r.err, HasSubstr("does it want TLS"));
  r = Execctl(server, {ca, "--auth_token_file=" + dir_.path() + "/none", "ping"});
  EXPECT_EQ(r.exit_code, 125);
  EXPECT_THAT(r.err, HasSubstr("cannot read it"));

  r = RunProcess({LOADTEST_BIN, "--target=" + server.target(), ca,
                  "--auth_token_file=" + token_file, "--requests=4", "--concurrency=2", "--",
                  "/bin/true"});
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_THAT(r.out, HasSubstr("succeeded=4"));
  r = RunProcess({LOADTEST_BIN, "--target=" + server.target(), ca, "--requests=2", "--ping"});
  EXPECT_NE(r.exit_code, 0) << r.out;
}

TEST_F(AuthenticationTest, ReachableListenersNeedAuthenticationOrInsecure) {
  struct Case {
    std::vector<std::string> flags;
    std::vector<std::string> said;
  };
  const std::string tokens = "--auth_tokens_file=" + TokensFile();
  const std::string cert = "--tls_cert=" + pki_.Path("server.pem");
  const std::string key = "--tls_key=" + pki_.Path("server.key");
  for (const Case& c : std::vector<Case>{
           {{"--listen=0.0.0.0:0"}, {"--listen=0.0.0.0:0 is reachable", "--insecure"}},
           {{"--listen=[::]:0"}, {"--listen=[::]:0 is reachable"}},
           {{"--listen=0.0.0.0:0", tokens}, {"bearer tokens but no TLS", "--tls_cert"}},
           {{"--listen=127.0.0.1:0", "--metrics_listen=0.0.0.0:0"},
            {"--metrics_listen=0.0.0.0:0", "--metrics_auth_file"}},
           {{"--listen=127.0.0.1:0", cert, key}, {"--health_listen"}},
           {{"--listen=127.0.0.1:0", cert}, {"--tls_cert and --tls_key go together"}},
           {{"--listen=127.0.0.1:0", "--tls_client_ca=" + pki_.Path("ca.pem")},
            {"--tls_client_ca", "--tls_cert"}},
           {{"--listen=127.0.0.1:0", "--auth_tokens_file=" + dir_.path() + "/none"},
            {"--auth_tokens_file=", "cannot read it"}},
           {{"--listen=127.0.0.1:0", "--tls_cert=" + pki_.Path("expired.pem"),
             "--tls_key=" + pki_.Path("expired.key"), "--health_listen=127.0.0.1:0"},
            {"expired"}},
       }) {
    std::vector<std::string> argv = {EXECD_BIN, "--metrics_listen=127.0.0.1:0"};
    argv.insert(argv.end(), c.flags.begin(), c.flags.end());
    ProcessResult r = RunProcess(argv, "", absl::Seconds(20));
    EXPECT_EQ(r.exit_code, 2) << absl::StrJoin(c.flags, " ") << "\n" << r.err;
    for (const std::string& said : c.said) EXPECT_THAT(r.err, HasSubstr(said));
  }

  ServerProcess insecure(EXECD_BIN, {"--listen=0.0.0.0:0", "--insecure"});
  ASSERT_TRUE(insecure.ok()) << insecure.log();
  EXPECT_THAT(insecure.log(),
              HasSubstr("event=insecure level=warning listener=listen addr=0.0.0.0:0"));
  EXPECT_TRUE(Ping(Connect(insecure.target())).ok());

  std::vector<std::string> flags = TlsFlags();
  flags.insert(flags.end(), {"--listen=0.0.0.0:0", tokens});
  ServerProcess secure(EXECD_BIN, flags);
  ASSERT_TRUE(secure.ok()) << secure.log();
  EXPECT_THAT(secure.log(), Not(HasSubstr("event=insecure")));
  EXPECT_THAT(secure.log(), HasSubstr("event=authentication mode=tokens tls=on tokens=2"));
}

}  // namespace
}  // namespace execd
