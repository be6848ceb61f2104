#include "tools/execctl/args.h"

#include <functional>
#include <string_view>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "core/status_macros.h"

namespace execd::execctl {

const char kUsage[] =
    "usage: execctl [--target=HOST:PORT] [--auth_token_file=FILE] [--tls_ca=FILE]\n"
    "               [--tls_cert=FILE --tls_key=FILE] COMMAND [flags]\n"
    "\n"
    "commands:\n"
    "  run [flags] -- PROGRAM [ARGS...] ['|' PROGRAM [ARGS...]]...\n"
    "                                     run a command (or a pipeline: a quoted '|' argument\n"
    "                                     pipes into the next program, no shell) on the\n"
    "                                     server; exit with its (the last program's) code\n"
    "      --timeout=5s          wall-clock limit (default: the server's)\n"
    "      --stdin=FILE|-        send FILE (or execctl's stdin) as the command's stdin\n"
    "      --env NAME=VALUE      set a variable (repeatable); the child gets only these\n"
    "      --inherit_env NAME    pass the server's value of NAME (repeatable)\n"
    "      --cwd=DIR             working directory on the server\n"
    "      --max_output_bytes=N  per-stream capture limit\n"
    "      --request_id=ID       shown in the server's request log\n"
    "      --priority=low|normal|high   queue order when the server is busy\n"
    "      --max_queue_time=1s   give up (DEADLINE_EXCEEDED) if not started by then\n"
    "      --cpu_time=2s --memory_bytes=N --max_processes=N --max_open_files=N\n"
    "      --max_file_size_bytes=N --cpu_affinity=0,1   resource limits\n"
    "      --stream              print output live (ExecuteStream)\n"
    "      --stream_chunk_bytes=N   with --stream: largest output message (default: the\n"
    "                            server's, 64 KiB)\n"
    "      --pipefail            a pipeline exits with its last failing program's code\n"
    "      --cache=read-write    answer from the server's result cache when an identical\n"
    "                            command succeeded; read-only, refresh, off (default)\n"
    "      --cache_ttl=10m       how long a stored result stays valid (default: the server's)\n"
    "      --pool=NAME           run in worker pool NAME; ARGS are the worker's arguments\n"
    "                            (none for a PREWARMED pool, which reads its input as stdin)\n"
    "  attach [flags] -- PROGRAM [ARGS...]   an interactive session: execctl's stdin goes to\n"
    "                            the command as it comes (EOF closes it), its output is\n"
    "                            printed live, Ctrl-C is sent to it as SIGINT; SIGTERM,\n"
    "                            SIGHUP or Ctrl-\\ (SIGQUIT) end the session and kill it.\n"
    "                            Flags as for run, but no --stdin, --stream or --pool;\n"
    "      -t, --tty             run it on a pseudo-terminal (prompts, line editing,\n"
    "                            full-screen programs); execctl's own terminal goes raw\n"
    "  health [--service=NAME]            grpc.health.v1 check; exit 0 when SERVING\n"
    "  ping [--payload=TEXT]              round-trip a Ping RPC and print its latency\n"
    "  status                             running and queued commands, and each worker pool\n"
    "  top [flags]                        the server's throughput, latency, errors, load,\n"
    "                                     CPU, memory, cache and pools, refreshed like top(1)\n"
    "      --interval=1s         time between frames (rates are over it)\n"
    "      --iterations=N        stop after N frames (default 0: until Ctrl-C)\n"
    "\n"
    "--target defaults to $EXECD_TARGET, else 127.0.0.1:50051.\n"
    "authentication: --auth_token_file=FILE (default: $EXECD_TOKEN) sends the token in it as\n"
    "  `authorization: Bearer TOKEN`; --tls_ca=FILE connects over TLS, checking the server's\n"
    "  certificate against these CAs; --tls_cert and --tls_key present a client certificate\n"
    "  (mutual TLS).\n"
    "exit codes: the command's own code; 128+N when killed by signal N; 124 timed out;\n"
    "  127 not found; 126 permission denied; 125 any other execctl or RPC error, or a\n"
    "  command execd stopped (a limit, a cancel) that exited 0 all the same.\n";

namespace {

using FlagHandler = std::function<absl::Status(const std::string& value)>;

struct FlagSpec {
  const char* name;
  bool takes_value;
  FlagHandler handle;
};

absl::Status ParseEnv(const std::string& value, Args& out) {
  size_t eq = value.find('=');
  if (eq == std::string::npos || eq == 0) {
    return absl::InvalidArgumentError(absl::StrCat("--env wants NAME=VALUE, got \"", value, "\""));
  }
  out.env.emplace_back(value.substr(0, eq), value.substr(eq + 1));
  return absl::OkStatus();
}

FlagHandler DurationFlag(const char* name, absl::Duration& field) {
  return [name, &field](const std::string& value) {
    if (!absl::ParseDuration(value, &field) || field < absl::ZeroDuration()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--", name, " wants a duration such as 5s or 200ms, got \"", value, "\""));
    }
    return absl::OkStatus();
  };
}

FlagHandler CountFlag(const char* name, long long& field) {
  return [name, &field](const std::string& value) {
    if (!absl::SimpleAtoi(value, &field) || field < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("--", name, " wants a non-negative number, got \"", value, "\""));
    }
    return absl::OkStatus();
  };
}

absl::Status ParseAffinity(const std::string& value, Args& out) {
  for (absl::string_view cpu : absl::StrSplit(value, ',')) {
    int n;
    if (!absl::SimpleAtoi(cpu, &n) || n < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("--cpu_affinity wants CPU numbers such as 0,2, got \"", value, "\""));
    }
    out.cpu_affinity.push_back(n);
  }
  return absl::OkStatus();
}

absl::Status ParseCache(const std::string& value, Args& out) {
  if (value != "off" && value != "read-write" && value != "read-only" && value != "refresh") {
    return absl::InvalidArgumentError(
        absl::StrCat("--cache wants off, read-write, read-only or refresh, got \"", value, "\""));
  }
  out.cache = value;
  return absl::OkStatus();
}

absl::Status ParsePriority(const std::string& value, Args& out) {
  if (value != "low" && value != "normal" && value != "high") {
    return absl::InvalidArgumentError(
        absl::StrCat("--priority wants low, normal or high, got \"", value, "\""));
  }
  out.priority = value;
  return absl::OkStatus();
}

// A flag that sets `field` to its value.
FlagHandler Set(std::string& field) {
  return [&field](const std::string& v) {
    field = v;
    return absl::OkStatus();
  };
}

std::vector<FlagSpec> FlagsFor(Args::Command command, Args& out) {
  switch (command) {
    case Args::Command::kRun:
      return {
          {"stream", false,
           [&out](const std::string&) {
             out.stream = true;
             return absl::OkStatus();
           }},
          {"pipefail", false,
           [&out](const std::string&) {
             out.pipefail = true;
             return absl::OkStatus();
           }},
          {"timeout", true, DurationFlag("timeout", out.timeout)},
          {"stdin", true, Set(out.stdin_path)},
          {"env", true, [&out](const std::string& v) { return ParseEnv(v, out); }},
          {"inherit_env", true,
           [&out](const std::string& v) {
             out.inherit_env.push_back(v);
             return absl::OkStatus();
           }},
          {"cwd", true, Set(out.cwd)},
          {"max_output_bytes", true, CountFlag("max_output_bytes", out.max_output_bytes)},
          {"request_id", true, Set(out.request_id)},
          {"priority", true, [&out](const std::string& v) { return ParsePriority(v, out); }},
          {"max_queue_time", true, DurationFlag("max_queue_time", out.max_queue_time)},
          {"cpu_time", true, DurationFlag("cpu_time", out.cpu_time)},
          {"memory_bytes", true, CountFlag("memory_bytes", out.memory_bytes)},
          {"max_processes", true, CountFlag("max_processes", out.max_processes)},
          {"max_open_files", true, CountFlag("max_open_files", out.max_open_files)},
          {"max_file_size_bytes", true, CountFlag("max_file_size_bytes", out.max_file_size_bytes)},
          {"cpu_affinity", true, [&out](const std::string& v) { return ParseAffinity(v, out); }},
          {"pool", true, Set(out.pool)},
          {"cache", true, [&out](const std::string& v) { return ParseCache(v, out); }},
          {"cache_ttl", true, DurationFlag("cache_ttl", out.cache_ttl)},
          {"stream_chunk_bytes", true, CountFlag("stream_chunk_bytes", out.stream_chunk_bytes)},
      };
    case Args::Command::kAttach: {
      // run's flags, less those that make no sense for a session.
      std::vector<FlagSpec> flags = FlagsFor(Args::Command::kRun, out);
      std::erase_if(flags, [](const FlagSpec& f) {
        const std::string_view name = f.name;
        return name == "stdin" || name == "stream" || name == "pool" || name == "cache" ||
               name == "cache_ttl";
      });
      auto tty = [&out](const std::string&) {
        out.tty = true;
        return absl::OkStatus();
      };
      flags.push_back({"tty", false, tty});
      flags.push_back({"t", false, tty});
      return flags;
    }
    case Args::Command::kHealth:
      return {{"service", true, Set(out.service)}};
    case Args::Command::kPing:
      return {{"payload", true, Set(out.payload)}};
    case Args::Command::kTop:
      return {
          {"interval", true,
           [&out](const std::string& v) {
             if (!absl::ParseDuration(v, &out.interval) || out.interval <= absl::ZeroDuration()) {
               return absl::InvalidArgumentError(absl::StrCat(
                   "--interval wants a positive duration such as 1s or 500ms, got \"", v, "\""));
             }
             return absl::OkStatus();
           }},
          {"iterations", true, CountFlag("iterations", out.iterations)}};
    case Args::Command::kStatus:
    case Args::Command::kHelp:
      break;
  }
  return {};
}

// Applies args[i] (and args[i+1] for "--name value") when it is one of `flags`.
absl::StatusOr<bool> ApplyFlag(const std::vector<FlagSpec>& flags,
                               const std::vector<std::string>& args, size_t& i) {
  const std::string& arg = args[i];
  for (const FlagSpec& flag : flags) {
    // One-letter flags take one dash (-t), the others two.
    std::string name = absl::StrCat(flag.name[1] == '\0' ? "-" : "--", flag.name);
    if (arg == name) {
      if (!flag.takes_value) {
        RETURN_IF_ERROR(flag.handle(""));
        return true;
      }
      if (i + 1 >= args.size()) {
        return absl::InvalidArgumentError(absl::StrCat(name, " needs a value"));
      }
      RETURN_IF_ERROR(flag.handle(args[++i]));
      return true;
    }
    if (flag.takes_value && absl::StartsWith(arg, absl::StrCat(name, "="))) {
      RETURN_IF_ERROR(flag.handle(arg.substr(name.size() + 1)));
      return true;
    }
  }
  return false;
}

}  // namespace

absl::StatusOr<Args> ParseArgs(const std::vector<std::string>& args,
                               const std::string& default_target) {
  Args out;
  if (!default_target.empty()) out.target = default_target;
  size_t i = 0;
  std::vector<FlagSpec> global = {{"target", true, Set(out.target)},
                                  {"auth_token_file", true, Set(out.auth.token_file)},
                                  {"tls_ca", true, Set(out.auth.tls_ca)},
                                  {"tls_cert", true, Set(out.auth.tls_cert)},
                                  {"tls_key", true, Set(out.auth.tls_key)}};
  for (; i < args.size(); ++i) {
    ASSIGN_OR_RETURN(bool matched, ApplyFlag(global, args, i));
    if (!matched) break;
  }
  if (i >= args.size()) return out;  // No command: help.
  const std::string& command = args[i++];
  if (command == "run") {
    out.command = Args::Command::kRun;
  } else if (command == "attach") {
    out.command = Args::Command::kAttach;
  } else if (command == "health") {
    out.command = Args::Command::kHealth;
  } else if (command == "ping") {
    out.command = Args::Command::kPing;
  } else if (command == "status") {
    out.command = Args::Command::kStatus;
  } else if (command == "top") {
    out.command = Args::Command::kTop;
  } else if (command == "help" || command == "--help" || command == "-h") {
    return out;
  } else {
    return absl::InvalidArgumentError(absl::StrCat("unknown command \"", command, "\""));
  }

  std::vector<FlagSpec> flags = FlagsFor(out.command, out);
  for (; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (arg == "--") {
      ++i;
      break;
    }
    if (!absl::StartsWith(arg, "-")) break;  // The command starts; "--" is optional.
    ASSIGN_OR_RETURN(bool matched, ApplyFlag(flags, args, i));
    if (!matched) {
      return absl::InvalidArgumentError(absl::StrCat("unknown flag \"", arg, "\" for ", command));
    }
  }
  if (out.command == Args::Command::kRun || out.command == Args::Command::kAttach) {
    std::vector<std::string>* program = &out.argv;
    for (; i < args.size(); ++i) {
      if (args[i] != "|") {
        program->push_back(args[i]);
        continue;
      }
      if (program->empty()) {
        return absl::InvalidArgumentError(
            absl::StrCat(command, ": a '|' with no program before it"));
      }
      program = &out.pipe_to.emplace_back();
    }
    if (out.argv.empty() && out.pool.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(command, " needs a command: execctl ", command,
                                                     " [flags] -- PROGRAM ARGS..."));
    }
    if (!out.pipe_to.empty() && out.pipe_to.back().empty()) {
      return absl::InvalidArgumentError(absl::StrCat(command, ": a '|' with no program after it"));
    }
  } else if (i < args.size()) {
    return absl::InvalidArgumentError(absl::StrCat("unexpected argument \"", args[i], "\""));
  }
  return out;
}

}  // namespace execd::execctl
