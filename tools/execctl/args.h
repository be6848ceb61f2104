// execctl's command line: a global --target, a subcommand, its flags, and (for run) the
// command after "--". Parsed by hand because flags such as --env repeat.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "tools/client_auth.h"

namespace execd::execctl {

struct Args {
  enum class Command { kRun, kAttach, kHealth, kPing, kStatus, kTop, kHelp };
  Command command = Command::kHelp;
  std::string target = "127.0.0.1:50051";
  client::ClientAuthFiles auth;  // Global: how to authenticate to the target.
  // run and attach
  std::vector<std::string> argv;
  std::vector<std::pair<std::string, std::string>> env;
  std::vector<std::string> inherit_env;
  std::string cwd;
  std::string stdin_path;                         // "-" for execctl's own stdin.
  absl::Duration timeout = absl::ZeroDuration();  // Zero: the server default.
  long long max_output_bytes = 0;
  std::string request_id;
  std::string pool;      // Worker pool; empty: a cold spawn.
  std::string priority;  // low, normal or high; empty: the server default.
  std::string cache;     // off, read-write, read-only or refresh; empty: off.
  absl::Duration cache_ttl = absl::ZeroDuration();  // Zero: the server default.
  absl::Duration max_queue_time = absl::ZeroDuration();
  absl::Duration cpu_time = absl::ZeroDuration();
  long long memory_bytes = 0;
  long long max_processes = 0;
  long long max_open_files = 0;
  long long max_file_size_bytes = 0;
  std::vector<int> cpu_affinity;
  bool stream = false;
  long long stream_chunk_bytes = 0;  // Zero: the server default.
  // Programs after argv in a pipeline: the command line is split at "|" arguments.
  std::vector<std::vector<std::string>> pipe_to;
  bool pipefail = false;  // Exit with the last failing program's code, like bash's pipefail.
  bool tty = false;       // attach: run the command on a pseudo-terminal.
  // health
  std::string service;
  // ping
  std::string payload;
  // top
  absl::Duration interval = absl::Seconds(1);
  long long iterations = 0;  // Frames to draw; 0: until Ctrl-C.
};

// `default_target` is used when --target is absent (execctl passes $EXECD_TARGET if set).
absl::StatusOr<Args> ParseArgs(const std::vector<std::string>& args,
                               const std::string& default_target);

extern const char kUsage[];

}  // namespace execd::execctl
