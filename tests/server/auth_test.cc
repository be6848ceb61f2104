// The Authenticator's parts without a server: the token and password files, the bearer
// header, which addresses count as local, the TLS files' checks, and all-or-nothing reloads.
#include "server/auth.h"

#include <fstream>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/tls.h"
#include "tests/support/certificates.h"
#include "tests/support/subprocess.h"

namespace execd::server {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::Not;

constexpr char kAlice[] = "alice-token-0123456789";
constexpr char kBob[] = "bob-token-0123456789ab";

absl::StatusOr<SecretTable> Tokens(absl::string_view text) {
  return SecretTable::Parse(text, "tokens", SecretTable::Kind::kTokens);
}

TEST(SecretTable, SkipsCommentsAndBlankLinesAndFindsEachIdentitysToken) {
  auto table = Tokens(absl::StrCat("# who may call\n\n  alice ", kAlice, "  \r\n\tbob\t", kBob,
                                   "\n   # indented comment\n"));
  ASSERT_TRUE(table.ok()) << table.status();
  EXPECT_EQ(table->size(), 2u);
  EXPECT_EQ(table->NameOf(kAlice), "alice");
  EXPECT_EQ(table->NameOf(kBob), "bob");
}

TEST(SecretTable, FindsNothingForAWrongPrefixOrLongerToken) {
  auto table = Tokens(absl::StrCat("alice ", kAlice, "\n"));
  ASSERT_TRUE(table.ok()) << table.status();
  const std::string token = kAlice;
  EXPECT_EQ(table->NameOf(token.substr(0, token.size() - 1)), std::nullopt);
  EXPECT_EQ(table->NameOf(token + "x"), std::nullopt);
  EXPECT_EQ(table->NameOf(""), std::nullopt);
  EXPECT_EQ(table->NameOf("alice"), std::nullopt);
}

TEST(SecretTable, RefusesADuplicateIdentityWithBothLineNumbers) {
  auto table = Tokens(absl::StrCat("alice ", kAlice, "\n# x\nalice ", kBob, "\n"));
  ASSERT_FALSE(table.ok());
  EXPECT_THAT(table.status().message(),
              AllOf(HasSubstr("tokens:3:"), HasSubstr("\"alice\" again (first on line 1)"),
                    Not(HasSubstr(kBob))));
}

TEST(SecretTable, RefusesADuplicateTokenNamingBothIdentitiesNotTheToken) {
  auto table = Tokens(absl::StrCat("alice ", kAlice, "\nbob ", kAlice, "\n"));
  ASSERT_FALSE(table.ok());
  EXPECT_THAT(table.status().message(),
              AllOf(HasSubstr("tokens:2:"), HasSubstr("\"bob\""), HasSubstr("\"alice\" (line 1)"),
                    Not(HasSubstr(kAlice))));
}

TEST(SecretTable, RefusesLinesThatAreNotTwoFields) {
  auto missing = Tokens(absl::StrCat("alice ", kAlice, "\nbob\n"));
  ASSERT_FALSE(missing.ok());
  EXPECT_THAT(missing.status().message(),
              HasSubstr("tokens:2: want `IDENTITY TOKEN`, got 1 field"));
  auto three = Tokens(absl::StrCat("alice ", kAlice, " extra\n"));
  ASSERT_FALSE(three.ok());
  EXPECT_THAT(three.status().message(), AllOf(HasSubstr("got 3 fields"), Not(HasSubstr(kAlice))));
}

TEST(SecretTable, RefusesShortTokensTheReservedIdentityAndAnEmptyFile) {
  EXPECT_THAT(
      Tokens("alice short\n").status().message(),
      AllOf(HasSubstr("must be 16 to 4096"), HasSubstr("openssl rand"), Not(HasSubstr("short"))));
  EXPECT_THAT(Tokens(absl::StrCat("anonymous ", kAlice)).status().message(), HasSubstr("reserved"));
  EXPECT_THAT(Tokens("# nobody\n\n").status().message(), HasSubstr("no `IDENTITY TOKEN` line"));
  EXPECT_THAT(Tokens(absl::StrCat("al\x01ice ", kAlice)).status().message(),
              HasSubstr("printable ASCII"));
}

TEST(SecretTable, MetricsUsersMatchOnlyTheirOwnPassword) {
  auto users = SecretTable::Parse(absl::StrCat("prometheus ", kAlice, "\ngrafana ", kBob, "\n"),
                                  "users", SecretTable::Kind::kMetricsUsers);
  ASSERT_TRUE(users.ok()) << users.status();
  EXPECT_TRUE(users->Matches("prometheus", kAlice));
  EXPECT_TRUE(users->Matches("grafana", kBob));
  EXPECT_FALSE(users->Matches("prometheus", kBob));
  EXPECT_FALSE(users->Matches("nobody", kAlice));
  EXPECT_FALSE(users->Matches("", ""));
  EXPECT_THAT(
      SecretTable::Parse(absl::StrCat("a:b ", kAlice), "users", SecretTable::Kind::kMetricsUsers)
          .status()
          .message(),
      HasSubstr("':'"));
}

TEST(BearerToken, TakesTheSchemeInAnyCaseAndSpacesAroundTheToken) {
  for (const char* header : {"Bearer tok", "bearer tok", "BEARER tok", "Bearer    tok",
                             "  Bearer\ttok  ", "Bearer tok\r\n"}) {
    auto token = BearerToken(header);
    ASSERT_TRUE(token.ok()) << header;
    EXPECT_EQ(*token, "tok") << header;
  }
}

TEST(BearerToken, RefusesOtherSchemesNoTokenOrTwoWordsWithoutQuotingThem) {
  for (const char* header : {"", "Bearer", "Bearer   ", "Bearertok", "Basic dXNlcjpwYXNz", "tok",
                             "Bearer tok extra", "Bearer, tok"}) {
    auto token = BearerToken(header);
    ASSERT_FALSE(token.ok()) << header;
    EXPECT_THAT(token.status().message(), HasSubstr("`Bearer TOKEN`"));
    EXPECT_THAT(token.status().message(), Not(HasSubstr("dXNlcjpwYXNz")));
  }
}

TEST(OnlyLocallyReachable, LoopbackAndUnixSocketsOnly) {
  for (const char* local :
       {"127.0.0.1:50051", "127.1.2.3:1", "localhost:50051", "LocalHost:1", "[::1]:50051",
        "[::ffff:127.0.0.1]:1", "unix:/run/execd.sock", "unix-abstract:execd"}) {
    EXPECT_TRUE(OnlyLocallyReachable(local)) << local;
  }
  for (const char* open :
       {"0.0.0.0:50051", "[::]:50051", ":50051", "10.0.0.5:50051", "128.0.0.1:1",
        "execd.example.com:50051", "ipv4:127.0.0.1:1", "[::ffff:10.0.0.1]:1", "50051"}) {
    EXPECT_FALSE(OnlyLocallyReachable(open)) << open;
  }
}

class TlsFiles : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new testing::ScopedTempDir("auth_test_pki");
    status_ = new absl::Status(testing::MakeTestCertificates(dir_->path()));
  }
  static void TearDownTestSuite() {
    delete dir_;
    delete status_;
  }
  void SetUp() override { ASSERT_TRUE(status_->ok()) << *status_; }
  static std::string Path(const std::string& file) { return dir_->path() + "/" + file; }

  static testing::ScopedTempDir* dir_;
  static absl::Status* status_;
};
testing::ScopedTempDir* TlsFiles::dir_ = nullptr;
absl::Status* TlsFiles::status_ = nullptr;

TEST_F(TlsFiles, AcceptAMatchingPairAndDescribeIt) {
  auto material = ServerTls::Read({Path("server.pem"), Path("server.key"), Path("ca.pem")});
  ASSERT_TRUE(material.ok()) << material.status();
  EXPECT_THAT(material->summary, AllOf(HasSubstr("tls_subject=\"CN=server\""),
                                       HasSubstr("tls_not_after="), HasSubstr("tls_client_cas=1")));
  EXPECT_THAT(material->identity, AllOf(HasSubstr("PRIVATE KEY"), HasSubstr("CERTIFICATE")));
}

TEST_F(TlsFiles, RefuseAKeyOfAnotherCertificate) {
  auto material = ServerTls::Read({Path("server.pem"), Path("other_server.key"), ""});
  ASSERT_FALSE(material.ok());
  EXPECT_THAT(material.status().message(),
              AllOf(HasSubstr("--tls_key="), HasSubstr("is not the key of the certificate")));
}

TEST_F(TlsFiles, RefuseAnExpiredCertificate) {
  auto material = ServerTls::Read({Path("expired.pem"), Path("expired.key"), ""});
  ASSERT_FALSE(material.ok());
  EXPECT_THAT(material.status().message(), AllOf(HasSubstr("--tls_cert="), HasSubstr("expired")));
}

TEST_F(TlsFiles, RefuseAnEncryptedKeyRatherThanPromptForItsPassphrase) {
  auto material = ServerTls::Read({Path("server.pem"), Path("encrypted.key"), ""});
  ASSERT_FALSE(material.ok());
  EXPECT_THAT(material.status().message(), HasSubstr("encrypted"));
}

TEST_F(TlsFiles, RefuseFilesThatAreMissingOrNotPem) {
  auto missing = ServerTls::Read({Path("nothing.pem"), Path("server.key"), ""});
  EXPECT_THAT(missing.status().message(), HasSubstr("cannot read it"));
  std::ofstream(Path("garbage.pem")) << "not a certificate\n";
  auto garbage = ServerTls::Read({Path("garbage.pem"), Path("server.key"), ""});
  EXPECT_THAT(garbage.status().message(), HasSubstr("no PEM certificate"));
  auto key = ServerTls::Read({Path("server.pem"), Path("garbage.pem"), ""});
  EXPECT_THAT(key.status().message(), HasSubstr("no PEM private key"));
  auto ca = ServerTls::Read({Path("server.pem"), Path("server.key"), Path("garbage.pem")});
  EXPECT_THAT(ca.status().message(), HasSubstr("--tls_client_ca="));
}

TEST(Authenticator, ReloadIsAllOrNothingAcrossFiles) {
  testing::ScopedTempDir dir("auth_reload");
  const std::string tokens = dir.path() + "/tokens";
  const std::string users = dir.path() + "/users";
  std::ofstream(tokens) << "alice " << kAlice << "\n";
  std::ofstream(users) << "prometheus " << kAlice << "\n";
  AuthConfig config;
  config.tokens_file = tokens;
  config.metrics_auth_file = users;
  auto authenticator = Authenticator::Create(config);
  ASSERT_TRUE(authenticator.ok()) << authenticator.status();
  EXPECT_TRUE((*authenticator)->CheckMetricsUser("prometheus", kAlice));

  // The users file changes for the better, the tokens file for the worse: nothing changes.
  std::ofstream(users) << "prometheus " << kBob << "\n";
  std::ofstream(tokens) << "alice " << kAlice << "\nalice " << kBob << "\n";
  auto failed = (*authenticator)->Reload();
  ASSERT_FALSE(failed.ok());
  EXPECT_THAT(failed.status().message(), HasSubstr("--auth_tokens_file="));
  EXPECT_TRUE((*authenticator)->CheckMetricsUser("prometheus", kAlice));
  EXPECT_FALSE((*authenticator)->CheckMetricsUser("prometheus", kBob));

  std::ofstream(tokens) << "alice " << kAlice << "\n";
  auto reloaded = (*authenticator)->Reload();
  ASSERT_TRUE(reloaded.ok()) << reloaded.status();
  EXPECT_THAT(*reloaded, HasSubstr("tokens=1 metrics_users=1"));
  EXPECT_TRUE((*authenticator)->CheckMetricsUser("prometheus", kBob));
  EXPECT_FALSE((*authenticator)->CheckMetricsUser("prometheus", kAlice));
}

TEST(Authenticator, WithNothingToReloadSaysSo) {
  auto authenticator = Authenticator::Create(AuthConfig{});
  ASSERT_TRUE(authenticator.ok());
  EXPECT_TRUE(absl::IsFailedPrecondition((*authenticator)->Reload().status()));
  EXPECT_FALSE((*authenticator)->CheckMetricsUser("", ""));
}

}  // namespace
}  // namespace execd::server
