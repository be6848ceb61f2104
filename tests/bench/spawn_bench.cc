// Spawn + wait of /bin/true, each method wiring stdin//dev/null and stdout/stderr pipes as
// the engine does, so they differ only in how the child is created:
//   ExecdSpawn     core::SystemProcessOs: clone(CLONE_VM|CLONE_VFORK|CLONE_PIDFD), signal
//                  reset, setsid, PDEATHSIG, close_range, in an async-signal-safe child
//   PosixSpawn     glibc posix_spawn (also clone(CLONE_VM|CLONE_VFORK) inside)
//   ForkExec       fork + execve
//   EngineRoundTrip  the whole core::Engine: admission, cgroup, spawn thread, loop, reap
//   IntoCgroupPaced/0  ExecdSpawn into a command cgroup, joined by writing cgroup.procs
//   IntoCgroupPaced/1  the same, created in it by clone3(CLONE_INTO_CGROUP)
//                    One spawn every 100 ms (the pause is not timed), as at a low request
//                    rate: the cost of the cgroup.procs write depends on how rare it is.
#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <string>
#include <vector>

#include "absl/synchronization/notification.h"
#include "benchmark/benchmark.h"
#include "core/containment.h"
#include "core/engine.h"
#include "core/spawn.h"
#include "core/validate.h"

namespace execd::core {
namespace {

const std::string kTrue = "/bin/true";
const std::vector<std::string> kArgv = {kTrue};
const std::vector<std::string> kEnv = {};
char* const kCArgv[] = {const_cast<char*>("/bin/true"), nullptr};
char* const kCEnv[] = {nullptr};

struct Pipes {
  int null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
  int out[2];
  int err[2];
  Pipes() {
    (void)!pipe2(out, O_CLOEXEC);
    (void)!pipe2(err, O_CLOEXEC);
  }
  ~Pipes() {
    for (int fd : {null_fd, out[0], out[1], err[0], err[1]}) close(fd);
  }
};

void Wait(pid_t pid) {
  int status;
  waitpid(pid, &status, 0);
}

// /bin/true with /dev/null and the two pipes of `p`, as the engine wires a child.
SpawnSpec TrueSpec(const Pipes& p) {
  static const std::string* const kNoCwd = new std::string();
  SpawnSpec spec;
  spec.executable = &kTrue;
  spec.argv = &kArgv;
  spec.env = &kEnv;
  spec.cwd = kNoCwd;
  spec.stdin_fd = p.null_fd;
  spec.stdout_fd = p.out[1];
  spec.stderr_fd = p.err[1];
  return spec;
}

void BM_ExecdSpawn(benchmark::State& state) {
  for (auto _ : state) {
    Pipes p;
    auto child = SystemProcessOs().Spawn(TrueSpec(p));
    if (!child.ok()) state.SkipWithError(std::string(child.status().message()).c_str());
    Wait(child->pid);
  }
}
BENCHMARK(BM_ExecdSpawn)->UseRealTime();

void BM_PosixSpawn(benchmark::State& state) {
  for (auto _ : state) {
    Pipes p;
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, p.null_fd, 0);
    posix_spawn_file_actions_adddup2(&actions, p.out[1], 1);
    posix_spawn_file_actions_adddup2(&actions, p.err[1], 2);
    posix_spawnattr_t attr;
    posix_spawnattr_init(&attr);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSID);
    pid_t pid;
    posix_spawn(&pid, kTrue.c_str(), &actions, &attr, kCArgv, kCEnv);
    posix_spawnattr_destroy(&attr);
    posix_spawn_file_actions_destroy(&actions);
    Wait(pid);
  }
}
BENCHMARK(BM_PosixSpawn)->UseRealTime();

void BM_ForkExec(benchmark::State& state) {
  for (auto _ : state) {
    Pipes p;
    pid_t pid = fork();
    if (pid == 0) {
      setsid();
      dup2(p.null_fd, 0);
      dup2(p.out[1], 1);
      dup2(p.err[1], 2);
      execve(kTrue.c_str(), kCArgv, kCEnv);
      _exit(127);
    }
    Wait(pid);
  }
}
BENCHMARK(BM_ForkExec)->UseRealTime();

void BM_IntoCgroupPaced(benchmark::State& state) {
  auto containment = Containment::Create(Containment::Mode::kCgroup);
  if (!containment.ok()) {
    state.SkipWithError("no writable cgroup hierarchy");
    return;
  }
  auto group = (*containment)->NewGroup(0, 0);
  if (!group.ok() || (*group)->birthplace().dir_fd < 0) {
    state.SkipWithError("no cgroup v2 directory to create children in");
    return;
  }
  const bool created = state.range(0) == 1;
  bool born = false;
  for (auto _ : state) {
    state.PauseTiming();
    usleep(100 * 1000);
    Pipes p;
    state.ResumeTiming();
    SpawnSpec spec = TrueSpec(p);
    spec.join_fds = &(*group)->join_fds();
    spec.cgroup_dir_fd = created ? (*group)->birthplace().dir_fd : -1;
    spec.cgroup_procs_fd = (*group)->birthplace().procs_fd;
    auto child = SystemProcessOs().Spawn(spec);
    if (!child.ok()) {
      state.SkipWithError(std::string(child.status().message()).c_str());
      return;
    }
    born = child->born_in_cgroup;
    Wait(child->pid);
  }
  state.SetLabel(born ? "created in the cgroup" : "joined by write");
}
BENCHMARK(BM_IntoCgroupPaced)->Arg(0)->Arg(1)->Iterations(30)->UseRealTime();

class Done final : public Engine::Observer {
 public:
  void OnFinished(absl::StatusOr<Result>) override { done.Notify(); }
  absl::Notification done;
};

void BM_EngineRoundTrip(benchmark::State& state) {
  auto engine = Engine::Create(Engine::Options());
  RequestPolicy policy;
  CommandRequest request;
  request.argv = {kTrue};
  auto command = ValidateRequest(request, policy);
  for (auto _ : state) {
    Done observer;
    (void)(*engine)->Submit(*command, &observer);
    observer.done.WaitForNotification();
  }
}
BENCHMARK(BM_EngineRoundTrip)->UseRealTime();

}  // namespace
}  // namespace execd::core
