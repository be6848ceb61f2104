// The engine's value types: what to run (Command), and how it ended (Result).
// Plain structs, no behaviour beyond decoding; safe to copy and move between threads.
#pragma once

#include <sys/stat.h>
#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace execd::core {

// The count limits, declared once: X(field, server_maximum, what). `field` is the member of
// CommandRequest, Limits and the proto's Limits; `server_maximum` that of RequestPolicy and
// the server's flag (--server_maximum), both its maximum and its default; 0 is no limit.
#define EXECD_COUNT_LIMITS(X)                                                     \
  X(memory_bytes, max_memory_bytes, "the whole command, in its cgroup")           \
  X(max_processes, max_processes, "the whole command's processes, in its cgroup") \
  X(max_open_files, max_open_files, "per process, RLIMIT_NOFILE")                 \
  X(max_file_size_bytes, max_file_size_bytes, "per process, RLIMIT_FSIZE")

#define EXECD_LIMIT_FIELD(field, server_maximum, what) int64_t field = 0;

// A command as a caller asked for it, before validation. Zero limits mean "server default".
struct CommandRequest {
  std::vector<std::string> argv;
  std::vector<std::pair<std::string, std::string>> env;
  std::vector<std::string> inherit_env;
  std::string cwd;
  std::string stdin_data;
  absl::Duration timeout = absl::ZeroDuration();
  int64_t max_output_bytes = 0;
  // Resource limits; zero means the server's maximum (itself zero for none).
  absl::Duration cpu_time = absl::ZeroDuration();
  EXECD_COUNT_LIMITS(EXECD_LIMIT_FIELD)
  std::vector<int> cpu_affinity;
  int priority = -1;                                     // -1: the default priority.
  absl::Duration max_queue_time = absl::ZeroDuration();  // Zero: until the call's deadline.
  std::string request_id;
  // Streaming batches; zero means the default.
  int64_t stream_chunk_bytes = 0;
  absl::Duration stream_flush_interval = absl::ZeroDuration();
  // The output will be streamed, not returned whole: the stream cap applies.
  bool streamed = false;
  // Programs that follow argv in a pipeline, each with its arguments.
  std::vector<std::vector<std::string>> pipe_to;
};

// The limits a command runs under, after validation. Zero means "no limit".
struct Limits {
  absl::Duration timeout = absl::Seconds(60);
  int64_t max_output_bytes = 1 << 20;
  absl::Duration cpu_time = absl::ZeroDuration();  // Per process (RLIMIT_CPU), whole seconds.
  EXECD_COUNT_LIMITS(EXECD_LIMIT_FIELD)
  std::vector<int> cpu_affinity;  // Empty: any CPU.
};

// Which file a path named when it was checked: a rebuilt binary at the same path differs.
// The change time is in it because no caller can set it: `touch -d` (utimensat) sets the
// modification time to any value, and the change time to now.
struct FileIdentity {
  bool known = false;
  int64_t dev = 0;
  int64_t ino = 0;
  int64_t size = 0;
  int64_t mtime_ns = 0;
  int64_t ctime_ns = 0;
  bool operator==(const FileIdentity&) const = default;

  static FileIdentity FromStat(const struct stat& st);
  // The identity of the file at `path` now; unknown (equal to no real file's) when it
  // cannot be read.
  static FileIdentity Of(const std::string& path);
};

// A program of a pipeline after the first: it reads the previous program's stdout.
struct PipelineStage {
  std::vector<std::string> argv;
  std::string executable;      // Resolved path passed to execve.
  FileIdentity executable_id;  // What `executable` was at validation (for cache keys).
};

// A pseudo-terminal's size in character cells.
struct TerminalSize {
  int rows = 24;
  int columns = 80;
};

// A validated, normalised command, ready to spawn.
struct Command {
  std::vector<std::string> argv;
  std::string executable;        // Resolved path passed to execve.
  FileIdentity executable_id;    // What `executable` was at validation (for cache keys).
  std::vector<std::string> env;  // "NAME=value", exactly the child's environment.
  std::string cwd;               // Empty: the server's working directory.
  std::string stdin_data;
  // An interactive session: the child's stdin stays open after stdin_data, for more bytes
  // through Engine::WriteStdin until Engine::CloseStdin.
  bool keep_stdin_open = false;
  // With keep_stdin_open: the command runs on a pseudo-terminal of this size instead of
  // pipes; stdin, stdout and stderr are the terminal, and all output comes as stdout.
  std::optional<TerminalSize> terminal;
  Limits limits;
  std::string request_id;
  // When set, output is handed to the observer as it arrives instead of being collected,
  // in batches of up to stream_chunk_bytes, each at most stream_flush_interval old.
  bool stream_output = false;
  int64_t stream_chunk_bytes = 64 << 10;
  absl::Duration stream_flush_interval = absl::Milliseconds(10);
  // The caller's deadline on the engine clock; the timeout is capped to it.
  absl::Time deadline = absl::InfiniteFuture();
  // Scheduling: 0 (lowest) .. 2 (highest), and how long it may wait in the queue.
  int priority = 1;
  absl::Duration max_queue_time = absl::InfiniteDuration();
  // The worker pool that runs it (empty: a cold spawn). For a pool, argv are the request's
  // arguments and `executable` is the pool's, for logs.
  std::string pool;
  // The pool's configuration (PoolSpec::fingerprint) when it was checked: the worker's own
  // argv, environment and cwd are in it, not in this command (for cache keys).
  std::string pool_fingerprint;
  // A pipeline `argv | pipe_to[0] | pipe_to[1] ...`, without a shell: stdin goes to argv's
  // program, the last program's stdout is the command's, every program writes the one
  // stderr. All share env, cwd and limits, and end together.
  std::vector<PipelineStage> pipe_to;
  // Who asked (the caller's identity): its commands share its slots of the concurrency
  // limit (Scheduler), and its results are stored apart from others' (CacheKey).
  std::string caller;
};

enum class Termination {
  kExited,
  kSignaled,
  kTimedOut,
  kOutputLimitExceeded,
  kCancelled,
  kMemoryLimitExceeded,
  kCpuTimeLimitExceeded,
  kFileSizeLimitExceeded,
  kProcessLimitExceeded,
};

absl::string_view TerminationName(Termination t);

// A wait status decoded once.
struct ExitStatus {
  bool exited = false;  // Exited by itself; otherwise killed by `signal`.
  int code = 0;
  int signal = 0;

  static ExitStatus FromWaitStatus(int wait_status);
};

struct ResourceUsage {
  absl::Duration user_cpu;
  absl::Duration system_cpu;
  int64_t max_rss_bytes = 0;      // Largest single process (rusage).
  int64_t peak_memory_bytes = 0;  // The whole command, when the cgroup tells; else 0.
};

enum class OutputStream { kStdout, kStderr };

// How one program of a pipeline ended.
struct StageExit {
  pid_t pid = 0;
  ExitStatus status;
};

struct Result {
  Termination termination = Termination::kExited;
  ExitStatus status;
  pid_t pid = 0;
  std::string stdout_data;
  std::string stderr_data;
  bool stdout_truncated = false;
  bool stderr_truncated = false;
  ResourceUsage usage;
  absl::Duration queued;   // Submit to admission.
  absl::Duration spawn;    // Admission to exec done.
  absl::Duration run;      // Exec done to exit and output drained.
  bool cache_hit = false;  // Served from the result cache, stored `cache_age` ago.
  absl::Duration cache_age;
  // How many times the command was handed from one thread to another inside the engine
  // (each a wake-up a busy scheduler makes wait), for tests and traces.
  int thread_handoffs = 0;
  // A pipeline's programs in order (argv's first); empty for a single program. `status`
  // and `pid` above are the last program's and the first's, as a shell reports them.
  std::vector<StageExit> stages;
};

}  // namespace execd::core
