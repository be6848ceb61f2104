// Clock: the one source of time for the engine, injected so tests can use a fake.
// Implementations are thread-safe.
#pragma once

#include "absl/time/time.h"

namespace execd::core {

class Clock {
 public:
  virtual ~Clock() = default;
  // A monotonic time point: only differences between two calls are meaningful.
  virtual absl::Time Now() const = 0;
};

// CLOCK_MONOTONIC: never jumps with wall-clock changes.
class MonotonicClock final : public Clock {
 public:
  absl::Time Now() const override;
  // A process-wide instance.
  static const Clock& Get();
};

}  // namespace execd::core
