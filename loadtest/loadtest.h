// Closed-loop load generation: `concurrency` workers each send one request, wait for the
// answer, and send the next, for a duration or a number of requests. The targets share the
// same loop so their figures compare: Execute, Ping, and the command spawned locally with
// posix_spawn (in the caller's session or in one of its own) as a baseline.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/time/time.h"

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
};

Report Run(const Config& config);
// The same over channels the caller keeps, so that several runs share their connections.
Report Run(const Config& config, ChannelPool& channels);
// One ExecuteBatch of config.batch copies of the command, max_parallel = concurrency;
// requests = items, latency percentiles are of each item's completion time.
Report RunBatch(const Config& config, ChannelPool& channels);
std::string ModeName(Mode mode);
std::string FormatText(const Report& report);
std::string FormatJson(const Report& report);
// `text` as the inside of a JSON string: quotes and backslashes escaped, control
// characters dropped.
std::string JsonEscape(std::string_view text);

}  // namespace execd::loadtest
