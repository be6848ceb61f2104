#include "tools/execctl/execctl.h"

#include <fcntl.h>
#include <grpcpp/grpcpp.h>
#include <poll.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <iterator>
#include <memory>
#include <sstream>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "core/compress.h"
#include "execd/v1/execd.grpc.pb.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "tools/execctl/connect.h"
#include "tools/execctl/top.h"

namespace execd::execctl {
namespace {

bool WriteAll(int fd, const std::string& data) {
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = write(fd, data.data() + done, data.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    done += static_cast<size_t>(n);
  }
  return true;
}

// The exit code execctl returns for a finished command, with a note on stderr when execd
// stopped it.
int ExitForResult(const v1::ExecuteResponse& r, bool pipefail) {
  if (r.stdout_truncated() || r.stderr_truncated()) {
    std::cerr << "execctl: output truncated (" << (r.stdout_truncated() ? "stdout" : "")
              << (r.stdout_truncated() && r.stderr_truncated() ? " and " : "")
              << (r.stderr_truncated() ? "stderr" : "") << " over the limit)\n";
  }
  switch (r.termination()) {
    case v1::TIMED_OUT:
      std::cerr << "execctl: command timed out\n";
      return kExitTimedOut;
    case v1::OUTPUT_LIMIT_EXCEEDED:
      std::cerr << "execctl: command stopped: output limit exceeded\n";
      break;
    case v1::CANCELLED:
      std::cerr << "execctl: command cancelled\n";
      break;
    case v1::MEMORY_LIMIT_EXCEEDED:
    case v1::CPU_TIME_LIMIT_EXCEEDED:
    case v1::FILE_SIZE_LIMIT_EXCEEDED:
    case v1::PROCESS_LIMIT_EXCEEDED:
      std::cerr << "execctl: command stopped: " << v1::Termination_Name(r.termination()) << "\n";
      break;
    default:
      break;
  }
  if (pipefail) {
    for (auto it = r.stages().rbegin(); it != r.stages().rend(); ++it) {
      if (it->signal() != 0) return 128 + it->signal();
      if (it->exit_code() != 0) return it->exit_code();
    }
  }
  if (r.signal() != 0) return 128 + r.signal();
  // execd stopped it (a limit, a cancel) yet its own code says success, as when it wrote
  // too much and exited before execd could stop it: its output is not all it wrote.
  if (r.exit_code() == 0 && r.termination() != v1::EXITED) return kExitError;
  return r.exit_code();
}

void SetDuration(absl::Duration d, google::protobuf::Duration* out) {
  int64_t ns = absl::ToInt64Nanoseconds(d);
  out->set_seconds(ns / 1000000000);
  out->set_nanos(static_cast<int32_t>(ns % 1000000000));
}

absl::StatusOr<std::string> ReadStdin(const std::string& path) {
  if (path.empty()) return std::string();
  if (path == "-") {
    std::ostringstream ss;
    ss << std::cin.rdbuf();
    return ss.str();
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read --stdin file \"", path, "\""));
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// Writes `data` to execctl's stdout or stderr; false, with a note, when it cannot.
bool WriteOrSay(int fd, const std::string& data) {
  if (WriteAll(fd, data)) return true;
  std::cerr << "execctl: cannot write the command's " << (fd == STDOUT_FILENO ? "stdout" : "stderr")
            << ": " << strerror(errno) << "\n";
  return false;
}

// Writes command output, decompressing it when the server sent an lz4 frame of at most
// `max_plain` bytes (a whole response's output: 4 GiB; a stream chunk: 4 MiB, the most
// stream_chunk_bytes allows), so a bad frame cannot make execctl allocate more.
bool WriteOutput(int fd, const std::string& data, v1::Compression compression,
                 size_t max_plain = size_t{1} << 32) {
  if (compression == v1::COMPRESSION_NONE) return WriteOrSay(fd, data);
  if (compression != v1::LZ4) {
    std::cerr << "execctl: the server sent output in an unknown encoding (" << compression << ")\n";
    return false;
  }
  auto plain = core::Lz4Decompress(data, max_plain);
  if (!plain.ok()) {
    std::cerr << "execctl: bad compressed output from the server: " << plain.status().message()
              << "\n";
    return false;
  }
  return WriteOrSay(fd, *plain);
}

// A streamed output event, written to execctl's stdout or stderr as the command wrote it.
bool WriteOutputEvent(const v1::ExecuteEvent::Output& output) {
  return WriteOutput(output.stream() == v1::ExecuteEvent::STDERR ? STDERR_FILENO : STDOUT_FILENO,
                     output.data(), output.compression(), size_t{4} << 20);
}

// The request of `run` and `attach`, without stdin.
v1::ExecuteRequest RequestFromArgs(const Args& args) {
  v1::ExecuteRequest request;
  for (const std::string& a : args.argv) request.add_argv(a);
  for (const std::vector<std::string>& program : args.pipe_to) {
    v1::PipeStage* stage = request.add_pipe_to();
    for (const std::string& a : program) stage->add_argv(a);
  }
  for (const auto& [name, value] : args.env) (*request.mutable_env())[name] = value;
  for (const std::string& name : args.inherit_env) request.add_inherit_env(name);
  request.set_cwd(args.cwd);
  request.set_request_id(args.request_id);
  v1::Limits* limits = request.mutable_limits();
  SetDuration(args.timeout, limits->mutable_timeout());
  limits->set_max_output_bytes(args.max_output_bytes);
  SetDuration(args.cpu_time, limits->mutable_cpu_time());
  limits->set_memory_bytes(args.memory_bytes);
  limits->set_max_processes(args.max_processes);
  limits->set_max_open_files(args.max_open_files);
  limits->set_max_file_size_bytes(args.max_file_size_bytes);
  for (int cpu : args.cpu_affinity) limits->add_cpu_affinity(cpu);
  SetDuration(args.max_queue_time, request.mutable_max_queue_time());
  if (args.priority == "low") request.set_priority(v1::PRIORITY_LOW);
  if (args.priority == "normal") request.set_priority(v1::PRIORITY_NORMAL);
  if (args.priority == "high") request.set_priority(v1::PRIORITY_HIGH);
  request.set_pool(args.pool);
  if (args.cache == "read-write") request.set_cache_policy(v1::READ_WRITE);
  if (args.cache == "read-only") request.set_cache_policy(v1::READ_ONLY);
  if (args.cache == "refresh") request.set_cache_policy(v1::REFRESH);
  SetDuration(args.cache_ttl, request.mutable_cache_ttl());
  request.set_stream_chunk_bytes(args.stream_chunk_bytes);
  request.set_accept_compression(v1::LZ4);  // Decompressed when printed; less to move.
  return request;
}

int Run(const Args& args, const std::shared_ptr<grpc::Channel>& channel) {
  v1::ExecuteRequest request = RequestFromArgs(args);
  auto stdin_data = ReadStdin(args.stdin_path);
  if (!stdin_data.ok()) {
    std::cerr << "execctl: " << stdin_data.status().message() << "\n";
    return kExitError;
  }
  request.set_stdin(*std::move(stdin_data));

  auto stub = v1::Executor::NewStub(channel);
  grpc::ClientContext context;
  if (!args.stream) {
    v1::ExecuteResponse response;
    grpc::Status status = stub->Execute(&context, request, &response);
    if (!status.ok()) return ExitForRpcError(status, args.target);
    if (!WriteOutput(STDOUT_FILENO, response.stdout(), response.stdout_compression()) ||
        !WriteOutput(STDERR_FILENO, response.stderr(), response.stderr_compression())) {
      return kExitError;
    }
    return ExitForResult(response, args.pipefail);
  }
  auto reader = stub->ExecuteStream(&context, request);
  v1::ExecuteEvent event;
  v1::ExecuteResponse exited;
  bool got_exit = false;
  while (reader->Read(&event)) {
    if (event.has_output()) {
      if (!WriteOutputEvent(event.output())) {
        context.TryCancel();
        return kExitError;
      }
    } else if (event.has_exited()) {
      exited = event.exited();
      got_exit = true;
    }
  }
  grpc::Status status = reader->Finish();
  if (!status.ok()) return ExitForRpcError(status, args.target);
  if (!got_exit) {
    std::cerr << "execctl: the stream ended without an exit event\n";
    return kExitError;
  }
  return ExitForResult(exited, args.pipefail);
}

// attach: signals execctl receives go through this pipe to the forwarding thread (a
// handler may only write(2)); a 0 byte tells that thread to stop.
int signal_pipe[2] = {-1, -1};

void OnSignal(int signal) {
  const char byte = static_cast<char>(signal);
  ssize_t ignored = write(signal_pipe[1], &byte, 1);
  (void)ignored;
}

using AttachStream = grpc::ClientReaderWriter<v1::AttachRequest, v1::AttachEvent>;

// The size of execctl's terminal (stdin), or 24x80 when it has none.
v1::TerminalSize LocalTerminalSize() {
  v1::TerminalSize size;
  winsize ws{};
  const bool known = ioctl(STDIN_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_row > 0 && ws.ws_col > 0;
  size.set_rows(known ? ws.ws_row : 24);
  size.set_columns(known ? ws.ws_col : 80);
  return size;
}

// execctl's terminal in raw mode for a remote terminal session: keys (Ctrl-C included) go
// to the remote terminal as they are typed, which echoes and interprets them. Restored by
// Restore() or on destruction.
class RawTerminal {
 public:
  explicit RawTerminal(bool enable) {
    if (!enable || tcgetattr(STDIN_FILENO, &saved_) != 0) return;
    termios raw = saved_;
    cfmakeraw(&raw);
    active_ = tcsetattr(STDIN_FILENO, TCSANOW, &raw) == 0;
  }
  ~RawTerminal() { Restore(); }
  void Restore() {
    if (active_) tcsetattr(STDIN_FILENO, TCSANOW, &saved_);
    active_ = false;
  }

 private:
  termios saved_{};
  bool active_ = false;
};

// The forwarding thread of attach: execctl's stdin, as it comes, to the session's stdin
// (end of file closes it), and Ctrl-C to the command as SIGINT. SIGTERM, SIGHUP and SIGQUIT
// end the session (the server kills the command); `*ended_by` says which. With a remote
// terminal, a resize of execctl's terminal (SIGWINCH) is passed on.
void Forward(AttachStream& stream, grpc::ClientContext& context, int* ended_by) {
  pollfd fds[2] = {{STDIN_FILENO, POLLIN, 0}, {signal_pipe[0], POLLIN, 0}};
  std::string buf(64 << 10, '\0');
  for (;;) {
    if (poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      return;
    }
    if (fds[1].revents != 0) {
      char signal;
      while (read(signal_pipe[0], &signal, 1) == 1) {
        if (signal == 0) return;
        if (signal == SIGINT) {
          v1::AttachRequest request;
          request.set_signal(SIGINT);
          if (!stream.Write(request)) return;
          continue;
        }
        if (signal == SIGWINCH) {
          v1::AttachRequest request;
          *request.mutable_resize() = LocalTerminalSize();
          if (!stream.Write(request)) return;
          continue;
        }
        *ended_by = signal;
        context.TryCancel();
        return;
      }
    }
    if (fds[0].revents != 0) {
      ssize_t n = read(STDIN_FILENO, buf.data(), buf.size());
      if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
      v1::AttachRequest request;
      if (n > 0) {
        request.set_stdin(buf.data(), static_cast<size_t>(n));
      } else {
        request.mutable_close_stdin();
        fds[0].fd = -1;  // poll ignores it from now on.
      }
      if (!stream.Write(request)) return;
    }
  }
}

int Attach(const Args& args, const std::shared_ptr<grpc::Channel>& channel) {
  v1::AttachRequest start;
  *start.mutable_start() = RequestFromArgs(args);
  const bool local_terminal = args.tty && isatty(STDIN_FILENO);
  if (args.tty) *start.mutable_terminal() = LocalTerminalSize();
  if (pipe2(signal_pipe, O_CLOEXEC | O_NONBLOCK) < 0) {
    std::cerr << "execctl: pipe2: " << strerror(errno) << "\n";
    return kExitError;
  }
  struct sigaction action = {};
  action.sa_handler = OnSignal;
  sigemptyset(&action.sa_mask);
  for (int signal : {SIGINT, SIGTERM, SIGHUP, SIGQUIT}) sigaction(signal, &action, nullptr);
  if (args.tty) sigaction(SIGWINCH, &action, nullptr);
  RawTerminal raw(local_terminal);

  auto stub = v1::Executor::NewStub(channel);
  grpc::ClientContext context;
  std::unique_ptr<AttachStream> stream = stub->Attach(&context);
  int ended_by = 0;
  std::thread forward;
  if (stream->Write(start)) {
    forward = std::thread([&] { Forward(*stream, context, &ended_by); });
  }
  v1::AttachEvent event;
  v1::ExecuteResponse exited;
  bool got_exit = false;
  bool output_ok = true;
  while (stream->Read(&event)) {
    if (event.has_output() && output_ok) {
      output_ok = WriteOutputEvent(event.output());
      if (!output_ok) context.TryCancel();
    } else if (event.has_exited()) {
      exited = event.exited();
      got_exit = true;
    }
  }
  if (forward.joinable()) {
    OnSignal(0);  // The call is over: the forwarding thread stops.
    forward.join();
  }
  raw.Restore();  // Before any message of ours.
  grpc::Status status = stream->Finish();
  if (ended_by != 0) {
    std::cerr << "execctl: " << strsignal(ended_by) << ": session ended, command killed\n";
    return 128 + ended_by;
  }
  if (!output_ok) return kExitError;
  if (!status.ok()) return ExitForRpcError(status, args.target);
  if (!got_exit) {
    std::cerr << "execctl: the session ended without an exit event\n";
    return kExitError;
  }
  return ExitForResult(exited, args.pipefail);
}

int Health(const Args& args, const std::shared_ptr<grpc::Channel>& channel) {
  auto stub = grpc::health::v1::Health::NewStub(channel);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  grpc::health::v1::HealthCheckRequest request;
  request.set_service(args.service);
  grpc::health::v1::HealthCheckResponse response;
  grpc::Status status = stub->Check(&context, request, &response);
  if (!status.ok()) return ExitForRpcError(status, args.target);
  std::cout << grpc::health::v1::HealthCheckResponse::ServingStatus_Name(response.status()) << "\n";
  return response.status() == grpc::health::v1::HealthCheckResponse::SERVING ? 0 : 1;
}

int Ping(const Args& args, const std::shared_ptr<grpc::Channel>& channel) {
  auto stub = v1::Executor::NewStub(channel);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  v1::PingRequest request;
  request.set_payload(args.payload);
  v1::PingResponse response;
  absl::Time start = absl::Now();
  grpc::Status status = stub->Ping(&context, request, &response);
  if (!status.ok()) return ExitForRpcError(status, args.target);
  std::cout << "pong from " << args.target << " in " << absl::FormatDuration(absl::Now() - start)
            << (response.payload().empty() ? "" : ": ") << response.payload() << "\n";
  return 0;
}

int Status(const Args& args, const std::shared_ptr<grpc::Channel>& channel) {
  auto stub = v1::Executor::NewStub(channel);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  v1::StatusResponse response;
  grpc::Status status = stub->GetStatus(&context, v1::StatusRequest(), &response);
  if (!status.ok()) return ExitForRpcError(status, args.target);
  std::cout << "running " << response.running() << " of " << response.concurrency_limit()
            << ", queued " << response.queued() << "\n";
  std::cout << "memory " << response.memory_in_use_bytes() << " of "
            << response.memory_budget_bytes() << " bytes reserved\n";
  if (response.has_cache()) {
    const v1::CacheStatus& c = response.cache();
    std::cout << "cache " << c.bytes() << " of " << c.max_bytes() << " bytes, " << c.entries()
              << " entries, hits " << c.hits() << ", misses " << c.misses() << ", evictions "
              << c.evictions() << ", rejections " << c.rejections() << ", expirations "
              << c.expirations() << "\n";
  }
  if (response.pools().empty()) return 0;
  std::cout << absl::StrFormat("%-16s %-10s %5s %5s %8s %8s %8s %8s %8s %7s %4s\n", "POOL", "KIND",
                               "IDLE", "BUSY", "STARTING", "STARTED", "RECYCLED", "CRASHED",
                               "SERVED", "MISSES", "GEN");
  for (const v1::PoolStatus& p : response.pools()) {
    std::cout << absl::StrFormat("%-16s %-10s %5d %5d %8d %8d %8d %8d %8d %7d %4d\n", p.name(),
                                 p.kind(), p.idle(), p.busy(), p.starting(), p.started(),
                                 p.recycled(), p.crashed(), p.served(), p.misses(), p.generation());
  }
  return 0;
}

}  // namespace

int RunCommand(const Args& args) {
  if (args.command == Args::Command::kHelp) {
    std::cout << kUsage;
    return 0;
  }
  absl::StatusOr<client::ClientAuth> auth =
      client::LoadClientAuth(args.auth, std::getenv(client::kTokenVariable));
  if (!auth.ok()) {
    std::cerr << "execctl: " << auth.status().message() << "\n";
    return kExitError;
  }
  const std::shared_ptr<grpc::Channel> channel = Connect(args.target, *auth);
  switch (args.command) {
    case Args::Command::kRun:
      return Run(args, channel);
    case Args::Command::kAttach:
      return Attach(args, channel);
    case Args::Command::kHealth:
      return Health(args, channel);
    case Args::Command::kPing:
      return Ping(args, channel);
    case Args::Command::kStatus:
      return Status(args, channel);
    case Args::Command::kTop:
      return Top(args, channel);
    case Args::Command::kHelp:
      break;
  }
  return 0;
}

}  // namespace execd::execctl
