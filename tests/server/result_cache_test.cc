// The result cache through a real server and channel: hits, key isolation field by field,
// only clean successes stored, TTL, policies, the byte bound, streaming and batch hits.
#include <grpcpp/grpcpp.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <set>
#include <string>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/pools_config.h"
#include "tests/support/manual_clock.h"
#include "tests/support/subprocess.h"
#include "tests/support/test_server.h"

namespace execd {
namespace {

using ::execd::testing::TestServer;
using ::testing::HasSubstr;

class ResultCacheTest : public ::testing::Test {
 protected:
  void Start(int64_t max_bytes = 1 << 20, const std::string& salt = "") {
    // One server at a time: servers of one process share its cgroup directory.
    server_.reset();
    auto server = TestServer::Start([&](server::ServerConfig& c) {
      c.cache.max_bytes = max_bytes;
      c.cache.salt = salt;
      c.cache.clock = &clock_;
    });
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
  }
  void SetUp() override { Start(); }

  // A command whose every run prints something new: a hit is the only way to see the
  // same output twice.
  static v1::ExecuteRequest Fresh() {
    v1::ExecuteRequest r =
        TestServer::Request({"/bin/sh", "-c", "cat /proc/sys/kernel/random/uuid"});
    r.set_cache_policy(v1::READ_WRITE);
    return r;
  }

  v1::ExecuteResponse Run(const v1::ExecuteRequest& request) {
    v1::ExecuteResponse response;
    grpc::Status status = server_->Execute(request, &response);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return response;
  }

  // Runs `leader` and `waiter` (identical apart from what a test varies) in one batch,
  // the leader first, with a third item after them: once that one's result comes, both
  // were submitted, and the waiter joined the leader's flight, which only then may land
  // (the leader waits for `gate` to exist). Returns the leader's and the waiter's responses.
  std::pair<v1::ExecuteResponse, v1::ExecuteResponse> RunInOneFlight(
      const v1::ExecuteRequest& leader, const v1::ExecuteRequest& waiter, const std::string& gate) {
    v1::BatchRequest batch;
    *batch.add_requests() = leader;
    *batch.add_requests() = waiter;
    *batch.add_requests() = TestServer::Request({"/bin/true"});
    batch.set_max_parallel(3);
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
    auto results = server_->stub().ExecuteBatch(&context, batch);
    v1::BatchResult result;
    std::pair<v1::ExecuteResponse, v1::ExecuteResponse> out;
    EXPECT_TRUE(results->Read(&result));
    EXPECT_EQ(result.index(), 2);
    std::ofstream(gate).put('\n');
    while (results->Read(&result)) {
      EXPECT_EQ(result.status_code(), 0) << result.status_message();
      if (result.index() == 0) out.first = result.response();
      if (result.index() == 1) out.second = result.response();
    }
    EXPECT_TRUE(results->Finish().ok());
    return out;
  }

  // A command that waits for `gate` to exist, counts its runs in `counter`, then prints
  // `print`'s output.
  static v1::ExecuteRequest Gated(const std::string& gate, const std::string& counter,
                                  const std::string& print) {
    v1::ExecuteRequest r = TestServer::Request(
        {"/bin/sh", "-c",
         absl::StrCat("until [ -e ", gate, " ]; do sleep 0.01; done; echo run >> ", counter, "; ",
                      print)});
    r.set_cache_policy(v1::READ_WRITE);
    return r;
  }

  static int Lines(const std::string& path) {
    std::ifstream in(path);
    std::string line;
    int n = 0;
    while (std::getline(in, line)) ++n;
    return n;
  }

  // The cache's clock (entries' ages and expiry); commands run on real time.
  testing::ManualClock clock_;
  std::unique_ptr<TestServer> server_;
};

absl::Duration Age(const v1::ExecuteResponse& r) {
  return absl::Seconds(r.cache_age().seconds()) + absl::Nanoseconds(r.cache_age().nanos());
}

TEST_F(ResultCacheTest, ASecondIdenticalRequestIsAnsweredFromTheCache) {
  v1::ExecuteResponse first = Run(Fresh());
  EXPECT_FALSE(first.cache_hit());
  clock_.Advance(absl::Seconds(7));
  v1::ExecuteResponse second = Run(Fresh());
  EXPECT_TRUE(second.cache_hit());
  EXPECT_EQ(second.stdout(), first.stdout());
  EXPECT_EQ(second.termination(), v1::EXITED);
  EXPECT_EQ(Age(second), absl::Seconds(7));
  // Without a cache policy nothing is read.
  v1::ExecuteRequest off = Fresh();
  off.set_cache_policy(v1::CACHE_OFF);
  EXPECT_NE(Run(off).stdout(), first.stdout());
}

TEST_F(ResultCacheTest, RequestsThatDifferInAnyFieldNeverShareAnEntry) {
  const std::string base = Run(Fresh()).stdout();
  testing::ScopedTempDir dir("cache");
  std::vector<std::pair<std::string, std::function<void(v1::ExecuteRequest&)>>> variants = {
      {"argv", [](v1::ExecuteRequest& r) { r.add_argv("extra"); }},
      {"env", [](v1::ExecuteRequest& r) { (*r.mutable_env())["X"] = "1"; }},
      {"inherit_env", [](v1::ExecuteRequest& r) { r.add_inherit_env("PATH"); }},
      {"cwd", [&](v1::ExecuteRequest& r) { r.set_cwd(dir.path()); }},
      {"stdin", [](v1::ExecuteRequest& r) { r.set_stdin("x"); }},
      {"timeout",
       [](v1::ExecuteRequest& r) { r.mutable_limits()->mutable_timeout()->set_seconds(7); }},
      {"max_open_files", [](v1::ExecuteRequest& r) { r.mutable_limits()->set_max_open_files(64); }},
      {"cpu_affinity", [](v1::ExecuteRequest& r) { r.mutable_limits()->add_cpu_affinity(0); }},
      {"pipe_to", [](v1::ExecuteRequest& r) { r.add_pipe_to()->add_argv("cat"); }},
  };
  for (auto& [field, change] : variants) {
    v1::ExecuteRequest r = Fresh();
    change(r);
    v1::ExecuteResponse response = Run(r);
    EXPECT_FALSE(response.cache_hit()) << field;
    EXPECT_NE(response.stdout(), base) << field;
  }
  EXPECT_TRUE(Run(Fresh()).cache_hit());  // The original is still there.
}

TEST_F(ResultCacheTest, ANewExecutableOrANewSaltMissesTheCache) {
  testing::ScopedTempDir dir("cache");
  const std::string program = dir.path() + "/uuid";
  auto install = [&](const std::string& text) {
    std::string tmp = program + ".new";
    { std::ofstream(tmp) << "#!/bin/sh\n# " << text << "\ncat /proc/sys/kernel/random/uuid\n"; }
    std::filesystem::permissions(tmp, std::filesystem::perms::owner_all);
    std::filesystem::rename(tmp, program);
  };
  install("one");
  v1::ExecuteRequest r = TestServer::Request({program});
  r.set_cache_policy(v1::READ_WRITE);
  const std::string first = Run(r).stdout();
  EXPECT_TRUE(Run(r).cache_hit());
  install("two");  // Same path, new file.
  v1::ExecuteResponse after = Run(r);
  EXPECT_FALSE(after.cache_hit());
  EXPECT_NE(after.stdout(), first);
  // Another salt: a fresh key space.
  Start(1 << 20, "salt-2");
  EXPECT_FALSE(Run(r).cache_hit());
  EXPECT_TRUE(Run(r).cache_hit());
}

TEST_F(ResultCacheTest, OnlyCleanSuccessesAreStored) {
  std::vector<v1::ExecuteRequest> failures;
  failures.push_back(
      TestServer::Request({"/bin/sh", "-c", "cat /proc/sys/kernel/random/uuid; exit 1"}));
  failures.push_back(
      TestServer::Request({"/bin/sh", "-c", "cat /proc/sys/kernel/random/uuid; kill -9 $$"}));
  v1::ExecuteRequest truncated =
      TestServer::Request({"/bin/sh", "-c", "head -c 5000 /dev/urandom"});
  truncated.mutable_limits()->set_max_output_bytes(1000);
  failures.push_back(truncated);
  v1::ExecuteRequest timed_out =
      TestServer::Request({"/bin/sh", "-c", "cat /proc/sys/kernel/random/uuid; sleep 5"});
  timed_out.mutable_limits()->mutable_timeout()->set_nanos(100'000'000);
  failures.push_back(timed_out);
  // A pipeline whose last program succeeds but an earlier one failed.
  v1::ExecuteRequest failed_stage =
      TestServer::Request({"/bin/sh", "-c", "cat /proc/sys/kernel/random/uuid; exit 1"});
  failed_stage.add_pipe_to()->add_argv("cat");
  failures.push_back(failed_stage);
  for (v1::ExecuteRequest& r : failures) {
    r.set_cache_policy(v1::READ_WRITE);
    EXPECT_FALSE(Run(r).cache_hit()) << r.argv(2);
    EXPECT_FALSE(Run(r).cache_hit()) << r.argv(2) << " was stored";
  }
}

TEST_F(ResultCacheTest, PipelinesAreKeyedByEveryProgramAndComeBackWhole) {
  v1::ExecuteRequest r = Fresh();
  r.add_pipe_to()->add_argv("cat");
  v1::ExecuteResponse first = Run(r);
  ASSERT_EQ(first.stages_size(), 2);
  v1::ExecuteResponse hit = Run(r);
  EXPECT_TRUE(hit.cache_hit());
  EXPECT_EQ(hit.stdout(), first.stdout());
  ASSERT_EQ(hit.stages_size(), 2);
  EXPECT_EQ(hit.stages(1).pid(), first.stages(1).pid());
  // Another program, or other arguments of one, is another command.
  v1::ExecuteRequest other_args = r;
  other_args.mutable_pipe_to(0)->add_argv("-");
  EXPECT_FALSE(Run(other_args).cache_hit());
  v1::ExecuteRequest other_program = r;
  other_program.mutable_pipe_to(0)->set_argv(0, "tee");
  EXPECT_FALSE(Run(other_program).cache_hit());
}

TEST_F(ResultCacheTest, AnOutputCapMattersOnlyWhenTheStoredOutputWouldNotFitIt) {
  const v1::ExecuteResponse first = Run(Fresh());  // A 37-byte uuid line.
  v1::ExecuteRequest roomier = Fresh();
  roomier.mutable_limits()->set_max_output_bytes(4096);
  v1::ExecuteResponse hit = Run(roomier);
  EXPECT_TRUE(hit.cache_hit());
  EXPECT_EQ(hit.stdout(), first.stdout());
  v1::ExecuteRequest tight = Fresh();
  tight.mutable_limits()->set_max_output_bytes(10);
  v1::ExecuteResponse ran = Run(tight);
  EXPECT_FALSE(ran.cache_hit());
  EXPECT_EQ(ran.termination(), v1::OUTPUT_LIMIT_EXCEEDED);
  EXPECT_EQ(ran.stdout().size(), 10u);
}

TEST_F(ResultCacheTest, PoliciesAndTtl) {
  v1::ExecuteRequest read_only = Fresh();
  read_only.set_cache_policy(v1::READ_ONLY);
  Run(read_only);
  EXPECT_FALSE(Run(read_only).cache_hit());  // READ_ONLY never stores.
  v1::ExecuteRequest refresh = Fresh();
  refresh.set_cache_policy(v1::REFRESH);
  const std::string refreshed = Run(refresh).stdout();
  EXPECT_FALSE(Run(refresh).cache_hit());     // REFRESH always runs...
  v1::ExecuteResponse read = Run(read_only);  // ...and stores what it ran.
  EXPECT_TRUE(read.cache_hit());
  EXPECT_NE(read.stdout(), refreshed);  // The second refresh replaced the first.

  v1::ExecuteRequest short_lived = Fresh();
  short_lived.add_argv("ttl");  // Its own key.
  short_lived.mutable_cache_ttl()->set_nanos(200'000'000);
  const std::string stored = Run(short_lived).stdout();
  clock_.Advance(absl::Milliseconds(199));
  v1::ExecuteResponse young = Run(short_lived);
  EXPECT_TRUE(young.cache_hit());
  EXPECT_EQ(Age(young), absl::Milliseconds(199));
  clock_.Advance(absl::Milliseconds(1));  // Its TTL is up: it runs again, and stores anew.
  v1::ExecuteResponse expired = Run(short_lived);
  EXPECT_FALSE(expired.cache_hit());
  EXPECT_NE(expired.stdout(), stored);
  EXPECT_EQ(Run(short_lived).stdout(), expired.stdout());

  v1::ExecuteRequest too_long = Fresh();
  too_long.mutable_cache_ttl()->set_seconds(100 * 24 * 3600);
  v1::ExecuteResponse response;
  grpc::Status status = server_->Execute(too_long, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("--max_cache_ttl"));
}

// Far more distinct results than fit: the cache fills, then makes room (or turns
// newcomers away) and never holds more than its bound. Each shard holds a sixteenth.
TEST_F(ResultCacheTest, TheByteBoundHolds) {
  constexpr int64_t kMax = 1 << 20;
  Start(kMax);
  v1::StatusResponse status;
  for (int i = 0; i < 300; ++i) {
    // 8,000 random bytes: they do not compress, and 8 fit in a shard of 64 KiB.
    v1::ExecuteRequest r = TestServer::Request({"/usr/bin/head", "-c", "8000", "/dev/urandom"});
    r.mutable_env()->insert({"ROUND", absl::StrCat(i)});  // A new key each time.
    r.set_cache_policy(v1::READ_WRITE);
    ASSERT_EQ(Run(r).termination(), v1::EXITED);
    grpc::ClientContext context;
    ASSERT_TRUE(server_->stub().GetStatus(&context, v1::StatusRequest(), &status).ok());
    ASSERT_LE(status.cache().bytes(), kMax) << "after " << i;
  }
  EXPECT_GE(status.cache().entries(), 50) << "the cache stored too little to test its bound";
  EXPECT_GT(status.cache().evictions() + status.cache().rejections(), 0)
      << "the bound was never reached";
}

TEST_F(ResultCacheTest, AServerWithoutACacheSaysSo) {
  Start(/*max_bytes=*/0);
  v1::ExecuteResponse response;
  grpc::Status status = server_->Execute(Fresh(), &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(status.error_message(), HasSubstr("--cache_max_bytes"));
}

TEST_F(ResultCacheTest, AnUnknownCachePolicyIsRefused) {
  v1::ExecuteRequest request = Fresh();
  request.set_cache_policy(static_cast<v1::CachePolicy>(9));  // A newer client's, say.
  v1::ExecuteResponse response;
  grpc::Status status = server_->Execute(request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("cache_policy 9"));
}

TEST_F(ResultCacheTest, StreamAndBatchCallsAreServedFromTheCacheToo) {
  const std::string stored = Run(Fresh()).stdout();
  grpc::ClientContext context;
  auto reader = server_->stub().ExecuteStream(&context, Fresh());
  v1::ExecuteEvent event;
  std::string streamed;
  bool hit = false;
  while (reader->Read(&event)) {
    if (event.has_output()) streamed += event.output().data();
    if (event.has_exited()) hit = event.exited().cache_hit();
  }
  ASSERT_TRUE(reader->Finish().ok());
  EXPECT_TRUE(hit);
  EXPECT_EQ(streamed, stored);

  v1::BatchRequest batch;
  *batch.add_requests() = Fresh();
  *batch.add_requests() = Fresh();
  grpc::ClientContext batch_context;
  auto results = server_->stub().ExecuteBatch(&batch_context, batch);
  v1::BatchResult result;
  int hits = 0;
  while (results->Read(&result)) hits += result.response().cache_hit() ? 1 : 0;
  ASSERT_TRUE(results->Finish().ok());
  EXPECT_EQ(hits, 2);
}

TEST_F(ResultCacheTest, ThirtyTwoIdenticalConcurrentRequestsRunTheCommandOnce) {
  testing::ScopedTempDir dir("flight");
  const std::string counter = dir.path() + "/runs";
  // Slow enough that the others arrive while it runs; each run appends a line.
  v1::ExecuteRequest request = TestServer::Request(
      {"/bin/sh", "-c",
       absl::StrCat("echo run >> ", counter, "; sleep 0.5; cat /proc/sys/kernel/random/uuid")});
  request.set_cache_policy(v1::READ_WRITE);
  std::vector<std::unique_ptr<testing::AsyncCall>> calls;
  for (int i = 0; i < 32; ++i) {
    calls.push_back(std::make_unique<testing::AsyncCall>());
    calls.back()->request = request;
    calls.back()->Start(server_->stub());
  }
  std::set<std::string> outputs;
  int hits = 0;
  for (auto& call : calls) {
    ASSERT_TRUE(call->Wait());
    ASSERT_TRUE(call->status.ok()) << call->status.error_message();
    outputs.insert(call->response.stdout());
    hits += call->response.cache_hit() ? 1 : 0;
  }
  std::ifstream in(counter);
  std::string line;
  int runs = 0;
  while (std::getline(in, line)) ++runs;
  EXPECT_EQ(runs, 1) << "the command ran " << runs << " times";
  EXPECT_EQ(outputs.size(), 1u);
  EXPECT_EQ(hits, 31);
}

TEST_F(ResultCacheTest, WaitersRunThemselvesWhenTheLeaderFails) {
  testing::ScopedTempDir dir("flight");
  const std::string counter = dir.path() + "/runs";
  // Fails (exit 1) on the first run only: the waiters must not inherit a failure.
  v1::ExecuteRequest request = TestServer::Request(
      {"/bin/sh", "-c",
       absl::StrCat("echo run >> ", counter, "; sleep 0.3; [ $(wc -l < ", counter, ") -gt 1 ]")});
  request.set_cache_policy(v1::READ_WRITE);
  std::vector<std::unique_ptr<testing::AsyncCall>> calls;
  for (int i = 0; i < 4; ++i) {
    calls.push_back(std::make_unique<testing::AsyncCall>());
    calls.back()->request = request;
    calls.back()->Start(server_->stub());
  }
  int failed = 0;
  for (auto& call : calls) {
    ASSERT_TRUE(call->Wait());
    ASSERT_TRUE(call->status.ok()) << call->status.error_message();
    failed += call->response.exit_code() != 0 ? 1 : 0;
  }
  EXPECT_EQ(failed, 1);  // Only the leader's own run failed.
}

// Fast failures: nothing is stored, so every waiter runs itself as soon as the leader
// ends, submitting on the leader's thread; each of many identical calls gets its own
// answer, none from the cache, and none is left hanging.
TEST_F(ResultCacheTest, ManyIdenticalFastFailuresEachGetTheirOwnAnswer) {
  v1::ExecuteRequest request = TestServer::Request({"/bin/sh", "-c", "exit 3"});
  request.set_cache_policy(v1::READ_WRITE);
  for (int round = 0; round < 5; ++round) {
    std::vector<std::unique_ptr<testing::AsyncCall>> calls;
    for (int i = 0; i < 32; ++i) {
      calls.push_back(std::make_unique<testing::AsyncCall>());
      calls.back()->request = request;
      calls.back()->Start(server_->stub());
    }
    for (auto& call : calls) {
      ASSERT_TRUE(call->Wait());
      ASSERT_TRUE(call->status.ok()) << call->status.error_message();
      EXPECT_EQ(call->response.exit_code(), 3);
      EXPECT_FALSE(call->response.cache_hit());
    }
  }
}

TEST_F(ResultCacheTest, AWaiterThatIsCancelledLeavesAndTheOthersStillGetTheResult) {
  v1::ExecuteRequest request =
      TestServer::Request({"/bin/sh", "-c", "sleep 0.5; cat /proc/sys/kernel/random/uuid"});
  request.set_cache_policy(v1::READ_WRITE);
  testing::AsyncCall leader, quitter, stayer;
  leader.request = request;
  leader.Start(server_->stub());
  // The leader runs first; the others then wait on it (or, if it already finished, hit
  // the cache: the same output either way).
  ASSERT_TRUE(testing::WaitFor([&] { return server_->server().engine().stats().running == 1; },
                               absl::Seconds(10)));
  for (auto* call : {&quitter, &stayer}) {
    call->request = request;
    call->Start(server_->stub());
  }
  quitter.context.TryCancel();
  ASSERT_TRUE(quitter.Wait());
  EXPECT_EQ(quitter.status.error_code(), grpc::StatusCode::CANCELLED);
  ASSERT_TRUE(leader.Wait());
  ASSERT_TRUE(stayer.Wait());
  EXPECT_TRUE(stayer.status.ok());
  EXPECT_EQ(stayer.response.stdout(), leader.response.stdout());
}

// The key leaves out max_output_bytes: a waiter whose cap is smaller than the leader's
// output must not get that output (it would have been truncated had it run).
TEST_F(ResultCacheTest, AWaiterGetsTheLeadersResultOnlyWithinItsOwnOutputCap) {
  testing::ScopedTempDir dir("flight");
  const v1::ExecuteRequest leader =
      Gated(dir.path() + "/gate", dir.path() + "/runs", "echo 0123456789abcdefghij");
  v1::ExecuteRequest tight = leader;
  tight.mutable_limits()->set_max_output_bytes(10);
  auto [led, waited] = RunInOneFlight(leader, tight, dir.path() + "/gate");
  EXPECT_EQ(led.stdout(), "0123456789abcdefghij\n");
  EXPECT_FALSE(waited.cache_hit());
  EXPECT_EQ(waited.termination(), v1::OUTPUT_LIMIT_EXCEEDED);
  EXPECT_EQ(waited.stdout(), "0123456789");
}

// A clean success is the waiters' result whether or not the cache admitted it: here it is
// larger than a shard, so it is not stored, yet it ran once.
TEST_F(ResultCacheTest, WaitersGetACleanSuccessTheCacheDidNotAdmit) {
  Start(/*max_bytes=*/16 << 10);  // 1 KiB per shard.
  testing::ScopedTempDir dir("flight");
  const v1::ExecuteRequest request =
      Gated(dir.path() + "/gate", dir.path() + "/runs", "head -c 2000 /dev/zero");
  auto [led, waited] = RunInOneFlight(request, request, dir.path() + "/gate");
  EXPECT_EQ(Lines(dir.path() + "/runs"), 1) << "identical concurrent requests ran again";
  EXPECT_EQ(led.stdout(), std::string(2000, '\0'));
  EXPECT_EQ(waited.stdout(), led.stdout());
  EXPECT_EQ(waited.exit_code(), 0);
}

// A pool's own argv, env and cwd are in its configuration, not in the request: a reload
// that changes them must not serve results of the old configuration.
TEST_F(ResultCacheTest, APoolWhoseConfigurationChangedMissesTheCache) {
  const auto pool = [](const std::string& word) {
    auto pools = server::ParsePoolsConfig(
        absl::StrCat("pool { name: \"p\" kind: PREWARMED argv: \"/bin/sh\" argv: \"-c\" ",
                     "argv: \"echo ", word, "\" max_size: 1 }"),
        "test.textproto", core::RequestPolicy::FromProcessEnvironment());
    EXPECT_TRUE(pools.ok()) << pools.status();
    return *std::move(pools);
  };
  server_.reset();
  auto server = TestServer::Start([&](server::ServerConfig& c) {
    c.cache.max_bytes = 1 << 20;
    c.pools = pool("one");
  });
  ASSERT_TRUE(server.ok()) << server.status();
  server_ = *std::move(server);
  v1::ExecuteRequest request;
  request.set_pool("p");
  request.set_cache_policy(v1::READ_WRITE);
  EXPECT_EQ(Run(request).stdout(), "one\n");
  EXPECT_TRUE(Run(request).cache_hit());
  ASSERT_TRUE(server_->server().engine().ReloadPools(pool("two")).ok());
  v1::ExecuteResponse after = Run(request);
  EXPECT_FALSE(after.cache_hit());
  EXPECT_EQ(after.stdout(), "two\n");
}

}  // namespace
}  // namespace execd
