// The engine under resource exhaustion injected through ProcessOs (EMFILE on pipe, EAGAIN
// on spawn): the request gets RESOURCE_EXHAUSTED, nothing leaks, and the engine serves
// again as soon as resources return.

#include <atomic>

#include "absl/synchronization/notification.h"
#include "core/engine.h"
#include "core/errno_status.h"
#include "core/validate.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/support/subprocess.h"

namespace execd::core {
namespace {

using ::testing::HasSubstr;

// The real OS, except that the `pipe_failure_in`-th pipe from now fails (once), and the
// next `fail_spawns` spawns fail.
class FailingOs final : public ProcessOs {
 public:
  std::atomic<int> pipe_failure_in{0};
  std::atomic<int> fail_spawns{0};

  absl::StatusOr<std::pair<UniqueFd, UniqueFd>> Pipe() override {
    if (pipe_failure_in.fetch_sub(1) == 1) return ErrnoToStatus(EMFILE, "pipe2");
    return SystemProcessOs().Pipe();
  }
  absl::StatusOr<SpawnedProcess> Spawn(const SpawnSpec& spec) override {
    if (fail_spawns.fetch_sub(1) > 0) return ErrnoToStatus(EAGAIN, "clone");
    return SystemProcessOs().Spawn(spec);
  }
};

class Waiter final : public Engine::Observer {
 public:
  void OnFinished(absl::StatusOr<Result> result) override {
    result_ = std::move(result);
    done_.Notify();
  }
  absl::StatusOr<Result> Get() {
    EXPECT_TRUE(done_.WaitForNotificationWithTimeout(absl::Seconds(10)));
    return result_;
  }

 private:
  absl::Notification done_;
  absl::StatusOr<Result> result_ = absl::UnknownError("no result");
};

class EngineFailureTest : public ::testing::Test {
 protected:
  void SetUp() override {
    Engine::Options options;
    options.os = &os_;
    auto engine = Engine::Create(options);
    ASSERT_TRUE(engine.ok()) << engine.status();
    engine_ = *std::move(engine);
    policy_ = RequestPolicy::FromProcessEnvironment();
    policy_.server_env["PATH"] = "/usr/bin:/bin";
  }

  absl::StatusOr<Result> Run(std::vector<std::string> argv, std::string stdin_data = "") {
    CommandRequest request;
    request.argv = std::move(argv);
    request.stdin_data = std::move(stdin_data);
    auto command = ValidateRequest(std::move(request), policy_);
    if (!command.ok()) return command.status();
    Waiter waiter;
    auto execution = engine_->Submit(*std::move(command), &waiter);
    if (!execution.ok()) return execution.status();
    return waiter.Get();
  }

  FailingOs os_;
  std::unique_ptr<Engine> engine_;
  RequestPolicy policy_;
};

TEST_F(EngineFailureTest, OutOfDescriptorsIsResourceExhaustedAndRecovers) {
  ASSERT_TRUE(Run({"/bin/true"}).ok());  // Warm up: the engine's own descriptors exist.
  const int before = testing::OpenDescriptors();
  // The stdin, stdout and stderr pipes fail in turn, so each partial set-up is unwound.
  for (int failing_pipe = 1; failing_pipe <= 3; ++failing_pipe) {
    os_.pipe_failure_in = failing_pipe;
    auto result = Run({"/bin/cat"}, "input");
    EXPECT_EQ(result.status().code(), absl::StatusCode::kResourceExhausted) << failing_pipe;
    EXPECT_THAT(result.status().message(), HasSubstr("pipe2"));
    EXPECT_EQ(testing::OpenDescriptors(), before)
        << "leak after pipe " << failing_pipe << " failed";
  }
  os_.pipe_failure_in = 0;
  EXPECT_EQ(testing::OpenDescriptors(), before);
  auto result = Run({"/bin/echo", "back"});
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->stdout_data, "back\n");
}

TEST_F(EngineFailureTest, OutOfProcessesIsResourceExhaustedAndRecovers) {
  ASSERT_TRUE(Run({"/bin/true"}).ok());
  const int before = testing::OpenDescriptors();
  os_.fail_spawns = 5;
  for (int i = 0; i < 5; ++i) {
    auto result = Run({"/bin/true"});
    EXPECT_EQ(result.status().code(), absl::StatusCode::kResourceExhausted);
    EXPECT_THAT(result.status().message(), HasSubstr("clone"));
  }
  EXPECT_EQ(testing::OpenDescriptors(), before);
  EXPECT_EQ(engine_->stats().running, 0);  // Failed spawns gave their slots back.
  auto result = Run({"/bin/echo", "back"});
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->stdout_data, "back\n");
}

}  // namespace
}  // namespace execd::core
