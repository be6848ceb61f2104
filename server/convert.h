// Translation between the public proto (execd.v1) and core types, and absl::Status to
// grpc::Status. The only place that knows both sides.
#pragma once

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "core/command.h"
#include "core/dispatcher.h"
#include "execd/v1/execd.pb.h"
#include "google/protobuf/duration.pb.h"

namespace execd::server {

// Moves the request's fields (argv, env, stdin, ...) out of `request`.
core::CommandRequest CommandRequestFromProto(v1::ExecuteRequest& request);

// The response for `result`, every RPC's (Execute's, a batch item's, a stream's or a
// session's last event): its outputs moved in, lz4-compressed when the caller accepts lz4
// and it pays, and `total` as the call's time on the server (zero: unset). The output's
// bytes, before and after compression, are counted in `metrics`.
void ResultToProto(core::Result result, bool accept_lz4, absl::Duration total,
                   v1::ExecuteResponse* response, core::Metrics& metrics = core::Metrics::Null());

// The cache policy a request asks for; INVALID_ARGUMENT for a value the proto lacks.
absl::StatusOr<core::CachePolicy> CachePolicyFromProto(int policy);

void DurationToProto(absl::Duration d, google::protobuf::Duration* out);
absl::Duration DurationFromProto(const google::protobuf::Duration& d);

// absl::StatusCode values are gRPC's codes, so this is a cast plus the message.
grpc::Status ToGrpcStatus(const absl::Status& status);

// ToGrpcStatus for a call's final status: a retry delay the engine attached becomes the
// standard `grpc-retry-pushback-ms` trailer, which gRPC's retry policy honours.
grpc::Status ToCallStatus(const absl::Status& status, grpc::ServerContextBase* context);

// Puts command output `data` of `stream` into `field`, as an lz4 frame when the caller
// accepts lz4 and it pays (see accept_compression), says which in `compression`, and
// counts the bytes in `metrics`.
void SetMaybeCompressed(core::OutputStream stream, bool accept_lz4, std::string data,
                        std::string* field, v1::Compression* compression, core::Metrics& metrics);

// A chunk of streamed output as an event's `output` (ExecuteEvent and AttachEvent share
// it), plain: EventWriter compresses it as it is written, when that pays.
void OutputToProto(core::OutputStream stream, absl::string_view data,
                   v1::ExecuteEvent::Output* output);

// Time left until the call's deadline; InfiniteDuration when it has none.
absl::Duration TimeUntilDeadline(std::chrono::system_clock::time_point deadline);

}  // namespace execd::server
