// Reaper: waits, on the event loop, for children that were SIGKILLed but have not died yet
// (stuck in the kernel, as in uninterruptible sleep on a hung filesystem), so that whoever
// killed them need not block in waitpid. Each is reaped through its pidfd
// (waitid(P_PIDFD)), so a pid reaped meanwhile by someone else, and reused, is never
// waited for by mistake.
//
// Thread-safety: loop thread only, destruction included.
#pragma once

#include <sys/types.h>

#include <functional>

#include "absl/container/flat_hash_map.h"
#include "absl/functional/any_invocable.h"
#include "absl/time/time.h"
#include "core/event_loop.h"
#include "core/unique_fd.h"

namespace execd::core {

// How an owner that kills a child hands it on when it has not died at once: the child's
// pidfd, and what to run once it is reaped (Engine::ReapLater, backed by a Reaper).
using ReapLaterFn = std::function<void(UniqueFd pidfd, absl::AnyInvocable<void() &&> reaped)>;

// waitpid(pid, status, WNOHANG), retried on EINTR: the pid if it was reaped, 0 if it has not
// exited yet, -1 (ECHILD) if it is not ours to reap.
pid_t ReapIfExited(pid_t pid, int* status = nullptr);
// Reaps the process of `pidfd` if it has exited (waitid(P_PIDFD), retried on EINTR); true
// once it is reaped, here or (ECHILD) by someone else, as an orphan sweep.
bool ReapPidfdIfExited(int pidfd);
// Waits up to `timeout` (rounded up to a millisecond) for the process of `pidfd` to exit;
// whether it has. It blocks: never on the loop thread.
bool AwaitExit(int pidfd, absl::Duration timeout);

class Reaper final : public EventLoop::FdHandler {
 public:
  explicit Reaper(EventLoop& loop) : loop_(loop) {}
  // Stops watching. Children still unreaped stay zombies until execd exits.
  ~Reaper() override;
  Reaper(const Reaper&) = delete;
  Reaper& operator=(const Reaper&) = delete;

  // Takes `pidfd`, of a child of this process that has been sent SIGKILL, reaps the child
  // once it has exited (at once if it has), then runs `reaped`. Not run if the Reaper is
  // destroyed first. Never waits: the child's exit is an event of the loop.
  void Adopt(UniqueFd pidfd, absl::AnyInvocable<void() &&> reaped);
  // Waits up to `timeout` for the pending children to die, reaping each (and running its
  // callback) as it does: before the Reaper goes, those merely slow to die are not left
  // as zombies. For shutdown only, when the loop has nothing else left to serve.
  void Drain(absl::Duration timeout);

  void OnFdReady(int fd, uint32_t events) override;

 private:
  // A child whose pidfd epoll would not take (out of memory, or max_user_watches reached)
  // is checked on a timer instead, every `after`, backing off.
  void CheckLater(int fd, absl::Duration after);
  // The child of `fd` is reaped: forgets it, then runs its callback.
  void Reaped(int fd);

  EventLoop& loop_;
  struct Child {
    UniqueFd pidfd;
    absl::AnyInvocable<void() &&> reaped;
    EventLoop::TimerId timer = 0;  // CheckLater's, when not watched.
  };
  absl::flat_hash_map<int, Child> children_;
};

}  // namespace execd::core
