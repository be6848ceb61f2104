#include "server/convert.h"

#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/compress.h"
#include "core/engine.h"

namespace execd::server {

core::CommandRequest CommandRequestFromProto(v1::ExecuteRequest& request) {
  core::CommandRequest out;
  out.argv.reserve(request.argv_size());
  for (std::string& arg : *request.mutable_argv()) out.argv.push_back(std::move(arg));
  out.env.reserve(request.env_size());
  for (auto& [name, value] : *request.mutable_env()) out.env.emplace_back(name, std::move(value));
  for (std::string& name : *request.mutable_inherit_env())
    out.inherit_env.push_back(std::move(name));
  out.cwd = std::move(*request.mutable_cwd());
  out.stdin_data = std::move(*request.mutable_stdin());
  out.request_id = std::move(*request.mutable_request_id());
  if (request.has_limits()) {
    const v1::Limits& limits = request.limits();
    out.timeout = DurationFromProto(limits.timeout());
    out.max_output_bytes = limits.max_output_bytes();
    out.cpu_time = DurationFromProto(limits.cpu_time());
#define EXECD_FROM_PROTO(field, server_maximum, what) out.field = limits.field();
    EXECD_COUNT_LIMITS(EXECD_FROM_PROTO)
#undef EXECD_FROM_PROTO
    out.cpu_affinity.assign(limits.cpu_affinity().begin(), limits.cpu_affinity().end());
  }
  // The proto's enum starts at UNSPECIFIED; core counts priorities from 0 (lowest). Unknown
  // enum values pass through out of range, for validation to reject; negative ones as -2,
  // since the enum is an int32 on the wire and INT32_MIN - 1 would overflow.
  const int priority = request.priority();
  out.priority = priority == v1::PRIORITY_UNSPECIFIED ? -1 : priority < 0 ? -2 : priority - 1;
  out.max_queue_time = DurationFromProto(request.max_queue_time());
  out.stream_chunk_bytes = request.stream_chunk_bytes();
  out.stream_flush_interval = DurationFromProto(request.stream_flush_interval());
  out.pipe_to.reserve(request.pipe_to_size());
  for (v1::PipeStage& stage : *request.mutable_pipe_to()) {
    out.pipe_to.emplace_back(std::make_move_iterator(stage.mutable_argv()->begin()),
                             std::make_move_iterator(stage.mutable_argv()->end()));
  }
  return out;
}

namespace {

v1::Termination TerminationToProto(core::Termination t) {
  switch (t) {
    case core::Termination::kExited:
      return v1::EXITED;
    case core::Termination::kSignaled:
      return v1::SIGNALED;
    case core::Termination::kTimedOut:
      return v1::TIMED_OUT;
    case core::Termination::kOutputLimitExceeded:
      return v1::OUTPUT_LIMIT_EXCEEDED;
    case core::Termination::kCancelled:
      return v1::CANCELLED;
    case core::Termination::kMemoryLimitExceeded:
      return v1::MEMORY_LIMIT_EXCEEDED;
    case core::Termination::kCpuTimeLimitExceeded:
      return v1::CPU_TIME_LIMIT_EXCEEDED;
    case core::Termination::kFileSizeLimitExceeded:
      return v1::FILE_SIZE_LIMIT_EXCEEDED;
    case core::Termination::kProcessLimitExceeded:
      return v1::PROCESS_LIMIT_EXCEEDED;
  }
  return v1::TERMINATION_UNSPECIFIED;
}

// A duration sub-message set only when the duration is not zero: unset reads as zero (a
// cache hit has no queue, spawn or run time), and each set one is a message to allocate,
// encode and decode.
template <typename Message>
void SetNonZero(absl::Duration d, Message* message,
                google::protobuf::Duration* (Message::*mutable_field)()) {
  if (d != absl::ZeroDuration()) DurationToProto(d, (message->*mutable_field)());
}

}  // namespace

void ResultToProto(core::Result result, bool accept_lz4, absl::Duration total,
                   v1::ExecuteResponse* response, core::Metrics& metrics) {
  response->set_termination(TerminationToProto(result.termination));
  response->set_exit_code(result.status.exited ? result.status.code : 0);
  response->set_signal(result.status.signal);
  response->set_stdout_truncated(result.stdout_truncated);
  response->set_stderr_truncated(result.stderr_truncated);
  response->set_pid(result.pid);
  for (const core::StageExit& stage : result.stages) {
    v1::StageResult* out = response->add_stages();
    out->set_pid(stage.pid);
    out->set_exit_code(stage.status.exited ? stage.status.code : 0);
    out->set_signal(stage.status.signal);
  }
  response->set_cache_hit(result.cache_hit);
  if (result.cache_hit) DurationToProto(result.cache_age, response->mutable_cache_age());
  v1::Timings* timings = response->mutable_timings();
  SetNonZero(result.queued, timings, &v1::Timings::mutable_queued);
  SetNonZero(result.spawn, timings, &v1::Timings::mutable_spawn);
  SetNonZero(result.run, timings, &v1::Timings::mutable_run);
  v1::ResourceUsage* usage = response->mutable_usage();
  SetNonZero(result.usage.user_cpu, usage, &v1::ResourceUsage::mutable_user_cpu);
  SetNonZero(result.usage.system_cpu, usage, &v1::ResourceUsage::mutable_system_cpu);
  usage->set_max_rss_bytes(result.usage.max_rss_bytes);
  usage->set_peak_memory_bytes(result.usage.peak_memory_bytes);
  SetNonZero(total, timings, &v1::Timings::mutable_total);
  v1::Compression stdout_compression, stderr_compression;
  SetMaybeCompressed(core::OutputStream::kStdout, accept_lz4, std::move(result.stdout_data),
                     response->mutable_stdout(), &stdout_compression, metrics);
  SetMaybeCompressed(core::OutputStream::kStderr, accept_lz4, std::move(result.stderr_data),
                     response->mutable_stderr(), &stderr_compression, metrics);
  response->set_stdout_compression(stdout_compression);
  response->set_stderr_compression(stderr_compression);
}

absl::StatusOr<core::CachePolicy> CachePolicyFromProto(int policy) {
  switch (policy) {
    case v1::CACHE_OFF:
      return core::CachePolicy::kOff;
    case v1::READ_WRITE:
      return core::CachePolicy::kReadWrite;
    case v1::READ_ONLY:
      return core::CachePolicy::kReadOnly;
    case v1::REFRESH:
      return core::CachePolicy::kRefresh;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "cache_policy ", policy, " is not one of CACHE_OFF, READ_WRITE, READ_ONLY or REFRESH"));
}

void DurationToProto(absl::Duration d, google::protobuf::Duration* out) {
  // Whole nanoseconds cover ±292 years, past any duration execd measures; only longer
  // ones (an infinite deadline) take absl's general division. Both truncate toward zero,
  // so seconds and nanos share a sign as google.protobuf.Duration requires.
  constexpr absl::Duration kNanosecondRange = absl::Hours(24 * 365 * 290);
  if (d > -kNanosecondRange && d < kNanosecondRange) {
    const int64_t ns = absl::ToInt64Nanoseconds(d);
    out->set_seconds(ns / 1'000'000'000);
    out->set_nanos(static_cast<int32_t>(ns % 1'000'000'000));
    return;
  }
  out->set_seconds(absl::IDivDuration(d, absl::Seconds(1), &d));
  out->set_nanos(static_cast<int32_t>(absl::ToInt64Nanoseconds(d)));
}

absl::Duration DurationFromProto(const google::protobuf::Duration& d) {
  return absl::Seconds(d.seconds()) + absl::Nanoseconds(d.nanos());
}

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

grpc::Status ToCallStatus(const absl::Status& status, grpc::ServerContextBase* context) {
  if (auto pushback = status.GetPayload(core::kRetryPushbackPayload)) {
    context->AddTrailingMetadata("grpc-retry-pushback-ms", std::string(*pushback));
  }
  return ToGrpcStatus(status);
}

void OutputToProto(core::OutputStream stream, absl::string_view data,
                   v1::ExecuteEvent::Output* output) {
  output->set_stream(stream == core::OutputStream::kStdout ? v1::ExecuteEvent::STDOUT
                                                           : v1::ExecuteEvent::STDERR);
  output->set_data(data.data(), data.size());
  output->set_compression(v1::COMPRESSION_NONE);
}

void SetMaybeCompressed(core::OutputStream stream, bool accept_lz4, std::string data,
                        std::string* field, v1::Compression* compression, core::Metrics& metrics) {
  if (data.empty()) {
    field->clear();
    *compression = v1::COMPRESSION_NONE;
    return;
  }
  metrics.Output(stream, core::OutputEncoding::kRaw, static_cast<int64_t>(data.size()));
  std::string frame;
  if (accept_lz4 && core::Lz4CompressIfSmaller(data, &frame)) {
    metrics.Output(stream, core::OutputEncoding::kLz4, static_cast<int64_t>(frame.size()));
    *field = std::move(frame);
    *compression = v1::LZ4;
  } else {
    metrics.Output(stream, core::OutputEncoding::kIdentity, static_cast<int64_t>(data.size()));
    *field = std::move(data);
    *compression = v1::COMPRESSION_NONE;
  }
}

absl::Duration TimeUntilDeadline(std::chrono::system_clock::time_point deadline) {
  if (deadline == std::chrono::system_clock::time_point::max()) return absl::InfiniteDuration();
  return absl::FromChrono(deadline - std::chrono::system_clock::now());
}

}  // namespace execd::server
