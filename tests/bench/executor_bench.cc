// WorkStealingExecutor against the plain mutex + condition-variable MutexPool, at 2 and 4
// worker threads, on four workloads:
//   Throughput      an outside thread submits 100,000 tiny tasks; time until all ran
//   SubmitLatency   one task into an idle pool; time from Submit until it runs (wake-up)
//   FanOutFanIn     a task spawns 1,000 children of ~0.5 µs work each; the last one done
//                   completes the batch (children are submitted from inside the pool)
//   RecursiveSum    sum 10,000,000 ints by splitting in halves down to 10,000-element
//                   leaves (1,024 leaves), every split submitted from inside the pool
// items_per_second is tasks run per second.
#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <numeric>
#include <thread>
#include <vector>

#include "absl/synchronization/notification.h"
#include "benchmark/benchmark.h"
#include "core/executor.h"

namespace execd::core {
namespace {

// Work the optimiser cannot delete: ~0.5 µs of dependent multiply-adds at 400 rounds.
uint64_t Spin(uint64_t seed, int rounds) {
  for (int i = 0; i < rounds; ++i) seed = seed * 6364136223846793005ull + 1442695040888963407ull;
  return seed;
}

template <typename Pool>
void BM_Throughput(benchmark::State& state) {
  constexpr int kTasks = 100000;
  Pool pool(static_cast<int>(state.range(0)));
  for (auto _ : state) {
    std::atomic<int> left{kTasks};
    absl::Notification done;
    for (int i = 0; i < kTasks; ++i) {
      pool.Submit([&] {
        if (left.fetch_sub(1, std::memory_order_acq_rel) == 1) done.Notify();
      });
    }
    done.WaitForNotification();
  }
  state.SetItemsProcessed(state.iterations() * kTasks);
}

template <typename Pool>
void BM_SubmitLatency(benchmark::State& state) {
  Pool pool(static_cast<int>(state.range(0)));
  for (auto _ : state) {
    std::atomic<int64_t> ran_at{0};
    auto start = std::chrono::steady_clock::now();
    pool.Submit([&] {
      ran_at.store(std::chrono::steady_clock::now().time_since_epoch().count(),
                   std::memory_order_release);
    });
    int64_t t;
    while ((t = ran_at.load(std::memory_order_acquire)) == 0) {
    }
    state.SetIterationTime(std::chrono::duration<double>(std::chrono::steady_clock::duration(t) -
                                                         start.time_since_epoch())
                               .count());
    // Let the worker go back to sleep, so every iteration measures a wake-up.
    state.PauseTiming();
    std::this_thread::sleep_for(std::chrono::microseconds(200));
    state.ResumeTiming();
  }
  state.SetItemsProcessed(state.iterations());
}

template <typename Pool>
void BM_FanOutFanIn(benchmark::State& state) {
  constexpr int kChildren = 1000;
  Pool pool(static_cast<int>(state.range(0)));
  std::atomic<uint64_t> sink{0};
  for (auto _ : state) {
    std::atomic<int> left{kChildren};
    absl::Notification done;
    pool.Submit([&] {
      for (int i = 0; i < kChildren; ++i) {
        pool.Submit([&, i] {
          sink.fetch_add(Spin(i, 400), std::memory_order_relaxed);
          if (left.fetch_sub(1, std::memory_order_acq_rel) == 1) done.Notify();
        });
      }
    });
    done.WaitForNotification();
  }
  benchmark::DoNotOptimize(sink.load());
  state.SetItemsProcessed(state.iterations() * (kChildren + 1));
}

template <typename Pool>
struct SumJob {
  Pool* pool;
  const int* data;
  std::atomic<int64_t>* total;
  std::atomic<int>* leaves_left;
  absl::Notification* done;
  std::atomic<int64_t>* tasks;

  void Run(int64_t begin, int64_t end) const {
    tasks->fetch_add(1, std::memory_order_relaxed);
    constexpr int64_t kLeaf = 10000;
    // Split until a piece is at most kLeaf long; the right half goes to the pool, the left
    // half continues here (as a fork-join runtime would).
    while (end - begin > kLeaf) {
      int64_t mid = begin + (end - begin) / 2;
      SumJob job = *this;
      pool->Submit([job, mid, end] { job.Run(mid, end); });
      end = mid;
    }
    int64_t sum = std::accumulate(data + begin, data + end, int64_t{0});
    total->fetch_add(sum, std::memory_order_relaxed);
    if (leaves_left->fetch_sub(1, std::memory_order_acq_rel) == 1) done->Notify();
  }
};

template <typename Pool>
void BM_RecursiveSum(benchmark::State& state) {
  constexpr int64_t kSize = 10000000;
  constexpr int kLeaves = 1024;  // 10,000,000 halved 10 times: leaves of ~9,766.
  std::vector<int> data(kSize);
  std::iota(data.begin(), data.end(), 0);
  const int64_t expected = std::accumulate(data.begin(), data.end(), int64_t{0});
  Pool pool(static_cast<int>(state.range(0)));
  std::atomic<int64_t> tasks{0};
  for (auto _ : state) {
    std::atomic<int64_t> total{0};
    std::atomic<int> leaves_left{kLeaves};
    absl::Notification done;
    SumJob<Pool> job{&pool, data.data(), &total, &leaves_left, &done, &tasks};
    pool.Submit([job] { job.Run(0, kSize); });
    done.WaitForNotification();
    if (total.load() != expected) state.SkipWithError("wrong sum");
  }
  state.SetItemsProcessed(tasks.load());
}

#define EXECD_POOL_BENCHMARKS(Pool)                                                               \
  BENCHMARK_TEMPLATE(BM_Throughput, Pool)->Arg(2)->Arg(4)->UseRealTime();                         \
  BENCHMARK_TEMPLATE(BM_SubmitLatency, Pool)->Arg(2)->Arg(4)->UseManualTime()->Iterations(10000); \
  BENCHMARK_TEMPLATE(BM_FanOutFanIn, Pool)->Arg(2)->Arg(4)->UseRealTime();                        \
  BENCHMARK_TEMPLATE(BM_RecursiveSum, Pool)->Arg(2)->Arg(4)->UseRealTime()

EXECD_POOL_BENCHMARKS(WorkStealingExecutor);
EXECD_POOL_BENCHMARKS(MutexPool);

}  // namespace
}  // namespace execd::core
