// PersistentWorker: one long-lived worker process of a PERSISTENT pool, spoken to over the
// framed protocol of protos/execd/worker/v1/worker.proto (varint-delimited WorkRequest on
// its stdin, WorkResponse on its stdout). It checks the worker's health at start, sends
// one request at a time, enforces the request's timeout, and kills the worker (its whole
// containment group) when it dies, hangs, or breaks the protocol.
//
// Thread-safety: Spawn() may run on any thread; from Start() on, the object is used and
// destroyed on the loop thread only.
#pragma once

#include <sys/types.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "core/command.h"
#include "core/containment.h"
#include "core/event_loop.h"
#include "core/reaper.h"
#include "core/spawn.h"
#include "core/unique_fd.h"
#include "execd/worker/v1/worker.pb.h"

namespace execd::core {

class PersistentWorker final : public EventLoop::FdHandler {
 public:
  class Listener {
   public:
    virtual ~Listener() = default;
    // The start-up health check was answered: the worker takes requests.
    virtual void OnWorkerReady(PersistentWorker* worker) = 0;
    // The request in flight was answered (possibly was_cancelled). The worker is idle.
    virtual void OnWorkerResponse(PersistentWorker* worker, worker::v1::WorkResponse response) = 0;
    // The worker is dead and will call nothing more; destroy it outside this call. `why`:
    // DEADLINE_EXCEEDED (a request or the start-up overran), CANCELLED (a cancel went
    // unanswered), UNAVAILABLE (it exited), INTERNAL (it broke the protocol).
    virtual void OnWorkerFailed(PersistentWorker* worker, absl::Status why) = 0;
  };

  struct Options {
    absl::Duration startup_timeout = absl::Seconds(10);
    absl::Duration kill_grace = absl::Milliseconds(500);
    // Largest response frame accepted; bigger is a protocol error.
    int64_t max_frame_bytes = 64 << 20;
    int64_t address_space_bytes = 0;  // RLIMIT_AS where no cgroup limits memory.
    // Called once the worker's pid has been reaped (it is no longer ours), on whichever
    // thread reaped it: the pool's tracking of the pid ends there.
    std::function<void(pid_t)> on_reaped;
    // Loop thread: takes the pidfd of the killed worker when it has not died by the time it
    // is destroyed (stuck in the kernel), reaps it later, then runs `reaped`. Without it,
    // the destructor waits in waitpid.
    ReapLaterFn reap_later;
  };

  // Spawns the worker process on the calling thread (which must outlive it: the
  // parent-death signal follows it). Nothing is watched yet.
  static absl::StatusOr<std::unique_ptr<PersistentWorker>> Spawn(
      EventLoop& loop, ProcessOs& os, const Command& command, const Options& options,
      std::unique_ptr<Containment::Group> group, Listener* listener);
  ~PersistentWorker() override;

  // Loop thread: watches the worker and sends the health check.
  absl::Status Start();
  // Sends a request; only when idle (after OnWorkerReady or OnWorkerResponse).
  void Send(uint64_t request_id, const std::vector<std::string>& arguments,
            const std::string& stdin_data, absl::Duration timeout);
  // Asks the worker to stop the request in flight; kills it if it has not answered
  // within the kill grace.
  void Cancel();
  // Kills the worker and its processes now, and reports OnWorkerFailed(why) unless
  // `quiet`, without waiting for it to die: a worker not dead at once is reaped later
  // (Options::reap_later, from the destructor), and Options::on_reaped says when.
  void Kill(absl::Status why, bool quiet = false);

  pid_t pid() const { return pid_; }
  // It joined its cgroup by a cgroup.procs write (SpawnedProcess::joined_by_write).
  bool joined_by_write() const { return joined_by_write_; }
  bool dead() const { return dead_; }
  // Its pid has been reaped (Options::on_reaped has run): nothing of it is left.
  bool reaped() const { return reaped_; }
  // The tail of what the worker wrote to its stderr since the last Send (or its start),
  // for error messages.
  std::string stderr_tail() const { return stderr_tail_; }

  void OnFdReady(int fd, uint32_t events) override;

 private:
  PersistentWorker(EventLoop& loop, const Options& options, Listener* listener)
      : loop_(loop), options_(options), listener_(listener) {}
  void Write(const worker::v1::WorkRequest& request);
  void FlushStdin();
  void StdinClosed();
  void ReadStdout();
  void ReadStderr();
  void ParseFrames();
  void OnExited();
  void Fail(absl::Status why);
  void Close(UniqueFd& fd);
  void CancelTimer();
  // Arms the worker's one timer, replacing any armed: it is killed for `why` after `after`.
  void KillAfter(absl::Duration after, absl::Status why);
  // Reaps the worker if it has exited, without waiting; MarkReaped then.
  void TryReap();
  // reaped_, and Options::on_reaped.
  void MarkReaped();
  // The worker closed `pipe`: it is killed unless it exits within the kill grace.
  void ExpectExit(absl::string_view pipe);

  EventLoop& loop_;
  const Options options_;
  Listener* const listener_;
  std::unique_ptr<Containment::Group> group_;
  pid_t pid_ = -1;
  bool joined_by_write_ = false;
  UniqueFd pidfd_;
  UniqueFd stdin_;
  UniqueFd stdout_;
  UniqueFd stderr_;
  bool watched_ = false;
  bool dead_ = false;
  bool reaped_ = false;

  std::string out_;  // Request bytes not yet written.
  bool want_write_ = false;
  std::string in_;  // Response bytes not yet parsed.
  std::string stderr_tail_;

  enum class State { kStarting, kIdle, kBusy, kCancelling };
  State state_ = State::kStarting;
  uint64_t request_id_ = 0;
  EventLoop::TimerId timer_ = 0;
};

}  // namespace execd::core
