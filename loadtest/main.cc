// execd-loadtest: closed-loop load against execd (Execute or Ping) or, as a baseline, the
// same command spawned locally. Exits non-zero when any request failed.
#include <cstdio>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "loadtest/loadtest.h"

ABSL_FLAG(std::string, target, "127.0.0.1:50051", "execd address");
ABSL_FLAG(int, concurrency, 8, "requests in flight at once");
ABSL_FLAG(absl::Duration, duration, absl::Seconds(10), "how long to run (unless --requests)");
ABSL_FLAG(int64_t, requests, 0, "stop after this many requests instead of --duration");
ABSL_FLAG(bool, ping, false, "send Ping RPCs instead of Execute");
ABSL_FLAG(bool, local, false, "baseline: posix_spawn the command locally, no server");
ABSL_FLAG(int, channels, 1,
          "client connections to --target (each its own TCP connection), requests spread "
          "round-robin");
ABSL_FLAG(int, payload_bytes, 0, "Ping payload size");
ABSL_FLAG(bool, json, false, "print one JSON object instead of text");
ABSL_FLAG(std::string, pool, "",
          "Execute in this worker pool (the arguments after -- go to the worker)");
ABSL_FLAG(double, rate, 0,
          "open loop: send this many requests per second in all, latency measured from each "
          "request's scheduled time; 0 for closed loop (each worker sends as soon as answered)");
ABSL_FLAG(int64_t, batch, 0,
          "send one ExecuteBatch of this many copies of the command, max_parallel = "
          "--concurrency, and report its wall time");
ABSL_FLAG(bool, cache, false, "Execute with cache_policy READ_WRITE (measures cache hits)");
ABSL_FLAG(std::string, stdin_text, "", "stdin of each command (e.g. a program for a pool)");

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "execd-loadtest [--concurrency=8] [--duration=10s|--requests=N] [--ping|--local] "
      "[--pool=NAME] [--stdin_text=TEXT] [--channels=N] [--json] -- PROGRAM ARGS...");
  std::vector<char*> rest = absl::ParseCommandLine(argc, argv);
  execd::loadtest::Config config;
  config.target = absl::GetFlag(FLAGS_target);
  config.concurrency = absl::GetFlag(FLAGS_concurrency);
  config.duration = absl::GetFlag(FLAGS_duration);
  config.requests = absl::GetFlag(FLAGS_requests);
  config.payload_bytes = absl::GetFlag(FLAGS_payload_bytes);
  config.argv.assign(rest.begin() + 1, rest.end());
  config.pool = absl::GetFlag(FLAGS_pool);
  config.rate = absl::GetFlag(FLAGS_rate);
  config.batch = absl::GetFlag(FLAGS_batch);
  config.cache = absl::GetFlag(FLAGS_cache);
  config.stdin_data = absl::GetFlag(FLAGS_stdin_text);
  config.channels = absl::GetFlag(FLAGS_channels);
  if (absl::GetFlag(FLAGS_ping) && absl::GetFlag(FLAGS_local)) {
    fprintf(stderr, "execd-loadtest: --ping and --local exclude each other\n");
    return 2;
  }
  config.mode = absl::GetFlag(FLAGS_ping)    ? execd::loadtest::Mode::kPing
                : absl::GetFlag(FLAGS_local) ? execd::loadtest::Mode::kLocalSpawn
                : config.batch > 0           ? execd::loadtest::Mode::kBatch
                                             : execd::loadtest::Mode::kExecute;
  if (config.mode != execd::loadtest::Mode::kPing && config.argv.empty() && config.pool.empty()) {
    fprintf(stderr, "execd-loadtest: give the command to run after --, e.g. -- /bin/true\n");
    return 2;
  }
  if (config.concurrency < 1 || config.channels < 1 ||
      (config.requests <= 0 && config.duration <= absl::ZeroDuration())) {
    fprintf(stderr,
            "execd-loadtest: --concurrency and --channels must be >= 1 and --duration or "
            "--requests > 0\n");
    return 2;
  }
  execd::loadtest::Report report = execd::loadtest::Run(config);
  std::string out = absl::GetFlag(FLAGS_json) ? execd::loadtest::FormatJson(report)
                                              : execd::loadtest::FormatText(report);
  fputs(out.c_str(), stdout);
  return report.errors == 0 ? 0 : 1;
}
