// Freezer: a cgroup v1 freezer cgroup for tests. A process moved into it and frozen cannot
// act, not even on SIGKILL, until it is thawed: the state of a process stuck in the kernel
// (uninterruptible sleep on a hung filesystem), which tests cannot otherwise bring about.
#pragma once

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "tests/support/subprocess.h"

namespace execd::testing {

class Freezer {
 public:
  // nullptr, with `why` set, where no cgroup v1 freezer hierarchy is writable.
  static std::unique_ptr<Freezer> Create(std::string* why) {
    std::string dir = absl::StrCat("/sys/fs/cgroup/freezer/", UniqueName("frz"));
    if (mkdir(dir.c_str(), 0755) != 0) {
      *why = absl::StrCat("no writable cgroup v1 freezer: mkdir ", dir, ": ", strerror(errno));
      return nullptr;
    }
    return std::unique_ptr<Freezer>(new Freezer(std::move(dir)));
  }
  // Thaws, and removes the cgroup once its processes have left it (bounded wait).
  ~Freezer() {
    Thaw();
    WaitFor([&] { return rmdir(dir_.c_str()) == 0 || errno == ENOENT; }, absl::Seconds(5));
  }
  Freezer(const Freezer&) = delete;
  Freezer& operator=(const Freezer&) = delete;

  const std::string& dir() const { return dir_; }
  // Moves `pid` in and freezes the cgroup; true once the kernel reports it FROZEN.
  bool Freeze(pid_t pid) {
    return Write("cgroup.procs", std::to_string(pid)) && Write("freezer.state", "FROZEN") &&
           WaitFor([&] { return State() == "FROZEN"; }, absl::Seconds(5));
  }
  bool Thaw() { return Write("freezer.state", "THAWED"); }
  // Whether `pid` is gone from /proc: dead and reaped, not even a zombie left.
  static bool Reaped(pid_t pid) { return ProcessReaped(pid); }
  // Thaws, then waits (bounded) until `pid`, frozen after it was sent SIGKILL, has died of
  // it and been reaped.
  bool ThawAndAwaitReaped(pid_t pid) {
    return Thaw() && WaitFor([&] { return Reaped(pid); }, absl::Seconds(10));
  }

 private:
  explicit Freezer(std::string dir) : dir_(std::move(dir)) {}
  bool Write(const std::string& file, const std::string& text) {
    FILE* f = fopen((dir_ + "/" + file).c_str(), "w");
    if (f == nullptr) return false;
    const bool wrote = fputs(text.c_str(), f) >= 0;
    return fclose(f) == 0 && wrote;
  }
  std::string State() {
    std::ifstream in(dir_ + "/freezer.state");
    std::string state;
    std::getline(in, state);
    return state;
  }

  std::string dir_;
};

}  // namespace execd::testing
