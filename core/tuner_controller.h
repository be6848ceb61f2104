// ConcurrencyController: the algorithm behind the auto-tuner. Every control window the tuner
// hands it what the window saw and applies the limit it returns to the scheduler (how many
// commands run at once; the rest queue). The same interface serves execd's own controller, the
// reference controllers it is compared with and the simulator that compares them, so a
// controller sees exactly the figures execd can measure.
//
// Not thread-safe: the tuner calls Update from one thread, one window after another.
#pragma once

#include <cstdint>

#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace execd::core {

// What one control window saw, from two snapshots of cumulative counters.
struct TunerWindow {
  absl::Time now;
  absl::Duration length;            // since the previous window
  int limit = 0;                    // the limit in force during the window
  int in_flight = 0;                // commands running at the window's end
  int queued = 0;                   // commands waiting at the window's end
  int64_t completions = 0;          // commands that ended in the window
  absl::Duration service_time_sum;  // their spawn-to-exit times, summed
  absl::Duration queue_wait_sum;    // their queue waits, summed
  // The 99th percentile of their latency (queue wait and service), as the upper bound of
  // the histogram bucket it falls in; zero when unknown or without completions.
  absl::Duration latency_p99;
  int64_t drops = 0;             // requests shed or expired in the queue in the window
  int64_t resource_errors = 0;   // spawns that failed with EAGAIN/ENOMEM (fork, memory)
  double child_cpu_seconds = 0;  // CPU the commands used in the window
  double cpu_pressure = 0;       // share of the window some task waited for a CPU
                                 // (/proc/pressure/cpu "some"), 0..1; 0 where unknown
  int cores = 1;                 // CPUs the machine has
};

class ConcurrencyController {
 public:
  virtual ~ConcurrencyController() = default;
  // A short name for tables and logs.
  virtual absl::string_view name() const = 0;
  // The limit from now on, within [floor, cap] given at construction.
  virtual int Update(const TunerWindow& window) = 0;
};

}  // namespace execd::core
