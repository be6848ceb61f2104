#include "core/event_loop.h"

#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

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

}  // namespace
}  // namespace execd::core
