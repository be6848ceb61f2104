// What recording metrics costs a request, and what a scrape costs the server:
//   CallEnded      one call's end with its four stages (a counter, four histograms)
//   CommandEnded   one command's end (a termination counter, two CPU counters)
//   Output         one chunk of output counted twice (raw, then identity or lz4)
//   Collect/Text   building a scrape (every family, the histograms at all their buckets),
//                  and serializing it to the text format
// Multi-threaded runs show what concurrent requests cost each other (shared cache lines).
#include "benchmark/benchmark.h"
#include "metrics/registry.h"

namespace execd::metrics {
namespace {

Registry& TheRegistry() {
  static Registry* registry = new Registry("bench");
  return *registry;
}

void BM_CallEnded(benchmark::State& state) {
  core::CallTimes times;
  times.ran = true;
  times.queue = absl::Microseconds(3);
  times.spawn = absl::Microseconds(800);
  times.run = absl::Milliseconds(2);
  times.total = absl::Milliseconds(3);
  for (auto _ : state) TheRegistry().CallEnded(core::Rpc::kExecute, absl::StatusCode::kOk, times);
}
BENCHMARK(BM_CallEnded)->Threads(1)->Threads(2)->Threads(8);

void BM_CommandEnded(benchmark::State& state) {
  core::Result result;
  result.usage.user_cpu = absl::Microseconds(700);
  result.usage.system_cpu = absl::Microseconds(900);
  for (auto _ : state) TheRegistry().CommandEnded(result);
}
BENCHMARK(BM_CommandEnded)->Threads(1)->Threads(8);

void BM_Output(benchmark::State& state) {
  for (auto _ : state) {
    TheRegistry().Output(core::OutputStream::kStdout, core::OutputEncoding::kRaw, 65536);
    TheRegistry().Output(core::OutputStream::kStdout, core::OutputEncoding::kIdentity, 65536);
  }
}
BENCHMARK(BM_Output)->Threads(1)->Threads(8);

void BM_Collect(benchmark::State& state) {
  for (auto _ : state) benchmark::DoNotOptimize(TheRegistry().Collect());
}
BENCHMARK(BM_Collect);

void BM_Text(benchmark::State& state) {
  for (auto _ : state) benchmark::DoNotOptimize(TheRegistry().Text());
}
BENCHMARK(BM_Text);

}  // namespace
}  // namespace execd::metrics
