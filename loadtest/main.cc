// execd-loadtest: closed-loop or open-loop load against execd (Execute or Ping) or, as a
// baseline, the same command spawned locally; with --baseline, all of them in interleaved
// rounds. Exits non-zero when any request failed.
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "loadtest/background.h"
#include "loadtest/baseline.h"
#include "loadtest/loadtest.h"
#include "loadtest/open_loop.h"

using execd::loadtest::BackgroundKind;
using execd::loadtest::BackgroundSession;

ABSL_FLAG(std::string, target, "127.0.0.1:50051", "execd address");
ABSL_FLAG(std::string, auth_token_file, "",
          "send the bearer token in this file with every call (default: $EXECD_TOKEN)");
ABSL_FLAG(std::string, tls_ca, "", "connect over TLS, checking the server against these CAs");
ABSL_FLAG(std::string, tls_cert, "", "client certificate for mutual TLS (with --tls_key)");
ABSL_FLAG(std::string, tls_key, "", "private key of --tls_cert");
ABSL_FLAG(int, concurrency, 8, "requests in flight at once");
ABSL_FLAG(absl::Duration, duration, absl::ZeroDuration(),
          "how long to run (unless --requests); with --baseline, each mode in each round; "
          "0: 10s, or 2s with --baseline");
ABSL_FLAG(int64_t, requests, 0, "stop after this many requests instead of --duration");
ABSL_FLAG(bool, ping, false, "send Ping RPCs instead of Execute");
ABSL_FLAG(bool, local, false, "baseline: posix_spawn the command locally, no server");
ABSL_FLAG(bool, baseline, false,
          "measure in interleaved rounds the command spawned locally (without and with "
          "setsid), Ping and Execute, and print the medians and execd's overhead against "
          "its targets; the command defaults to /bin/true");
ABSL_FLAG(int, rounds, 5, "--baseline: rounds of the four measurements (at least 1)");
ABSL_FLAG(BackgroundKind, background, BackgroundKind::kNone,
          "while measuring, run two nice 19 loops: none, cpu (busy loops) or fork (each "
          "forks /bin/true over and over)");
ABSL_FLAG(BackgroundSession, background_session, BackgroundSession::kSame,
          "the background loops' session: same (the caller's, and its scheduler autogroup) "
          "or own (one each, as a CI job's would be)");
ABSL_FLAG(int, channels, 1,
          "client connections to --target (each its own TCP connection), requests spread "
          "round-robin");
ABSL_FLAG(int, payload_bytes, 0, "Ping payload size");
ABSL_FLAG(bool, json, false, "print one JSON object instead of text");
ABSL_FLAG(std::string, pool, "",
          "Execute in this worker pool (the arguments after -- go to the worker)");
ABSL_FLAG(double, rate, 0,
          "send this many requests per second in all, latency measured from each request's "
          "scheduled time, by --concurrency workers (each waits for its reply before its next "
          "send) or, with --open_loop, whatever is unanswered; 0 for closed loop (each worker "
          "sends as soon as answered)");
ABSL_FLAG(bool, open_loop, false,
          "with --rate (Execute or --ping): send every request at its scheduled time through "
          "gRPC's async API, however many are unanswered; --concurrency is not used");
ABSL_FLAG(int64_t, max_outstanding, 20000,
          "--open_loop: a request due while this many are unanswered is not sent and counts "
          "as an error");
ABSL_FLAG(absl::Duration, drain_timeout, absl::Seconds(30),
          "--open_loop: after the last send, how long to wait for the replies still due; the "
          "rest are cancelled and count as errors");
ABSL_FLAG(std::string, timeline, "",
          "--open_loop: write one CSV row per second of the run to this file: "
          "t_s,sent,ok,errors,p50_ms,p99_ms,limit,completed (see the README)");
ABSL_FLAG(std::string, request_log, "",
          "--open_loop: write one CSV row per request to this file: scheduled_s,latency_ms,ok "
          "(latency from the scheduled time to the end, 0 when not sent)");
ABSL_FLAG(absl::Duration, timeline_offset, absl::ZeroDuration(),
          "added to the timeline's t_s and the request log's scheduled_s, to concatenate runs "
          "against one server");
ABSL_FLAG(int64_t, batch, 0,
          "send one ExecuteBatch of this many copies of the command, max_parallel = "
          "--concurrency, and report its wall time");
ABSL_FLAG(bool, cache, false, "Execute with cache_policy READ_WRITE (measures cache hits)");
ABSL_FLAG(bool, accept_lz4, false,
          "Execute with accept_compression LZ4 (the server compresses output when it pays)");
ABSL_FLAG(int64_t, max_output_bytes, 0,
          "Execute with this limits.max_output_bytes (0: the server's default)");
ABSL_FLAG(std::string, stdin_text, "", "stdin of each command (e.g. a program for a pool)");

namespace {

int UsageError(const char* message) {
  fprintf(stderr, "execd-loadtest: %s\n", message);
  return 2;
}

bool WriteFile(const char* flag, const std::string& path, const std::string& text) {
  FILE* file = fopen(path.c_str(), "w");
  bool written = file != nullptr && fwrite(text.data(), 1, text.size(), file) == text.size();
  if (file != nullptr && fclose(file) != 0) written = false;
  if (!written) {
    fprintf(stderr, "execd-loadtest: cannot write %s=%s: %s\n", flag, path.c_str(),
            strerror(errno));
    return false;
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "execd-loadtest [--concurrency=8] [--duration=10s|--requests=N] [--ping|--local] "
      "[--pool=NAME] [--stdin_text=TEXT] [--channels=N] [--background=none|cpu|fork] [--json] "
      "-- PROGRAM ARGS...\n"
      "execd-loadtest --open_loop --rate=R [--duration=10s|--requests=N] [--ping] "
      "[--max_outstanding=20000] [--drain_timeout=30s] [--timeline=PATH] "
      "[--request_log=PATH] [--timeline_offset=0s] [--channels=N] [--json] -- PROGRAM ARGS...\n"
      "execd-loadtest --baseline [--rounds=5] [--duration=2s] [--concurrency=8] "
      "[--background=none|cpu|fork] [--background_session=same|own] [-- PROGRAM ARGS...]");
  std::vector<char*> rest = absl::ParseCommandLine(argc, argv);
  const bool baseline = absl::GetFlag(FLAGS_baseline);
  execd::loadtest::Config config;
  config.target = absl::GetFlag(FLAGS_target);
  config.concurrency = absl::GetFlag(FLAGS_concurrency);
  config.duration = absl::GetFlag(FLAGS_duration);
  if (config.duration == absl::ZeroDuration()) {
    config.duration = baseline ? absl::Seconds(2) : absl::Seconds(10);
  }
  config.requests = absl::GetFlag(FLAGS_requests);
  config.payload_bytes = absl::GetFlag(FLAGS_payload_bytes);
  config.argv.assign(rest.begin() + 1, rest.end());
  config.pool = absl::GetFlag(FLAGS_pool);
  config.rate = absl::GetFlag(FLAGS_rate);
  config.batch = absl::GetFlag(FLAGS_batch);
  config.cache = absl::GetFlag(FLAGS_cache);
  config.accept_lz4 = absl::GetFlag(FLAGS_accept_lz4);
  config.max_output_bytes = absl::GetFlag(FLAGS_max_output_bytes);
  config.stdin_data = absl::GetFlag(FLAGS_stdin_text);
  config.channels = absl::GetFlag(FLAGS_channels);
  config.open_loop = absl::GetFlag(FLAGS_open_loop);
  config.max_outstanding = absl::GetFlag(FLAGS_max_outstanding);
  config.drain_timeout = absl::GetFlag(FLAGS_drain_timeout);
  const std::string timeline = absl::GetFlag(FLAGS_timeline);
  const std::string request_log = absl::GetFlag(FLAGS_request_log);
  absl::StatusOr<execd::client::ClientAuth> auth = execd::client::LoadClientAuth(
      {absl::GetFlag(FLAGS_auth_token_file), absl::GetFlag(FLAGS_tls_ca),
       absl::GetFlag(FLAGS_tls_cert), absl::GetFlag(FLAGS_tls_key)},
      std::getenv(execd::client::kTokenVariable));
  if (!auth.ok()) return UsageError(std::string(auth.status().message()).c_str());
  config.auth = *std::move(auth);
  const int rounds = absl::GetFlag(FLAGS_rounds);
  if (absl::GetFlag(FLAGS_ping) && absl::GetFlag(FLAGS_local)) {
    return UsageError("--ping and --local exclude each other");
  }
  if (baseline &&
      (absl::GetFlag(FLAGS_ping) || absl::GetFlag(FLAGS_local) || config.batch > 0 ||
       !config.pool.empty() || config.cache || config.rate > 0 || !config.stdin_data.empty())) {
    return UsageError(
        "--baseline measures every mode the same way: it excludes --ping, --local, --batch, "
        "--pool, --cache, --rate and --stdin_text");
  }
  if (config.open_loop &&
      (baseline || absl::GetFlag(FLAGS_local) || config.batch > 0 || config.rate <= 0)) {
    return UsageError(
        "--open_loop needs --rate > 0 and sends Execute or Ping: it excludes --baseline, "
        "--local and --batch");
  }
  if (config.open_loop &&
      (config.max_outstanding < 1 || config.drain_timeout < absl::ZeroDuration())) {
    return UsageError("--max_outstanding must be >= 1 and --drain_timeout >= 0");
  }
  if (config.open_loop && config.requests <= 0 &&
      absl::ToDoubleSeconds(config.duration) * config.rate < 1) {
    return UsageError("--open_loop: --duration x --rate schedules no request");
  }
  if ((!timeline.empty() || !request_log.empty()) && !config.open_loop) {
    return UsageError("--timeline and --request_log need --open_loop");
  }
  if (baseline && rounds < 1) return UsageError("--rounds must be >= 1");
  if (baseline && config.argv.empty()) config.argv = {"/bin/true"};
  config.mode = absl::GetFlag(FLAGS_ping)    ? execd::loadtest::Mode::kPing
                : absl::GetFlag(FLAGS_local) ? execd::loadtest::Mode::kLocalSpawn
                : config.batch > 0           ? execd::loadtest::Mode::kBatch
                                             : execd::loadtest::Mode::kExecute;
  if (config.mode != execd::loadtest::Mode::kPing && config.argv.empty() && config.pool.empty()) {
    return UsageError("give the command to run after --, e.g. -- /bin/true");
  }
  if (config.concurrency < 1 || config.channels < 1 ||
      (config.requests <= 0 && config.duration <= absl::ZeroDuration())) {
    return UsageError("--concurrency and --channels must be >= 1 and --duration or --requests > 0");
  }

  // Lives until the process ends: the signal thread may stop it at any time.
  execd::loadtest::BackgroundLoad* background = nullptr;
  const BackgroundKind background_kind = absl::GetFlag(FLAGS_background);
  if (background_kind != BackgroundKind::kNone) {
    // Blocked before the loops start, so that a signal cannot end this process without
    // stopping them, and before any other thread starts, so that every thread blocks them.
    const sigset_t signals = execd::loadtest::BlockTerminationSignals();
    auto started = execd::loadtest::BackgroundLoad::Start(background_kind,
                                                          absl::GetFlag(FLAGS_background_session));
    if (!started.ok()) {
      fprintf(stderr, "execd-loadtest: %s\n", started.status().ToString().c_str());
      return 1;
    }
    background = started->release();
    execd::loadtest::StopOnSignal(signals, background);
  }
  const std::string background_text = background ? background->Describe() : "none";
  std::string out;
  int64_t errors = 0;
  bool files_written = true;
  if (baseline) {
    execd::loadtest::BaselineReport report = execd::loadtest::RunBaseline(
        config, rounds, background_kind != BackgroundKind::kNone, background_text);
    errors = report.errors;
    out = absl::GetFlag(FLAGS_json) ? execd::loadtest::FormatBaselineJson(report)
                                    : execd::loadtest::FormatBaselineText(report);
  } else {
    execd::loadtest::Report report = execd::loadtest::Run(config);
    errors = report.errors;
    const absl::Duration offset = absl::GetFlag(FLAGS_timeline_offset);
    if (!timeline.empty()) {
      files_written =
          WriteFile("--timeline", timeline, execd::loadtest::FormatTimelineCsv(report, offset));
    }
    if (!request_log.empty()) {
      files_written &= WriteFile("--request_log", request_log,
                                 execd::loadtest::FormatRequestLogCsv(report, offset));
    }
    out = absl::GetFlag(FLAGS_json) ? execd::loadtest::FormatJson(report)
                                    : execd::loadtest::FormatText(report);
    if (background && !absl::GetFlag(FLAGS_json)) out += "background: " + background_text + "\n";
  }
  if (background) background->Stop();
  fputs(out.c_str(), stdout);
  return errors == 0 && files_written ? 0 : 1;
}
