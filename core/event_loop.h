// EventLoop: one thread that owns a set of descriptors (epoll, level-triggered) and timers,
// and runs posted tasks. A child costs descriptors here, not a thread.
//
// Thread-safety: Post(), RunOnLoop() and IsLoopThread() may be called from any thread;
// everything else only from the loop thread (inside a posted task, a timer or a handler).
// Code that runs on the loop thread multiplexes and keeps books: it never waits (no sleep,
// no blocking waitpid or poll), so one slow child cannot hold up every other.
//
// EXECD_DCHECK_LOOP(loop) opens each method that must run on `loop`'s thread: called from
// any other, it prints where and aborts. It costs one thread-id compare, so it is on in
// every build type; define EXECD_DISABLE_LOOP_CHECKS to compile it out.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "core/clock.h"
#include "core/unique_fd.h"

namespace execd::core {

class EventLoop;

namespace internal {
// Prints that `function` (at `file`:`line`) ran off the loop thread, and aborts.
[[noreturn]] void LoopThreadViolation(const char* file, int line, const char* function);
}  // namespace internal

#ifdef EXECD_DISABLE_LOOP_CHECKS
#define EXECD_DCHECK_LOOP(loop) static_cast<void>(0)
#else
#define EXECD_DCHECK_LOOP(loop)                                                   \
  do {                                                                            \
    if (!(loop).IsLoopThread()) {                                                 \
      ::execd::core::internal::LoopThreadViolation(__FILE__, __LINE__, __func__); \
    }                                                                             \
  } while (false)
#endif

class EventLoop {
 public:
  using Task = absl::AnyInvocable<void() &&>;
  using TimerId = uint64_t;

  class FdHandler {
   public:
    virtual ~FdHandler() = default;
    // `events` is the epoll mask that fired (EPOLLIN, EPOLLOUT, EPOLLHUP, EPOLLERR).
    virtual void OnFdReady(int fd, uint32_t events) = 0;
  };

  // Starts the loop thread. Timers use `clock`, which must be monotonic and outlive the loop.
  static absl::StatusOr<std::unique_ptr<EventLoop>> Start(
      const Clock& clock = MonotonicClock::Get());
  // Stops the thread; tasks not yet run are dropped.
  ~EventLoop();

  void Post(Task task);
  // Runs `task` at once on the loop thread, else posts it.
  void RunOnLoop(Task task) {
    if (IsLoopThread()) {
      std::move(task)();
    } else {
      Post(std::move(task));
    }
  }
  bool IsLoopThread() const { return std::this_thread::get_id() == thread_.get_id(); }
  const Clock& clock() const { return clock_; }

  absl::Status Watch(int fd, uint32_t events, FdHandler* handler);
  absl::Status Modify(int fd, uint32_t events);
  // Stops watching `fd`; no event for it is delivered afterwards, even one already fetched.
  void Unwatch(int fd);

  TimerId AddTimer(absl::Time when, Task task);
  void CancelTimer(TimerId id);

  size_t watched_count() const { return watched_; }
  size_t timer_count() const { return timers_.size(); }

 private:
  struct Slot {
    FdHandler* handler = nullptr;
    uint32_t generation = 0;
  };

  EventLoop(const Clock& clock, UniqueFd epoll_fd, UniqueFd wake_fd);
  void Run();
  int NextTimeoutMs();
  void RunDueTimers();
  void RunPostedTasks();

  const Clock& clock_;
  UniqueFd epoll_fd_;
  UniqueFd wake_fd_;
  std::vector<Slot> slots_;  // Indexed by fd.
  uint32_t next_generation_ = 1;
  size_t watched_ = 0;

  std::map<std::pair<absl::Time, TimerId>, Task> timers_;
  absl::flat_hash_map<TimerId, absl::Time> timer_deadlines_;
  TimerId next_timer_id_ = 1;

  absl::Mutex mu_;
  std::vector<Task> posted_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;

  std::thread thread_;
};

}  // namespace execd::core
