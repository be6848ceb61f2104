#include "core/reaper.h"

#include <poll.h>
#include <sys/epoll.h>
#include <sys/wait.h>

#include <algorithm>
#include <cerrno>
#include <vector>

#include "core/clock.h"

namespace execd::core {

pid_t ReapIfExited(pid_t pid, int* status) {
  pid_t r;
  do {
    r = waitpid(pid, status, WNOHANG);
  } while (r < 0 && errno == EINTR);
  return r;
}

bool ReapPidfdIfExited(int pidfd) {
  siginfo_t info{};
  int r;
  do {
    r = waitid(P_PIDFD, static_cast<id_t>(pidfd), &info, WEXITED | WNOHANG);
  } while (r < 0 && errno == EINTR);
  // r < 0: ECHILD, reaped by someone else: nothing left to wait for.
  return r < 0 || info.si_pid != 0;
}

bool AwaitExit(int pidfd, absl::Duration timeout) {
  pollfd p{pidfd, POLLIN, 0};
  const int ms =
      static_cast<int>(absl::ToInt64Milliseconds(absl::Ceil(timeout, absl::Milliseconds(1))));
  int r;
  do {
    r = poll(&p, 1, ms);
  } while (r < 0 && errno == EINTR);
  return r > 0;
}

Reaper::~Reaper() {
  for (auto& [fd, child] : children_) {
    loop_.Unwatch(fd);
    if (child.timer != 0) loop_.CancelTimer(child.timer);
  }
}

void Reaper::Adopt(UniqueFd pidfd, absl::AnyInvocable<void() &&> reaped) {
  EXECD_DCHECK_LOOP(loop_);
  if (!pidfd.valid() || ReapPidfdIfExited(pidfd.get())) {
    std::move(reaped)();
    return;
  }
  const int fd = pidfd.get();
  children_.emplace(fd, Child{std::move(pidfd), std::move(reaped)});
  if (!loop_.Watch(fd, EPOLLIN, this).ok()) CheckLater(fd, absl::Milliseconds(10));
}

void Reaper::CheckLater(int fd, absl::Duration after) {
  children_.at(fd).timer = loop_.AddTimer(loop_.clock().Now() + after, [this, fd, after]() {
    auto it = children_.find(fd);
    if (it == children_.end()) return;
    it->second.timer = 0;
    if (ReapPidfdIfExited(fd)) {
      Reaped(fd);
    } else {
      CheckLater(fd, std::min(after * 2, absl::Seconds(1)));
    }
  });
}

void Reaper::Reaped(int fd) {
  loop_.Unwatch(fd);
  auto node = children_.extract(fd);
  if (node.empty()) return;
  if (node.mapped().timer != 0) loop_.CancelTimer(node.mapped().timer);
  std::move(node.mapped().reaped)();
}

void Reaper::Drain(absl::Duration timeout) {
  EXECD_DCHECK_LOOP(loop_);
  const Clock& clock = MonotonicClock::Get();
  const absl::Time deadline = clock.Now() + timeout;
  while (!children_.empty()) {
    std::vector<pollfd> fds;
    for (const auto& [fd, child] : children_) fds.push_back(pollfd{fd, POLLIN, 0});
    const absl::Duration left = deadline - clock.Now();
    if (left <= absl::ZeroDuration()) return;
    const int ready =
        poll(fds.data(), fds.size(), static_cast<int>(absl::ToInt64Milliseconds(left)) + 1);
    if (ready < 0 && errno != EINTR) return;
    for (const pollfd& p : fds) {
      if (p.revents != 0) OnFdReady(p.fd, static_cast<uint32_t>(p.revents));
    }
  }
}

void Reaper::OnFdReady(int fd, uint32_t /*events*/) {
  if (ReapPidfdIfExited(fd)) Reaped(fd);  // Else readable before it is waitable: the next event.
}

}  // namespace execd::core
