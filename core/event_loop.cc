#include "core/event_loop.h"

#include <pthread.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>

#include "absl/strings/str_cat.h"
#include "core/errno_status.h"

namespace execd::core {
namespace {

// Marks the wake-up eventfd in epoll data; real registrations carry fd | generation << 32.
constexpr uint64_t kWakeToken = ~uint64_t{0};

}  // namespace

namespace internal {

void LoopThreadViolation(const char* file, int line, const char* function) {
  std::fprintf(stderr, "%s:%d: %s must run on the event loop thread, and ran on another\n", file,
               line, function);
  std::abort();
}

}  // namespace internal

absl::StatusOr<std::unique_ptr<EventLoop>> EventLoop::Start(const Clock& clock) {
  UniqueFd epoll_fd(epoll_create1(EPOLL_CLOEXEC));
  if (!epoll_fd.valid()) return ErrnoToStatus(errno, "epoll_create1");
  UniqueFd wake_fd(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!wake_fd.valid()) return ErrnoToStatus(errno, "eventfd");
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = kWakeToken;
  if (epoll_ctl(epoll_fd.get(), EPOLL_CTL_ADD, wake_fd.get(), &ev) != 0) {
    return ErrnoToStatus(errno, "epoll_ctl(eventfd)");
  }
  std::unique_ptr<EventLoop> loop(new EventLoop(clock, std::move(epoll_fd), std::move(wake_fd)));
  loop->thread_ = std::thread([l = loop.get()] {
    pthread_setname_np(pthread_self(), "execd-loop");  // Shown by top -H, ps -L, gdb.
    l->Run();
  });
  return loop;
}

EventLoop::EventLoop(const Clock& clock, UniqueFd epoll_fd, UniqueFd wake_fd)
    : clock_(clock), epoll_fd_(std::move(epoll_fd)), wake_fd_(std::move(wake_fd)) {}

EventLoop::~EventLoop() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  uint64_t one = 1;
  (void)!write(wake_fd_.get(), &one, sizeof(one));
  if (thread_.joinable()) thread_.join();
}

void EventLoop::Post(Task task) {
  bool was_empty;
  {
    absl::MutexLock lock(&mu_);
    was_empty = posted_.empty();
    posted_.push_back(std::move(task));
  }
  // The loop thread checks for tasks before it sleeps; only other threads must wake it.
  if (was_empty && !IsLoopThread()) {
    uint64_t one = 1;
    (void)!write(wake_fd_.get(), &one, sizeof(one));
  }
}

absl::Status EventLoop::Watch(int fd, uint32_t events, FdHandler* handler) {
  if (fd < 0) return absl::InvalidArgumentError(absl::StrCat("Watch: bad fd ", fd));
  if (static_cast<size_t>(fd) >= slots_.size()) slots_.resize(fd + 64);
  Slot& slot = slots_[fd];
  slot.handler = handler;
  slot.generation = next_generation_++;
  epoll_event ev{};
  ev.events = events;
  ev.data.u64 = static_cast<uint64_t>(fd) | (static_cast<uint64_t>(slot.generation) << 32);
  if (epoll_ctl(epoll_fd_.get(), EPOLL_CTL_ADD, fd, &ev) != 0) {
    slot.handler = nullptr;
    return ErrnoToStatus(errno, absl::StrCat("epoll_ctl(ADD, ", fd, ")"));
  }
  ++watched_;
  return absl::OkStatus();
}

absl::Status EventLoop::Modify(int fd, uint32_t events) {
  epoll_event ev{};
  ev.events = events;
  ev.data.u64 = static_cast<uint64_t>(fd) | (static_cast<uint64_t>(slots_.at(fd).generation) << 32);
  if (epoll_ctl(epoll_fd_.get(), EPOLL_CTL_MOD, fd, &ev) != 0) {
    return ErrnoToStatus(errno, absl::StrCat("epoll_ctl(MOD, ", fd, ")"));
  }
  return absl::OkStatus();
}

void EventLoop::Unwatch(int fd) {
  if (fd < 0 || static_cast<size_t>(fd) >= slots_.size() || slots_[fd].handler == nullptr) return;
  epoll_ctl(epoll_fd_.get(), EPOLL_CTL_DEL, fd, nullptr);
  slots_[fd].handler = nullptr;
  slots_[fd].generation = 0;
  --watched_;
}

EventLoop::TimerId EventLoop::AddTimer(absl::Time when, Task task) {
  TimerId id = next_timer_id_++;
  timers_.emplace(std::make_pair(when, id), std::move(task));
  timer_deadlines_.emplace(id, when);
  return id;
}

void EventLoop::CancelTimer(TimerId id) {
  auto it = timer_deadlines_.find(id);
  if (it == timer_deadlines_.end()) return;
  timers_.erase({it->second, id});
  timer_deadlines_.erase(it);
}

int EventLoop::NextTimeoutMs() {
  if (timers_.empty()) return -1;
  absl::Duration left = timers_.begin()->first.first - clock_.Now();
  if (left <= absl::ZeroDuration()) return 0;
  // Round up so a timer never fires early.
  return static_cast<int>(
      absl::ToInt64Milliseconds(left + absl::Milliseconds(1) - absl::Nanoseconds(1)));
}

void EventLoop::RunDueTimers() {
  absl::Time now = clock_.Now();
  while (!timers_.empty() && timers_.begin()->first.first <= now) {
    auto node = timers_.extract(timers_.begin());
    timer_deadlines_.erase(node.key().second);
    std::move(node.mapped())();
  }
}

void EventLoop::RunPostedTasks() {
  std::vector<Task> tasks;
  {
    absl::MutexLock lock(&mu_);
    tasks.swap(posted_);
  }
  for (Task& task : tasks) std::move(task)();
}

void EventLoop::Run() {
  // Handlers write to children's stdin pipes; a child that exits without reading must
  // give this thread EPIPE, not a SIGPIPE that kills the whole server. (A synchronous
  // SIGPIPE goes to the writing thread, so blocking it here is enough, and does not touch
  // the embedding process's own handling.)
  sigset_t pipe_signal;
  sigemptyset(&pipe_signal);
  sigaddset(&pipe_signal, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &pipe_signal, nullptr);
  constexpr int kMaxEvents = 256;
  epoll_event events[kMaxEvents];
  for (;;) {
    bool tasks_waiting;
    {
      absl::MutexLock lock(&mu_);
      if (stopping_) return;
      tasks_waiting = !posted_.empty();  // Posted from this thread, so no wake-up was sent.
    }
    int n = epoll_wait(epoll_fd_.get(), events, kMaxEvents, tasks_waiting ? 0 : NextTimeoutMs());
    if (n < 0) {
      if (errno == EINTR) continue;
      std::abort();  // epoll_wait on our own epoll fd cannot fail otherwise.
    }
    for (int i = 0; i < n; ++i) {
      uint64_t token = events[i].data.u64;
      if (token == kWakeToken) {
        uint64_t count;
        (void)!read(wake_fd_.get(), &count, sizeof(count));
        continue;
      }
      int fd = static_cast<int>(token & 0xffffffffu);
      uint32_t generation = static_cast<uint32_t>(token >> 32);
      if (static_cast<size_t>(fd) >= slots_.size()) continue;
      Slot& slot = slots_[fd];
      // A handler may have unwatched (and a new one re-used) this fd earlier in this batch.
      if (slot.handler == nullptr || slot.generation != generation) continue;
      slot.handler->OnFdReady(fd, events[i].events);
    }
    RunDueTimers();
    RunPostedTasks();
  }
}

}  // namespace execd::core
