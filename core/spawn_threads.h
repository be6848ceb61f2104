// SpawnThreads: long-lived threads that spawn children. A spawn blocks its thread until the
// child has exec'd (CLONE_VFORK), and a child's parent-death signal follows the thread that
// spawned it, so these threads live as long as the engine. Thread-safe; the destructor runs
// the tasks already submitted, then joins.
#pragma once

#include <pthread.h>

#include <algorithm>
#include <deque>
#include <thread>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/synchronization/mutex.h"

namespace execd::core {

class SpawnThreads {
 public:
  explicit SpawnThreads(int n) {
    for (int i = 0; i < std::max(1, n); ++i) {
      threads_.emplace_back([this] {
        pthread_setname_np(pthread_self(), "execd-spawn");
        Run();
      });
    }
  }
  ~SpawnThreads() {
    {
      absl::MutexLock lock(&mu_);
      stopping_ = true;
    }
    for (std::thread& t : threads_) t.join();
  }
  void Submit(absl::AnyInvocable<void() &&> task) {
    absl::MutexLock lock(&mu_);
    tasks_.push_back(std::move(task));
  }

 private:
  void Run() {
    for (;;) {
      absl::AnyInvocable<void() &&> task;
      {
        absl::MutexLock lock(&mu_);
        auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
          return stopping_ || !tasks_.empty();
        };
        mu_.Await(absl::Condition(&ready));
        if (tasks_.empty()) return;
        task = std::move(tasks_.front());
        tasks_.pop_front();
      }
      std::move(task)();
    }
  }

  absl::Mutex mu_;
  std::deque<absl::AnyInvocable<void() &&>> tasks_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;
};

}  // namespace execd::core
