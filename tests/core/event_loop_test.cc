#include "core/event_loop.h"

#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace execd::core {
namespace {

TEST(EventLoop, PostedTasksRunOnTheLoopThreadInOrder) {
  auto loop = EventLoop::Start();
  ASSERT_TRUE(loop.ok());
  absl::Notification done;
  std::vector<int> order;  // Touched only on the loop thread.
  bool on_loop = true;
  for (int i = 0; i < 100; ++i) {
    (*loop)->Post([&, i]() mutable {
      on_loop = on_loop && (*loop)->IsLoopThread();
      order.push_back(i);
      if (i == 99) done.Notify();
    });
  }
  ASSERT_TRUE(done.WaitForNotificationWithTimeout(absl::Seconds(5)));
  EXPECT_TRUE(on_loop);
  EXPECT_FALSE((*loop)->IsLoopThread());
  ASSERT_EQ(order.size(), 100u);
  for (int i = 0; i < 100; ++i) EXPECT_EQ(order[i], i);
}

// RunOnLoop runs a task at once when called on the loop thread (before it returns, ahead
// of tasks posted earlier), and from another thread posts it to run on the loop.
TEST(EventLoop, RunOnLoopRunsAtOnceOnTheLoopAndPostsFromElsewhere) {
  auto loop = EventLoop::Start();
  ASSERT_TRUE(loop.ok());
  absl::Notification done;
  std::vector<std::string> order;  // Touched only on the loop thread.
  bool from_other_thread_on_loop = false;
  (*loop)->RunOnLoop([&]() mutable {
    from_other_thread_on_loop = (*loop)->IsLoopThread();
    (*loop)->Post([&]() mutable {
      order.push_back("posted");
      done.Notify();
    });
    (*loop)->RunOnLoop([&]() mutable { order.push_back("inline"); });
    order.push_back("after");
  });
  ASSERT_TRUE(done.WaitForNotificationWithTimeout(absl::Seconds(5)));
  EXPECT_TRUE(from_other_thread_on_loop);
  EXPECT_THAT(order, ::testing::ElementsAre("inline", "after", "posted"));
}

// A task posted from the loop thread sends no wake-up; the loop must still run it before it
// sleeps, whether it was posted by a task, a timer, or a descriptor handler, and with
// nothing else due for a long time.
TEST(EventLoop, TasksPostedFromTheLoopThreadRunWithoutAnotherWakeUp) {
  auto loop = EventLoop::Start();
  ASSERT_TRUE(loop.ok());
  EventLoop& l = **loop;
  // Something due an hour away, so an idle loop would sleep that long.
  absl::Notification far_timer_added;
  l.Post([&]() mutable {
    l.AddTimer(l.clock().Now() + absl::Hours(1), [] {});
    far_timer_added.Notify();
  });
  ASSERT_TRUE(far_timer_added.WaitForNotificationWithTimeout(absl::Seconds(5)));

  absl::Notification from_task, from_timer, from_chain;
  l.Post([&]() mutable { l.Post([&]() mutable { from_task.Notify(); }); });
  ASSERT_TRUE(from_task.WaitForNotificationWithTimeout(absl::Seconds(5)));
  l.Post([&]() mutable {
    l.AddTimer(l.clock().Now(), [&]() mutable { l.Post([&]() mutable { from_timer.Notify(); }); });
  });
  ASSERT_TRUE(from_timer.WaitForNotificationWithTimeout(absl::Seconds(5)));
  // From a descriptor handler (as a child's exit is reported).
  class PostOnReady final : public EventLoop::FdHandler {
   public:
    PostOnReady(EventLoop& loop, absl::Notification& done) : loop_(loop), done_(done) {}
    void OnFdReady(int fd, uint32_t) override {
      loop_.Unwatch(fd);
      loop_.Post([this]() mutable { done_.Notify(); });
    }

   private:
    EventLoop& loop_;
    absl::Notification& done_;
  };
  absl::Notification from_handler;
  PostOnReady handler(l, from_handler);
  int fd = eventfd(1, EFD_CLOEXEC);  // Readable at once.
  l.Post([&]() mutable { ASSERT_TRUE(l.Watch(fd, EPOLLIN, &handler).ok()); });
  ASSERT_TRUE(from_handler.WaitForNotificationWithTimeout(absl::Seconds(5)));
  close(fd);
  // A task that posts a task that posts a task: each is run by a later turn of the loop.
  l.Post(
      [&]() mutable { l.Post([&]() mutable { l.Post([&]() mutable { from_chain.Notify(); }); }); });
  ASSERT_TRUE(from_chain.WaitForNotificationWithTimeout(absl::Seconds(5)));
}
TEST(EventLoop, TimersFireInDeadlineOrderAndCancelledOnesNever) {
  auto loop = EventLoop::Start();
  ASSERT_TRUE(loop.ok());
  absl::Notification done;
  std::vector<int> fired;
  (*loop)->Post([&]() mutable {
    EventLoop& l = **loop;
    absl::Time now = l.clock().Now();
    l.AddTimer(now + absl::Milliseconds(30), [&]() mutable { fired.push_back(3); });
    l.AddTimer(now + absl::Milliseconds(10), [&]() mutable { fired.push_back(1); });
    EventLoop::TimerId cancelled =
        l.AddTimer(now + absl::Milliseconds(20), [&]() mutable { fired.push_back(2); });
    l.AddTimer(now + absl::Milliseconds(40), [&]() mutable { done.Notify(); });
    l.CancelTimer(cancelled);
  });
  ASSERT_TRUE(done.WaitForNotificationWithTimeout(absl::Seconds(5)));
  EXPECT_THAT(fired, ::testing::ElementsAre(1, 3));
}

// Counts readiness callbacks, and stops watching its fd from inside the first one.
class UnwatchOnFirstEvent final : public EventLoop::FdHandler {
 public:
  explicit UnwatchOnFirstEvent(EventLoop& loop) : loop_(loop) {}
  void OnFdReady(int fd, uint32_t) override {
    ++calls;
    loop_.Unwatch(fd);
  }
  int calls = 0;

 private:
  EventLoop& loop_;
};

TEST(EventLoop, UnwatchInsideAHandlerStopsDelivery) {
  auto loop = EventLoop::Start();
  ASSERT_TRUE(loop.ok());
  int fd = eventfd(1, EFD_CLOEXEC);  // Readable, and stays readable (level-triggered).
  UnwatchOnFirstEvent handler(**loop);
  absl::Notification watched, checked;
  (*loop)->Post([&]() mutable {
    ASSERT_TRUE((*loop)->Watch(fd, EPOLLIN, &handler).ok());
    watched.Notify();
  });
  ASSERT_TRUE(watched.WaitForNotificationWithTimeout(absl::Seconds(5)));
  // Several more loop iterations: the still-readable fd must not be delivered again.
  for (int i = 0; i < 3; ++i) {
    absl::Notification turn;
    (*loop)->Post([&]() mutable { turn.Notify(); });
    ASSERT_TRUE(turn.WaitForNotificationWithTimeout(absl::Seconds(5)));
  }
  (*loop)->Post([&]() mutable {
    EXPECT_EQ(handler.calls, 1);
    EXPECT_EQ((*loop)->watched_count(), 0u);
    checked.Notify();
  });
  ASSERT_TRUE(checked.WaitForNotificationWithTimeout(absl::Seconds(5)));
  close(fd);
}

// A method meant for the loop thread, called from another, stops the process with a
// message naming it, rather than race with the loop.
TEST(EventLoopDeathTest, LoopThreadCheckAbortsOffTheLoopAndPassesOnIt) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");  // The loop is a thread of its own.
  auto loop = EventLoop::Start();
  ASSERT_TRUE(loop.ok());
  absl::Notification checked;
  (*loop)->Post([&]() mutable {
    EXECD_DCHECK_LOOP(**loop);
    checked.Notify();
  });
  ASSERT_TRUE(checked.WaitForNotificationWithTimeout(absl::Seconds(5)));
#ifdef EXECD_DISABLE_LOOP_CHECKS
  GTEST_SKIP() << "SKIPPED: built with EXECD_DISABLE_LOOP_CHECKS";
#else
  EXPECT_DEATH(EXECD_DCHECK_LOOP(**loop), "must run on the event loop thread");
#endif
}

}  // namespace
}  // namespace execd::core
