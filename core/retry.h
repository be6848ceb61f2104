// How core tells a caller when to retry a refusal: RESOURCE_EXHAUSTED carries a retry delay
// as a status payload, which the server turns into `grpc-retry-pushback-ms`.
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace execd::core {

// The payload's key; its value is the delay in milliseconds as decimal text.
inline constexpr absl::string_view kRetryPushbackPayload = "execd.retry_pushback_ms";

// RESOURCE_EXHAUSTED with `message` and a retry delay of `ms`.
inline absl::Status OverloadedError(absl::string_view message, int64_t ms) {
  absl::Status status = absl::ResourceExhaustedError(message);
  status.SetPayload(kRetryPushbackPayload, absl::Cord(absl::StrCat(ms)));
  return status;
}

}  // namespace execd::core
