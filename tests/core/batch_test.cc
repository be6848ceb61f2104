// core::Batch without gRPC: how many items run at once, fail_fast, and items waiting for the
// memory the batch itself holds. Items are real spawns on a real Engine; one that must stay
// running reads a line from a FIFO the test holds open, so every wait is for an event.
#include "core/batch.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/support/subprocess.h"

namespace execd::core {
namespace {

using ::testing::HasSubstr;

constexpr int64_t kMiB = 1 << 20;

// Records each item's end and the batch's.
class Sink final : public BatchSink {
 public:
  void OnItem(int index, absl::StatusOr<Result> result) override {
    absl::MutexLock lock(&mu_);
    items_.emplace_back(index, std::move(result));
  }
  void OnEnd(absl::Status status) override {
    end_ = status;
    ended_.Notify();
  }
  size_t reported() {
    absl::MutexLock lock(&mu_);
    return items_.size();
  }
  std::vector<std::pair<int, absl::StatusOr<Result>>> items() {
    absl::MutexLock lock(&mu_);
    return items_;
  }
  absl::Status Wait() {
    EXPECT_TRUE(ended_.WaitForNotificationWithTimeout(absl::Seconds(30)));
    return end_;
  }

 private:
  absl::Mutex mu_;
  std::vector<std::pair<int, absl::StatusOr<Result>>> items_ ABSL_GUARDED_BY(mu_);
  absl::Notification ended_;
  absl::Status end_;
};

class BatchTest : public ::testing::Test {
 protected:
  void SetUp() override {
    policy_ = RequestPolicy::FromProcessEnvironment();
    policy_.server_env["PATH"] = "/usr/bin:/bin";
    fifo_ = dir_.path() + "/gate";
    ASSERT_EQ(mkfifo(fifo_.c_str(), 0600), 0);
    gate_ = open(fifo_.c_str(), O_RDWR | O_CLOEXEC);  // Held open: readers never see EOF.
    ASSERT_GE(gate_, 0);
  }
  void TearDown() override {
    if (engine_ != nullptr) engine_->Shutdown(absl::ZeroDuration());
    dispatcher_.reset();
    engine_.reset();
    close(gate_);
  }

  void StartEngine(int max_concurrency, int64_t memory_budget_bytes = 0) {
    Engine::Options options;
    options.max_concurrency = max_concurrency;
    auto engine = Engine::Create(options);
    ASSERT_TRUE(engine.ok()) << engine.status();
    engine_ = *std::move(engine);
    dispatcher_ =
        std::make_unique<Dispatcher>(*engine_, policy_, CacheSettings{}, memory_budget_bytes);
  }

  // A batch whose item i runs `scripts(i)` with /bin/sh; counts the items prepared.
  std::shared_ptr<Batch> NewBatch(Batch::Options options, std::function<std::string(int)> script,
                                  Sink* sink) {
    return Batch::Create(
        *dispatcher_, options,
        [this, script](int index, CallOptions* call) -> absl::StatusOr<Command> {
          ++prepared_;
          CommandRequest request;
          request.argv = {"/bin/sh", "-c", script(index)};
          call->shape = CallShape::kUnary;
          return dispatcher_->Prepare(std::move(request), "");
        },
        sink);
  }

  // One item blocked on the gate goes on.
  void Open() { ASSERT_EQ(write(gate_, "go\n", 3), 3); }
  std::string Gated() const { return absl::StrCat("read x < ", fifo_); }

  testing::ScopedTempDir dir_{"batch"};
  std::string fifo_;
  int gate_ = -1;
  RequestPolicy policy_;
  std::unique_ptr<Engine> engine_;
  std::unique_ptr<Dispatcher> dispatcher_;
  std::atomic<int> prepared_{0};
};

TEST_F(BatchTest, NoMoreItemsRunAtOnceThanTheConcurrencyLimit) {
  StartEngine(/*max_concurrency=*/2);
  Sink sink;
  Batch::Options options;
  options.total = 5;
  options.max_parallel = 10;  // Asks for more than the server runs at once.
  auto batch = NewBatch(
      options, [&](int) { return Gated(); }, &sink);
  batch->Start();
  ASSERT_TRUE(testing::WaitFor([&] { return engine_->stats().running == 2; }, absl::Seconds(30)));
  EXPECT_EQ(prepared_, 2) << "an item started past the concurrency limit";
  EXPECT_EQ(engine_->stats().queued, 0u) << "the batch queued items instead of holding them";
  for (int i = 0; i < 5; ++i) {
    Open();
    // Each item ended starts the next one.
    ASSERT_TRUE(testing::WaitFor([&] { return sink.reported() == static_cast<size_t>(i + 1); },
                                 absl::Seconds(30)));
    batch->Written(sink.items().back().first);
    batch->Start();
  }
  EXPECT_TRUE(sink.Wait().ok());
  EXPECT_EQ(prepared_, 5);
}

// The auto-tuner moves the limit while a batch runs: each item starts under the limit in
// force when it starts, up or down.
TEST_F(BatchTest, EachItemStartsUnderTheLimitInForceThen) {
  StartEngine(/*max_concurrency=*/1);
  Sink sink;
  Batch::Options options;
  options.total = 6;  // max_parallel unset: the concurrency limit.
  auto batch = NewBatch(
      options, [&](int) { return Gated(); }, &sink);
  batch->Start();
  ASSERT_TRUE(testing::WaitFor([&] { return engine_->stats().running == 1; }, absl::Seconds(30)));
  auto end_one = [&](size_t reported) {
    Open();
    ASSERT_TRUE(testing::WaitFor([&] { return sink.reported() == reported; }, absl::Seconds(30)));
    batch->Written(sink.items().back().first);
    batch->Start();
  };
  engine_->SetConcurrencyLimit(3);
  end_one(1);  // Items 1, 2 and 3 start under the raised limit.
  ASSERT_TRUE(testing::WaitFor([&] { return engine_->stats().running == 3; }, absl::Seconds(30)));
  EXPECT_EQ(prepared_, 4);
  engine_->SetConcurrencyLimit(1);
  end_one(2);  // Two still run, more than the lowered limit: nothing starts.
  end_one(3);
  EXPECT_EQ(prepared_, 4);
  end_one(4);  // None runs: item 4 starts, alone.
  ASSERT_TRUE(testing::WaitFor([&] { return engine_->stats().running == 1; }, absl::Seconds(30)));
  EXPECT_EQ(prepared_, 5);
  end_one(5);
  end_one(6);
  EXPECT_TRUE(sink.Wait().ok());
  EXPECT_EQ(prepared_, 6);
}

TEST_F(BatchTest, FailFastStopsTheItemsAfterAFailure) {
  StartEngine(/*max_concurrency=*/4);
  Sink sink;
  Batch::Options options;
  options.total = 4;
  options.max_parallel = 1;
  options.fail_fast = true;
  auto batch = NewBatch(
      options, [](int i) { return i == 1 ? "exit 3" : "true"; }, &sink);
  batch->Start();
  EXPECT_TRUE(sink.Wait().ok());
  auto items = sink.items();
  ASSERT_EQ(items.size(), 4u);
  EXPECT_EQ(prepared_, 2);  // The later items never ran.
  for (const auto& [index, result] : items) {
    if (index <= 1) {
      ASSERT_TRUE(result.ok()) << result.status();
      EXPECT_EQ(result->status.code, index == 0 ? 0 : 3);
    } else {
      EXPECT_EQ(result.status().code(), absl::StatusCode::kCancelled);
      EXPECT_THAT(result.status().message(), HasSubstr("fail_fast after item 1"));
    }
  }
}

TEST_F(BatchTest, AnItemWaitsForTheMemoryItsBatchHoldsUntilAResultIsWritten) {
  // 8 MiB budget: a batch may hold 4 MiB, two items of 1 MiB output (2 MiB each).
  StartEngine(/*max_concurrency=*/8, /*memory_budget_bytes=*/8 * kMiB);
  Sink sink;
  Batch::Options options;
  options.total = 3;
  auto batch = NewBatch(
      options, [](int) { return "echo hi"; }, &sink);
  batch->Start();
  ASSERT_TRUE(testing::WaitFor([&] { return sink.reported() == 2; }, absl::Seconds(30)));
  EXPECT_EQ(prepared_, 3);
  EXPECT_EQ(dispatcher_->budget().in_use(), 4 * kMiB) << "the unwritten results hold it";
  EXPECT_EQ(sink.reported(), 2u) << "the third item ran past the batch's share";
  batch->Written(sink.items().front().first);
  batch->Start();
  EXPECT_TRUE(sink.Wait().ok());
  EXPECT_EQ(sink.reported(), 3u);
}

TEST_F(BatchTest, CancelEndsRunningAndWaitingItems) {
  StartEngine(/*max_concurrency=*/1);
  Sink sink;
  Batch::Options options;
  options.total = 3;
  auto batch = NewBatch(
      options, [&](int) { return Gated(); }, &sink);
  batch->Start();
  ASSERT_TRUE(testing::WaitFor([&] { return engine_->stats().running == 1; }, absl::Seconds(30)));
  batch->Cancel();
  EXPECT_EQ(sink.Wait().code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(prepared_, 1);
  EXPECT_TRUE(testing::WaitFor([&] { return engine_->stats().running == 0; }, absl::Seconds(30)));
}

}  // namespace
}  // namespace execd::core
