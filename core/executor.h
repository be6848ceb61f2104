// Thread pools for the engine's CPU work (never for blocking calls).
//
// WorkStealingExecutor: one Chase-Lev deque per worker (the owner pushes and takes at the
// bottom, LIFO for locality; thieves steal FIFO at the top), an injection queue for
// submitters that are not workers, stealing from random victims, and idle workers parked
// on an event count, so nothing spins while there is no work and no submission is lost.
// MutexPool: the plain baseline, one mutex, one condition variable, one queue.
//
// Thread-safety: Submit may be called from any thread, including from inside a task. The
// destructor runs every task already submitted, then joins.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/functional/any_invocable.h"

namespace execd::core {

class TaskPool {
 public:
  using Task = absl::AnyInvocable<void() &&>;
  virtual ~TaskPool() = default;
  virtual void Submit(Task task) = 0;
  virtual int threads() const = 0;
};

// A single-owner, multi-thief deque of pointers (Lê, Pop, Cohen, Zappa Nardelli: "Correct
// and Efficient Work-Stealing for Weak Memory Models", PPoPP 2013). Grows without bound;
// arrays it outgrew are kept until destruction, as a thief may still read them.
template <typename T>
class WorkStealingDeque {
 public:
  explicit WorkStealingDeque(int64_t capacity = 256) {
    arrays_.push_back(std::make_unique<Array>(capacity));
    array_.store(arrays_.back().get(), std::memory_order_relaxed);
  }

  // Owner only.
  void Push(T* item) {
    int64_t b = bottom_.load(std::memory_order_relaxed);
    int64_t t = top_.load(std::memory_order_acquire);
    Array* a = array_.load(std::memory_order_relaxed);
    if (b - t > a->capacity - 1) a = Grow(a, b, t);
    a->Put(b, item);
    // A release store rather than the paper's release fence plus relaxed store: the same
    // order on every target we build for, and visible to ThreadSanitizer.
    bottom_.store(b + 1, std::memory_order_release);
  }

  // Owner only: the newest item, or null.
  T* Take() {
    int64_t b = bottom_.load(std::memory_order_relaxed) - 1;
    Array* a = array_.load(std::memory_order_relaxed);
    bottom_.store(b, std::memory_order_relaxed);
    std::atomic_thread_fence(std::memory_order_seq_cst);
    int64_t t = top_.load(std::memory_order_relaxed);
    if (t > b) {
      bottom_.store(b + 1, std::memory_order_relaxed);
      return nullptr;
    }
    T* item = a->Get(b);
    if (t == b) {  // The last item: race the thieves for it.
      if (!top_.compare_exchange_strong(t, t + 1, std::memory_order_seq_cst,
                                        std::memory_order_relaxed)) {
        item = nullptr;
      }
      bottom_.store(b + 1, std::memory_order_relaxed);
    }
    return item;
  }

  // Any thread: the oldest item, or null (empty, or lost a race; try again elsewhere).
  T* Steal() {
    int64_t t = top_.load(std::memory_order_acquire);
    std::atomic_thread_fence(std::memory_order_seq_cst);
    int64_t b = bottom_.load(std::memory_order_acquire);
    if (t >= b) return nullptr;
    Array* a = array_.load(std::memory_order_acquire);
    T* item = a->Get(t);
    if (!top_.compare_exchange_strong(t, t + 1, std::memory_order_seq_cst,
                                      std::memory_order_relaxed)) {
      return nullptr;
    }
    return item;
  }

  bool Empty() const {
    return top_.load(std::memory_order_acquire) >= bottom_.load(std::memory_order_acquire);
  }

 private:
  struct Array {
    explicit Array(int64_t n) : capacity(n), mask(n - 1), slots(new std::atomic<T*>[n]) {}
    T* Get(int64_t i) const { return slots[i & mask].load(std::memory_order_relaxed); }
    void Put(int64_t i, T* item) { slots[i & mask].store(item, std::memory_order_relaxed); }
    const int64_t capacity;  // A power of two.
    const int64_t mask;
    std::unique_ptr<std::atomic<T*>[]> slots;
  };

  Array* Grow(Array* old, int64_t b, int64_t t) {
    auto bigger = std::make_unique<Array>(old->capacity * 2);
    for (int64_t i = t; i < b; ++i) bigger->Put(i, old->Get(i));
    Array* raw = bigger.get();
    arrays_.push_back(std::move(bigger));
    array_.store(raw, std::memory_order_release);
    return raw;
  }

  alignas(64) std::atomic<int64_t> top_{0};
  alignas(64) std::atomic<int64_t> bottom_{0};
  std::atomic<Array*> array_;
  std::vector<std::unique_ptr<Array>> arrays_;  // Owner only.
};

// Parks idle threads without losing a wake-up and without a system call on the fast path
// (the scheme of Eigen's and folly's EventCount). A thread that found no work calls
// Prewait(), looks for work once more, then CancelWait() if it found some or CommitWait()
// to sleep. Notify() after publishing work wakes one pre-waiter that no earlier Notify
// already signalled; when there is none it is a single load. Callers put a seq_cst fence
// between publishing work and Notify(); Prewait() is a seq_cst read-modify-write, so
// either the second look finds the work or Notify sees the pre-waiter.
class EventCount {
 public:
  void Prewait();
  void CancelWait();
  void CommitWait();  // Returns once signalled (and, rarely, spuriously).
  void Notify();
  void NotifyAll();

 private:
  static constexpr uint64_t kSignal = uint64_t{1} << 32;
  static uint32_t Waiters(uint64_t s) { return static_cast<uint32_t>(s); }
  static uint32_t Signals(uint64_t s) { return static_cast<uint32_t>(s >> 32); }
  // Low half: threads between Prewait and the end of their wait. High half: signals given
  // to them and not yet consumed (never more than the waiters).
  std::atomic<uint64_t> state_{0};
  std::atomic<uint32_t> epoch_{0};  // The futex word: moves on every signal.
};

class WorkStealingExecutor final : public TaskPool {
 public:
  explicit WorkStealingExecutor(int threads);
  ~WorkStealingExecutor() override;

  void Submit(Task task) override;
  int threads() const override { return static_cast<int>(workers_.size()); }
  // The executor whose worker runs the calling thread, or null.
  static WorkStealingExecutor* Current();

 private:
  struct Worker {
    WorkStealingDeque<Task> deque;  // Tasks submitted by this worker's own tasks.
    std::thread thread;
    uint64_t rng;
  };
  void Run(int index);
  bool FindWork(int index, Task& out);
  bool PopInjected(Task& out);
  bool Idle() const;

  std::vector<std::unique_ptr<Worker>> workers_;
  // Submissions from outside the pool, held by value: no allocation per task.
  std::mutex injection_mu_;
  std::deque<Task> injection_;
  std::atomic<int64_t> injected_{0};  // Size of injection_, readable without the lock.

  EventCount idle_;
  std::atomic<bool> stopping_{false};
};

class MutexPool final : public TaskPool {
 public:
  explicit MutexPool(int threads);
  ~MutexPool() override;
  void Submit(Task task) override;
  int threads() const override { return static_cast<int>(threads_.size()); }

 private:
  void Run();
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Task> tasks_;
  bool stopping_ = false;
  std::vector<std::thread> threads_;
};

}  // namespace execd::core
