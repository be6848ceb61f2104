#include "core/clock.h"

#include <time.h>

namespace execd::core {

absl::Time MonotonicClock::Now() const {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return absl::TimeFromTimespec(ts);
}

const Clock& MonotonicClock::Get() {
  static const MonotonicClock clock;
  return clock;
}

}  // namespace execd::core
