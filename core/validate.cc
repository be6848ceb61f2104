#include "core/validate.h"

#include <sched.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

#include "absl/algorithm/container.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "core/pool.h"
#include "core/status_macros.h"

extern char** environ;

namespace execd::core {
namespace {

// Where bare program names are looked up: the server's PATH, else /usr/bin:/bin. A
// reference, not a copy: this runs for every request.
const std::string& SearchPath(const RequestPolicy& policy) {
  static const std::string* const kDefault = new std::string("/usr/bin:/bin");
  auto it = policy.server_env.find("PATH");
  return it == policy.server_env.end() ? *kDefault : it->second;
}

bool HasNul(absl::string_view s) { return s.find('\0') != absl::string_view::npos; }

// Quotes a caller-supplied string for an error message, escaping control characters and
// keeping it short.
std::string Quote(absl::string_view s) {
  constexpr size_t kMax = 200;
  std::string out = absl::StrCat("\"", absl::CHexEscape(s.substr(0, kMax)), "\"");
  if (s.size() > kMax) absl::StrAppend(&out, "...");
  return out;
}

absl::Status InvalidArgument(absl::string_view field, absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat(field, " ", why));
}

absl::Status CheckEnvName(absl::string_view field, absl::string_view name) {
  if (name.empty()) return InvalidArgument(field, "has an empty variable name");
  if (HasNul(name))
    return InvalidArgument(field, absl::StrCat(Quote(name), " contains a NUL byte"));
  if (name.find('=') != absl::string_view::npos) {
    return InvalidArgument(
        field, absl::StrCat("name ", Quote(name), " contains '='; pass the value separately"));
  }
  return absl::OkStatus();
}

absl::Status CheckCwd(const std::string& cwd) {
  if (cwd.empty()) return absl::OkStatus();
  if (HasNul(cwd)) return InvalidArgument("cwd", "contains a NUL byte");
  if (cwd[0] != '/') {
    return InvalidArgument("cwd", absl::StrCat(Quote(cwd), " is not an absolute path"));
  }
  struct stat st;
  if (stat(cwd.c_str(), &st) != 0) {
    if (errno == ENOENT || errno == ENOTDIR) {
      return absl::NotFoundError(absl::StrCat("cwd ", Quote(cwd), " does not exist"));
    }
    return absl::PermissionDeniedError(
        absl::StrCat("cwd ", Quote(cwd), " cannot be read: ", strerror(errno)));
  }
  if (!S_ISDIR(st.st_mode)) {
    return InvalidArgument("cwd", absl::StrCat(Quote(cwd), " is not a directory"));
  }
  if (access(cwd.c_str(), X_OK) != 0) {
    return absl::PermissionDeniedError(
        absl::StrCat("cwd ", Quote(cwd), " may not be entered by the server's user"));
  }
  return absl::OkStatus();
}

// Files that access(X_OK) found executable, with what stat said of them then. Whether this
// server may run a file depends on its mode, owner, group and ACL, and any change to those
// changes its ctime; while stat shows the same file with the same ctime, the verdict holds,
// and a request saves the access() call. (A stale verdict, say after a remount noexec,
// only moves the error from validation to the spawn, which reports it as clearly.)
class ExecutableVerdicts {
 public:
  // Whether this server may execute the file at `path`, which stat found as `st`.
  bool Executable(const std::string& path, const struct stat& st) {
    {
      absl::ReaderMutexLock lock(&mu_);
      auto it = verdicts_.find(path);
      if (it != verdicts_.end() && it->second == Key(st)) return true;
    }
    if (access(path.c_str(), X_OK) != 0) return false;
    absl::MutexLock lock(&mu_);
    if (verdicts_.size() >= kMaxEntries) verdicts_.clear();  // Simple bound; rebuilt on use.
    verdicts_[path] = Key(st);
    return true;
  }

 private:
  static constexpr size_t kMaxEntries = 4096;
  struct StatKey {
    dev_t dev;
    ino_t ino;
    mode_t mode;
    uid_t uid;
    gid_t gid;
    int64_t ctime_sec;
    int64_t ctime_nsec;
    bool operator==(const StatKey&) const = default;
  };
  static StatKey Key(const struct stat& st) {
    return {st.st_dev, st.st_ino,         st.st_mode,        st.st_uid,
            st.st_gid, st.st_ctim.tv_sec, st.st_ctim.tv_nsec};
  }
  absl::Mutex mu_;
  absl::flat_hash_map<std::string, StatKey> verdicts_ ABSL_GUARDED_BY(mu_);
};

ExecutableVerdicts& Verdicts() {
  static ExecutableVerdicts* const verdicts = new ExecutableVerdicts();
  return *verdicts;
}

// Checks one candidate file: OK when it is an executable regular file.
absl::Status CheckExecutable(const std::string& argv0, const std::string& path,
                             FileIdentity* id = nullptr) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0) {
    if (errno == ENOENT || errno == ENOTDIR) {
      return absl::NotFoundError(
          absl::StrCat("argv[0] ", Quote(argv0), " not found",
                       path == argv0 ? "" : absl::StrCat(" (as ", Quote(path), ")")));
    }
    return absl::PermissionDeniedError(
        absl::StrCat("argv[0] ", Quote(path), " cannot be read: ", strerror(errno)));
  }
  if (S_ISDIR(st.st_mode)) {
    return absl::PermissionDeniedError(
        absl::StrCat("argv[0] ", Quote(path), " is a directory, not an executable file"));
  }
  if (!S_ISREG(st.st_mode) || !Verdicts().Executable(path, st)) {
    return absl::PermissionDeniedError(absl::StrFormat(
        "argv[0] %s is not executable (mode %04o); chmod +x it or run it through its "
        "interpreter",
        Quote(path), st.st_mode & 07777));
  }
  if (id != nullptr) *id = FileIdentity::FromStat(st);
  return absl::OkStatus();
}

// Applies a server maximum to one limit: unset (zero) takes the maximum; negative or over the
// maximum is rejected naming the flag to change.
absl::StatusOr<int64_t> ClampLimit(absl::string_view field, int64_t requested, int64_t maximum,
                                   absl::string_view flag) {
  if (requested < 0) return InvalidArgument(field, absl::StrCat(requested, " is negative"));
  if (maximum > 0 && requested > maximum) {
    return InvalidArgument(field, absl::StrCat(requested, " exceeds the server maximum of ",
                                               maximum, " (", flag, ")"));
  }
  return requested == 0 ? maximum : requested;
}

absl::Status ApplyResourceLimits(const CommandRequest& r, const RequestPolicy& policy,
                                 Limits* limits) {
#define EXECD_CLAMP(field, server_maximum, what)                                                 \
  {                                                                                              \
    ASSIGN_OR_RETURN(limits->field, ClampLimit("limits." #field, r.field, policy.server_maximum, \
                                               "--" #server_maximum));                           \
  }
  EXECD_COUNT_LIMITS(EXECD_CLAMP)
#undef EXECD_CLAMP
  if (r.cpu_time < absl::ZeroDuration()) {
    return InvalidArgument("limits.cpu_time",
                           absl::StrCat(absl::FormatDuration(r.cpu_time), " is negative"));
  }
  if (policy.max_cpu_time > absl::ZeroDuration() && r.cpu_time > policy.max_cpu_time) {
    return InvalidArgument(
        "limits.cpu_time",
        absl::StrCat(absl::FormatDuration(r.cpu_time), " exceeds the server maximum of ",
                     absl::FormatDuration(policy.max_cpu_time), " (--max_cpu_time)"));
  }
  limits->cpu_time = r.cpu_time == absl::ZeroDuration() ? policy.max_cpu_time : r.cpu_time;
  if (limits->memory_bytes > 0 && limits->memory_bytes < (1 << 20)) {
    return InvalidArgument("limits.memory_bytes",
                           absl::StrCat(limits->memory_bytes,
                                        " is too small to start a program; give at least 1 MiB"));
  }
  if (limits->max_open_files > 0 && limits->max_open_files < 3) {
    return InvalidArgument("limits.max_open_files",
                           absl::StrCat(limits->max_open_files,
                                        " leaves no room for stdin, stdout and stderr; give "
                                        "at least 3"));
  }
  for (int cpu : r.cpu_affinity) {
    bool allowed = policy.allowed_cpus.empty()
                       ? cpu >= 0 && cpu < CPU_SETSIZE
                       : std::find(policy.allowed_cpus.begin(), policy.allowed_cpus.end(), cpu) !=
                             policy.allowed_cpus.end();
    if (!allowed) {
      return InvalidArgument("limits.cpu_affinity",
                             absl::StrCat("names CPU ", cpu, ", which this server may not use (",
                                          absl::StrJoin(policy.allowed_cpus, ","), ")"));
    }
  }
  limits->cpu_affinity = r.cpu_affinity;
  return absl::OkStatus();
}

}  // namespace

RequestPolicy RequestPolicy::FromProcessEnvironment() {
  RequestPolicy policy;
  cpu_set_t cpus;
  if (sched_getaffinity(0, sizeof(cpus), &cpus) == 0) {
    for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
      if (CPU_ISSET(cpu, &cpus)) policy.allowed_cpus.push_back(cpu);
    }
  }
  for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
    absl::string_view entry(*e);
    size_t eq = entry.find('=');
    if (eq == absl::string_view::npos) continue;
    policy.server_env.emplace(entry.substr(0, eq), entry.substr(eq + 1));
  }
  return policy;
}

absl::StatusOr<std::string> ResolveExecutable(const std::string& argv0, const std::string& cwd,
                                              const std::string& path_var, FileIdentity* id) {
  if (argv0.find('/') != std::string::npos) {
    std::string path = argv0;
    if (argv0[0] != '/' && !cwd.empty()) path = absl::StrCat(cwd, "/", argv0);
    RETURN_IF_ERROR(CheckExecutable(argv0, path, id));
    return path;
  }
  // Like execvp: the first executable match wins; a non-executable match is reported only
  // when nothing executable is found.
  absl::Status first_denied;
  for (absl::string_view dir : absl::StrSplit(path_var, ':')) {
    if (dir.empty()) dir = ".";
    std::string candidate = absl::StrCat(dir, "/", argv0);
    absl::Status s = CheckExecutable(argv0, candidate, id);
    if (s.ok()) return candidate;
    if (s.code() == absl::StatusCode::kPermissionDenied && first_denied.ok()) first_denied = s;
  }
  if (!first_denied.ok()) return first_denied;
  return absl::NotFoundError(absl::StrCat("argv[0] ", Quote(argv0),
                                          " not found in the server's PATH (", path_var,
                                          "); give an absolute path"));
}

namespace {

// Checks shared by cold and pooled requests: argv, env, stdin and request_id sizes.
absl::Status CheckArgv(absl::string_view field, const std::vector<std::string>& argv,
                       int64_t* arg_bytes) {
  for (size_t i = 0; i < argv.size(); ++i) {
    if (HasNul(argv[i])) {
      return InvalidArgument(absl::StrCat(field, "[", i, "]"),
                             absl::StrCat(Quote(argv[i]), " contains a NUL byte"));
    }
    *arg_bytes += static_cast<int64_t>(argv[i].size()) + 1;
  }
  return absl::OkStatus();
}

absl::Status CheckPayload(const CommandRequest& request, const RequestPolicy& policy) {
  int64_t arg_bytes = 0;
  RETURN_IF_ERROR(CheckArgv("argv", request.argv, &arg_bytes));
  for (size_t i = 0; i < request.pipe_to.size(); ++i) {
    RETURN_IF_ERROR(
        CheckArgv(absl::StrCat("pipe_to[", i, "].argv"), request.pipe_to[i], &arg_bytes));
  }
  for (const auto& [name, value] : request.env) {
    RETURN_IF_ERROR(CheckEnvName("env", name));
    if (HasNul(value)) {
      return InvalidArgument(absl::StrCat("env[", Quote(name), "]"), "value contains a NUL byte");
    }
    arg_bytes += name.size() + value.size() + 2;
  }
  for (const auto& name : request.inherit_env) {
    RETURN_IF_ERROR(CheckEnvName("inherit_env", name));
    if (!absl::c_linear_search(policy.inheritable_env, name)) {
      return absl::PermissionDeniedError(absl::StrCat(
          "inherit_env ", Quote(name), " is not inheritable on this server (--inheritable_env=",
          absl::StrJoin(policy.inheritable_env, ","), "); pass a value in env instead"));
    }
  }
  if (arg_bytes > policy.max_argv_env_bytes) {
    return InvalidArgument("argv and env",
                           absl::StrCat("total ", arg_bytes, " bytes, over the limit of ",
                                        policy.max_argv_env_bytes, "; pass data through stdin"));
  }
  if (static_cast<int64_t>(request.stdin_data.size()) > policy.max_stdin_bytes) {
    return InvalidArgument(
        "stdin", absl::StrCat("is ", request.stdin_data.size(), " bytes, over the limit of ",
                              policy.max_stdin_bytes));
  }
  if (request.request_id.size() > policy.max_request_id_bytes) {
    return InvalidArgument(
        "request_id", absl::StrCat("is ", request.request_id.size(), " bytes, over the limit of ",
                                   policy.max_request_id_bytes));
  }
  return absl::OkStatus();
}

// A timeout or output cap: unset takes `fallback`; negative or over `max` is rejected.
absl::StatusOr<absl::Duration> PickTimeout(absl::Duration asked, absl::Duration fallback,
                                           absl::Duration max, absl::string_view whose_max) {
  if (asked < absl::ZeroDuration()) {
    return InvalidArgument("limits.timeout",
                           absl::StrCat(absl::FormatDuration(asked), " is negative"));
  }
  if (asked > max) {
    return InvalidArgument("limits.timeout",
                           absl::StrCat(absl::FormatDuration(asked), " exceeds ", whose_max, " of ",
                                        absl::FormatDuration(max)));
  }
  return asked == absl::ZeroDuration() ? fallback : asked;
}

absl::StatusOr<int64_t> PickOutputCap(int64_t asked, int64_t fallback, int64_t max,
                                      absl::string_view whose_max) {
  if (asked < 0) {
    return InvalidArgument("limits.max_output_bytes", absl::StrCat(asked, " is negative"));
  }
  if (asked > max) {
    return InvalidArgument("limits.max_output_bytes",
                           absl::StrCat(asked, " exceeds ", whose_max, " of ", max));
  }
  return asked == 0 ? fallback : asked;
}

absl::Status ApplyStreaming(const CommandRequest& request, const RequestPolicy& policy,
                            Command* cmd) {
  const int64_t max_chunk = policy.max_stream_chunk_bytes;
  if (request.stream_chunk_bytes < 0 || request.stream_chunk_bytes > max_chunk) {
    return InvalidArgument("stream_chunk_bytes",
                           absl::StrCat(request.stream_chunk_bytes, " is not within 0..", max_chunk,
                                        " (a chunk is one message)"));
  }
  if (request.stream_chunk_bytes > 0) cmd->stream_chunk_bytes = request.stream_chunk_bytes;
  if (request.stream_flush_interval < absl::ZeroDuration() ||
      request.stream_flush_interval > absl::Seconds(10)) {
    return InvalidArgument(
        "stream_flush_interval",
        absl::StrCat(absl::FormatDuration(request.stream_flush_interval), " is not within 0..10s"));
  }
  if (request.stream_flush_interval > absl::ZeroDuration()) {
    cmd->stream_flush_interval = request.stream_flush_interval;
  }
  return absl::OkStatus();
}

absl::Status ApplyScheduling(const CommandRequest& request, const RequestPolicy& policy,
                             Command* cmd) {
  RETURN_IF_ERROR(ApplyStreaming(request, policy, cmd));
  if (request.priority == -1) {
    cmd->priority = 1;
  } else if (request.priority < 0 || request.priority > 2) {
    return InvalidArgument("priority",
                           absl::StrCat(request.priority, " is not one of LOW, NORMAL or HIGH"));
  } else {
    cmd->priority = request.priority;
  }
  if (request.max_queue_time < absl::ZeroDuration()) {
    return InvalidArgument(
        "max_queue_time",
        absl::StrCat(absl::FormatDuration(request.max_queue_time), " is negative"));
  }
  cmd->max_queue_time = request.max_queue_time == absl::ZeroDuration() ? absl::InfiniteDuration()
                                                                       : request.max_queue_time;
  return absl::OkStatus();
}

// The programs after argv in a pipeline, each resolved like argv[0].
absl::StatusOr<std::vector<PipelineStage>> ValidatePipeline(
    std::vector<std::vector<std::string>> pipe_to, const std::string& cwd,
    const std::string& path_var) {
  constexpr size_t kMaxStages = 16;
  if (pipe_to.size() > kMaxStages) {
    return InvalidArgument("pipe_to", absl::StrCat("has ", pipe_to.size(),
                                                   " programs, over the limit of ", kMaxStages));
  }
  std::vector<PipelineStage> stages(pipe_to.size());
  for (size_t i = 0; i < pipe_to.size(); ++i) {
    const std::string field = absl::StrCat("pipe_to[", i, "].argv");
    if (pipe_to[i].empty()) return InvalidArgument(field, "is empty; give at least the program");
    if (pipe_to[i][0].empty()) {
      return InvalidArgument(absl::StrCat(field, "[0]"), "is empty; name the program");
    }
    auto executable = ResolveExecutable(pipe_to[i][0], cwd, path_var, &stages[i].executable_id);
    if (!executable.ok()) {
      return absl::Status(executable.status().code(),
                          absl::StrCat("pipe_to[", i, "]: ", executable.status().message()));
    }
    stages[i].executable = *std::move(executable);
    stages[i].argv = std::move(pipe_to[i]);
  }
  return stages;
}

}  // namespace

absl::StatusOr<Command> ValidateRequest(CommandRequest request, const RequestPolicy& policy) {
  if (request.argv.empty()) return InvalidArgument("argv", "is empty; give at least the program");
  if (request.argv[0].empty()) return InvalidArgument("argv[0]", "is empty; name the program");
  RETURN_IF_ERROR(CheckPayload(request, policy));

  Command cmd;
  ASSIGN_OR_RETURN(cmd.limits.timeout, PickTimeout(request.timeout, policy.default_timeout,
                                                   policy.max_timeout, "the server maximum"));
  ASSIGN_OR_RETURN(
      cmd.limits.max_output_bytes,
      request.streamed
          ? PickOutputCap(request.max_output_bytes, policy.max_stream_output_bytes,
                          policy.max_stream_output_bytes, "the server maximum for streams")
          : PickOutputCap(request.max_output_bytes, policy.default_max_output_bytes,
                          policy.max_output_bytes, "the server maximum"));
  RETURN_IF_ERROR(ApplyResourceLimits(request, policy, &cmd.limits));
  RETURN_IF_ERROR(ApplyScheduling(request, policy, &cmd));

  RETURN_IF_ERROR(CheckCwd(request.cwd));
  const std::string& path_var = SearchPath(policy);
  ASSIGN_OR_RETURN(cmd.executable,
                   ResolveExecutable(request.argv[0], request.cwd, path_var, &cmd.executable_id));
  ASSIGN_OR_RETURN(cmd.pipe_to,
                   ValidatePipeline(std::move(request.pipe_to), request.cwd, path_var));

  absl::flat_hash_map<std::string, std::string> env;
  for (const auto& name : request.inherit_env) {
    auto it = policy.server_env.find(name);
    if (it != policy.server_env.end()) env[name] = it->second;
  }
  for (auto& [name, value] : request.env) env[name] = std::move(value);
  cmd.env.reserve(env.size());
  for (const auto& [name, value] : env) cmd.env.push_back(absl::StrCat(name, "=", value));
  std::sort(cmd.env.begin(), cmd.env.end());  // A stable order for logs and cache keys.

  cmd.argv = std::move(request.argv);
  cmd.cwd = std::move(request.cwd);
  cmd.stdin_data = std::move(request.stdin_data);
  cmd.request_id = std::move(request.request_id);
  return cmd;
}

}  // namespace execd::core

namespace execd::core {

absl::StatusOr<Command> ValidatePooledRequest(CommandRequest request, const PoolSpec& pool,
                                              const RequestPolicy& policy) {
  const std::string whose = absl::StrCat("pool \"", pool.name, "\"");
  auto fixed_by_pool = [&](absl::string_view field) {
    return InvalidArgument(field, absl::StrCat("must be empty in a request to ", whose,
                                               ": the pool's configuration sets it"));
  };
  if (!request.env.empty()) return fixed_by_pool("env");
  if (!request.inherit_env.empty()) return fixed_by_pool("inherit_env");
  if (!request.cwd.empty()) return fixed_by_pool("cwd");
  if (request.cpu_time != absl::ZeroDuration()) return fixed_by_pool("limits.cpu_time");
#define EXECD_FIXED(field, server_maximum, what) \
  if (request.field != 0) return fixed_by_pool("limits." #field);
  EXECD_COUNT_LIMITS(EXECD_FIXED)
#undef EXECD_FIXED
  if (!request.cpu_affinity.empty()) return fixed_by_pool("limits.cpu_affinity");
  if (!request.pipe_to.empty()) {
    return InvalidArgument("pipe_to", absl::StrCat("must be empty in a request to ", whose,
                                                   ": a pool runs one program"));
  }
  if (pool.kind == PoolSpec::Kind::kPrewarmed && !request.argv.empty()) {
    return InvalidArgument("argv", absl::StrCat("must be empty in a request to PREWARMED ", whose,
                                                ": its processes are already running; send "
                                                "the input as stdin"));
  }
  RETURN_IF_ERROR(CheckPayload(request, policy));
  Command cmd;
  cmd.pool = pool.name;
  cmd.pool_fingerprint = pool.fingerprint;
  cmd.executable = pool.command.executable;
  cmd.limits = pool.command.limits;
  ASSIGN_OR_RETURN(cmd.limits.timeout, PickTimeout(request.timeout, pool.timeout, pool.timeout,
                                                   absl::StrCat(whose, "'s maximum")));
  ASSIGN_OR_RETURN(cmd.limits.max_output_bytes,
                   PickOutputCap(request.max_output_bytes, pool.max_output_bytes,
                                 pool.max_output_bytes, absl::StrCat(whose, "'s maximum")));
  RETURN_IF_ERROR(ApplyScheduling(request, policy, &cmd));
  cmd.argv = std::move(request.argv);
  cmd.stdin_data = std::move(request.stdin_data);
  cmd.request_id = std::move(request.request_id);
  return cmd;
}

}  // namespace execd::core
