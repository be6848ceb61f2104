// Containment: how the processes of one command are held together, limited and killed as
// one unit, so that nothing a command starts outlives it.
//
// Detected once at start-up, strongest first:
//   cgroup          a cgroup per command: cgroup v2 for tracking and cgroup.kill (kills
//                   double-forked and setsid'ed processes too), memory and pids limits from
//                   v2 controllers or, on hybrid hosts, the v1 memory and pids hierarchies.
//   process-group   the command's process group, plus execd as child subreaper so that
//                   escaped orphans come back to it and are killed when a command ends.
// Thread-safety: Containment is thread-safe; a Group is used by one thread at a time.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "core/kernel_files.h"
#include "core/spawn.h"
#include "core/unique_fd.h"

namespace execd::core {

struct LimitHits {
  bool memory = false;     // The kernel OOM-killed a process of the command.
  bool processes = false;  // A fork failed at the process limit.
};

class Containment {
 public:
  enum class Mode { kAuto, kCgroup, kProcessGroup };

  class Group {
   public:
    virtual ~Group() = default;
    // Descriptors the child writes "0" to before exec, to join the group.
    virtual const std::vector<int>& join_fds() const = 0;
    // A cgroup v2 directory the child may be created in (clone3's CLONE_INTO_CGROUP),
    // and the member of join_fds() that joins that same cgroup, which such a child skips;
    // both -1 when there is none. Being created in the cgroup spares the cgroup.procs
    // write, which takes the kernel's cgroup threadgroup lock for writing: every fork and
    // exit on the machine waits for it, for an RCU grace period (about 10 ms) when writes
    // are rare.
    struct Birthplace {
      int dir_fd = -1;
      int procs_fd = -1;
    };
    virtual Birthplace birthplace() const { return {}; }
    // Points `spec` at this group: its child joins it, or is created in it.
    void PlaceChild(SpawnSpec& spec) const {
      spec.join_fds = &join_fds();
      const Birthplace place = birthplace();
      spec.cgroup_dir_fd = place.dir_fd;
      spec.cgroup_procs_fd = place.procs_fd;
    }
    // A program of the command (each of a pipeline's) was spawned with this pid, its
    // process group id too.
    virtual void Attach(pid_t leader) = 0;
    // SIGKILLs every process of the command, wherever it went.
    virtual void KillAll() = 0;
    // True when no process of the command is alive.
    virtual bool Empty() = 0;
    // The command was answered without waiting any longer for its processes to die: some
    // cannot yet (stuck in the kernel; they were sent SIGKILL), or the group is dropped on
    // the event loop, which waits for nothing. Dropping the group then does not wait for
    // them either; what is left of it goes once they are gone.
    virtual void GiveUp() {}
    virtual LimitHits Hits() = 0;
    // Peak memory of the whole command in bytes, or 0 when unknown.
    virtual int64_t PeakMemoryBytes() = 0;
  };

  // `kCgroup` fails when no writable cgroup hierarchy is found; `kAuto` falls back.
  static absl::StatusOr<std::unique_ptr<Containment>> Create(Mode mode);
  virtual ~Containment() = default;

  // One line for the start-up log: the mechanism and where.
  virtual std::string Describe() const = 0;
  virtual bool limits_memory() const = 0;
  virtual bool limits_processes() const = 0;

  // A group for one command with these limits (0: none).
  virtual absl::StatusOr<std::unique_ptr<Group>> NewGroup(int64_t memory_bytes,
                                                          int64_t max_processes) = 0;

  // Memory all the running commands use now, in bytes, where one kernel file tells it (a
  // memory controller over them all); none otherwise.
  virtual std::optional<int64_t> CommandsMemoryBytes() const { return std::nullopt; }
  // The CPU all the commands have used so far, and how long at least one of them has waited
  // for a CPU (their own pressure stall, whoever else runs), where a cgroup v2 over them all
  // tells it; none otherwise.
  virtual std::optional<CpuTotals> CommandsCpu() const { return std::nullopt; }

  // Whether SweepOrphans has work to do (process-group mode, where execd is subreaper).
  virtual bool sweeps_orphans() const = 0;
  // What a sweep left for later. A killed process takes a moment to die, and the children
  // of an orphan come to execd only as it dies, so a sweep that found orphans is followed
  // by another once they have died.
  struct OrphanSweep {
    // One pidfd for each orphan killed that was not dead yet and that no earlier sweep
    // handed out: readable once it has died. Reap it then (waitid(P_PIDFD)) and sweep
    // again; the sweep then forgets it.
    std::vector<UniqueFd> dying;
    // Orphans remain that no pidfd announces (none could be had, or the tree was deeper
    // than one sweep goes): sweep again after a while.
    bool retry = false;
  };
  // Called after a command's leader was reaped: kills the children execd adopted as
  // subreaper, that is every child that is not one of `leaders` (running commands'
  // leaders), and reaps those already dead. Never waits. The caller must make sure no
  // spawn is in flight meanwhile, and no other sweep.
  virtual OrphanSweep SweepOrphans(const absl::flat_hash_set<pid_t>& leaders) = 0;
};

}  // namespace execd::core
