#include "core/validate.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "core/status_macros.h"

extern char** environ;

namespace execd::core {
namespace {

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

// Checks one candidate file: OK when it is an executable regular file.
absl::Status CheckExecutable(const std::string& argv0, const std::string& path) {
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
  if (!S_ISREG(st.st_mode) || access(path.c_str(), X_OK) != 0) {
    return absl::PermissionDeniedError(absl::StrFormat(
        "argv[0] %s is not executable (mode %04o); chmod +x it or run it through its "
        "interpreter",
        Quote(path), st.st_mode & 07777));
  }
  return absl::OkStatus();
}

}  // namespace

RequestPolicy RequestPolicy::FromProcessEnvironment() {
  RequestPolicy policy;
  for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
    absl::string_view entry(*e);
    size_t eq = entry.find('=');
    if (eq == absl::string_view::npos) continue;
    policy.server_env.emplace(entry.substr(0, eq), entry.substr(eq + 1));
  }
  return policy;
}

absl::StatusOr<std::string> ResolveExecutable(const std::string& argv0, const std::string& cwd,
                                              const std::string& path_var) {
  if (argv0.find('/') != std::string::npos) {
    std::string path = argv0;
    if (argv0[0] != '/' && !cwd.empty()) path = absl::StrCat(cwd, "/", argv0);
    RETURN_IF_ERROR(CheckExecutable(argv0, path));
    return path;
  }
  // Like execvp: the first executable match wins; a non-executable match is reported only
  // when nothing executable is found.
  absl::Status first_denied;
  for (absl::string_view dir : absl::StrSplit(path_var, ':')) {
    if (dir.empty()) dir = ".";
    std::string candidate = absl::StrCat(dir, "/", argv0);
    absl::Status s = CheckExecutable(argv0, candidate);
    if (s.ok()) return candidate;
    if (s.code() == absl::StatusCode::kPermissionDenied && first_denied.ok()) first_denied = s;
  }
  if (!first_denied.ok()) return first_denied;
  return absl::NotFoundError(absl::StrCat("argv[0] ", Quote(argv0),
                                          " not found in the server's PATH (", path_var,
                                          "); give an absolute path"));
}

absl::StatusOr<Command> ValidateRequest(CommandRequest request, const RequestPolicy& policy) {
  if (request.argv.empty()) return InvalidArgument("argv", "is empty; give at least the program");
  if (request.argv[0].empty()) return InvalidArgument("argv[0]", "is empty; name the program");
  int64_t arg_bytes = 0;
  for (size_t i = 0; i < request.argv.size(); ++i) {
    if (HasNul(request.argv[i])) {
      return InvalidArgument(absl::StrCat("argv[", i, "]"),
                             absl::StrCat(Quote(request.argv[i]), " contains a NUL byte"));
    }
    arg_bytes += request.argv[i].size() + 1;
  }
  for (const auto& [name, value] : request.env) {
    RETURN_IF_ERROR(CheckEnvName("env", name));
    if (HasNul(value)) {
      return InvalidArgument(absl::StrCat("env[", Quote(name), "]"), "value contains a NUL byte");
    }
    arg_bytes += name.size() + value.size() + 2;
  }
  for (const auto& name : request.inherit_env) RETURN_IF_ERROR(CheckEnvName("inherit_env", name));
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

  Command cmd;
  if (request.timeout < absl::ZeroDuration()) {
    return InvalidArgument("limits.timeout",
                           absl::StrCat(absl::FormatDuration(request.timeout), " is negative"));
  }
  if (request.timeout > policy.max_timeout) {
    return InvalidArgument(
        "limits.timeout",
        absl::StrCat(absl::FormatDuration(request.timeout), " exceeds the server maximum of ",
                     absl::FormatDuration(policy.max_timeout)));
  }
  cmd.limits.timeout =
      request.timeout == absl::ZeroDuration() ? policy.default_timeout : request.timeout;
  if (request.max_output_bytes < 0) {
    return InvalidArgument("limits.max_output_bytes",
                           absl::StrCat(request.max_output_bytes, " is negative"));
  }
  if (request.max_output_bytes > policy.max_output_bytes) {
    return InvalidArgument("limits.max_output_bytes",
                           absl::StrCat(request.max_output_bytes, " exceeds the server maximum of ",
                                        policy.max_output_bytes));
  }
  cmd.limits.max_output_bytes =
      request.max_output_bytes == 0 ? policy.default_max_output_bytes : request.max_output_bytes;

  RETURN_IF_ERROR(CheckCwd(request.cwd));
  auto path_it = policy.server_env.find("PATH");
  ASSIGN_OR_RETURN(
      cmd.executable,
      ResolveExecutable(request.argv[0], request.cwd,
                        path_it == policy.server_env.end() ? "/usr/bin:/bin" : path_it->second));

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
