#include "loadtest/loadtest.h"

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <atomic>
#include <optional>
#include <thread>

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "execd/v1/execd.grpc.pb.h"
#include "loadtest/open_loop.h"
#include "loadtest/requesters.h"

namespace execd::loadtest {
namespace {

double Ms(absl::Duration d) { return absl::ToDoubleMilliseconds(d); }

}  // namespace

std::string ModeName(Mode mode) {
  switch (mode) {
    case Mode::kExecute:
      return "execute";
    case Mode::kPing:
      return "ping";
    case Mode::kLocalSpawn:
      return "local_spawn";
    case Mode::kLocalSetsid:
      return "local_setsid";
    case Mode::kBatch:
      return "batch";
  }
  return "unknown";
}

absl::Duration Percentile(const std::vector<absl::Duration>& sorted, double p) {
  if (sorted.empty()) return absl::ZeroDuration();
  size_t i = static_cast<size_t>(p * static_cast<double>(sorted.size() - 1) + 0.5);
  return sorted[std::min(i, sorted.size() - 1)];
}

void Summarize(std::vector<absl::Duration> latencies, Report* report) {
  report->requests = static_cast<int64_t>(latencies.size()) + report->errors;
  report->requests_per_second =
      static_cast<double>(latencies.size()) / absl::ToDoubleSeconds(report->elapsed);
  std::sort(latencies.begin(), latencies.end());
  report->p50 = Percentile(latencies, 0.50);
  report->p90 = Percentile(latencies, 0.90);
  report->p99 = Percentile(latencies, 0.99);
  report->max = latencies.empty() ? absl::ZeroDuration() : latencies.back();
}

Report RunBatch(const Config& config, ChannelPool& channels) {
  v1::BatchRequest batch;
  v1::ExecuteRequest item;
  for (const std::string& a : config.argv) item.add_argv(a);
  item.set_pool(config.pool);
  item.set_stdin(config.stdin_data);
  for (int64_t i = 0; i < config.batch; ++i) *batch.add_requests() = item;
  batch.set_max_parallel(config.concurrency);
  Report report;
  report.mode = Mode::kBatch;
  report.concurrency = config.concurrency;
  std::vector<absl::Duration> latencies;
  grpc::ClientContext context;
  const absl::Time start = absl::Now();
  auto reader = channels.Next().ExecuteBatch(&context, batch);
  v1::BatchResult result;
  while (reader->Read(&result)) {
    const bool ok = result.status_code() == 0 && result.response().termination() == v1::EXITED &&
                    result.response().exit_code() == 0;
    if (ok) {
      latencies.push_back(absl::Now() - start);
    } else {
      ++report.errors;
      if (report.first_error.empty()) {
        report.first_error = result.status_code() != 0
                                 ? result.status_message()
                                 : v1::Termination_Name(result.response().termination());
      }
    }
  }
  grpc::Status status = reader->Finish();
  report.elapsed = absl::Now() - start;
  if (!status.ok()) {
    ++report.errors;
    report.first_error = status.error_message();
  }
  Summarize(std::move(latencies), &report);
  return report;
}

Report Run(const Config& config) {
  ChannelPool channels(config.target, config.channels, config.auth);
  return Run(config, channels);
}

Report Run(const Config& config, ChannelPool& channels) {
  if (config.mode == Mode::kBatch) return RunBatch(config, channels);
  if (config.open_loop) return RunOpenLoop(config, channels);

  std::atomic<int64_t> issued{0};
  std::atomic<int64_t> errors{0};
  absl::Mutex mu;
  std::vector<absl::Duration> latencies;
  std::vector<absl::Duration> server_times;
  std::string first_error;
  const absl::Time start = absl::Now();
  const absl::Time end = start + config.duration;

  auto worker = [&](int index) {
    std::unique_ptr<Requester> requester = MakeRequester(config, channels);
    std::vector<absl::Duration> mine;
    std::vector<absl::Duration> mine_server;
    // Paced when a rate is set: each worker sends on its own schedule, and latency counts
    // from the scheduled time, so a slow reply delays the measurement of the ones behind it
    // instead of hiding them (no coordinated omission). The workers' schedules are
    // staggered, so requests arrive evenly spaced at the rate, not in bursts of
    // `concurrency` at once. A worker waiting for a reply still cannot send: when replies
    // take longer than `concurrency` intervals, the offered rate falls (open_loop does not).
    const absl::Duration interval =
        config.rate > 0 ? absl::Seconds(config.concurrency / config.rate) : absl::ZeroDuration();
    absl::Time next = start + interval * index / config.concurrency;
    for (;;) {
      if (config.requests > 0) {
        if (issued.fetch_add(1) >= config.requests) break;
      } else if (absl::Now() >= end) {
        break;
      }
      absl::Time t0 = absl::Now();
      if (config.rate > 0) {
        if (next > t0) absl::SleepFor(next - t0);
        t0 = next;
        next += interval;
      }
      std::string error = requester->Send();
      if (!error.empty()) {
        errors.fetch_add(1);
        absl::MutexLock lock(&mu);
        if (first_error.empty()) first_error = error;
        continue;
      }
      mine.push_back(absl::Now() - t0);
      if (std::optional<absl::Duration> server = requester->ServerTime()) {
        mine_server.push_back(*server);
      }
    }
    absl::MutexLock lock(&mu);
    latencies.insert(latencies.end(), mine.begin(), mine.end());
    server_times.insert(server_times.end(), mine_server.begin(), mine_server.end());
  };
  std::vector<std::thread> threads;
  for (int i = 0; i < config.concurrency; ++i) threads.emplace_back(worker, i);
  for (std::thread& t : threads) t.join();

  Report report;
  report.mode = config.mode;
  report.concurrency = config.concurrency;
  report.elapsed = absl::Now() - start;
  report.errors = errors.load();
  report.first_error = first_error;
  Summarize(std::move(latencies), &report);
  std::sort(server_times.begin(), server_times.end());
  report.server_p50 = Percentile(server_times, 0.50);
  report.server_samples = static_cast<int64_t>(server_times.size());
  return report;
}

std::string FormatText(const Report& r) {
  const std::string shape = r.open_loop ? absl::StrFormat("open_loop rate=%.1f/s", r.rate)
                                        : absl::StrFormat("concurrency=%d", r.concurrency);
  std::string out = absl::StrFormat("mode=%s %s requests=%d succeeded=%d errors=%d elapsed=%.2fs\n",
                                    ModeName(r.mode), shape, r.requests, r.succeeded(), r.errors,
                                    absl::ToDoubleSeconds(r.elapsed));
  if (r.open_loop) {
    absl::StrAppend(&out, absl::StrFormat("open loop: peak_outstanding=%d max_send_lag=%.3fms\n",
                                          r.peak_outstanding, Ms(r.max_send_lag)));
  }
  if (r.succeeded() == 0) {
    absl::StrAppend(&out, "no request succeeded: ", r.errors, " failed\n");
  } else {
    absl::StrAppend(
        &out, absl::StrFormat("throughput: %.1f req/s\n"
                              "latency: p50=%.3fms p90=%.3fms p99=%.3fms max=%.3fms\n",
                              r.requests_per_second, Ms(r.p50), Ms(r.p90), Ms(r.p99), Ms(r.max)));
  }
  if (r.server_samples > 0) {
    absl::StrAppend(&out,
                    absl::StrFormat("server: p50=%.3fms (timings.total)\n", Ms(r.server_p50)));
  }
  if (!r.first_error.empty()) absl::StrAppend(&out, "first error: ", r.first_error, "\n");
  return out;
}

std::string JsonEscape(std::string_view text) {
  std::string escaped;
  for (char c : text) {
    if (c == '"' || c == '\\') escaped.push_back('\\');
    if (static_cast<unsigned char>(c) >= 0x20) escaped.push_back(c);
  }
  return escaped;
}

std::string FormatJson(const Report& r) {
  std::string out = absl::StrFormat(
      "{\"mode\":\"%s\",\"concurrency\":%d,\"requests\":%d,\"errors\":%d,\"succeeded\":%d,"
      "\"elapsed_s\":%.6f,",
      ModeName(r.mode), r.concurrency, r.requests, r.errors, r.succeeded(),
      absl::ToDoubleSeconds(r.elapsed));
  if (r.open_loop) {
    absl::StrAppend(&out,
                    absl::StrFormat("\"open_loop\":true,\"rate\":%.3f,\"peak_outstanding\":%d,"
                                    "\"max_send_lag_ms\":%.6f,",
                                    r.rate, r.peak_outstanding, Ms(r.max_send_lag)));
  }
  // No figures at all rather than zeros that a script would take for measurements.
  if (r.succeeded() > 0) {
    absl::StrAppend(
        &out, absl::StrFormat("\"requests_per_second\":%.3f,\"p50_ms\":%.6f,\"p90_ms\":%.6f,"
                              "\"p99_ms\":%.6f,\"max_ms\":%.6f,\"server_p50_ms\":%.6f,",
                              r.requests_per_second, Ms(r.p50), Ms(r.p90), Ms(r.p99), Ms(r.max),
                              Ms(r.server_p50)));
  }
  absl::StrAppend(&out, "\"first_error\":\"", JsonEscape(r.first_error), "\"}\n");
  return out;
}

}  // namespace execd::loadtest
