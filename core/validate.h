// Request validation: turns a CommandRequest into a Command the spawner can run, or an
// INVALID_ARGUMENT / NOT_FOUND / PERMISSION_DENIED status whose message names the field,
// the value and the fix. Thread-safe (reads the filesystem, touches no shared state).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "core/command.h"

namespace execd::core {

struct PoolSpec;

struct RequestPolicy {
  absl::Duration default_timeout = absl::Seconds(60);
  absl::Duration max_timeout = absl::Minutes(30);
  int64_t default_max_output_bytes = 1 << 20;
  int64_t max_output_bytes = 16 << 20;
  // Per stream of a streamed call, both the default and the maximum: streamed output goes
  // out in chunks and is never held whole, so the message size does not bound it.
  int64_t max_stream_output_bytes = int64_t{4} << 30;
  // The largest stream_chunk_bytes: a chunk is one message, so it stays within the
  // server's message size (the server lowers it to fit --max_message_bytes).
  int64_t max_stream_chunk_bytes = 4 << 20;
  // Upper bound on the bytes of argv plus env, as the kernel's ARG_MAX would reject more.
  int64_t max_argv_env_bytes = 1 << 20;
  int64_t max_stdin_bytes = 256 << 20;
  size_t max_request_id_bytes = 128;
  // Server maximums of the resource limits; zero means no maximum. A request that leaves a
  // limit unset gets the maximum; one that asks for more is rejected.
  absl::Duration max_cpu_time = absl::ZeroDuration();
#define EXECD_POLICY_MAX(field, server_maximum, what) int64_t server_maximum = 0;
  EXECD_COUNT_LIMITS(EXECD_POLICY_MAX)
#undef EXECD_POLICY_MAX
  // CPUs a request may pin to (the server's own affinity); empty means any.
  std::vector<int> allowed_cpus;
  // The server's own environment, for `inherit_env` and PATH lookup; snapshot at start-up.
  absl::flat_hash_map<std::string, std::string> server_env;
  // The server variables a request may name in `inherit_env` (PERMISSION_DENIED for
  // others): the rest of the server's environment (credentials, its own settings) is not
  // the callers' to read.
  std::vector<std::string> inheritable_env = {"PATH", "LANG", "LC_ALL", "TZ", "TERM", "HOME"};

  // A policy over this process's environment (environ read once) and CPU affinity.
  static RequestPolicy FromProcessEnvironment();
};

absl::StatusOr<Command> ValidateRequest(CommandRequest request, const RequestPolicy& policy);

// A request to a worker pool: the pool fixes the program, environment, cwd and resource
// limits (the request must leave them empty); argv are the request's arguments (for a
// PERSISTENT pool; a PREWARMED one takes none); timeout and output cap default to the
// pool's and may not exceed them.
absl::StatusOr<Command> ValidatePooledRequest(CommandRequest request, const PoolSpec& pool,
                                              const RequestPolicy& policy);

// Resolves argv[0] the way the server will execute it: a path with '/' is taken as is
// (relative to `cwd` when not absolute); a bare name is searched in `path_var`. `id`, when
// given, receives the identity of the file found.
absl::StatusOr<std::string> ResolveExecutable(const std::string& argv0, const std::string& cwd,
                                              const std::string& path_var,
                                              FileIdentity* id = nullptr);

}  // namespace execd::core
