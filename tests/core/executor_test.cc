#include "core/executor.h"

#include <atomic>
#include <memory>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"

namespace execd::core {
namespace {

// Waits (bounded) until `counter` reaches `target`.
bool WaitForCount(std::atomic<int64_t>& counter, int64_t target) {
  absl::Time deadline = absl::Now() + absl::Seconds(30);
  absl::Mutex mu;
  absl::MutexLock lock(&mu);
  auto reached = [&] { return counter.load() >= target || absl::Now() >= deadline; };
  while (!reached()) mu.AwaitWithTimeout(absl::Condition(&reached), absl::Milliseconds(1));
  return counter.load() >= target;
}

template <typename Pool>
class PoolTest : public ::testing::Test {};
using Pools = ::testing::Types<WorkStealingExecutor, MutexPool>;
TYPED_TEST_SUITE(PoolTest, Pools);

TYPED_TEST(PoolTest, EveryTaskFromManySubmittersRunsExactlyOnce) {
  constexpr int kSubmitters = 4;
  constexpr int kPerSubmitter = 25000;
  std::vector<std::atomic<int>> runs(kSubmitters * kPerSubmitter);
  std::atomic<int64_t> done{0};
  {
    TypeParam pool(3);
    std::vector<std::thread> submitters;
    for (int s = 0; s < kSubmitters; ++s) {
      submitters.emplace_back([&, s] {
        for (int i = 0; i < kPerSubmitter; ++i) {
          pool.Submit([&, k = s * kPerSubmitter + i] {
            runs[k].fetch_add(1);
            done.fetch_add(1);
          });
        }
      });
    }
    for (auto& t : submitters) t.join();
    ASSERT_TRUE(WaitForCount(done, kSubmitters * kPerSubmitter));
  }
  for (const auto& r : runs) ASSERT_EQ(r.load(), 1);
}

TYPED_TEST(PoolTest, TasksSubmittedFromTasksRun) {
  std::atomic<int64_t> leaves{0};
  TypeParam pool(2);
  // A binary tree of depth 12 built by tasks submitting tasks: 4,096 leaves.
  std::function<void(int)> split = [&](int depth) {
    if (depth == 0) {
      leaves.fetch_add(1);
      return;
    }
    pool.Submit([&, depth] { split(depth - 1); });
    pool.Submit([&, depth] { split(depth - 1); });
  };
  pool.Submit([&] { split(12); });
  EXPECT_TRUE(WaitForCount(leaves, 4096));
}

TYPED_TEST(PoolTest, DestructionRunsQueuedTasksAndJoins) {
  std::atomic<int64_t> ran{0};
  {
    TypeParam pool(2);
    for (int i = 0; i < 10000; ++i) pool.Submit([&] { ran.fetch_add(1); });
  }
  EXPECT_EQ(ran.load(), 10000);
}

TYPED_TEST(PoolTest, AnIdlePoolWakesForEachLoneSubmission) {
  TypeParam pool(2);
  for (int round = 0; round < 1000; ++round) {
    absl::Notification done;
    pool.Submit([&] { done.Notify(); });
    ASSERT_TRUE(done.WaitForNotificationWithTimeout(absl::Seconds(10))) << "round " << round;
  }
}

TEST(WorkStealingExecutor, CurrentIsTheExecutorOnItsWorkersOnly) {
  WorkStealingExecutor pool(2);
  EXPECT_EQ(WorkStealingExecutor::Current(), nullptr);
  absl::Notification done;
  std::atomic<WorkStealingExecutor*> seen{nullptr};
  pool.Submit([&] {
    seen = WorkStealingExecutor::Current();
    done.Notify();
  });
  ASSERT_TRUE(done.WaitForNotificationWithTimeout(absl::Seconds(10)));
  EXPECT_EQ(seen, &pool);
}

TEST(WorkStealingDeque, OwnerAndThievesTakeEachItemExactlyOnceAcrossGrowth) {
  constexpr int kItems = 200000;
  WorkStealingDeque<int> deque(/*capacity=*/16);  // Grows many times.
  std::vector<int> items(kItems);
  std::vector<std::atomic<int>> taken(kItems);
  std::atomic<int> total{0};
  std::atomic<bool> owner_done{false};
  auto record = [&](int* item) {
    taken[item - items.data()].fetch_add(1);
    total.fetch_add(1);
  };
  std::vector<std::thread> thieves;
  for (int t = 0; t < 3; ++t) {
    thieves.emplace_back([&] {
      while (!owner_done.load() || total.load() < kItems) {
        if (int* item = deque.Steal()) record(item);
        if (owner_done.load() && deque.Empty()) break;
      }
    });
  }
  for (int i = 0; i < kItems; ++i) {
    deque.Push(&items[i]);
    if (i % 3 == 0) {
      if (int* item = deque.Take()) record(item);
    }
  }
  while (int* item = deque.Take()) record(item);
  owner_done.store(true);
  for (auto& t : thieves) t.join();
  EXPECT_EQ(total.load(), kItems);
  for (int i = 0; i < kItems; ++i) ASSERT_EQ(taken[i].load(), 1) << "item " << i;
}

TEST(WorkStealingDeque, OwnerTakesNewestThiefStealsOldest) {
  WorkStealingDeque<int> deque(4);
  int a = 1, b = 2, c = 3;
  deque.Push(&a);
  deque.Push(&b);
  deque.Push(&c);
  EXPECT_EQ(deque.Steal(), &a);
  EXPECT_EQ(deque.Take(), &c);
  EXPECT_EQ(deque.Take(), &b);
  EXPECT_EQ(deque.Take(), nullptr);
  EXPECT_EQ(deque.Steal(), nullptr);
  EXPECT_TRUE(deque.Empty());
}

}  // namespace
}  // namespace execd::core
