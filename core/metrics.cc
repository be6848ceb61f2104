#include "core/metrics.h"

#include <cmath>

namespace execd::core {

Metrics& Metrics::Null() {
  static Metrics null;
  return null;
}

const std::vector<double>& DurationBucketBounds() {
  static const std::vector<double>* const bounds = [] {
    auto* all = new std::vector<double>;
    for (int k = 0;; ++k) {
      const double bound = 100e-6 * std::exp2(k / 4.0);
      if (bound > 60.0) break;
      all->push_back(bound);
    }
    return all;
  }();
  return *bounds;
}

absl::string_view RpcName(Rpc rpc) {
  switch (rpc) {
    case Rpc::kExecute:
      return "Execute";
    case Rpc::kExecuteStream:
      return "ExecuteStream";
    case Rpc::kExecuteBatch:
      return "ExecuteBatch";
    case Rpc::kAttach:
      return "Attach";
    case Rpc::kPing:
      return "Ping";
    case Rpc::kGetStatus:
      return "GetStatus";
  }
  return "unknown";
}

absl::string_view ShedReasonName(ShedReason reason) {
  switch (reason) {
    case ShedReason::kQueueFull:
      return "queue_full";
    case ShedReason::kDisplaced:
      return "displaced";
    case ShedReason::kQueueTimeout:
      return "queue_timeout";
    case ShedReason::kMemoryBudget:
      return "memory_budget";
    case ShedReason::kDraining:
      return "draining";
  }
  return "unknown";
}

absl::string_view OutputEncodingName(OutputEncoding encoding) {
  switch (encoding) {
    case OutputEncoding::kRaw:
      return "raw";
    case OutputEncoding::kIdentity:
      return "identity";
    case OutputEncoding::kLz4:
      return "lz4";
  }
  return "unknown";
}

}  // namespace execd::core
