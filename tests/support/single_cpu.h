// ScopedSingleCpu: every thread of the test process runs on one CPU while it lives, so that
// threads woken by one another take turns instead of running side by side. Races that need
// a thread to stop between two steps (another, woken meanwhile, runs first) show up on most
// tries this way instead of now and then.
#pragma once

#include <dirent.h>
#include <sched.h>
#include <sys/types.h>

#include <cstdlib>
#include <map>
#include <memory>

#include "gtest/gtest.h"

namespace execd::testing {

class ScopedSingleCpu {
 public:
  ScopedSingleCpu() {
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(sched_getcpu(), &one);
    ForEachThread([&](pid_t tid) {
      cpu_set_t was;
      if (sched_getaffinity(tid, sizeof(was), &was) != 0) return;
      if (sched_setaffinity(tid, sizeof(one), &one) != 0) {
        ADD_FAILURE() << "sched_setaffinity(" << tid << ") failed";
        return;
      }
      saved_.emplace(tid, was);
    });
  }
  // Threads started meanwhile keep the one CPU: they inherited it.
  ~ScopedSingleCpu() {
    for (auto& [tid, was] : saved_) sched_setaffinity(tid, sizeof(was), &was);
  }
  ScopedSingleCpu(const ScopedSingleCpu&) = delete;
  ScopedSingleCpu& operator=(const ScopedSingleCpu&) = delete;

 private:
  template <typename F>
  static void ForEachThread(F f) {
    std::unique_ptr<DIR, int (*)(DIR*)> d(opendir("/proc/self/task"), closedir);
    if (d == nullptr) return;
    while (dirent* e = readdir(d.get())) {
      if (e->d_name[0] != '.') f(static_cast<pid_t>(std::atoi(e->d_name)));
    }
  }

  std::map<pid_t, cpu_set_t> saved_;
};

}  // namespace execd::testing
