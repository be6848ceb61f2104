// Fuzzes request validation: bytes parsed as an execd.v1.ExecuteRequest, converted
// (CommandRequestFromProto) and validated as a cold request (ValidateRequest, unary and
// streamed, under a server with and without maximums) and as a request to a PERSISTENT
// and a PREWARMED pool (ValidatePooledRequest). A rejection is a non-OK status with a
// message; an accepted request is within every bound it was checked against.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "absl/time/time.h"
#include "core/pool.h"
#include "core/validate.h"
#include "execd/v1/execd.pb.h"
#include "google/protobuf/stubs/logging.h"
#include "server/convert.h"

namespace {

using execd::core::Command;
using execd::core::CommandRequest;
using execd::core::PoolSpec;
using execd::core::RequestPolicy;

void Check(bool ok) {
  if (!ok) std::abort();
}

RequestPolicy Policy(bool with_maximums) {
  RequestPolicy policy;
  policy.server_env = {{"PATH", "/usr/bin:/bin"}, {"HOME", "/root"}, {"LANG", "C.UTF-8"}};
  if (with_maximums) {
    policy.max_cpu_time = absl::Seconds(30);
    policy.max_memory_bytes = int64_t{1} << 30;
    policy.max_processes = 64;
    policy.max_open_files = 1024;
    policy.max_file_size_bytes = int64_t{1} << 30;
    policy.allowed_cpus = {0, 1};
  }
  return policy;
}

PoolSpec Pool(PoolSpec::Kind kind) {
  PoolSpec pool;
  pool.name = kind == PoolSpec::Kind::kPersistent ? "worker" : "prewarmed";
  pool.kind = kind;
  pool.command.argv = {"/bin/cat"};
  pool.command.executable = "/bin/cat";
  pool.timeout = absl::Seconds(10);
  pool.max_output_bytes = 1 << 20;
  return pool;
}

void CheckRejection(const absl::Status& status) {
  Check(!status.ok());
  Check(!status.message().empty());
}

void CheckScheduling(const Command& cmd) {
  Check(cmd.priority >= 0 && cmd.priority <= 2);
  Check(cmd.max_queue_time > absl::ZeroDuration());
  Check(cmd.stream_chunk_bytes > 0 && cmd.stream_chunk_bytes <= (4 << 20));
  Check(cmd.stream_flush_interval > absl::ZeroDuration() &&
        cmd.stream_flush_interval <= absl::Seconds(10));
  Check(cmd.request_id.size() <= 128);
  for (const std::string& arg : cmd.argv) Check(arg.find('\0') == std::string::npos);
}

void CheckCold(const CommandRequest& request, const RequestPolicy& policy) {
  absl::StatusOr<Command> cmd = execd::core::ValidateRequest(request, policy);
  if (!cmd.ok()) return CheckRejection(cmd.status());
  CheckScheduling(*cmd);
  Check(!cmd->argv.empty() && !cmd->argv[0].empty() && !cmd->executable.empty());
  Check(cmd->cwd.empty() || cmd->cwd[0] == '/');
  Check(cmd->pipe_to.size() <= 16);
  for (const auto& stage : cmd->pipe_to) Check(!stage.argv.empty() && !stage.executable.empty());
  const execd::core::Limits& l = cmd->limits;
  Check(l.timeout > absl::ZeroDuration() && l.timeout <= policy.max_timeout);
  Check(l.max_output_bytes > 0 &&
        l.max_output_bytes <=
            (request.streamed ? policy.max_stream_output_bytes : policy.max_output_bytes));
  Check(l.cpu_time >= absl::ZeroDuration());
  Check(l.memory_bytes == 0 || l.memory_bytes >= (1 << 20));
  Check(l.max_processes >= 0 && l.max_open_files >= 0 && l.max_file_size_bytes >= 0);
  Check(l.max_open_files == 0 || l.max_open_files >= 3);
  if (policy.max_cpu_time > absl::ZeroDuration()) Check(l.cpu_time <= policy.max_cpu_time);
  if (policy.max_memory_bytes > 0) Check(l.memory_bytes <= policy.max_memory_bytes);
  if (policy.max_processes > 0) Check(l.max_processes <= policy.max_processes);
  if (policy.max_open_files > 0) Check(l.max_open_files <= policy.max_open_files);
  if (policy.max_file_size_bytes > 0) Check(l.max_file_size_bytes <= policy.max_file_size_bytes);
  for (int cpu : l.cpu_affinity) Check(cpu >= 0 && cpu < CPU_SETSIZE);
  for (const std::string& var : cmd->env) {
    Check(var.find('=') != std::string::npos && var.find('=') > 0);
    Check(var.find('\0') == std::string::npos);
  }
}

void CheckPooled(const CommandRequest& request, const PoolSpec& pool, const RequestPolicy& policy) {
  absl::StatusOr<Command> cmd = execd::core::ValidatePooledRequest(request, pool, policy);
  if (!cmd.ok()) return CheckRejection(cmd.status());
  CheckScheduling(*cmd);
  Check(cmd->pool == pool.name && cmd->executable == pool.command.executable);
  Check(cmd->env.empty() && cmd->cwd.empty() && cmd->pipe_to.empty());
  if (pool.kind == PoolSpec::Kind::kPrewarmed) Check(cmd->argv.empty());
  Check(cmd->limits.timeout > absl::ZeroDuration() && cmd->limits.timeout <= pool.timeout);
  Check(cmd->limits.max_output_bytes > 0 && cmd->limits.max_output_bytes <= pool.max_output_bytes);
}

}  // namespace

// Protobuf logs every string field that is not UTF-8; at thousands of inputs a second
// that is most of the time spent.
extern "C" int LLVMFuzzerInitialize(int*, char***) {
  google::protobuf::SetLogHandler(nullptr);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const RequestPolicy* const open = new RequestPolicy(Policy(false));
  static const RequestPolicy* const strict = new RequestPolicy(Policy(true));
  static const PoolSpec* const persistent = new PoolSpec(Pool(PoolSpec::Kind::kPersistent));
  static const PoolSpec* const prewarmed = new PoolSpec(Pool(PoolSpec::Kind::kPrewarmed));

  execd::v1::ExecuteRequest proto;
  if (!proto.ParseFromArray(data, static_cast<int>(size))) return 0;
  CommandRequest request = execd::server::CommandRequestFromProto(proto);
  for (bool streamed : {false, true}) {
    request.streamed = streamed;
    CheckCold(request, *open);
    CheckCold(request, *strict);
  }
  request.streamed = false;
  CheckPooled(request, *persistent, *open);
  CheckPooled(request, *prewarmed, *open);
  return 0;
}
