#include "core/process_group_containment.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "core/errno_status.h"
#include "core/kernel_files.h"
#include "core/reaper.h"
#include "core/unique_fd.h"

namespace execd::core {
namespace {

// Without cgroups: the process group holds the command; escapees come back to execd as
// subreaper and are killed when a command ends.
class ProcessGroupContainment final : public Containment {
 public:
  std::string Describe() const override {
    return "process-group: process group kill, execd as child subreaper (no cgroup found)";
  }
  bool limits_memory() const override { return false; }
  bool limits_processes() const override { return false; }

  absl::StatusOr<std::unique_ptr<Group>> NewGroup(int64_t, int64_t) override {
    return std::make_unique<PgroupGroup>();
  }

  bool sweeps_orphans() const override { return true; }

  OrphanSweep SweepOrphans(const absl::flat_hash_set<pid_t>& leaders) override {
    OrphanSweep sweep;
    // Those handed out by an earlier sweep first: forgotten once reaped (here, or by
    // whoever took their pidfd), each through its own pidfd, so that a pid reaped
    // meanwhile and reused is never taken for one of them.
    absl::erase_if(dying_, [](const auto& entry) { return ReapPidfdIfExited(entry.second.get()); });
    // Killed processes fork no more, and the children of an orphan come to execd as it
    // dies: round after round while some die at once, as many as the escaped tree is deep
    // at most. The bound keeps a running command that orphans processes as fast as they
    // are swept from holding the caller here (a retry goes on).
    constexpr int kMaxRounds = 64;
    for (int round = 0; round < kMaxRounds; ++round) {
      bool reaped_any = false;
      for (pid_t pid : Orphans(leaders)) {
        // Listed, so our unreaped child: the pid is still its own, safe to signal.
        if (dying_.contains(pid)) continue;  // Killed already; its pidfd is out.
        kill(pid, SIGKILL);
        if (ReapIfExited(pid) != 0) {
          reaped_any = true;
          continue;
        }
        UniqueFd pidfd(static_cast<int>(syscall(SYS_pidfd_open, pid, 0)));
        UniqueFd handed;
        if (pidfd.valid()) handed.reset(fcntl(pidfd.get(), F_DUPFD_CLOEXEC, 0));
        if (!handed.valid()) {
          // No descriptor left, or a seccomp profile without pidfd_open: a later sweep
          // kills and reaps it.
          sweep.retry = true;
          continue;
        }
        dying_.emplace(pid, std::move(pidfd));
        sweep.dying.push_back(std::move(handed));
      }
      if (!reaped_any) return sweep;  // None died, so none left children to execd.
    }
    sweep.retry = true;
    return sweep;
  }

 private:
  // Orphans killed and handed out (OrphanSweep::dying) that are not reaped yet, by pid,
  // each with a pidfd of its own. Sweeps never run at once (the caller's contract), so
  // this needs no lock.
  absl::flat_hash_map<pid_t, UniqueFd> dying_;

  // Our children that are not `leaders`, from each of our threads' lists (cheaper than
  // scanning all of /proc). Not those still in the process group of one of `leaders`: they
  // lost their parent but are still that running command's, and die with its group.
  static std::vector<pid_t> Orphans(const absl::flat_hash_set<pid_t>& leaders) {
    std::vector<pid_t> orphans;
    if (DIR* tasks = opendir("/proc/self/task")) {
      while (dirent* e = readdir(tasks)) {
        if (e->d_name[0] == '.') continue;
        std::string children = ReadFile(absl::StrCat("/proc/self/task/", e->d_name, "/children"));
        for (absl::string_view word : absl::StrSplit(children, ' ', absl::SkipEmpty())) {
          pid_t pid;
          if (!absl::SimpleAtoi(word, &pid) || leaders.contains(pid)) continue;
          // Our unreaped child: its pid, and so the answer, cannot change meanwhile.
          if (leaders.contains(getpgid(pid))) continue;
          orphans.push_back(pid);
        }
      }
      closedir(tasks);
    }
    return orphans;
  }

  class PgroupGroup final : public Group {
   public:
    const std::vector<int>& join_fds() const override { return none_; }
    void Attach(pid_t leader) override { pgids_.push_back(leader); }
    void KillAll() override {
      for (pid_t pgid : pgids_) kill(-pgid, SIGKILL);
    }
    bool Empty() override {
      // Members orphaned by their leader's exit were adopted by execd (the subreaper): reap
      // them, or the zombies keep the group alive. A group found empty is forgotten, so its
      // id, free for reuse from then on, is never signalled.
      std::erase_if(pgids_, [](pid_t pgid) {
        while (waitpid(-pgid, nullptr, WNOHANG) > 0) {
        }
        return kill(-pgid, 0) != 0;
      });
      return pgids_.empty();
    }
    LimitHits Hits() override { return {}; }
    int64_t PeakMemoryBytes() override { return 0; }

   private:
    std::vector<pid_t> pgids_;  // Each program's process group (a pipeline has several).
    std::vector<int> none_;
  };
};

}  // namespace

absl::StatusOr<std::unique_ptr<Containment>> NewProcessGroupContainment() {
  if (prctl(PR_SET_CHILD_SUBREAPER, 1) != 0) return ErrnoToStatus(errno, "PR_SET_CHILD_SUBREAPER");
  return std::make_unique<ProcessGroupContainment>();
}

}  // namespace execd::core
