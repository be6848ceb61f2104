#include "core/scheduler.h"

#include <string>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace execd::core {
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;
using Kind = Scheduler::Admission::Kind;

constexpr int kLow = 0;
constexpr int kNormal = 1;
constexpr int kHigh = 2;
const absl::Time kNever = absl::InfiniteFuture();

TEST(Scheduler, RunsAtOnceUnderTheLimit) {
  Scheduler s(2, 10);
  EXPECT_EQ(s.Submit(1, kNormal, kNever).kind, Kind::kRunNow);
  EXPECT_EQ(s.Submit(2, kNormal, kNever).kind, Kind::kRunNow);
  EXPECT_EQ(s.Submit(3, kNormal, kNever).kind, Kind::kQueued);
  EXPECT_EQ(s.running(), 2);
  EXPECT_EQ(s.queued(), 1u);
}

TEST(Scheduler, ReleasedSlotsGoToHigherPriorityFirstFifoWithin) {
  Scheduler s(1, 10);
  ASSERT_EQ(s.Submit(1, kNormal, kNever).kind, Kind::kRunNow);
  s.Submit(10, kLow, kNever);
  s.Submit(20, kNormal, kNever);
  s.Submit(30, kHigh, kNever);
  s.Submit(21, kNormal, kNever);
  s.Submit(31, kHigh, kNever);
  std::vector<Scheduler::Id> order;
  for (int i = 0; i < 5; ++i) {
    s.Release();
    std::vector<Scheduler::Id> next = s.TakeRunnable();
    ASSERT_EQ(next.size(), 1u);
    order.push_back(next[0]);
  }
  EXPECT_THAT(order, ElementsAre(30, 31, 20, 21, 10));
}

TEST(Scheduler, NewcomerDoesNotOvertakeTheQueueWhenASlotFrees) {
  Scheduler s(1, 10);
  s.Submit(1, kNormal, kNever);
  s.Submit(2, kLow, kNever);
  s.Release();
  // A slot is free, but an entry is waiting: the newcomer queues behind the priority order.
  EXPECT_EQ(s.Submit(3, kLow, kNever).kind, Kind::kQueued);
  EXPECT_THAT(s.TakeRunnable(), ElementsAre(2));
}

TEST(Scheduler, FullQueueRejectsEqualOrLowerPriority) {
  Scheduler s(1, 2);
  s.Submit(1, kNormal, kNever);
  s.Submit(2, kNormal, kNever);
  s.Submit(3, kNormal, kNever);
  Scheduler::Admission a = s.Submit(4, kNormal, kNever);
  EXPECT_EQ(a.kind, Kind::kRejected);
  EXPECT_FALSE(a.displaced.has_value());
  EXPECT_EQ(s.Submit(5, kLow, kNever).kind, Kind::kRejected);
  EXPECT_EQ(s.queued(), 2u);
}

TEST(Scheduler, FullQueueShedsNewestOfLowestPriorityForAHigherOne) {
  Scheduler s(1, 3);
  s.Submit(1, kNormal, kNever);
  s.Submit(10, kLow, kNever);
  s.Submit(11, kLow, kNever);
  s.Submit(20, kNormal, kNever);
  Scheduler::Admission a = s.Submit(30, kHigh, kNever);
  EXPECT_EQ(a.kind, Kind::kQueued);
  ASSERT_TRUE(a.displaced.has_value());
  EXPECT_EQ(*a.displaced, 11u);
  EXPECT_FALSE(a.for_fairness);
  EXPECT_EQ(s.queued(), 3u);
}

TEST(Scheduler, ExpiredEntriesAreTakenInExpiryOrderAndNeverRun) {
  Scheduler s(1, 10);
  absl::Time t0 = absl::UnixEpoch();
  s.Submit(1, kNormal, kNever);
  s.Submit(2, kNormal, t0 + absl::Seconds(2));
  s.Submit(3, kNormal, t0 + absl::Seconds(1));
  s.Submit(4, kNormal, kNever);
  EXPECT_EQ(s.NextExpiry(), t0 + absl::Seconds(1));
  EXPECT_THAT(s.TakeExpired(t0 + absl::Milliseconds(500)), IsEmpty());
  EXPECT_THAT(s.TakeExpired(t0 + absl::Seconds(2)), ElementsAre(3, 2));
  EXPECT_EQ(s.NextExpiry(), kNever);
  s.Release();
  EXPECT_THAT(s.TakeRunnable(), ElementsAre(4));
}

TEST(Scheduler, RemoveTakesAQueuedEntryOut) {
  Scheduler s(1, 10);
  s.Submit(1, kNormal, kNever);
  s.Submit(2, kNormal, absl::UnixEpoch());
  s.Submit(3, kNormal, kNever);
  EXPECT_TRUE(s.Remove(2));
  EXPECT_FALSE(s.Remove(2));
  EXPECT_FALSE(s.Remove(1));  // Running, not queued.
  EXPECT_THAT(s.TakeExpired(absl::InfiniteFuture()), IsEmpty());
  s.Release();
  EXPECT_THAT(s.TakeRunnable(), ElementsAre(3));
}

TEST(Scheduler, RaisingTheLimitAdmitsQueuedEntries) {
  Scheduler s(1, 10);
  for (Scheduler::Id id = 1; id <= 4; ++id) s.Submit(id, kNormal, kNever);
  s.SetLimit(3);
  EXPECT_THAT(s.TakeRunnable(), ElementsAre(2, 3));
  EXPECT_EQ(s.running(), 3);
}

TEST(Scheduler, LoweringTheLimitLetsRunningFinishButAdmitsNothing) {
  Scheduler s(3, 10);
  for (Scheduler::Id id = 1; id <= 4; ++id) s.Submit(id, kNormal, kNever);
  s.SetLimit(1);
  s.Release();
  EXPECT_THAT(s.TakeRunnable(), IsEmpty());
  s.Release();
  EXPECT_THAT(s.TakeRunnable(), IsEmpty());
  s.Release();
  EXPECT_THAT(s.TakeRunnable(), ElementsAre(4));
}

TEST(Scheduler, LimitIsAtLeastOne) {
  Scheduler s(0, 10);
  EXPECT_EQ(s.limit(), 1);
  s.SetLimit(-5);
  EXPECT_EQ(s.limit(), 1);
}

TEST(Scheduler, ZeroQueueRejectsWhenFull) {
  Scheduler s(1, 0);
  EXPECT_EQ(s.Submit(1, kHigh, kNever).kind, Kind::kRunNow);
  EXPECT_EQ(s.Submit(2, kHigh, kNever).kind, Kind::kRejected);
}

TEST(Scheduler, TakeAllQueuedEmptiesTheQueueBestFirst) {
  Scheduler s(1, 10);
  s.Submit(1, kNormal, kNever);
  s.Submit(2, kLow, kNever);
  s.Submit(3, kHigh, absl::UnixEpoch());
  EXPECT_THAT(s.TakeAllQueued(), ElementsAre(3, 2));
  EXPECT_EQ(s.queued(), 0u);
  EXPECT_EQ(s.NextExpiry(), kNever);
}

}  // namespace
}  // namespace execd::core

namespace execd::core {
namespace {

// Groups are worker pools: each has its own limit inside the global one.
TEST(SchedulerGroups, AFullGroupWaitsWithoutHoldingUpOthers) {
  Scheduler s(/*limit=*/4, /*max_queue=*/10);
  s.SetGroupLimit(1, 1);
  EXPECT_EQ(s.Submit(1, 1, absl::InfiniteFuture(), /*group=*/1).kind,
            Scheduler::Admission::Kind::kRunNow);
  // The group is full: its next entry queues, even at a higher priority...
  EXPECT_EQ(s.Submit(2, 2, absl::InfiniteFuture(), 1).kind, Scheduler::Admission::Kind::kQueued);
  // ...while entries outside it still run at once.
  EXPECT_EQ(s.Submit(3, 0, absl::InfiniteFuture()).kind, Scheduler::Admission::Kind::kRunNow);
  EXPECT_TRUE(s.TakeRunnable().empty());
  s.Release(1);
  EXPECT_THAT(s.TakeRunnable(), ::testing::ElementsAre(2));
  EXPECT_EQ(s.running(), 2);
}

TEST(SchedulerGroups, TheGlobalLimitStillAppliesToGroups) {
  Scheduler s(/*limit=*/1, /*max_queue=*/10);
  s.SetGroupLimit(1, 5);
  EXPECT_EQ(s.Submit(1, 1, absl::InfiniteFuture(), 1).kind, Scheduler::Admission::Kind::kRunNow);
  EXPECT_EQ(s.Submit(2, 1, absl::InfiniteFuture(), 1).kind, Scheduler::Admission::Kind::kQueued);
  s.Release(1);
  EXPECT_THAT(s.TakeRunnable(), ::testing::ElementsAre(2));
}

TEST(SchedulerGroups, AnEntryPassedOverKeepsItsPlaceInTheQueue) {
  Scheduler s(/*limit=*/2, /*max_queue=*/10);
  s.SetGroupLimit(1, 1);
  s.Submit(1, 1, absl::InfiniteFuture(), 1);  // Runs; group 1 full.
  s.Submit(2, 1, absl::InfiniteFuture());     // Runs; global limit reached.
  s.Submit(3, 1, absl::InfiniteFuture(), 1);  // Queued behind its group.
  s.Submit(4, 1, absl::InfiniteFuture());     // Queued behind the limit.
  s.Release(0);                               // Entry 2 ends: 4 can run, 3 cannot.
  EXPECT_THAT(s.TakeRunnable(), ::testing::ElementsAre(4));
  s.Release(1);  // Entry 1 ends: now 3.
  EXPECT_THAT(s.TakeRunnable(), ::testing::ElementsAre(3));
}

}  // namespace
}  // namespace execd::core

namespace execd::core {
namespace {

using ::testing::ElementsAre;
using Kind = Scheduler::Admission::Kind;
const absl::Time kForever = absl::InfiniteFuture();

// Frees one slot of `tenant` and returns the one entry that takes it.
Scheduler::Id ReleaseAndTakeOne(Scheduler& s, absl::string_view tenant) {
  s.Release(0, tenant);
  std::vector<Scheduler::Id> next = s.TakeRunnable();
  EXPECT_EQ(next.size(), 1u);
  return next.empty() ? 0 : next[0];
}

TEST(SchedulerFairness, OneTenantFloodingDoesNotTakeEveryFreedSlot) {
  Scheduler s(/*limit=*/2, /*max_queue=*/100);
  ASSERT_EQ(s.Submit(1, kNormal, kForever, 0, "flood").kind, Kind::kRunNow);
  ASSERT_EQ(s.Submit(2, kNormal, kForever, 0, "flood").kind, Kind::kRunNow);
  for (Scheduler::Id id = 3; id < 50; ++id) s.Submit(id, kNormal, kForever, 0, "flood");
  s.Submit(100, kNormal, kForever, 0, "other");  // Queued behind 47 of flood's.
  // flood runs 1 after the release, other 0: other goes next.
  EXPECT_EQ(ReleaseAndTakeOne(s, "flood"), 100u);
  EXPECT_EQ(s.running("flood"), 1);
  EXPECT_EQ(s.running("other"), 1);
  // Then flood's, oldest first.
  EXPECT_EQ(ReleaseAndTakeOne(s, "other"), 3u);
  EXPECT_EQ(ReleaseAndTakeOne(s, "flood"), 4u);
}

TEST(SchedulerFairness, SlotsAlternateBetweenTwoBusyTenants) {
  Scheduler s(1, 100);
  s.Submit(1, kNormal, kForever, 0, "a");
  for (Scheduler::Id id = 10; id < 14; ++id) s.Submit(id, kNormal, kForever, 0, "a");
  for (Scheduler::Id id = 20; id < 24; ++id) s.Submit(id, kNormal, kForever, 0, "b");
  std::vector<Scheduler::Id> order;
  std::string last = "a";
  for (int i = 0; i < 8; ++i) {
    const Scheduler::Id id = ReleaseAndTakeOne(s, last);
    order.push_back(id);
    last = id < 20 ? "a" : "b";
  }
  // Under a limit of one both always run nothing when a slot frees: the tie goes to the
  // one that started something least recently (b, which never has), not to the oldest entry.
  EXPECT_THAT(order, ElementsAre(20, 10, 21, 11, 22, 12, 23, 13));
}

TEST(SchedulerFairness, SharesAreWeights) {
  Scheduler s(/*limit=*/3, 100);
  s.SetShares({{"big", 2}}, /*default_share=*/1);
  for (Scheduler::Id id = 1; id <= 3; ++id) s.Submit(id, kNormal, kForever, 0, "small");
  for (Scheduler::Id id = 10; id < 20; ++id) s.Submit(id, kNormal, kForever, 0, "big");
  for (Scheduler::Id id = 30; id < 40; ++id) s.Submit(id, kNormal, kForever, 0, "small");
  // As small's commands end, the slots settle at two for big (share 2), one for small.
  std::vector<Scheduler::Id> order;
  for (int i = 0; i < 3; ++i) order.push_back(ReleaseAndTakeOne(s, "small"));
  EXPECT_THAT(order, ElementsAre(10, 11, 30));
  EXPECT_EQ(s.running("big"), 2);
  EXPECT_EQ(s.running("small"), 1);
  EXPECT_EQ(ReleaseAndTakeOne(s, "big"), 12u);    // big 1/2 < small 1/1.
  EXPECT_EQ(ReleaseAndTakeOne(s, "small"), 31u);  // small 0/1 < big 2/2.
}

TEST(SchedulerFairness, ChangedSharesApplyToQueuedEntries) {
  Scheduler s(/*limit=*/3, 100);
  s.Submit(1, kNormal, kForever, 0, "a");
  s.Submit(3, kNormal, kForever, 0, "b");
  s.Submit(2, kNormal, kForever, 0, "a");
  s.Submit(20, kNormal, kForever, 0, "b");
  s.Submit(10, kNormal, kForever, 0, "a");
  // Equal shares: a 1/1 = b 1/1 after a's release, and b started one less recently. With a
  // share of 3, a's 1/3 comes first.
  s.SetShares({{"a", 3}});
  EXPECT_EQ(ReleaseAndTakeOne(s, "a"), 10u);
}

TEST(SchedulerFairness, PriorityComesBeforeFairness) {
  Scheduler s(1, 100);
  s.Submit(1, kNormal, kForever, 0, "flood");
  s.Submit(10, kLow, kForever, 0, "other");
  s.Submit(20, kHigh, kForever, 0, "flood");
  EXPECT_EQ(ReleaseAndTakeOne(s, "flood"), 20u);
  EXPECT_EQ(ReleaseAndTakeOne(s, "flood"), 10u);
}

TEST(SchedulerFairness, ATenantsEntryOfAFullGroupDoesNotHoldUpItsOthers) {
  Scheduler s(/*limit=*/3, 100);
  s.SetGroupLimit(1, 1);
  s.Submit(1, kNormal, kForever, 1, "a");  // Runs; group 1 is full.
  s.Submit(2, kNormal, kForever, 0, "b");
  s.Submit(3, kNormal, kForever, 0, "b");
  s.Submit(10, kNormal, kForever, 1, "a");  // Waits for its group,
  s.Submit(11, kNormal, kForever, 0, "a");  // and its tenant's next entry goes past it.
  EXPECT_EQ(ReleaseAndTakeOne(s, "b"), 11u);
  s.Release(1, "a");
  EXPECT_THAT(s.TakeRunnable(), ElementsAre(10));
}

TEST(SchedulerFairness, ThousandsQueuedFromManyTenantsAllRunOnceEach) {
  Scheduler s(/*limit=*/4, /*max_queue=*/20000);
  for (Scheduler::Id id = 0; id < 4; ++id) s.Submit(id, kNormal, kForever, 0, "t0");
  for (Scheduler::Id id = 4; id < 20000; ++id) {
    s.Submit(id, static_cast<int>(id % 3), kForever, 0, absl::StrCat("t", id % 500));
  }
  absl::flat_hash_set<Scheduler::Id> ran;
  std::vector<std::string> running = {"t0", "t0", "t0", "t0"};
  while (s.queued() > 0) {
    s.Release(0, running.back());
    running.pop_back();
    for (Scheduler::Id id : s.TakeRunnable()) {
      EXPECT_TRUE(ran.insert(id).second);
      running.insert(running.begin(), absl::StrCat("t", id % 500));
    }
  }
  EXPECT_EQ(ran.size(), 19996u);
}

}  // namespace
}  // namespace execd::core

namespace execd::core {
namespace {

TEST(SchedulerFairness, AFullQueueMakesRoomForACallerWithFewerQueued) {
  Scheduler s(/*limit=*/1, /*max_queue=*/4);
  const absl::Time never = absl::InfiniteFuture();
  s.Submit(1, kNormal, never, 0, "flood");
  for (Scheduler::Id id = 2; id <= 5; ++id) s.Submit(id, kNormal, never, 0, "flood");
  // flood has 4 queued; other would have 1: flood's newest makes room.
  Scheduler::Admission a = s.Submit(10, kNormal, never, 0, "other");
  EXPECT_EQ(a.kind, Scheduler::Admission::Kind::kQueued);
  ASSERT_TRUE(a.displaced.has_value());
  EXPECT_EQ(*a.displaced, 5u);
  EXPECT_TRUE(a.for_fairness);
  a = s.Submit(11, kNormal, never, 0, "other");
  ASSERT_EQ(a.kind, Scheduler::Admission::Kind::kQueued);
  EXPECT_EQ(*a.displaced, 4u);
  // 2 each: another of other's would leave it more than flood; and flood's own newcomer
  // displaces nothing of its own.
  EXPECT_EQ(s.Submit(12, kNormal, never, 0, "other").kind, Scheduler::Admission::Kind::kRejected);
  EXPECT_EQ(s.Submit(6, kNormal, never, 0, "flood").kind, Scheduler::Admission::Kind::kRejected);
  // A lower priority's entries still go first, and a higher priority's are never taken.
  EXPECT_EQ(s.Submit(20, kLow, never, 0, "third").kind, Scheduler::Admission::Kind::kRejected);
}

TEST(SchedulerFairness, AFullQueueMakesRoomByShare) {
  Scheduler s(/*limit=*/1, /*max_queue=*/4);
  s.SetShares({{"big", 3}});
  const absl::Time never = absl::InfiniteFuture();
  s.Submit(1, kNormal, never, 0, "big");
  for (Scheduler::Id id = 2; id <= 4; ++id) s.Submit(id, kNormal, never, 0, "big");
  s.Submit(10, kNormal, never, 0, "small");
  // big has 3 for a share of 3, small would have 2 for 1: nothing to take.
  EXPECT_EQ(s.Submit(11, kNormal, never, 0, "small").kind, Scheduler::Admission::Kind::kRejected);
}

}  // namespace
}  // namespace execd::core
