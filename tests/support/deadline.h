// For calls whose command outlives the call's deadline.
#pragma once

#include <grpcpp/grpcpp.h>

#include "execd/v1/execd.pb.h"
#include "gtest/gtest.h"

namespace execd::testing {

// The call ends by the client's own timer (DEADLINE_EXCEEDED), or by execd's answer (the
// command stopped at that deadline) when that gets there first: both are right.
inline void ExpectStoppedAtTheDeadline(const grpc::Status& status,
                                       const v1::ExecuteResponse& response) {
  EXPECT_TRUE(status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED ||
              (status.ok() && response.termination() != v1::EXITED))
      << status.error_message() << " " << v1::Termination_Name(response.termination());
}

}  // namespace execd::testing
