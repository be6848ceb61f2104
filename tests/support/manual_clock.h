// ManualClock: a core::Clock that moves only when a test says, for timers that must fire
// (or not) at a known point.
#pragma once

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "core/clock.h"

namespace execd::testing {

class ManualClock final : public core::Clock {
 public:
  absl::Time Now() const override {
    absl::MutexLock lock(&mu_);
    return now_;
  }
  void Advance(absl::Duration d) {
    absl::MutexLock lock(&mu_);
    now_ += d;
  }

 private:
  mutable absl::Mutex mu_;
  absl::Time now_ = absl::UnixEpoch() + absl::Hours(1);
};

}  // namespace execd::testing
