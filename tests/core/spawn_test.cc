// Spawning into a command's cgroup: created there by clone3 (CLONE_INTO_CGROUP) where the
// kernel can, joined through cgroup.procs where it cannot; either way the child's first
// instruction after exec already runs in the cgroup.
#include "core/spawn.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "core/containment.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/support/freezer.h"

namespace execd::core {
namespace {

// True when this kernel has CLONE_INTO_CGROUP (Linux 5.7) and execd uses it here (x86-64).
bool KernelCreatesIntoCgroups() {
#if !defined(__x86_64__)
  return false;
#else
  utsname u;
  if (uname(&u) != 0) return false;
  std::vector<std::string> parts = absl::StrSplit(u.release, absl::ByAnyChar(".-"));
  int major = 0, minor = 0;
  if (parts.size() < 2 || !absl::SimpleAtoi(parts[0], &major) ||
      !absl::SimpleAtoi(parts[1], &minor)) {
    return false;
  }
  return major > 5 || (major == 5 && minor >= 7);
#endif
}

// A spec for `argv` with no environment, the server's cwd, stdin and stderr inherited.
SpawnSpec SpecOf(const std::vector<std::string>& argv, int stdout_fd) {
  static const std::vector<std::string> kNoEnv;
  static const std::string kSameCwd;
  SpawnSpec spec;
  spec.executable = &argv[0];
  spec.argv = &argv;
  spec.env = &kNoEnv;
  spec.cwd = &kSameCwd;
  spec.stdin_fd = STDIN_FILENO;
  spec.stdout_fd = stdout_fd;
  spec.stderr_fd = STDERR_FILENO;
  return spec;
}

class SpawnIntoCgroupTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto containment = Containment::Create(Containment::Mode::kCgroup);
    if (!containment.ok()) {
      GTEST_SKIP() << "SKIPPED: no writable cgroup hierarchy here: " << containment.status();
    }
    containment_ = *std::move(containment);
    auto group = containment_->NewGroup(0, 0);
    ASSERT_TRUE(group.ok()) << group.status();
    group_ = *std::move(group);
    if (group_->birthplace().dir_fd < 0) {
      GTEST_SKIP() << "SKIPPED: no cgroup v2 hierarchy to create children in";
    }
  }

  // Runs `cat /proc/self/cgroup` with `dir_fd` as the cgroup to create it in; returns the
  // cgroup v2 line it printed. `joined_by_write`: what the spawn said of cgroup.procs.
  std::string CgroupOfChild(int dir_fd, bool* born_in_cgroup, bool* joined_by_write = nullptr) {
    int out[2];
    EXPECT_EQ(pipe2(out, O_CLOEXEC), 0);
    auto spawned = SpawnInGroup({"/bin/cat", "/proc/self/cgroup"}, out[1], dir_fd);
    close(out[1]);
    std::string text;
    char buf[4096];
    for (ssize_t n; (n = read(out[0], buf, sizeof(buf))) > 0;) text.append(buf, n);
    close(out[0]);
    EXPECT_TRUE(spawned.ok()) << spawned.status();
    if (!spawned.ok()) return "";
    int status = 0;
    EXPECT_EQ(waitpid(spawned->pid, &status, 0), spawned->pid);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
    *born_in_cgroup = spawned->born_in_cgroup;
    if (joined_by_write != nullptr) *joined_by_write = spawned->joined_by_write;
    for (absl::string_view line : absl::StrSplit(text, '\n')) {
      if (absl::StartsWith(line, "0::")) return std::string(line);
    }
    return "";
  }

  // Spawns `argv` into group_, created in the cgroup `dir_fd` where it can be.
  absl::StatusOr<SpawnedProcess> SpawnInGroup(const std::vector<std::string>& argv, int stdout_fd,
                                              int dir_fd) {
    SpawnSpec spec = SpecOf(argv, stdout_fd);
    spec.join_fds = &group_->join_fds();
    spec.cgroup_dir_fd = dir_fd;
    spec.cgroup_procs_fd = group_->birthplace().procs_fd;
    return SystemProcessOs().Spawn(spec);
  }

  std::unique_ptr<Containment> containment_;
  std::unique_ptr<Containment::Group> group_;
};

TEST_F(SpawnIntoCgroupTest, ChildIsCreatedInItsCgroup) {
  bool born = false, joined_by_write = true;
  std::string line = CgroupOfChild(group_->birthplace().dir_fd, &born, &joined_by_write);
  EXPECT_THAT(line, ::testing::MatchesRegex("0::(/.*)?/execd-[0-9]+/cmd-[0-9]+")) << line;
  if (KernelCreatesIntoCgroups()) {
    EXPECT_TRUE(born) << "Linux 5.7+ on x86-64: the child should be created in its cgroup, "
                         "not join it";
    // A group without limits is the cgroup v2 one alone: no cgroup.procs written.
    EXPECT_EQ(joined_by_write, group_->join_fds().size() > 1);
  } else {
    std::cout << "NOTE: this kernel or CPU has no CLONE_INTO_CGROUP here; the child joined\n";
  }
}

// A descriptor the kernel refuses as a cgroup (here an ordinary directory): the child joins
// through cgroup.procs instead, and later spawns still try clone3.
TEST_F(SpawnIntoCgroupTest, ChildJoinsItsCgroupWhenItCannotBeCreatedThere) {
  int not_a_cgroup = open("/tmp", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  ASSERT_GE(not_a_cgroup, 0);
  bool born = true, joined_by_write = false;
  std::string line = CgroupOfChild(not_a_cgroup, &born, &joined_by_write);
  close(not_a_cgroup);
  EXPECT_FALSE(born);
  EXPECT_TRUE(joined_by_write);
  EXPECT_THAT(line, ::testing::MatchesRegex("0::(/.*)?/execd-[0-9]+/cmd-[0-9]+")) << line;
  if (KernelCreatesIntoCgroups()) {
    line = CgroupOfChild(group_->birthplace().dir_fd, &born);
    EXPECT_TRUE(born);
    EXPECT_THAT(line, ::testing::MatchesRegex("0::(/.*)?/execd-[0-9]+/cmd-[0-9]+")) << line;
  }
}

// A command whose process cannot die yet (stuck in the kernel; here frozen by a cgroup v1
// freezer) is answered once execd stops waiting for it. Its group is then dropped on the
// engine's loop: that must not wait for the process again (every other command would),
// and its cgroup, which cannot be removed while the process is in it, goes later, once the
// process has died.
TEST_F(SpawnIntoCgroupTest, AGroupGivenUpOnIsDroppedAtOnceAndItsCgroupRemovedLater) {
  std::string why;
  std::unique_ptr<testing::Freezer> freezer = testing::Freezer::Create(&why);
  if (freezer == nullptr) GTEST_SKIP() << "SKIPPED: " << why;
  char link[64];
  snprintf(link, sizeof(link), "/proc/self/fd/%d", group_->birthplace().dir_fd);
  char dir[4096];
  const ssize_t n = readlink(link, dir, sizeof(dir) - 1);
  ASSERT_GT(n, 0);
  const std::string cgroup_dir(dir, static_cast<size_t>(n));
  auto spawned = SpawnInGroup({"/bin/sleep", "100"}, STDOUT_FILENO, group_->birthplace().dir_fd);
  ASSERT_TRUE(spawned.ok()) << spawned.status();
  const pid_t pid = spawned->pid;
  ASSERT_TRUE(freezer->Freeze(pid));
  group_->KillAll();
  EXPECT_FALSE(group_->Empty()) << "frozen, it cannot have died";

  group_->GiveUp();
  const absl::Time start = absl::Now();
  group_.reset();
  // Without GiveUp this waits 200 ms for the cgroup to empty.
  EXPECT_LT(absl::Now() - start, absl::Milliseconds(100));
  EXPECT_EQ(access(cgroup_dir.c_str(), F_OK), 0) << "removed with a process in it?";

  ASSERT_TRUE(freezer->Thaw());
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << status;
  // The next group's creation removes what is left.
  auto next = containment_->NewGroup(0, 0);
  ASSERT_TRUE(next.ok()) << next.status();
  EXPECT_NE(access(cgroup_dir.c_str(), F_OK), 0) << cgroup_dir << " was left behind";
}

// SpawnSpec::fd3 becomes the child's descriptor 3 (a PREWARMED pool's exit report), from
// any number, 3 included (where dup2 would leave it close-on-exec); without it the child
// has only 0, 1 and 2.
TEST(SpawnTest, TheChildHasDescriptorThreeOnlyWhenGivenOne) {
  // The child writes to its 3, then lists which of its descriptors 3 to 20 are open.
  const std::vector<std::string> argv = {"/bin/sh", "-c",
                                         "echo to-3 >&3; echo open:; for i in $(seq 3 20); do "
                                         "[ -e /proc/$$/fd/$i ] && echo $i; done"};
  auto run = [&](int fd3) {
    int out[2];
    EXPECT_EQ(pipe2(out, O_CLOEXEC), 0);
    SpawnSpec spec = SpecOf(argv, out[1]);
    spec.stderr_fd = out[1];
    spec.fd3 = fd3;
    auto spawned = SystemProcessOs().Spawn(spec);
    close(out[1]);
    EXPECT_TRUE(spawned.ok()) << spawned.status();
    std::string text;
    char buf[4096];
    for (ssize_t n; (n = read(out[0], buf, sizeof(buf))) > 0;) text.append(buf, n);
    close(out[0]);
    if (spawned.ok()) waitpid(spawned->pid, nullptr, 0);
    return text;
  };
  EXPECT_THAT(run(-1), ::testing::EndsWith("open:\n"));  // After sh's complaint about 3.
  for (bool at_three : {false, true}) {
    int report[2];
    ASSERT_EQ(pipe2(report, O_CLOEXEC | O_NONBLOCK), 0);
    // Whatever this process has on 3 steps aside for the spawn (single-threaded here).
    const int saved_flags = at_three ? fcntl(3, F_GETFD) : -1;
    const int saved = saved_flags >= 0 ? fcntl(3, F_DUPFD_CLOEXEC, 10) : -1;
    if (at_three) {
      ASSERT_EQ(dup3(report[1], 3, O_CLOEXEC), 3);
      close(report[1]);
      report[1] = 3;
    }
    const int write_end = report[1];
    std::string listed = run(write_end);
    close(write_end);
    if (saved >= 0) {
      ASSERT_EQ(dup3(saved, 3, saved_flags & FD_CLOEXEC ? O_CLOEXEC : 0), 3);
      close(saved);
    }
    char buf[64];
    ssize_t n = read(report[0], buf, sizeof(buf));
    close(report[0]);
    EXPECT_EQ(listed, "open:\n3\n") << "fd3 was " << write_end;
    EXPECT_EQ(std::string(buf, n > 0 ? n : 0), "to-3\n") << "fd3 was " << write_end;
  }
}

}  // namespace
}  // namespace execd::core
