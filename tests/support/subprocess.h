// Test support: run a real binary (execctl, execd) and observe it, with bounded waits on
// events (pidfd readiness, output lines) instead of sleeps.
#pragma once

#include <sys/types.h>

#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace execd::testing {

struct ProcessResult {
  int exit_code = -1;  // -1 when killed by a signal (see signal) or when it timed out.
  int signal = 0;
  bool timed_out = false;
  std::string out;
  std::string err;
  absl::Duration elapsed;
};

// Runs `argv` with `stdin_data`, capturing stdout and stderr; kills it after `timeout`.
ProcessResult RunProcess(const std::vector<std::string>& argv, const std::string& stdin_data = "",
                         absl::Duration timeout = absl::Seconds(30),
                         const std::vector<std::string>& extra_env = {});

// Polls `condition` until it holds or `timeout` passes; returns its last value. For
// conditions no event announces (a pid disappearing from /proc).
bool WaitFor(const std::function<bool()>& condition, absl::Duration timeout);

// True when `pid` names a live (non-zombie) process.
bool ProcessAlive(pid_t pid);

// True when `pid` is gone from /proc: dead and reaped, not even a zombie left.
bool ProcessReaped(pid_t pid);

// Processes whose parent is `parent`, from a scan of /proc (zombies included).
std::vector<pid_t> ChildrenOf(pid_t parent);

// Live (non-zombie) processes whose environment contains `entry` ("NAME=value"): every
// descendant of a command inherits it, wherever it moved, so tests can count survivors.
std::vector<pid_t> ProcessesWithEnv(const std::string& entry);

// The entries of /proc/self/fd, the listing's own descriptor included: compared before and
// after, a count that grew is a leak.
int OpenDescriptors();

// A value unique to this test process and call, for markers and file names.
std::string UniqueName(const std::string& prefix);

// `n` incompressible bytes, the same in every run.
std::string RandomBytes(size_t n);

// A fresh directory under the test temp dir, removed with its contents on destruction.
class ScopedTempDir {
 public:
  explicit ScopedTempDir(const std::string& prefix);
  ~ScopedTempDir();
  ScopedTempDir(const ScopedTempDir&) = delete;
  ScopedTempDir& operator=(const ScopedTempDir&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// A running execd binary on a loopback port chosen by the kernel. Stops it on destruction.
class ServerProcess {
 public:
  // Starts `binary` with `args` plus --listen=127.0.0.1:0, and waits for it to listen.
  ServerProcess(const std::string& binary, const std::vector<std::string>& args);
  ~ServerProcess();

  bool ok() const { return port_ > 0; }
  int port() const { return port_; }
  // The port of its /metrics (0: none).
  int metrics_port() const { return metrics_port_; }
  // The port of its health-only listener (0: none).
  int health_port() const { return health_port_; }
  pid_t pid() const { return pid_; }
  std::string target() const { return "127.0.0.1:" + std::to_string(port_); }
  // Everything the server wrote to stderr so far.
  std::string log();
  // Waits until the server's log contains `text`.
  bool WaitForLog(const std::string& text, absl::Duration timeout);
  // Sends `signal` and waits for the exit; returns the exit code, or -1 (signal/timeout).
  int Stop(int signal, absl::Duration timeout);

 private:
  pid_t pid_ = -1;
  int pidfd_ = -1;
  int port_ = 0;
  int metrics_port_ = 0;
  int health_port_ = 0;
  absl::Mutex mu_;
  std::string log_ ABSL_GUARDED_BY(mu_);
  std::thread reader_;
};

}  // namespace execd::testing
