// The dispatcher under an authorization policy, without gRPC: what a caller is refused and
// why, that programs are checked where they really are (symlinks, "..", a directory's
// neighbours, PATH lookup, a pool's program), and that the result cache keeps callers
// apart and sees a rebuilt program whose modification time was forged. Commands are real
// spawns on a real Engine.
#include <limits.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "core/authz.h"
#include "core/dispatcher.h"
#include "core/pool.h"
#include "core/validate.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/support/file_times.h"
#include "tests/support/subprocess.h"

namespace execd::core {
namespace {

using ::testing::HasSubstr;

std::string Real(const std::string& path) {
  char real[PATH_MAX];
  return realpath(path.c_str(), real) == nullptr ? path : std::string(real);
}

// A directory a rule allows, as the policy loader writes it.
AllowedExecutable Dir(const std::string& path) { return {path + "/", Real(path) + "/"}; }
AllowedExecutable File(const std::string& path) { return {path, Real(path)}; }

class Sink final : public CallSink {
 public:
  void OnFinished(absl::StatusOr<Result> result) override {
    {
      absl::MutexLock lock(&mu_);
      result_ = std::move(result);
    }
    done_.Notify();
  }
  absl::StatusOr<Result> Wait() {
    if (!done_.WaitForNotificationWithTimeout(absl::Seconds(30))) {
      return absl::DeadlineExceededError("the call did not end within 30 s");
    }
    absl::MutexLock lock(&mu_);
    return result_;
  }

 private:
  absl::Notification done_;
  absl::Mutex mu_;
  absl::StatusOr<Result> result_ ABSL_GUARDED_BY(mu_) = absl::UnknownError("not finished");
};

class DispatcherAuthzTest : public ::testing::Test {
 protected:
  void SetUp() override {
    policy_ = RequestPolicy::FromProcessEnvironment();
    policy_.server_env["PATH"] = "/usr/bin:/bin";
    ASSERT_EQ(mkdir(allowed_.c_str(), 0700), 0);
  }
  void TearDown() override {
    if (engine_ != nullptr) engine_->Shutdown(absl::ZeroDuration());
    dispatcher_.reset();
    engine_.reset();
  }

  // An engine with `pools` and a dispatcher over it, with a cache, under `authz` (none if
  // null).
  void Start(std::shared_ptr<const AuthzPolicy> authz, std::vector<PoolSpec> pools = {}) {
    Engine::Options options;
    options.pools = std::move(pools);
    auto engine = Engine::Create(options);
    ASSERT_TRUE(engine.ok()) << engine.status();
    engine_ = *std::move(engine);
    dispatcher_ = std::make_unique<Dispatcher>(*engine_, policy_, CacheSettings{}, 0);
    dispatcher_->SetAuthzPolicy(std::move(authz));
  }

  // A policy of one rule for identity `name`; `change` fills it in.
  static std::shared_ptr<const AuthzPolicy> OneRule(const std::string& name,
                                                    const std::function<void(AuthzRule&)>& change) {
    auto policy = std::make_shared<AuthzPolicy>();
    AuthzRule rule;
    rule.name = name;
    change(rule);
    policy->rules.push_back(std::move(rule));
    policy->rule_of[name] = 0;
    return policy;
  }

  absl::StatusOr<Command> Prepare(const std::string& caller, std::vector<std::string> argv,
                                  CachePolicy cache = CachePolicy::kOff,
                                  const std::string& pool = "") {
    CommandRequest request;
    request.argv = std::move(argv);
    CallOptions options;
    options.caller = caller;
    options.cache = cache;
    return dispatcher_->Prepare(std::move(request), pool, options);
  }

  // Prepares and runs `argv` for `caller`.
  absl::StatusOr<Result> Run(const std::string& caller, std::vector<std::string> argv,
                             CachePolicy cache = CachePolicy::kOff) {
    absl::StatusOr<Command> command = Prepare(caller, std::move(argv), cache);
    if (!command.ok()) return command.status();
    CallOptions options;
    options.caller = caller;
    options.cache = cache;
    Sink* sink = sinks_.emplace_back(std::make_unique<Sink>()).get();
    std::shared_ptr<Call> call = dispatcher_->NewCall(std::move(options), sink);
    call->Start(*std::move(command));
    return sink->Wait();
  }

  // A script that prints `word`: rewriting it with another word of the same length keeps
  // its size and inode.
  void WriteScript(const std::string& path, const std::string& word) {
    std::ofstream(path, std::ios::trunc) << "#!/bin/sh\necho " << word << "\n";
    ASSERT_EQ(chmod(path.c_str(), 0700), 0);
  }

  testing::ScopedTempDir dir_{"dispatcher_authz"};
  const std::string allowed_ = dir_.path() + "/allowed";
  RequestPolicy policy_;
  std::vector<std::unique_ptr<Sink>> sinks_;  // Outlive the engine.
  std::unique_ptr<Engine> engine_;
  std::unique_ptr<Dispatcher> dispatcher_;
};

TEST_F(DispatcherAuthzTest, WithoutAPolicyEveryCallerMayRunAnything) {
  Start(nullptr);
  absl::StatusOr<Result> result = Run("anyone", {"/bin/echo", "hi"});
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->stdout_data, "hi\n");
}

TEST_F(DispatcherAuthzTest, UnderAPolicyAnUnnamedCallerIsRefusedBeforeAnyFileIsLookedAt) {
  Start(OneRule("ci", [](AuthzRule& r) { r.executables = {File("/bin/true")}; }));
  // Validation would say NOT_FOUND: a caller with no rule learns nothing of the files.
  absl::StatusOr<Command> command = Prepare("mallory", {"/no/such/program"});
  EXPECT_EQ(command.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(command.status().message(), HasSubstr("identity \"mallory\": no rule"));
}

TEST_F(DispatcherAuthzTest, ASymlinkInAnAllowedDirectoryToAForbiddenProgramIsRefused) {
  ASSERT_EQ(symlink("/bin/sh", (allowed_ + "/innocent").c_str()), 0);
  Start(OneRule("ci", [&](AuthzRule& r) { r.executables = {Dir(allowed_)}; }));
  absl::StatusOr<Command> command = Prepare("ci", {allowed_ + "/innocent", "-c", "id"});
  EXPECT_EQ(command.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(command.status().message(),
            absl::StrCat("identity \"ci\": executable ", Real("/bin/sh"), " (argv[0] \"", allowed_,
                         "/innocent\") is not in rule ci.executables (allowed: ", allowed_, "/)"));
}

TEST_F(DispatcherAuthzTest, DotDotOutOfAnAllowedDirectoryIsRefused) {
  Start(OneRule("ci", [&](AuthzRule& r) { r.executables = {Dir(allowed_)}; }));
  std::string escape = allowed_ + "/..";
  for (size_t depth = std::count(allowed_.begin(), allowed_.end(), '/'); depth > 0; --depth) {
    escape += "/..";
  }
  absl::StatusOr<Command> command = Prepare("ci", {escape + "/bin/true"});
  EXPECT_EQ(command.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(command.status().message(),
              HasSubstr(absl::StrCat("executable ", Real("/bin/true"), " (argv[0]")));
}

TEST_F(DispatcherAuthzTest, ADirectoryAllowsWhatIsUnderItNotItsNeighbours) {
  const std::string neighbour = allowed_ + "2";
  ASSERT_EQ(mkdir(neighbour.c_str(), 0700), 0);
  WriteScript(allowed_ + "/ok", "ok");
  WriteScript(neighbour + "/ok", "ok");
  Start(OneRule("ci", [&](AuthzRule& r) { r.executables = {Dir(allowed_)}; }));
  EXPECT_TRUE(Prepare("ci", {allowed_ + "/ok"}).ok());
  EXPECT_EQ(Prepare("ci", {neighbour + "/ok"}).status().code(),
            absl::StatusCode::kPermissionDenied);
}

TEST_F(DispatcherAuthzTest, ABareNameIsCheckedWhereTheServersPathFindsIt) {
  Start(OneRule("ci", [](AuthzRule& r) { r.executables = {File("/bin/true")}; }));
  absl::StatusOr<Command> command = Prepare("ci", {"true"});
  ASSERT_TRUE(command.ok()) << command.status();
  EXPECT_EQ(command->executable, Real("/bin/true"));
  EXPECT_THAT(Prepare("ci", {"false"}).status().message(),
              HasSubstr(absl::StrCat("executable ", Real("/bin/false"), " (argv[0] \"false\")")));
}

TEST_F(DispatcherAuthzTest, WhatRunsIsThePathThatWasChecked) {
  WriteScript(allowed_ + "/real", "real");
  ASSERT_EQ(symlink((allowed_ + "/real").c_str(), (allowed_ + "/link").c_str()), 0);
  Start(OneRule("ci", [&](AuthzRule& r) { r.executables = {Dir(allowed_)}; }));
  absl::StatusOr<Command> command = Prepare("ci", {allowed_ + "/link"});
  ASSERT_TRUE(command.ok()) << command.status();
  EXPECT_EQ(command->executable, Real(allowed_ + "/real"));
  EXPECT_EQ(command->argv[0], allowed_ + "/link");
  // Pointing the link elsewhere now changes nothing for this command.
  WriteScript(allowed_ + "/other", "other");
  ASSERT_EQ(unlink((allowed_ + "/link").c_str()), 0);
  ASSERT_EQ(symlink((allowed_ + "/other").c_str(), (allowed_ + "/link").c_str()), 0);
  CallOptions options;
  options.caller = "ci";
  Sink* sink = sinks_.emplace_back(std::make_unique<Sink>()).get();
  std::shared_ptr<Call> call = dispatcher_->NewCall(std::move(options), sink);
  call->Start(*std::move(command));
  absl::StatusOr<Result> result = sink->Wait();
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->stdout_data, "real\n");
}

TEST_F(DispatcherAuthzTest, EveryProgramOfAPipelineIsChecked) {
  Start(OneRule("ci", [](AuthzRule& r) { r.executables = {File("/bin/echo")}; }));
  CommandRequest request;
  request.argv = {"/bin/echo", "hi"};
  request.pipe_to = {{"/bin/cat"}};
  CallOptions options;
  options.caller = "ci";
  absl::StatusOr<Command> command = dispatcher_->Prepare(std::move(request), "", options);
  EXPECT_THAT(command.status().message(), HasSubstr(absl::StrCat("executable ", Real("/bin/cat"),
                                                                 " (pipe_to[0] \"/bin/cat\")")));
}

TEST_F(DispatcherAuthzTest, APoolsProgramMustBeAllowedBesideThePool) {
  CommandRequest worker;
  worker.argv = {"/bin/cat"};
  absl::StatusOr<Command> command = ValidateRequest(worker, policy_);
  ASSERT_TRUE(command.ok()) << command.status();
  PoolSpec cat;
  cat.name = "cat";
  cat.command = *command;
  cat.max_size = 1;
  cat.fingerprint = "cat";
  Start(OneRule("ci",
                [](AuthzRule& r) {
                  r.pools = {"cat"};
                  r.executables = {File("/bin/echo")};
                }),
        {cat});
  absl::StatusOr<Command> pooled = Prepare("ci", {}, CachePolicy::kOff, "cat");
  EXPECT_EQ(pooled.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(pooled.status().message(),
              HasSubstr(absl::StrCat("executable ", Real("/bin/cat"),
                                     " (the program of pool \"cat\") is not in rule "
                                     "ci.executables")));
  EXPECT_THAT(Prepare("ci", {}, CachePolicy::kOff, "other").status().message(),
              HasSubstr("pool \"other\" is not in rule ci.pools (allowed: cat)"));

  dispatcher_->SetAuthzPolicy(OneRule("ci", [](AuthzRule& r) {
    r.pools = {"cat"};
    r.executables = {File("/bin/cat")};
  }));
  EXPECT_TRUE(Prepare("ci", {}, CachePolicy::kOff, "cat").ok());
}

TEST_F(DispatcherAuthzTest, UnsetLimitsAndPriorityComeUnderTheRule) {
  Start(OneRule("batch", [](AuthzRule& r) {
    r.executables = {File("/bin/true")};
    r.max_priority = 0;
    r.max_timeout = absl::Seconds(5);
    r.max_open_files = 64;
  }));
  absl::StatusOr<Command> command = Prepare("batch", {"/bin/true"});
  ASSERT_TRUE(command.ok()) << command.status();
  EXPECT_EQ(command->priority, 0);
  EXPECT_EQ(command->limits.timeout, absl::Seconds(5));
  EXPECT_EQ(command->limits.max_open_files, 64);
  CommandRequest over;
  over.argv = {"/bin/true"};
  over.max_open_files = 65;
  CallOptions options;
  options.caller = "batch";
  EXPECT_EQ(dispatcher_->Prepare(over, "", options).status().message(),
            "identity \"batch\": limits.max_open_files 65 is over rule "
            "batch.max_limits.max_open_files (64)");
}

// ---- The result cache ----

TEST_F(DispatcherAuthzTest, CallersNeverReadEachOthersEntries) {
  Start(nullptr);
  const std::string runs = dir_.path() + "/runs";
  const std::vector<std::string> command = {"/bin/sh", "-c",
                                            absl::StrCat("echo ran >> ", runs, "; echo hi")};
  absl::StatusOr<Result> stored = Run("alice", command, CachePolicy::kReadWrite);
  ASSERT_TRUE(stored.ok()) << stored.status();
  ASSERT_FALSE(stored->cache_hit);
  // Another caller probing with READ_ONLY learns nothing: it misses, and runs.
  absl::StatusOr<Result> probe = Run("mallory", command, CachePolicy::kReadOnly);
  ASSERT_TRUE(probe.ok()) << probe.status();
  EXPECT_FALSE(probe->cache_hit);
  absl::StatusOr<Result> again = Run("alice", command, CachePolicy::kReadOnly);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_TRUE(again->cache_hit);
  std::ifstream in(runs);
  int n = 0;
  for (std::string line; std::getline(in, line);) ++n;
  EXPECT_EQ(n, 2);
}

TEST_F(DispatcherAuthzTest, WritingAndRefreshingNeedTheRulesPermission) {
  Start(OneRule("ci", [](AuthzRule& r) {
    r.executables = {File("/bin/echo")};
    r.cache[static_cast<size_t>(CachePolicy::kReadOnly)] = true;
  }));
  for (CachePolicy refused : {CachePolicy::kRefresh, CachePolicy::kReadWrite}) {
    absl::StatusOr<Result> result = Run("ci", {"/bin/echo", "planted"}, refused);
    EXPECT_EQ(result.status().code(), absl::StatusCode::kPermissionDenied);
    EXPECT_THAT(result.status().message(),
                HasSubstr("is not in rule ci.cache (allowed: READ_ONLY)"));
  }
  EXPECT_EQ(dispatcher_->stats().cache->entries, 0);
  EXPECT_TRUE(Run("ci", {"/bin/echo", "fine"}, CachePolicy::kReadOnly).ok());
}

TEST_F(DispatcherAuthzTest, AProgramRewrittenWithItsOldModificationTimeMisses) {
  Start(nullptr);
  const std::string script = dir_.path() + "/tool";
  WriteScript(script, "one");
  struct stat before;
  ASSERT_EQ(stat(script.c_str(), &before), 0);
  absl::StatusOr<Result> first = Run("ci", {script}, CachePolicy::kReadWrite);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(first->stdout_data, "one\n");
  // Rewritten in place (same inode, same size), then its mtime set back as `touch -d` does.
  WriteScript(script, "two");
  ASSERT_TRUE(testing::ForgeModificationTime(script, before.st_mtim, before.st_ctim));
  struct stat after;
  ASSERT_EQ(stat(script.c_str(), &after), 0);
  ASSERT_EQ(after.st_ino, before.st_ino);
  ASSERT_EQ(after.st_size, before.st_size);
  absl::StatusOr<Result> second = Run("ci", {script}, CachePolicy::kReadWrite);
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_FALSE(second->cache_hit);
  EXPECT_EQ(second->stdout_data, "two\n");
}

}  // namespace
}  // namespace execd::core
