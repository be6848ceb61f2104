// Hit ratio of the result cache's two policies, LRU and TinyLFU, on two traces with the
// same seeds (so every figure is comparable within the run):
//   Zipf   1,000,000 requests over 100,000 keys, Zipf(0.99); room for 1% of the keys
//   Scan   the same Zipf requests, with a burst of 20,000 never-repeated keys (a one-off
//          scan: a build of a fresh tree, a judge running new submissions) after every
//          100,000 of them; hit ratio counted on the Zipf requests only
// Each miss is followed by an insert, as the server does after running the command.
// Counters: hit_ratio. Time per request is reported too (one thread, 16 shards).
#include <algorithm>
#include <cmath>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "benchmark/benchmark.h"
#include "core/cache.h"

namespace execd::core {
namespace {

constexpr int kKeys = 100000;
constexpr int kRequests = 1000000;
constexpr size_t kOutput = 768;

const std::vector<int>& ZipfTrace() {
  static const std::vector<int>* trace = [] {
    std::vector<double> cdf(kKeys);
    double sum = 0;
    for (int i = 0; i < kKeys; ++i) cdf[i] = (sum += 1.0 / std::pow(i + 1, 0.99));
    std::mt19937_64 rng(7);
    std::uniform_real_distribution<double> u(0, sum);
    auto* t = new std::vector<int>(kRequests);
    for (int& k : *t)
      k = static_cast<int>(std::lower_bound(cdf.begin(), cdf.end(), u(rng)) - cdf.begin());
    return t;
  }();
  return *trace;
}

void Run(benchmark::State& state, ResultCache::Policy policy, bool scans) {
  const absl::Time now = absl::FromUnixSeconds(1'000'000);
  auto entry = std::make_shared<CachedResult>();
  entry->result.stdout_data = std::string(kOutput, 'x');
  entry->expires = now + absl::Hours(1);
  const int64_t charge = ResultCache::Charge("key-00000", *entry);
  double ratio = 0;
  for (auto _ : state) {
    ResultCache::Options options;
    options.max_bytes = charge * (kKeys / 100);
    options.policy = policy;
    ResultCache cache(options);
    int64_t hits = 0, counted = 0, scan_key = 0;
    const std::vector<int>& trace = ZipfTrace();
    for (size_t i = 0; i < trace.size(); ++i) {
      if (scans && i % 100000 == 0 && i > 0) {
        for (int s = 0; s < 20000; ++s) {
          std::string key = absl::StrCat("scan-", scan_key++);
          if (cache.Lookup(key, now) == nullptr) cache.Insert(key, entry);
        }
      }
      std::string key = absl::StrCat("key-", trace[i]);
      ++counted;
      if (cache.Lookup(key, now) != nullptr) {
        ++hits;
      } else {
        cache.Insert(key, entry);
      }
    }
    ratio = static_cast<double>(hits) / static_cast<double>(counted);
  }
  state.counters["hit_ratio"] = ratio;
  state.SetItemsProcessed(state.iterations() * kRequests);
}

void BM_Zipf_Lru(benchmark::State& s) { Run(s, ResultCache::Policy::kLru, false); }
void BM_Zipf_TinyLfu(benchmark::State& s) { Run(s, ResultCache::Policy::kTinyLfu, false); }
void BM_Scan_Lru(benchmark::State& s) { Run(s, ResultCache::Policy::kLru, true); }
void BM_Scan_TinyLfu(benchmark::State& s) { Run(s, ResultCache::Policy::kTinyLfu, true); }
BENCHMARK(BM_Zipf_Lru)->Iterations(1)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_Zipf_TinyLfu)->Iterations(1)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_Scan_Lru)->Iterations(1)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_Scan_TinyLfu)->Iterations(1)->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace execd::core
