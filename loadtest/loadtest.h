// Closed-loop load generation: `concurrency` workers each send one request, wait for the
// answer, and send the next, for a duration or a number of requests. The targets share the
// same loop so their figures compare: Execute, Ping, and the command spawned locally with
// posix_spawn (in the caller's session or in one of its own) as a baseline. With
// `open_loop`, requests leave at their scheduled times instead, however many are unanswered
// (open_loop.h).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/time/time.h"
#include "tools/client_auth.h"

namespace execd::loadtest {

enum class Mode { kExecute, kPing, kLocalSpawn, kLocalSetsid, kBatch };

class ChannelPool;

struct Config {
  Mode mode = Mode::kExecute;
  std::string target = "127.0.0.1:50051";
  int concurrency = 8;
  absl::Duration duration = absl::Seconds(10);
  int64_t requests = 0;  // When > 0, stop after this many instead of after `duration`.
  std::vector<std::string> argv;
  int payload_bytes = 0;         // Ping payload.
  std::string pool;              // Execute in this worker pool.
  bool cache = false;            // Execute with cache_policy READ_WRITE.
  bool accept_lz4 = false;       // Execute with accept_compression LZ4.
  int64_t max_output_bytes = 0;  // Execute: limits.max_output_bytes (0: the server's default).
  int64_t batch = 0;             // kBatch: items in the one ExecuteBatch call.
  double rate = 0;               // Requests per second in all (open loop); 0: closed loop.
  std::string stdin_data;        // Each command's stdin.
  int channels = 1;              // Connections to the target; requests spread round-robin.
  // Open loop on gRPC's async API (Execute or Ping, with `rate` > 0): each request is sent
  // at its scheduled time whatever is unanswered; `concurrency` is not used.
  bool open_loop = false;
  // Open loop: a request due while this many are unanswered is not sent, and counts as an
  // error, so that a server that stopped answering cannot exhaust the client.
  int64_t max_outstanding = 20000;
  // Open loop: how long after the last send the replies still due are waited for; the rest
  // are cancelled and count as errors.
  absl::Duration drain_timeout = absl::Seconds(30);
  client::ClientAuth auth;  // TLS and token for the target.
};

// One request of an open-loop run: its scheduled time from the start, the time from then to
// its end (zero when it was not sent), and whether it succeeded.
struct RequestRecord {
  absl::Duration scheduled;
  absl::Duration latency;
  bool ok = false;
};

// One second of an open-loop run, counted from its start.
struct TimelineSecond {
  // Of the requests scheduled in this second: sent, succeeded (however late), and failed
  // (refused for the outstanding bound, failed, or cancelled at the end).
  int64_t sent = 0;
  int64_t ok = 0;
  int64_t errors = 0;
  // The successes' latencies from their scheduled time; zero when ok == 0.
  absl::Duration p50, p99;
  // Successful replies that arrived in this second, whenever they were scheduled.
  int64_t completed = 0;
  // The server's concurrency_limit (GetStatus) sampled in this second, when a sample was.
  std::optional<int> limit;
};

// Throughput and latencies are of the successful requests only (goodput): a failure is
// often much faster or slower than the work, and would skew both.
struct Report {
  Mode mode;
  int concurrency = 0;
  int64_t requests = 0;  // Sent, succeeded or not.
  int64_t errors = 0;
  int64_t succeeded() const { return requests - errors; }
  std::string first_error;
  absl::Duration elapsed;
  double requests_per_second = 0;  // Successes per second.
  absl::Duration p50, p90, p99, max;
  // Execute: the server's own time per request (timings.total: from receiving the request
  // to the response being ready), without the RPC's transport and the client; p50 over
  // the successful requests.
  absl::Duration server_p50;
  int64_t server_samples = 0;
  // Open loop: the offered rate, the most requests unanswered at once, how late after its
  // scheduled time the latest send left (a measure of the client's own lag), the run second
  // by second, and every request in the order scheduled.
  bool open_loop = false;
  double rate = 0;
  int64_t peak_outstanding = 0;
  absl::Duration max_send_lag;
  std::vector<TimelineSecond> timeline;
  std::vector<RequestRecord> requests_log;
};

Report Run(const Config& config);
// The same over channels the caller keeps, so that several runs share their connections.
Report Run(const Config& config, ChannelPool& channels);
// One ExecuteBatch of config.batch copies of the command, max_parallel = concurrency;
// requests = items, latency percentiles are of each item's completion time.
Report RunBatch(const Config& config, ChannelPool& channels);
std::string ModeName(Mode mode);
// The `p` quantile (0..1) of `sorted`, nearest rank; zero when empty.
absl::Duration Percentile(const std::vector<absl::Duration>& sorted, double p);
// Request count, goodput and latency percentiles from the successes' latencies, once
// `report->elapsed` and `report->errors` are set.
void Summarize(std::vector<absl::Duration> latencies, Report* report);
std::string FormatText(const Report& report);
std::string FormatJson(const Report& report);
// `text` as the inside of a JSON string: quotes and backslashes escaped, control
// characters dropped.
std::string JsonEscape(std::string_view text);

}  // namespace execd::loadtest
