#include "core/cgroup_containment.h"

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <memory>
#include <optional>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "core/clock.h"
#include "core/errno_status.h"
#include "core/kernel_files.h"
#include "core/status_macros.h"
#include "core/unique_fd.h"

namespace execd::core {
namespace {

bool Exists(const std::string& path) { return access(path.c_str(), F_OK) == 0; }

int64_t KeyedValue(const std::string& path, absl::string_view key) {
  return KeyedValueIn(ReadFile(path), key);
}

std::vector<pid_t> ProcsOf(const std::string& dir) {
  std::vector<pid_t> pids;
  for (absl::string_view line : absl::StrSplit(ReadFile(dir + "/cgroup.procs"), '\n')) {
    pid_t pid;
    if (absl::SimpleAtoi(line, &pid)) pids.push_back(pid);
  }
  return pids;
}

// Where the cgroup hierarchies are mounted and where this process sits in each.
struct Hierarchies {
  std::string v2_mount, v2_own;
  std::string memory_mount, memory_own;
  std::string pids_mount, pids_own;
};

Hierarchies FindHierarchies() {
  Hierarchies h;
  // mountinfo: "id parent dev root mountpoint opts [optional...] - fstype source superopts".
  for (absl::string_view line : absl::StrSplit(ReadFile("/proc/self/mountinfo"), '\n')) {
    std::vector<absl::string_view> f = absl::StrSplit(line, ' ');
    auto dash = std::find(f.begin(), f.end(), "-");
    if (f.size() < 5 || dash == f.end() || dash + 3 > f.end()) continue;
    absl::string_view fstype = dash[1];
    std::string mount(f[4]);
    if (fstype == "cgroup2" && h.v2_mount.empty()) h.v2_mount = mount;
    if (fstype == "cgroup") {
      for (absl::string_view opt : absl::StrSplit(dash[3], ',')) {
        if (opt == "memory") h.memory_mount = mount;
        if (opt == "pids") h.pids_mount = mount;
      }
    }
  }
  // /proc/self/cgroup: "0::/path" for v2, "N:memory:/path" for v1.
  for (absl::string_view line : absl::StrSplit(ReadFile("/proc/self/cgroup"), '\n')) {
    std::vector<absl::string_view> f = absl::StrSplit(line, absl::MaxSplits(':', 2));
    if (f.size() != 3) continue;
    std::string path(f[2] == "/" ? "" : f[2]);
    if (f[0] == "0" && f[1].empty()) h.v2_own = path;
    for (absl::string_view c : absl::StrSplit(f[1], ',')) {
      if (c == "memory") h.memory_own = path;
      if (c == "pids") h.pids_own = path;
    }
  }
  return h;
}

// Kills everything in a cgroup directory tree and removes it. For leftovers of an execd
// that died without cleaning up.
void RemoveTree(const std::string& dir) {
  if (Exists(dir + "/cgroup.kill")) WriteFile(dir + "/cgroup.kill", "1");
  for (int round = 0; round < 100; ++round) {
    std::vector<pid_t> pids = ProcsOf(dir);
    if (pids.empty()) break;
    for (pid_t pid : pids) kill(pid, SIGKILL);
  }
  if (DIR* d = opendir(dir.c_str())) {
    std::vector<std::string> children;
    while (dirent* e = readdir(d)) {
      if (e->d_type == DT_DIR && e->d_name[0] != '.') children.push_back(dir + "/" + e->d_name);
    }
    closedir(d);
    for (const std::string& child : children) RemoveTree(child);
  }
  rmdir(dir.c_str());
}

// Creates this server's directory under `parent` ("execd-<pid>"), after removing leftovers
// of earlier execd processes that are gone. Returns "" when the hierarchy is not writable.
std::string MakeServerDir(const std::string& parent) {
  if (parent.empty()) return "";
  if (DIR* d = opendir(parent.c_str())) {
    while (dirent* e = readdir(d)) {
      absl::string_view name = e->d_name;
      pid_t pid;
      if (absl::ConsumePrefix(&name, "execd-") && absl::SimpleAtoi(name, &pid) &&
          (pid == getpid() || kill(pid, 0) != 0)) {
        RemoveTree(absl::StrCat(parent, "/", e->d_name));
      }
    }
    closedir(d);
  }
  std::string dir = absl::StrCat(parent, "/execd-", getpid());
  if (mkdir(dir.c_str(), 0755) != 0) return "";
  return dir;
}

// Emptied command cgroups kept for reuse: creating and removing a cgroup (mkdir, the
// control files, rmdir) was a sixth of the server's work per command in a profile of
// ExecuteBatch. Only cgroups without limits are kept, and only commands without limits
// reuse them, so there is no limit to reset; their descriptors stay open with them.
class CgroupRecycler {
 public:
  struct Entry {
    std::string dir;
    UniqueFd dir_fd;  // The directory: children are created in it.
    UniqueFd procs;   // cgroup.procs: written by the child to join.
    UniqueFd events;  // cgroup.events: "populated".
    UniqueFd peak;    // memory.peak, when the memory controller is on.
  };
  std::optional<Entry> Take() {
    absl::MutexLock lock(&mu_);
    if (free_.empty()) return std::nullopt;
    Entry e = std::move(free_.back());
    free_.pop_back();
    return e;
  }
  // False (and `entry` untouched) when enough are kept already.
  bool Give(Entry& entry) {
    absl::MutexLock lock(&mu_);
    if (free_.size() >= kMax) return false;
    free_.push_back(std::move(entry));
    return true;
  }

  // A cgroup that could not be removed because a process in it had not died of its
  // SIGKILL yet (stuck in the kernel): removed by a later RetryRemovals, once it is empty.
  void RemoveLater(std::string dir) {
    absl::MutexLock lock(&mu_);
    doomed_.push_back(std::move(dir));
  }
  void RetryRemovals() {
    absl::MutexLock lock(&mu_);
    doomed_.erase(std::remove_if(doomed_.begin(), doomed_.end(),
                                 [](const std::string& dir) {
                                   return rmdir(dir.c_str()) == 0 || errno != EBUSY;
                                 }),
                  doomed_.end());
  }

 private:
  static constexpr size_t kMax = 64;
  absl::Mutex mu_;
  std::vector<Entry> free_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> doomed_ ABSL_GUARDED_BY(mu_);
};

class CgroupContainment final : public Containment {
 public:
  // Directories of this server in each usable hierarchy ("" when unusable).
  struct Dirs {
    std::string v2;  // Tracking and cgroup.kill; memory/pids too when v2_controllers.
    bool v2_kill = false;
    bool v2_memory = false;
    bool v2_pids = false;
    std::string memory;  // v1
    std::string pids;    // v1
  };

  explicit CgroupContainment(Dirs dirs) : dirs_(std::move(dirs)) {}
  ~CgroupContainment() override {
    for (const std::string& dir : {dirs_.v2, dirs_.memory, dirs_.pids}) {
      if (!dir.empty()) RemoveTree(dir);
    }
  }

  std::string Describe() const override {
    std::vector<std::string> parts;
    if (!dirs_.v2.empty()) {
      parts.push_back(absl::StrCat("v2 ", dirs_.v2, dirs_.v2_kill ? " (cgroup.kill)" : "",
                                   dirs_.v2_memory ? " memory" : "", dirs_.v2_pids ? " pids" : ""));
    }
    if (!dirs_.memory.empty()) parts.push_back(absl::StrCat("v1 memory ", dirs_.memory));
    if (!dirs_.pids.empty()) parts.push_back(absl::StrCat("v1 pids ", dirs_.pids));
    return absl::StrCat("cgroup: ", absl::StrJoin(parts, "; "));
  }
  bool limits_memory() const override { return dirs_.v2_memory || !dirs_.memory.empty(); }
  bool limits_processes() const override { return dirs_.v2_pids || !dirs_.pids.empty(); }

  absl::StatusOr<std::unique_ptr<Group>> NewGroup(int64_t memory_bytes,
                                                  int64_t max_processes) override;
  bool sweeps_orphans() const override { return false; }
  OrphanSweep SweepOrphans(const absl::flat_hash_set<pid_t>&) override { return {}; }

  std::optional<int64_t> CommandsMemoryBytes() const override {
    int64_t bytes = 0;
    if (dirs_.v2_memory &&
        absl::SimpleAtoi(absl::StripAsciiWhitespace(ReadFile(dirs_.v2 + "/memory.current")),
                         &bytes)) {
      return bytes;
    }
    return std::nullopt;
  }
  std::optional<CpuTotals> CommandsCpu() const override { return CgroupCpuTotals(dirs_.v2); }

 private:
  class CgroupGroup;
  const Dirs dirs_;
  std::atomic<uint64_t> next_{1};
  const std::shared_ptr<CgroupRecycler> recycler_ = std::make_shared<CgroupRecycler>();
};

class CgroupContainment::CgroupGroup final : public Containment::Group {
 public:
  explicit CgroupGroup(std::shared_ptr<CgroupRecycler> recycler) : recycler_(std::move(recycler)) {}

  ~CgroupGroup() override {
    // Kept for the next command without limits if it ended clean: empty, and no limit
    // event counted (the counters cannot be reset).
    // Not after a cgroup.kill: on Linux 6.18 a child that clone3 creates in a
    // cgroup killed before is SIGKILLed at birth (see spawn.cc).
    if (reusable_ && !killed_ && Empty() && (checked_clean_ || Clean(ReadHits()))) {
      CgroupRecycler::Entry entry{v2_, std::move(v2_dir_), std::move(v2_procs_), std::move(events_),
                                  std::move(peak_)};
      if (recycler_->Give(entry)) return;
      v2_dir_ = std::move(entry.dir_fd);
      v2_procs_ = std::move(entry.procs);
      events_ = std::move(entry.events);
    }
    join_.clear();
    v2_dir_.reset();
    v2_procs_.reset();
    owned_fds_.clear();
    KillAll();
    // A cgroup with processes in it cannot be removed, and killed ones take a moment to
    // go (a command whose spawn failed halfway is destroyed right after the kill, on its
    // spawn thread). Not after GiveUp: the command waited its while already, or this runs
    // on the engine's loop, where every other command would wait too.
    if (!gave_up_) WaitEmpty(absl::Milliseconds(200));
    events_.reset();
    peak_.reset();
    for (const std::string& dir : {v2_, memory_, pids_}) {
      if (!dir.empty() && rmdir(dir.c_str()) != 0 && errno == EBUSY) recycler_->RemoveLater(dir);
    }
  }

  // Waits up to `timeout` for the cgroup to be empty, woken by changes of cgroup.events.
  void WaitEmpty(absl::Duration timeout) {
    const Clock& clock = MonotonicClock::Get();  // A wall-clock step must not stretch it.
    const absl::Time deadline = clock.Now() + timeout;
    while (!Empty()) {
      const absl::Duration left = deadline - clock.Now();
      if (left <= absl::ZeroDuration()) return;
      if (!events_.valid()) return;  // Nothing to wait on (v1 tracking only).
      // The read in Empty() armed it: a change since then wakes the poll at once.
      pollfd p{events_.get(), POLLPRI, 0};
      poll(&p, 1,
           static_cast<int>(absl::ToInt64Milliseconds(absl::Ceil(left, absl::Milliseconds(1)))));
    }
  }

  // Takes over a recycled cgroup for a command without limits. False when it cannot be
  // used (its peak cannot be reset): the caller drops the group, which removes it.
  bool Reuse(const Dirs& dirs, CgroupRecycler::Entry entry) {
    v2_ = std::move(entry.dir);
    v2_dir_ = std::move(entry.dir_fd);
    v2_procs_ = std::move(entry.procs);
    events_ = std::move(entry.events);
    peak_ = std::move(entry.peak);
    join_.push_back(v2_procs_.get());
    v2_kill_ = dirs.v2_kill;
    v2_memory_ = dirs.v2_memory;
    // memory.peak restarts from now for reads through this descriptor (Linux 6.12+).
    if (v2_memory_ && (!peak_.valid() || write(peak_.get(), "0", 1) != 1)) return false;
    reusable_ = true;
    return true;
  }

  // Creates `name` in each hierarchy needed and applies the limits.
  absl::Status Init(const Dirs& dirs, const std::string& name, int64_t memory_bytes,
                    int64_t max_processes) {
    auto make = [&](const std::string& parent, std::string* dir) -> absl::Status {
      *dir = absl::StrCat(parent, "/", name);
      if (mkdir(dir->c_str(), 0755) != 0) {
        absl::Status s = ErrnoToStatus(errno, absl::StrCat("mkdir ", *dir));
        dir->clear();
        return s;
      }
      int fd = open((*dir + "/cgroup.procs").c_str(), O_WRONLY | O_CLOEXEC);
      if (fd < 0) return ErrnoToStatus(errno, absl::StrCat("open ", *dir, "/cgroup.procs"));
      (dir == &v2_ ? v2_procs_ : owned_fds_.emplace_back()).reset(fd);
      join_.push_back(fd);
      return absl::OkStatus();
    };
    bool peak_resettable = false;
    if (!dirs.v2.empty()) {
      if (absl::Status s = make(dirs.v2, &v2_); !s.ok()) return s;
      // For creating children in it; without it they join through cgroup.procs.
      v2_dir_.reset(open(v2_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
      v2_kill_ = dirs.v2_kill;
      v2_memory_ = dirs.v2_memory;
      v2_pids_limited_ = dirs.v2_pids && max_processes > 0;
      // Kept open: "populated" is read at least twice per command (before the kill, and
      // until empty), a re-read of one descriptor instead of a path walk each time.
      events_.reset(open((v2_ + "/cgroup.events").c_str(), O_RDONLY | O_CLOEXEC));
      if (!events_.valid())
        return ErrnoToStatus(errno, absl::StrCat("open ", v2_, "/cgroup.events"));
      if (dirs.v2_memory && memory_bytes > 0) {
        WriteFile(v2_ + "/memory.max", absl::StrCat(memory_bytes));
        WriteFile(v2_ + "/memory.swap.max", "0");
      }
      if (dirs.v2_pids && max_processes > 0) {
        WriteFile(v2_ + "/pids.max", absl::StrCat(max_processes));
      }
      if (dirs.v2_memory) {
        // Read and write: a reused cgroup resets its peak through it (Linux 6.12+).
        peak_.reset(open((v2_ + "/memory.peak").c_str(), O_RDWR | O_CLOEXEC));
        peak_resettable = peak_.valid();
        if (!peak_.valid()) peak_.reset(open((v2_ + "/memory.peak").c_str(), O_RDONLY | O_CLOEXEC));
      }
    }
    // v1 hierarchies: for limits v2 cannot apply, and for tracking when there is no v2.
    bool need_memory = memory_bytes > 0 && !dirs.v2_memory;
    bool need_pids = (max_processes > 0 && !dirs.v2_pids) || dirs.v2.empty();
    if (need_memory && !dirs.memory.empty()) {
      if (absl::Status s = make(dirs.memory, &memory_); !s.ok()) return s;
      if (!WriteFile(memory_ + "/memory.limit_in_bytes", absl::StrCat(memory_bytes))) {
        return ErrnoToStatus(errno, "set memory.limit_in_bytes");
      }
      WriteFile(memory_ + "/memory.memsw.limit_in_bytes", absl::StrCat(memory_bytes));
    }
    if (need_pids && !dirs.pids.empty()) {
      if (absl::Status s = make(dirs.pids, &pids_); !s.ok()) return s;
      if (max_processes > 0 && !WriteFile(pids_ + "/pids.max", absl::StrCat(max_processes))) {
        return ErrnoToStatus(errno, "set pids.max");
      }
    }
    reusable_ = !v2_.empty() && v2_kill_ && memory_bytes == 0 && max_processes == 0 &&
                memory_.empty() && pids_.empty() && (!v2_memory_ || peak_resettable);
    return absl::OkStatus();
  }

  const std::vector<int>& join_fds() const override { return join_; }
  Birthplace birthplace() const override {
    if (!v2_dir_.valid()) return {};
    return {v2_dir_.get(), v2_procs_.get()};
  }
  void Attach(pid_t) override {}  // The cgroup holds every program already.

  void KillAll() override {
    if (v2_kill_) {
      // An empty cgroup cannot gain a process (only execd adds them), so there is nothing
      // to kill: the common case of a command whose only process has exited.
      if (!Empty()) {
        WriteFile(v2_ + "/cgroup.kill", "1");
        killed_ = true;
      }
      return;
    }
    // No cgroup.kill: kill what the tracking cgroup lists until it lists nothing; a fork
    // racing the loop is caught by the next round (and bounded by pids.max when set).
    const std::string& tracking = !v2_.empty() ? v2_ : pids_;
    if (tracking.empty()) return;
    for (int round = 0; round < 64; ++round) {
      std::vector<pid_t> pids = ProcsOf(tracking);
      if (pids.empty()) return;
      for (pid_t pid : pids) kill(pid, SIGKILL);
    }
  }

  void GiveUp() override { gave_up_ = true; }
  bool Empty() override {
    if (events_.valid()) return KeyedValueIn(ReadSmallAt0(events_.get()), "populated") == 0;
    if (!pids_.empty()) return ProcsOf(pids_).empty();
    return true;
  }

  LimitHits Hits() override {
    LimitHits hits = ReadHits();
    checked_clean_ = Clean(hits);
    return hits;
  }
  static bool Clean(const LimitHits& hits) { return !hits.memory && !hits.processes; }

  LimitHits ReadHits() {
    LimitHits hits;
    // Only files of controllers enabled here: a missing file costs a failed path walk on
    // every command's end.
    if (v2_memory_) hits.memory = KeyedValue(v2_ + "/memory.events", "oom_kill") > 0;
    // A fork refused at a limit counts where the limit is: only ours matters.
    if (v2_pids_limited_) hits.processes = KeyedValue(v2_ + "/pids.events", "max") > 0;
    if (!memory_.empty()) {
      hits.memory = hits.memory || KeyedValue(memory_ + "/memory.oom_control", "oom_kill") > 0;
    }
    if (!pids_.empty()) {
      hits.processes = hits.processes || KeyedValue(pids_ + "/pids.events", "max") > 0;
    }
    return hits;
  }

  int64_t PeakMemoryBytes() override {
    int64_t peak = 0;
    if (!memory_.empty()) {
      absl::SimpleAtoi(absl::StripAsciiWhitespace(ReadFile(memory_ + "/memory.max_usage_in_bytes")),
                       &peak);
    } else if (peak_.valid()) {
      absl::SimpleAtoi(absl::StripAsciiWhitespace(ReadSmallAt0(peak_.get())), &peak);
    }
    return peak;
  }

 private:
  std::string v2_, memory_, pids_;
  bool v2_kill_ = false;
  bool v2_memory_ = false;           // The memory controller is enabled in v2_.
  bool v2_pids_limited_ = false;     // This group has a pids.max.
  UniqueFd events_;                  // v2_'s cgroup.events.
  UniqueFd v2_dir_;                  // v2_ itself (O_DIRECTORY).
  UniqueFd v2_procs_;                // v2_'s cgroup.procs.
  UniqueFd peak_;                    // v2_'s memory.peak, with the memory controller.
  std::vector<UniqueFd> owned_fds_;  // The v1 cgroup.procs.
  std::vector<int> join_;
  const std::shared_ptr<CgroupRecycler> recycler_;
  bool reusable_ = false;       // No limits, v2 only: may be kept for the next command.
  bool killed_ = false;         // cgroup.kill was written.
  bool gave_up_ = false;        // GiveUp: dropped without waiting for it to empty.
  bool checked_clean_ = false;  // Hits() found no limit event (else read at the end).
};

absl::StatusOr<std::unique_ptr<Containment::Group>> CgroupContainment::NewGroup(
    int64_t memory_bytes, int64_t max_processes) {
  recycler_->RetryRemovals();
  if (memory_bytes == 0 && max_processes == 0) {
    while (std::optional<CgroupRecycler::Entry> entry = recycler_->Take()) {
      auto group = std::make_unique<CgroupGroup>(recycler_);
      if (group->Reuse(dirs_, *std::move(entry))) return group;
    }
  }
  auto group = std::make_unique<CgroupGroup>(recycler_);
  absl::Status s =
      group->Init(dirs_, absl::StrCat("cmd-", next_.fetch_add(1)), memory_bytes, max_processes);
  if (!s.ok()) return s;
  return group;
}

absl::StatusOr<CgroupContainment::Dirs> FindCgroupDirs() {
  Hierarchies h = FindHierarchies();
  CgroupContainment::Dirs dirs;
  if (!h.v2_mount.empty()) {
    dirs.v2 = MakeServerDir(h.v2_mount + h.v2_own);
    if (!dirs.v2.empty()) {
      dirs.v2_kill = Exists(dirs.v2 + "/cgroup.kill");
      // Controllers for the command cgroups must be enabled in this server's directory,
      // which holds no process, so the "no internal processes" rule allows it.
      std::string available = ReadFile(dirs.v2 + "/cgroup.controllers");
      for (absl::string_view c : {"memory", "pids"}) {
        if (absl::StrContains(available, c) &&
            WriteFile(dirs.v2 + "/cgroup.subtree_control", absl::StrCat("+", c))) {
          (c == "memory" ? dirs.v2_memory : dirs.v2_pids) = true;
        }
      }
    }
  }
  if (!dirs.v2_memory && !h.memory_mount.empty()) {
    dirs.memory = MakeServerDir(h.memory_mount + h.memory_own);
  }
  if (!dirs.v2_pids && !h.pids_mount.empty()) {
    dirs.pids = MakeServerDir(h.pids_mount + h.pids_own);
  }
  if (dirs.v2.empty() && dirs.pids.empty()) {
    return absl::FailedPreconditionError(
        "no writable cgroup hierarchy to track commands (need cgroup v2 or the v1 pids "
        "controller, writable by the server's user)");
  }
  return dirs;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Containment>> NewCgroupContainment() {
  ASSIGN_OR_RETURN(CgroupContainment::Dirs dirs, FindCgroupDirs());
  return std::make_unique<CgroupContainment>(std::move(dirs));
}

}  // namespace execd::core
