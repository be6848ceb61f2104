// Authorization through a real in-process server: every denial names its rule, on every RPC
// that runs commands and on GetStatus; an identity no rule names may do nothing; a reload
// applies a good policy and keeps the old one when the new file is bad; two identities
// share the concurrency limit when one floods the queue; the result cache keeps callers
// apart, refuses REFRESH without permission and sees a rebuilt program whose modification
// time was forged. Callers are authenticated by bearer tokens (--auth_tokens_file).
#include <grpcpp/grpcpp.h>
#include <limits.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <fstream>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/authz_config.h"
#include "tests/support/file_times.h"
#include "tests/support/subprocess.h"
#include "tests/support/test_server.h"

namespace execd {
namespace {

using testing::AsyncCall;
using ::testing::HasSubstr;
using testing::TestServer;

// The identities of the tests, each with a token.
constexpr const char* kIdentities[] = {"ci", "oncall", "flood", "other", "mallory"};

std::string TokenOf(const std::string& identity) {
  return absl::StrCat(identity, "-token-0123456789abcdef");
}

std::string Real(const std::string& path) {
  char real[PATH_MAX];
  return realpath(path.c_str(), real) == nullptr ? path : std::string(real);
}

// ci: two programs, the cache but not REFRESH. oncall: everything. flood and other: any
// program, nothing else. No default rule.
constexpr char kPolicy[] = R"pb(
  rule {
    name: "ci"
    executables: "/bin/echo"
    executables: "/bin/true"
    cache: READ_ONLY
    cache: READ_WRITE
  }
  rule {
    name: "oncall"
    executables: "/"
    pools: "*"
    max_priority: PRIORITY_HIGH
    cache: READ_ONLY
    cache: READ_WRITE
    cache: REFRESH
    get_status: true
  }
  rule { name: "flood" executables: "/" }
  rule { name: "other" executables: "/" }
)pb";

class AuthzServerTest : public ::testing::Test {
 protected:
  // A server under the policy in `policy_text`, whose callers are kIdentities.
  void StartWith(const std::string& policy_text,
                 const std::function<void(server::ServerConfig&)>& adjust = nullptr) {
    std::ofstream(policy_path_, std::ios::trunc) << policy_text;
    {
      std::ofstream tokens(tokens_path_, std::ios::trunc);
      for (const char* identity : kIdentities)
        tokens << identity << " " << TokenOf(identity) << "\n";
    }
    auto server = TestServer::Start([&](server::ServerConfig& c) {
      auto policy = server::LoadAuthzPolicy(policy_path_, c.policy);
      ASSERT_TRUE(policy.ok()) << policy.status();
      c.authz_policy = *std::move(policy);
      c.auth.tokens_file = tokens_path_;
      if (adjust) adjust(c);
    });
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
  }

  static void As(const std::string& identity, grpc::ClientContext* context) {
    context->AddMetadata("authorization", "Bearer " + TokenOf(identity));
    context->set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
  }

  grpc::Status Execute(const std::string& identity, const v1::ExecuteRequest& request,
                       v1::ExecuteResponse* response) {
    grpc::ClientContext context;
    As(identity, &context);
    return server_->stub().Execute(&context, request, response);
  }
  grpc::Status Execute(const std::string& identity, const v1::ExecuteRequest& request) {
    v1::ExecuteResponse response;
    return Execute(identity, request, &response);
  }

  // An Execute in flight, as `identity`.
  std::unique_ptr<AsyncCall> StartAs(const std::string& identity, v1::ExecuteRequest request) {
    auto call = std::make_unique<AsyncCall>();
    call->context.AddMetadata("authorization", "Bearer " + TokenOf(identity));
    call->request = std::move(request);
    call->Start(server_->stub());
    return call;
  }

  bool WaitForEngine(const std::function<bool(const core::Engine::Stats&)>& condition) {
    return testing::WaitFor([&] { return condition(server_->server().engine().stats()); },
                            absl::Seconds(10));
  }

  testing::ScopedTempDir dir_{"authz_server"};
  const std::string policy_path_ = dir_.path() + "/policy.textproto";
  const std::string tokens_path_ = dir_.path() + "/tokens";
  std::unique_ptr<TestServer> server_;
};

void ExpectDenied(const grpc::Status& status, const std::string& message) {
  EXPECT_EQ(status.error_code(), grpc::StatusCode::PERMISSION_DENIED) << status.error_message();
  EXPECT_EQ(status.error_message(), message);
}

TEST_F(AuthzServerTest, EveryDenialOfExecuteNamesItsRule) {
  StartWith(kPolicy);
  struct Case {
    std::string identity;
    std::function<void(v1::ExecuteRequest&)> change;
    std::string message;
  };
  const Case cases[] = {
      {"mallory", [](v1::ExecuteRequest&) {},
       "identity \"mallory\": no rule of the authorization policy names this identity and it "
       "has no default_rule, so it may do nothing"},
      {"ci", [](v1::ExecuteRequest& r) { r.set_argv(0, "/bin/sh"); },
       absl::StrCat("identity \"ci\": executable ", Real("/bin/sh"),
                    " (argv[0] \"/bin/sh\") is not in rule ci.executables (allowed: /bin/echo, "
                    "/bin/true)")},
      {"ci",
       [](v1::ExecuteRequest& r) {
         r.clear_argv();
         r.set_pool("python");
       },
       "identity \"ci\": pool \"python\" is not in rule ci.pools (allowed: none)"},
      {"ci", [](v1::ExecuteRequest& r) { r.set_priority(v1::PRIORITY_HIGH); },
       "identity \"ci\": priority HIGH is above rule ci.max_priority (NORMAL)"},
      {"ci", [](v1::ExecuteRequest& r) { r.set_cache_policy(v1::REFRESH); },
       "identity \"ci\": cache_policy REFRESH is not in rule ci.cache (allowed: READ_WRITE, "
       "READ_ONLY)"},
      {"flood", [](v1::ExecuteRequest& r) { r.set_cache_policy(v1::READ_ONLY); },
       "identity \"flood\": cache_policy READ_ONLY is not in rule flood.cache (allowed: none)"},
      {"ci", [](v1::ExecuteRequest& r) { (*r.mutable_env())["LD_PRELOAD"] = "/tmp/evil.so"; },
       "identity \"ci\": env LD_PRELOAD may not be set: rule ci.executables allows only listed "
       "programs, and LD_PRELOAD makes a program load or run other code (see the README's list "
       "of loader variables)"},
  };
  for (const Case& c : cases) {
    v1::ExecuteRequest request = TestServer::Request({"/bin/echo", "hi"});
    c.change(request);
    ExpectDenied(Execute(c.identity, request), c.message);
  }
  // What the rules allow runs.
  v1::ExecuteResponse response;
  ASSERT_TRUE(Execute("ci", TestServer::Request({"/bin/echo", "hi"}), &response).ok());
  EXPECT_EQ(response.stdout(), "hi\n");
  v1::ExecuteRequest env = TestServer::Request({"/bin/sh", "-c", "echo $LD_PRELOAD"});
  (*env.mutable_env())["LD_PRELOAD"] = "allowed";  // Any program allowed: nothing to refuse.
  ASSERT_TRUE(Execute("oncall", env, &response).ok());
  EXPECT_EQ(response.stdout(), "allowed\n");
}

TEST_F(AuthzServerTest, LimitsOverTheRuleAreRefusedAndUnsetOnesLowered) {
  StartWith(R"pb(rule {
                   name: "ci"
                   executables: "/"
                   max_limits {
                     timeout { seconds: 2 }
                     max_open_files: 32
                   }
                 })pb");
  v1::ExecuteRequest over = TestServer::Request({"/bin/true"});
  over.mutable_limits()->set_max_open_files(33);
  ExpectDenied(Execute("ci", over),
               "identity \"ci\": limits.max_open_files 33 is over rule "
               "ci.max_limits.max_open_files (32)");
  v1::ExecuteResponse response;
  ASSERT_TRUE(
      Execute("ci", TestServer::Request({"/bin/sh", "-c", "ulimit -n; sleep 10"}), &response).ok());
  EXPECT_EQ(response.stdout(), "32\n");
  EXPECT_EQ(response.termination(), v1::TIMED_OUT);  // The rule's 1 s, not the server's 60.
}

TEST_F(AuthzServerTest, StreamsBatchesAndSessionsAreDeniedAlike) {
  StartWith(kPolicy);
  const std::string message =
      absl::StrCat("identity \"ci\": executable ", Real("/bin/sh"),
                   " (argv[0] \"/bin/sh\") is not in rule ci.executables (allowed: /bin/echo, "
                   "/bin/true)");
  {
    grpc::ClientContext context;
    As("ci", &context);
    auto reader = server_->stub().ExecuteStream(&context, TestServer::Request({"/bin/sh"}));
    v1::ExecuteEvent event;
    while (reader->Read(&event)) {
    }
    ExpectDenied(reader->Finish(), message);
  }
  {
    grpc::ClientContext context;
    As("ci", &context);
    v1::BatchRequest batch;
    *batch.add_requests() = TestServer::Request({"/bin/echo", "allowed"});
    *batch.add_requests() = TestServer::Request({"/bin/sh"});
    auto reader = server_->stub().ExecuteBatch(&context, batch);
    std::vector<v1::BatchResult> results(2);
    for (v1::BatchResult result; reader->Read(&result);) results[result.index()] = result;
    ASSERT_TRUE(reader->Finish().ok());
    EXPECT_EQ(results[0].status_code(), 0);
    EXPECT_EQ(results[0].response().stdout(), "allowed\n");
    EXPECT_EQ(results[1].status_code(), grpc::StatusCode::PERMISSION_DENIED);
    EXPECT_EQ(results[1].status_message(), message);
  }
  {
    grpc::ClientContext context;
    As("ci", &context);
    auto stream = server_->stub().Attach(&context);
    v1::AttachRequest start;
    *start.mutable_start() = TestServer::Request({"/bin/sh"});
    stream->Write(start);
    stream->WritesDone();
    v1::AttachEvent event;
    while (stream->Read(&event)) {
    }
    ExpectDenied(stream->Finish(), message);
  }
}

TEST_F(AuthzServerTest, GetStatusFollowsTheRule) {
  StartWith(kPolicy);
  for (const char* identity : {"ci", "mallory"}) {
    grpc::ClientContext context;
    As(identity, &context);
    v1::StatusResponse response;
    grpc::Status status = server_->stub().GetStatus(&context, v1::StatusRequest(), &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::PERMISSION_DENIED) << identity;
    EXPECT_EQ(response.concurrency_limit(), 0);
  }
  grpc::ClientContext context;
  As("oncall", &context);
  v1::StatusResponse response;
  ASSERT_TRUE(server_->stub().GetStatus(&context, v1::StatusRequest(), &response).ok());
  EXPECT_GT(response.concurrency_limit(), 0);
  grpc::ClientContext ci;
  As("ci", &ci);
  ExpectDenied(server_->stub().GetStatus(&ci, v1::StatusRequest(), &response),
               "identity \"ci\": GetStatus is not allowed by rule ci.get_status");
}

TEST_F(AuthzServerTest, AReloadAppliesAGoodPolicyAndKeepsTheOldOneWhenTheFileIsBad) {
  StartWith(kPolicy);
  const v1::ExecuteRequest sh = TestServer::Request({"/bin/sh", "-c", "true"});
  ASSERT_EQ(Execute("ci", sh).error_code(), grpc::StatusCode::PERMISSION_DENIED);
  std::ofstream(policy_path_, std::ios::trunc) << "rule { name: \"ci\" executables: \"/bin/sh\" }";
  ASSERT_TRUE(server_->server().ReloadAuthzPolicy(policy_path_).ok());
  EXPECT_TRUE(Execute("ci", sh).ok());
  ExpectDenied(Execute("oncall", sh),
               "identity \"oncall\": no rule of the authorization policy names this identity "
               "and it has no default_rule, so it may do nothing");

  std::ofstream(policy_path_, std::ios::trunc) << "rule { name: \"ci\"\n executables: \"sh\" }";
  absl::Status bad = server_->server().ReloadAuthzPolicy(policy_path_);
  EXPECT_EQ(bad.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad.message(), HasSubstr("policy.textproto: line 2: rule \"ci\": executables[0] "
                                       "\"sh\" is not an absolute path"));
  EXPECT_TRUE(Execute("ci", sh).ok());  // The previous policy is still in force.
  std::remove(policy_path_.c_str());
  EXPECT_EQ(server_->server().ReloadAuthzPolicy(policy_path_).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(Execute("ci", sh).ok());
}

// Two slots. flood fills both and queues ten more; other queues one command behind them.
// As soon as one of flood's commands ends, other's starts: it runs none, flood one.
TEST_F(AuthzServerTest, ACallerThatFloodsTheQueueDoesNotTakeEveryFreedSlot) {
  StartWith(kPolicy, [](server::ServerConfig& c) {
    c.max_concurrency = 2;
    c.max_queue = 100;
  });
  const std::string token = dir_.path() + "/token";
  const std::string stop = dir_.path() + "/stop";
  // Each of flood's commands runs until it takes the token (one rename wins) or all stop.
  const v1::ExecuteRequest flooding =
      TestServer::Request({"/bin/sh", "-c",
                           absl::StrCat("until [ -e ", stop, " ] || mv ", token, " ", token,
                                        ".$$ 2>/dev/null; do ", "sleep 0.01; done")});
  std::vector<std::unique_ptr<AsyncCall>> floods;
  for (int i = 0; i < 2; ++i) floods.push_back(StartAs("flood", flooding));
  ASSERT_TRUE(WaitForEngine([](const core::Engine::Stats& s) { return s.running == 2; }));
  for (int i = 0; i < 10; ++i) floods.push_back(StartAs("flood", flooding));
  ASSERT_TRUE(WaitForEngine([](const core::Engine::Stats& s) { return s.queued == 10; }));
  std::unique_ptr<AsyncCall> other = StartAs("other", TestServer::Request({"/bin/echo", "mine"}));
  ASSERT_TRUE(WaitForEngine([](const core::Engine::Stats& s) { return s.queued == 11; }));

  std::ofstream(token) << "go";
  ASSERT_TRUE(other->Wait()) << "other's command did not start after flood's first ended";
  ASSERT_TRUE(other->status.ok()) << other->status.error_message();
  EXPECT_EQ(other->response.stdout(), "mine\n");
  // Only one token was given: exactly one of flood's commands has ended.
  auto flood_done = [&] {
    int done = 0;
    for (const auto& call : floods) done += call->done.HasBeenNotified() ? 1 : 0;
    return done;
  };
  EXPECT_TRUE(testing::WaitFor([&] { return flood_done() == 1; }, absl::Seconds(10)));
  EXPECT_EQ(flood_done(), 1);

  std::ofstream(stop) << "stop";
  for (const auto& call : floods) {
    ASSERT_TRUE(call->Wait());
    EXPECT_TRUE(call->status.ok()) << call->status.error_message();
  }
}

// One slot, a queue of two, both flood's: other's request takes the place of flood's newest.
TEST_F(AuthzServerTest, ACallerThatFillsTheQueueDoesNotKeepOthersOut) {
  StartWith(kPolicy, [](server::ServerConfig& c) {
    c.max_concurrency = 1;
    c.max_queue = 2;
  });
  const std::string stop = dir_.path() + "/stop";
  const v1::ExecuteRequest waiting = TestServer::Request(
      {"/bin/sh", "-c", absl::StrCat("until [ -e ", stop, " ]; do sleep 0.01; done")});
  std::unique_ptr<AsyncCall> running = StartAs("flood", waiting);
  ASSERT_TRUE(WaitForEngine([](const core::Engine::Stats& s) { return s.running == 1; }));
  std::unique_ptr<AsyncCall> older = StartAs("flood", waiting);
  ASSERT_TRUE(WaitForEngine([](const core::Engine::Stats& s) { return s.queued == 1; }));
  std::unique_ptr<AsyncCall> newest = StartAs("flood", waiting);
  ASSERT_TRUE(WaitForEngine([](const core::Engine::Stats& s) { return s.queued == 2; }));
  std::unique_ptr<AsyncCall> other = StartAs("other", TestServer::Request({"/bin/echo", "in"}));
  ASSERT_TRUE(newest->Wait());
  EXPECT_EQ(newest->status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_EQ(newest->status.error_message(),
            "shed from a full queue for another caller's request: this caller had the most "
            "queued; retry later");
  std::ofstream(stop) << "stop";
  for (AsyncCall* call : {running.get(), older.get(), other.get()}) {
    ASSERT_TRUE(call->Wait());
    EXPECT_TRUE(call->status.ok()) << call->status.error_message();
  }
  EXPECT_EQ(other->response.stdout(), "in\n");
}

// ---- The result cache ----

TEST_F(AuthzServerTest, ACallersCacheEntriesAreItsOwn) {
  StartWith(
      absl::StrCat(kPolicy, "rule { name: \"mallory\" executables: \"/\" cache: READ_ONLY }"));
  const std::string runs = dir_.path() + "/runs";
  v1::ExecuteRequest request =
      TestServer::Request({"/bin/sh", "-c", absl::StrCat("echo ran >> ", runs, "; echo hi")});
  request.set_cache_policy(v1::READ_WRITE);
  v1::ExecuteResponse response;
  ASSERT_TRUE(Execute("oncall", request, &response).ok());
  ASSERT_FALSE(response.cache_hit());
  // Another caller's READ_ONLY probe of the same input misses (it learns nothing), and runs.
  request.set_cache_policy(v1::READ_ONLY);
  ASSERT_TRUE(Execute("mallory", request, &response).ok());
  EXPECT_FALSE(response.cache_hit());
  ASSERT_TRUE(Execute("oncall", request, &response).ok());
  EXPECT_TRUE(response.cache_hit());
  std::ifstream in(runs);
  int n = 0;
  for (std::string line; std::getline(in, line);) ++n;
  EXPECT_EQ(n, 2);  // oncall's first run and mallory's.
}

TEST_F(AuthzServerTest, RefreshWithoutPermissionIsRefusedAndStoresNothing) {
  StartWith(kPolicy);
  v1::ExecuteRequest plant = TestServer::Request({"/bin/echo", "planted"});
  plant.set_cache_policy(v1::REFRESH);
  ExpectDenied(Execute("ci", plant),
               "identity \"ci\": cache_policy REFRESH is not in rule ci.cache (allowed: "
               "READ_WRITE, READ_ONLY)");
  EXPECT_EQ(server_->server().dispatcher().stats().cache->entries, 0);
  v1::ExecuteResponse response;
  ASSERT_TRUE(Execute("oncall", plant, &response).ok());
  EXPECT_EQ(server_->server().dispatcher().stats().cache->entries, 1);
}

TEST_F(AuthzServerTest, AProgramRewrittenWithAForgedModificationTimeMisses) {
  StartWith(kPolicy);
  const std::string tool = dir_.path() + "/tool";
  auto write = [&](const std::string& word) {
    std::ofstream(tool, std::ios::trunc) << "#!/bin/sh\necho " << word << "\n";
    ASSERT_EQ(chmod(tool.c_str(), 0700), 0);
  };
  write("one");
  struct stat before;
  ASSERT_EQ(stat(tool.c_str(), &before), 0);
  v1::ExecuteRequest request = TestServer::Request({tool});
  request.set_cache_policy(v1::READ_WRITE);
  v1::ExecuteResponse response;
  ASSERT_TRUE(Execute("oncall", request, &response).ok());
  EXPECT_EQ(response.stdout(), "one\n");
  ASSERT_TRUE(Execute("oncall", request, &response).ok());
  ASSERT_TRUE(response.cache_hit());
  // A rebuild in place: same inode, same size, and `touch -d` back to the old mtime.
  write("two");
  ASSERT_TRUE(testing::ForgeModificationTime(tool, before.st_mtim, before.st_ctim));
  ASSERT_TRUE(Execute("oncall", request, &response).ok());
  EXPECT_FALSE(response.cache_hit());
  EXPECT_EQ(response.stdout(), "two\n");
}

}  // namespace
}  // namespace execd
