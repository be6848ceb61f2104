// AutoTuner: moves the engine's concurrency limit with the live load. Every window it takes
// the difference of two snapshots of the metrics' cumulative totals and of the kernel's CPU
// stall time, adds what runs and waits now, hands that to ProcessLimit (core/tuner.h) and
// applies the limit it returns, within [min, max]. A move is counted in the metrics (by
// direction and reason) and handed to a sink, which logs it.
//
// Step() is one turn of the control loop, on the injected clock: tests drive it with a fake
// clock and fake figures. Start() runs it every window on a thread of its own (a wake-up
// every half second: nothing on the request path waits for it).
//
// Thread-safety: Step() from one thread at a time (Start's, or a test's); last_decision()
// and the constructor's bounds from any thread.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "core/clock.h"
#include "core/metrics.h"
#include "core/tuner.h"

namespace execd::core {

class AutoTuner {
 public:
  struct Options {
    int min = 1;  // Never below (default in the server: the core count).
    int max = 64;
    absl::Duration window = absl::Milliseconds(500);
    absl::Duration target_p99 = absl::ZeroDuration();  // Zero: none.
    int cores = 1;
  };

  // What the tuner steers: the engine's scheduler in the server, a fake in tests.
  class Plant {
   public:
    virtual ~Plant() = default;
    struct Load {
      int limit = 0;
      int running = 0;
      int queued = 0;
    };
    virtual Load load() const = 0;
    virtual void SetLimit(int limit) = 0;
  };

  struct Decision {
    int from = 0;
    int to = 0;
    std::string reason;  // One of kLimitReasons.
    TunerWindow window;  // What the window that decided it saw.
  };
  using DecisionSink = std::function<void(const Decision&)>;
  // Cumulative CPU figures, read at each window's ends. Best, the commands' own (a cgroup v2
  // over them all: Engine::CommandsCpu): their CPU as they use it, and the time some of them
  // waited for a CPU, which other load on the machine does not count in unless it takes
  // their CPU. Else the machine's stall (CpuStallTotal()), and the commands' CPU from the
  // metrics, counted as each command ends.
  struct CpuReading {
    std::optional<absl::Duration> commands_used;  // None: from the metrics' totals.
    std::optional<absl::Duration> stalled;        // None: not known; the pressure is then 0.
  };
  using CpuSource = std::function<CpuReading()>;

  // Applies the starting limit (the plant's, clamped to [min, max]) at once. `metrics`
  // gives the totals and counts the moves.
  AutoTuner(Options options, Plant& plant, Metrics& metrics, const Clock& clock, CpuSource cpu,
            DecisionSink sink);
  ~AutoTuner();  // Stops the thread.
  AutoTuner(const AutoTuner&) = delete;
  AutoTuner& operator=(const AutoTuner&) = delete;

  // One window: measures, decides, applies. The limit's move, if it moved. The first call
  // only takes the snapshot the next window is measured from.
  std::optional<Decision> Step();

  // Steps every window until Stop() or destruction.
  void Start();
  void Stop();

  int min() const { return options_.min; }
  int max() const { return options_.max; }
  // The last move (none yet: nullopt).
  std::optional<Decision> last_decision() const;

  // The 99th percentile of the latencies counted in `buckets` (DurationBucketBounds()
  // buckets, the one past the last bound included), as its bucket's upper bound; zero when
  // there are none. The last bucket has no bound: its percentile is the last bound.
  static absl::Duration Percentile99(const std::vector<int64_t>& buckets);

 private:
  struct Snapshot {
    absl::Time at;
    MetricsTotals totals;
    CpuReading cpu;
  };
  Snapshot Take() const;

  const Options options_;
  Plant& plant_;
  Metrics& metrics_;
  const Clock& clock_;
  const CpuSource cpu_;
  const DecisionSink sink_;
  ProcessLimit controller_;
  std::optional<Snapshot> last_;

  mutable absl::Mutex mu_;
  std::optional<Decision> last_decision_ ABSL_GUARDED_BY(mu_);

  absl::Notification stop_;
  std::thread thread_;
};

// How many commands this machine can run at once, as far as its process and memory limits
// tell: the cgroup's pids.max less the processes it holds, and the machine's memory (or the
// cgroup's limit) over `memory_per_command` (0: not known, no memory bound). `why` says
// which limit it is. None when neither bounds it.
struct CommandCeiling {
  int commands = 0;
  std::string why;  // "pids" or "memory".
};
std::optional<CommandCeiling> MachineCommandCeiling(int64_t memory_per_command);

}  // namespace execd::core
