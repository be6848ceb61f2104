#include "tests/support/subprocess.h"

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <random>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"

extern char** environ;

namespace execd::testing {
namespace {

int PidfdOpen(pid_t pid) { return static_cast<int>(syscall(SYS_pidfd_open, pid, 0)); }

// Waits for `pid` (whose pidfd is `pidfd`) to exit within `timeout`; SIGKILLs it otherwise.
// Returns the wait status, and whether it timed out.
int WaitExit(pid_t pid, int pidfd, absl::Duration timeout, bool* timed_out) {
  pollfd p{pidfd, POLLIN, 0};
  int ready = poll(&p, 1, static_cast<int>(absl::ToInt64Milliseconds(timeout)));
  *timed_out = ready == 0;
  if (*timed_out) kill(pid, SIGKILL);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return status;
}

std::vector<char*> Pointers(std::vector<std::string>& strings) {
  std::vector<char*> out;
  for (std::string& s : strings) out.push_back(s.data());
  out.push_back(nullptr);
  return out;
}

std::vector<std::string> Environment(const std::vector<std::string>& extra) {
  std::vector<std::string> env;
  for (char** e = environ; *e != nullptr; ++e) env.emplace_back(*e);
  env.insert(env.end(), extra.begin(), extra.end());
  return env;
}

}  // namespace

ProcessResult RunProcess(const std::vector<std::string>& argv, const std::string& stdin_data,
                         absl::Duration timeout, const std::vector<std::string>& extra_env) {
  int in[2], out[2], err[2];
  pipe2(in, O_CLOEXEC);
  pipe2(out, O_CLOEXEC);
  pipe2(err, O_CLOEXEC);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, in[0], 0);
  posix_spawn_file_actions_adddup2(&actions, out[1], 1);
  posix_spawn_file_actions_adddup2(&actions, err[1], 2);
  std::vector<std::string> args = argv;
  std::vector<std::string> env = Environment(extra_env);
  std::vector<char*> arg_ptrs = Pointers(args);
  std::vector<char*> env_ptrs = Pointers(env);
  ProcessResult result;
  absl::Time start = absl::Now();
  pid_t pid;
  int rc = posix_spawn(&pid, arg_ptrs[0], &actions, nullptr, arg_ptrs.data(), env_ptrs.data());
  posix_spawn_file_actions_destroy(&actions);
  close(in[0]);
  close(out[1]);
  close(err[1]);
  if (rc != 0) {
    result.err = std::strerror(rc);
    close(in[1]);
    close(out[0]);
    close(err[0]);
    return result;
  }
  int pidfd = PidfdOpen(pid);
  // Feed stdin and collect both outputs with poll, so no pipe can fill and deadlock.
  size_t written = 0;
  int in_fd = in[1];
  if (stdin_data.empty()) {
    close(in_fd);
    in_fd = -1;
  } else {
    fcntl(in_fd, F_SETFL, O_NONBLOCK);
  }
  int fds[2] = {out[0], err[0]};
  std::string* sinks[2] = {&result.out, &result.err};
  absl::Time deadline = start + timeout;
  while (fds[0] >= 0 || fds[1] >= 0 || in_fd >= 0) {
    pollfd p[3];
    int n = 0;
    int which[3];
    for (int i = 0; i < 2; ++i) {
      if (fds[i] >= 0) {
        p[n] = {fds[i], POLLIN, 0};
        which[n++] = i;
      }
    }
    if (in_fd >= 0) {
      p[n] = {in_fd, POLLOUT, 0};
      which[n++] = 2;
    }
    int left = static_cast<int>(absl::ToInt64Milliseconds(deadline - absl::Now()));
    if (left <= 0 || poll(p, n, left) == 0) break;
    for (int k = 0; k < n; ++k) {
      if (p[k].revents == 0) continue;
      if (which[k] == 2) {
        ssize_t w = write(in_fd, stdin_data.data() + written, stdin_data.size() - written);
        if (w > 0) written += static_cast<size_t>(w);
        if (w < 0 && errno != EAGAIN) written = stdin_data.size();
        if (written == stdin_data.size()) {
          close(in_fd);
          in_fd = -1;
        }
        continue;
      }
      char buf[65536];
      ssize_t r = read(fds[which[k]], buf, sizeof(buf));
      if (r > 0) {
        sinks[which[k]]->append(buf, static_cast<size_t>(r));
      } else if (r == 0 || errno != EINTR) {
        close(fds[which[k]]);
        fds[which[k]] = -1;
      }
    }
  }
  for (int fd : {fds[0], fds[1], in_fd}) {
    if (fd >= 0) close(fd);
  }
  absl::Duration left = deadline - absl::Now();
  int status = WaitExit(pid, pidfd, left > absl::ZeroDuration() ? left : absl::ZeroDuration(),
                        &result.timed_out);
  close(pidfd);
  result.elapsed = absl::Now() - start;
  if (WIFEXITED(status)) result.exit_code = WEXITSTATUS(status);
  if (WIFSIGNALED(status)) result.signal = WTERMSIG(status);
  return result;
}

bool WaitFor(const std::function<bool()>& condition, absl::Duration timeout) {
  absl::Time deadline = absl::Now() + timeout;
  while (!condition()) {
    if (absl::Now() >= deadline) return condition();
    absl::SleepFor(absl::Milliseconds(5));  // Polling interval of a bounded wait.
  }
  return true;
}

bool ProcessAlive(pid_t pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(stat, line)) return false;
  size_t paren = line.rfind(')');
  return paren != std::string::npos && paren + 2 < line.size() && line[paren + 2] != 'Z';
}

bool ProcessReaped(pid_t pid) { return access(absl::StrCat("/proc/", pid).c_str(), F_OK) != 0; }

int OpenDescriptors() {
  int n = 0;
  DIR* d = opendir("/proc/self/fd");
  while (readdir(d) != nullptr) ++n;
  closedir(d);
  return n;
}

std::vector<pid_t> ChildrenOf(pid_t parent) {
  std::vector<pid_t> children;
  DIR* proc = opendir("/proc");
  if (proc == nullptr) return children;
  while (dirent* entry = readdir(proc)) {
    pid_t pid;
    if (!absl::SimpleAtoi(entry->d_name, &pid)) continue;
    std::ifstream stat(absl::StrCat("/proc/", pid, "/stat"));
    std::string line;
    if (!std::getline(stat, line)) continue;
    // Fields after the parenthesised command name: state ppid ...
    size_t paren = line.rfind(')');
    if (paren == std::string::npos) continue;
    std::vector<std::string> fields = absl::StrSplit(line.substr(paren + 2), ' ');
    pid_t ppid;
    if (fields.size() > 1 && absl::SimpleAtoi(fields[1], &ppid) && ppid == parent) {
      children.push_back(pid);
    }
  }
  closedir(proc);
  return children;
}

std::vector<pid_t> ProcessesWithEnv(const std::string& entry) {
  std::vector<pid_t> found;
  DIR* proc = opendir("/proc");
  if (proc == nullptr) return found;
  while (dirent* e = readdir(proc)) {
    pid_t pid;
    if (!absl::SimpleAtoi(e->d_name, &pid)) continue;
    std::ifstream in(absl::StrCat("/proc/", pid, "/environ"));
    std::string env((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    for (absl::string_view var : absl::StrSplit(env, '\0')) {
      if (var == entry && ProcessAlive(pid)) {
        found.push_back(pid);
        break;
      }
    }
  }
  closedir(proc);
  return found;
}

std::string UniqueName(const std::string& prefix) {
  static std::atomic<int> counter{0};
  return absl::StrCat(prefix, "_", getpid(), "_", counter.fetch_add(1));
}

std::string RandomBytes(size_t n) {
  std::mt19937_64 rng(42);
  std::string s(n, '\0');
  for (char& c : s) c = static_cast<char>(rng());
  return s;
}

ScopedTempDir::ScopedTempDir(const std::string& prefix) {
  std::string base = ::getenv("TEST_TMPDIR") != nullptr ? ::getenv("TEST_TMPDIR") : "/tmp";
  path_ = absl::StrCat(base, "/", UniqueName(prefix));
  mkdir(path_.c_str(), 0755);
}

ScopedTempDir::~ScopedTempDir() {
  // The tests' directories are flat: files only.
  if (DIR* d = opendir(path_.c_str())) {
    while (dirent* e = readdir(d)) {
      if (e->d_name[0] != '.') unlink(absl::StrCat(path_, "/", e->d_name).c_str());
    }
    closedir(d);
  }
  rmdir(path_.c_str());
}

ServerProcess::ServerProcess(const std::string& binary, const std::vector<std::string>& args) {
  int err[2];
  pipe2(err, O_CLOEXEC);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0);
  posix_spawn_file_actions_adddup2(&actions, err[1], 2);
  // A metrics port of its own too: servers of tests running side by side must not share one.
  std::vector<std::string> argv = {binary, "--listen=127.0.0.1:0", "--metrics_listen=127.0.0.1:0"};
  argv.insert(argv.end(), args.begin(), args.end());
  std::vector<char*> ptrs = Pointers(argv);
  int rc = posix_spawn(&pid_, ptrs[0], &actions, nullptr, ptrs.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  close(err[1]);
  if (rc != 0) {
    close(err[0]);
    pid_ = -1;
    return;
  }
  pidfd_ = PidfdOpen(pid_);
  reader_ = std::thread([this, fd = err[0]] {
    char buf[4096];
    ssize_t n;
    while ((n = read(fd, buf, sizeof(buf))) != 0) {
      if (n < 0) {
        if (errno == EINTR) continue;
        break;
      }
      absl::MutexLock lock(&mu_);
      log_.append(buf, static_cast<size_t>(n));
    }
    close(fd);
  });
  // The server announces its port: "event=listening addr=127.0.0.1:0 port=NNNN ...".
  if (!WaitForLog("event=listening", absl::Seconds(20))) return;
  std::string text = log();
  text = text.substr(text.find("event=listening"));
  size_t at = text.find(" port=");
  if (at == std::string::npos) return;
  std::string port = text.substr(at + 6, text.find(' ', at + 6) - at - 6);
  absl::SimpleAtoi(port, &port_);
  at = text.find(" metrics_port=");
  if (at == std::string::npos) return;
  port = text.substr(at + 14, text.find(' ', at + 14) - at - 14);
  absl::SimpleAtoi(port, &metrics_port_);
  at = text.find(" health_port=");
  if (at == std::string::npos) return;
  port = text.substr(at + 13, text.find(' ', at + 13) - at - 13);
  absl::SimpleAtoi(port, &health_port_);
}

ServerProcess::~ServerProcess() {
  if (pid_ > 0) Stop(SIGKILL, absl::Seconds(10));
  if (reader_.joinable()) reader_.join();
}

std::string ServerProcess::log() {
  absl::MutexLock lock(&mu_);
  return log_;
}

bool ServerProcess::WaitForLog(const std::string& text, absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  auto found = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return log_.find(text) != std::string::npos;
  };
  return mu_.AwaitWithTimeout(absl::Condition(&found), timeout);
}

int ServerProcess::Stop(int signal, absl::Duration timeout) {
  if (pid_ <= 0) return -1;
  kill(pid_, signal);
  bool timed_out = false;
  int status = WaitExit(pid_, pidfd_, timeout, &timed_out);
  close(pidfd_);
  pid_ = -1;
  if (reader_.joinable()) reader_.join();
  if (timed_out || !WIFEXITED(status)) return -1;
  return WEXITSTATUS(status);
}

}  // namespace execd::testing
