// OrphanSweeper: with process-group containment, execd is child subreaper, so whatever a
// command started outside its process groups comes back to execd once its parent is gone.
// The sweeper kills those orphans and reaps them, without ever waiting: each killed orphan
// not dead yet goes to the Reaper, and its death sweeps again (its own children come to
// execd only then); any left that no pidfd announces are swept again by a timer, backing
// off. With cgroup containment there is nothing to sweep, and Sweep returns at once.
//
// It must never take a process execd is still running for an orphan: every program of a
// running command and every pool process is tracked from its spawn until it is reaped, and
// spawns hold a SpawnGuard from before a child exists until its pid is tracked.
//
// Thread-safety: Track, Untrack, Tracks, Sweep and SpawnGuard from any thread; Stop on
// the loop thread.
#pragma once

#include <sys/types.h>

#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_set.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "core/containment.h"
#include "core/event_loop.h"
#include "core/reaper.h"

namespace execd::core {

class OrphanSweeper {
 public:
  // `reaper` takes the orphans killed that are not dead at once; the loop's, used there.
  OrphanSweeper(EventLoop& loop, Containment& containment, Reaper& reaper)
      : loop_(loop), containment_(containment), reaper_(reaper) {}

  // Held by a thread that spawns, until the new child's pids are tracked: no sweep runs
  // meanwhile, so none mistakes a child being spawned for an orphan.
  class SpawnGuard {
   public:
    explicit SpawnGuard(OrphanSweeper& sweeper) : lock_(&sweeper.spawn_gate_) {}

   private:
    absl::ReaderMutexLock lock_;
  };

  // `pids`, processes execd spawned, are its own until untracked: a sweep leaves them
  // alone. Untrack only once they are reaped, or a sweep could reap one first and its
  // owner's kill then aim at a pid free for reuse.
  void Track(const std::vector<pid_t>& pids);
  void Untrack(const std::vector<pid_t>& pids);
  bool Tracks(pid_t pid) const;
  // The pids tracked now.
  std::vector<pid_t> Tracked() const;

  // Kills the orphans there are now and reaps those already dead; what is left is followed
  // up on the loop. False when some are left that only a timer will sweep again.
  bool Sweep();

  // Loop thread: no sweep follows up any more (the engine and its reaper are going away).
  void Stop();

 private:
  // Loop thread: what a sweep left for later (see Sweep).
  void Await(Containment::OrphanSweep sweep);
  // Loop thread: sweeps again `after` from now (sooner if one is armed for sooner).
  void ArmTimer(absl::Duration after);

  static constexpr absl::Duration kFirstRetry = absl::Milliseconds(20);

  EventLoop& loop_;
  Containment& containment_;
  Reaper& reaper_;

  // Held shared by spawns (SpawnGuard), exclusively by a sweep.
  absl::Mutex spawn_gate_;
  mutable absl::Mutex tracked_mu_;
  absl::flat_hash_set<pid_t> tracked_ ABSL_GUARDED_BY(tracked_mu_);

  // Loop thread only.
  EventLoop::TimerId timer_ = 0;
  absl::Time timer_at_;  // When timer_ fires.
  // The delay of a retry for orphans no pidfd announces; it doubles while they outlive it.
  absl::Duration retry_ = kFirstRetry;
  bool stopped_ = false;
};

}  // namespace execd::core
