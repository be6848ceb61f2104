#include "tests/core/tuner_reference.h"

#include <algorithm>
#include <cmath>
#include <iterator>
#include <optional>
#include <random>
#include <string>

#include "absl/strings/str_cat.h"

namespace execd::testing {
namespace {

using core::ConcurrencyController;
using core::TunerWindow;

bool Dropped(const TunerWindow& w) { return w.drops > 0 || w.resource_errors > 0; }

// The window's mean spawn-to-exit time in seconds, or nothing when no command ended in it.
std::optional<double> MeanRtt(const TunerWindow& w) {
  if (w.completions <= 0) return std::nullopt;
  return absl::ToDoubleSeconds(w.service_time_sum) / static_cast<double>(w.completions);
}

template <typename T>
T Clamp(T limit, const LimitBounds& b) {
  return std::clamp(limit, static_cast<T>(b.floor), static_cast<T>(b.cap));
}

class StaticLimit final : public ConcurrencyController {
 public:
  explicit StaticLimit(int limit) : limit_(limit), name_(absl::StrCat("static-", limit)) {}
  absl::string_view name() const override { return name_; }
  int Update(const TunerWindow&) override { return limit_; }

 private:
  const int limit_;
  const std::string name_;
};

// Netflix concurrency-limits, AIMDLimit.java at 78a74b9 (v0.5.4+4): backoff ratio 0.9, and an
// rtt over the 5 s timeout counts as a drop.
class Aimd final : public ConcurrencyController {
 public:
  explicit Aimd(const LimitBounds& b) : bounds_(b), limit_(b.start) {}
  absl::string_view name() const override { return "aimd"; }

  int Update(const TunerWindow& w) override {
    const std::optional<double> rtt = MeanRtt(w);
    if (!rtt) return limit_;
    if (Dropped(w) || *rtt > kTimeoutSeconds) {
      limit_ = static_cast<int>(limit_ * kBackoff);
    } else if (w.in_flight * 2 >= limit_) {
      limit_ += 1;
    }
    limit_ = Clamp(limit_, bounds_);
    return limit_;
  }

 private:
  static constexpr double kBackoff = 0.9;
  static constexpr double kTimeoutSeconds = 5;
  const LimitBounds bounds_;
  int limit_;
};

// Their Log10RootIntFunction: floor(log10(limit)), at least 1.
int Log10AtLeastOne(int limit) {
  return limit < 10 ? 1 : static_cast<int>(std::log10(static_cast<double>(limit)));
}

// Netflix concurrency-limits, VegasLimit.java at 78a74b9 with its defaults: alpha 3·log10(L),
// beta 6·log10(L), threshold log10(L), steps of log10(L), each log10 at least 1, smoothing 1.
// rtt_noload is reset to the current sample every probeMultiplier (30) × jitter [0.5, 1) ×
// limit samples; here a sample is a window, as under their WindowedLimit.
class Vegas final : public ConcurrencyController {
 public:
  Vegas(const LimitBounds& b, uint64_t seed) : bounds_(b), estimated_(b.start), rng_(seed) {
    ResetProbeJitter();
  }
  absl::string_view name() const override { return "vegas"; }

  int Update(const TunerWindow& w) override {
    const std::optional<double> rtt = MeanRtt(w);
    if (!rtt) return Limit();
    ++probe_count_;
    if (probe_jitter_ * kProbeMultiplier * estimated_ <= probe_count_) {
      ResetProbeJitter();
      probe_count_ = 0;
      rtt_noload_ = *rtt;
      return Limit();
    }
    if (rtt_noload_ == 0 || *rtt < rtt_noload_) {
      rtt_noload_ = *rtt;
      return Limit();
    }
    const int queue = static_cast<int>(std::ceil(estimated_ * (1 - rtt_noload_ / *rtt)));
    const int log10 = Log10AtLeastOne(Limit());
    double next;
    if (Dropped(w)) {
      next = estimated_ - log10;
    } else if (w.in_flight * 2 < estimated_) {
      return Limit();  // not using the limit: no evidence to grow on
    } else if (queue <= log10) {
      next = estimated_ + 6 * log10;
    } else if (queue < 3 * log10) {
      next = estimated_ + log10;
    } else if (queue > 6 * log10) {
      next = estimated_ - log10;
    } else {
      return Limit();
    }
    estimated_ = Clamp(next, bounds_);
    return Limit();
  }

 private:
  static constexpr int kProbeMultiplier = 30;

  int Limit() const { return static_cast<int>(estimated_); }
  void ResetProbeJitter() { probe_jitter_ = std::uniform_real_distribution<>(0.5, 1.0)(rng_); }

  const LimitBounds bounds_;
  double estimated_;
  double rtt_noload_ = 0;
  int probe_count_ = 0;
  double probe_jitter_ = 1;
  std::mt19937_64 rng_;
};

// Their ExpAvgMeasurement: the plain mean of the first `warmup` samples, then an exponential
// average with factor 2/(window+1).
class ExpAverage {
 public:
  ExpAverage(int window, int warmup) : factor_(2.0 / (window + 1)), warmup_(warmup) {}
  double Add(double sample) {
    if (count_ < warmup_) {
      ++count_;
      sum_ += sample;
      value_ = sum_ / count_;
    } else {
      value_ = value_ * (1 - factor_) + sample * factor_;
    }
    return value_;
  }
  void Scale(double by) { value_ *= by; }

 private:
  const double factor_;
  const int warmup_;
  int count_ = 0;
  double sum_ = 0;
  double value_ = 0;
};

// Netflix concurrency-limits, Gradient2Limit.java at 78a74b9 with its defaults: long window
// 600 samples (warm-up 10), rtt tolerance 1.5, queue size 4, smoothing 0.2. It has no drop
// rule: a drop changes nothing by itself.
class Gradient2 final : public ConcurrencyController {
 public:
  explicit Gradient2(const LimitBounds& b) : bounds_(b), estimated_(b.start), long_rtt_(600, 10) {}
  absl::string_view name() const override { return "gradient2"; }

  int Update(const TunerWindow& w) override {
    const std::optional<double> short_rtt = MeanRtt(w);
    if (!short_rtt) return Limit();
    const double long_rtt = long_rtt_.Add(*short_rtt);
    // Latency back to normal after a long overload: pull the average down faster.
    if (long_rtt / *short_rtt > 2) long_rtt_.Scale(0.95);
    if (w.in_flight < estimated_ / 2) return Limit();
    const double gradient = std::clamp(kTolerance * long_rtt / *short_rtt, 0.5, 1.0);
    const double next = estimated_ * gradient + kQueueSize;
    estimated_ = Clamp(estimated_ * (1 - kSmoothing) + next * kSmoothing, bounds_);
    return Limit();
  }

 private:
  static constexpr double kTolerance = 1.5;
  static constexpr double kQueueSize = 4;
  static constexpr double kSmoothing = 0.2;

  int Limit() const { return static_cast<int>(estimated_); }

  const LimitBounds bounds_;
  double estimated_;
  ExpAverage long_rtt_;
};

// Envoy's adaptive concurrency filter, gradient_controller.{h,cc} at c35f67f and
// adaptive_concurrency_filter.rst at 149521d, with the defaults (buffer 25%, min_concurrency 3,
// request_count 50, jitter 15%) and the docs' example interval of 60 s. Differences forced by
// windows: the sample rtt and the minRTT are means rather than percentiles, and samples of
// commands started before the pin are left out by waiting for a window that ends with no more
// than the pinned limit running. The pin is min_concurrency or the floor, whichever is higher;
// the floor is the lowest limit, where Envoy's is min_concurrency. Drops play no part.
class EnvoyGradient final : public ConcurrencyController {
 public:
  EnvoyGradient(const LimitBounds& b, uint64_t seed)
      : bounds_(b), pin_(std::max(kMinConcurrency, b.floor)), limit_(b.start), rng_(seed) {
    EnterMinRttMeasurement();  // Envoy starts in one
  }
  absl::string_view name() const override { return "envoy"; }

  int Update(const TunerWindow& w) override {
    if (measuring_) return MeasureMinRtt(w);
    if (w.now >= next_measurement_) return EnterMinRttMeasurement();
    const std::optional<double> sample_rtt = MeanRtt(w);
    if (!sample_rtt) return limit_;
    const double gradient = std::clamp(min_rtt_ * (1 + kBuffer) / *sample_rtt, 0.5, 2.0);
    const double scaled = limit_ * gradient;
    const int next = Clamp(static_cast<int>(scaled + std::sqrt(scaled)), bounds_);
    // Five windows in a row at the floor suggest a wrong minRTT: measure it again.
    consecutive_at_floor_ =
        (limit_ == bounds_.floor && next == bounds_.floor) ? consecutive_at_floor_ + 1 : 0;
    limit_ = next;
    if (consecutive_at_floor_ >= 5) return EnterMinRttMeasurement();
    return limit_;
  }

 private:
  static constexpr int kMinConcurrency = 3;
  static constexpr double kBuffer = 0.25;
  static constexpr int64_t kRequestCount = 50;
  static constexpr absl::Duration kInterval = absl::Seconds(60);
  static constexpr double kJitter = 0.15;

  int EnterMinRttMeasurement() {
    measuring_ = true;
    drained_ = false;
    deferred_limit_ = limit_;
    samples_ = 0;
    sample_sum_ = absl::ZeroDuration();
    consecutive_at_floor_ = 0;
    limit_ = pin_;
    return limit_;
  }

  int MeasureMinRtt(const TunerWindow& w) {
    if (!drained_) {
      drained_ = w.in_flight <= pin_;
      return limit_;
    }
    samples_ += w.completions;
    sample_sum_ += w.service_time_sum;
    if (samples_ < kRequestCount) return limit_;
    min_rtt_ = absl::ToDoubleSeconds(sample_sum_) / static_cast<double>(samples_);
    measuring_ = false;
    limit_ = deferred_limit_;
    const int64_t jitter_range_ms =
        static_cast<int64_t>(std::ceil(absl::ToDoubleMilliseconds(kInterval) * kJitter));
    next_measurement_ = w.now + kInterval + absl::Milliseconds(rng_() % jitter_range_ms);
    return limit_;
  }

  const LimitBounds bounds_;
  const int pin_;
  int limit_;
  std::mt19937_64 rng_;
  bool measuring_ = false;
  bool drained_ = false;
  int deferred_limit_ = 0;
  int64_t samples_ = 0;
  absl::Duration sample_sum_;
  double min_rtt_ = 0;
  absl::Time next_measurement_ = absl::InfinitePast();
  int consecutive_at_floor_ = 0;
};

// brpc's AutoConcurrencyLimiter, src/brpc/policy/auto_concurrency_limiter.cpp at 71871ee
// (1.17.0+141) with its flag defaults: sample windows of 1 s that need 100 samples (fewer: the
// window is thrown away) and end early at 200; min latency and peak qps as EMAs (0.1, and 0.01
// downwards); explore ratio between 0.06 and 0.3 in steps of 0.02; min latency re-measured
// every 25-50 s by setting the limit to 0.9 × qps × latency and ignoring samples for twice the
// latency. The limit's floor stands for their floor, the worker thread count. Their requests
// refused by the limiter are not sampled, so queue drops are ignored; failed spawns are failed
// requests (with no latency to punish), and a window of nothing but failures halves the limit.
class BrpcAuto final : public ConcurrencyController {
 public:
  BrpcAuto(const LimitBounds& b, uint64_t seed) : bounds_(b), limit_(b.start), rng_(seed) {}
  absl::string_view name() const override { return "brpc"; }

  int Update(const TunerWindow& w) override {
    const absl::Time window_start = w.now - w.length;
    if (remeasure_at_ == absl::InfinitePast()) remeasure_at_ = NextRemeasure(window_start);
    if (ignore_until_) {
      if (w.now < *ignore_until_) return limit_;
      min_latency_ = -1;
      ignore_until_.reset();
      remeasure_at_ = NextRemeasure(w.now);
      ResetSampleWindow(window_start);
    }
    if (!sample_start_) sample_start_ = window_start;
    succeeded_ += w.completions;
    failed_ += w.resource_errors;
    succeeded_seconds_ += absl::ToDoubleSeconds(w.service_time_sum);

    const absl::Duration elapsed = w.now - *sample_start_;
    const int64_t samples = succeeded_ + failed_;
    if (samples < kMinSamples) {
      if (elapsed >= kSampleWindow) ResetSampleWindow(w.now);
      return limit_;
    }
    if (elapsed < kSampleWindow && samples < kMaxSamples) return limit_;
    if (succeeded_ > 0) {
      UpdateLimit(w.now, elapsed);
    } else {
      SetLimit(limit_ / 2);
    }
    ResetSampleWindow(w.now);
    return limit_;
  }

 private:
  static constexpr absl::Duration kSampleWindow = absl::Seconds(1);
  static constexpr int64_t kMinSamples = 100;
  static constexpr int64_t kMaxSamples = 200;
  static constexpr int64_t kRemeasureIntervalMs = 50000;
  static constexpr double kEma = 0.1;
  static constexpr double kMaxExplore = 0.3;
  static constexpr double kMinExplore = 0.06;
  static constexpr double kExploreStep = 0.02;
  static constexpr double kReduceWhileRemeasuring = 0.9;

  absl::Time NextRemeasure(absl::Time now) {
    return now + absl::Milliseconds(kRemeasureIntervalMs / 2 +
                                    static_cast<int64_t>(rng_() % (kRemeasureIntervalMs / 2)));
  }

  void ResetSampleWindow(absl::Time start) {
    sample_start_ = start;
    succeeded_ = 0;
    failed_ = 0;
    succeeded_seconds_ = 0;
  }

  void UpdateLimit(absl::Time now, absl::Duration elapsed) {
    const double latency = succeeded_seconds_ / static_cast<double>(succeeded_);
    const double qps = static_cast<double>(succeeded_) / absl::ToDoubleSeconds(elapsed);
    if (min_latency_ <= 0) {
      min_latency_ = latency;
    } else if (latency < min_latency_) {
      min_latency_ = latency * kEma + min_latency_ * (1 - kEma);
    }
    if (qps >= ema_max_qps_) {
      ema_max_qps_ = qps;
    } else {
      ema_max_qps_ = qps * kEma / 10 + ema_max_qps_ * (1 - kEma / 10);
    }
    if (remeasure_at_ <= now) {
      ignore_until_ = now + absl::Seconds(2 * latency);
      SetLimit(static_cast<int>(std::ceil(ema_max_qps_ * min_latency_ * kReduceWhileRemeasuring)));
      return;
    }
    if (latency <= min_latency_ * (1 + kMinExplore) || qps <= ema_max_qps_ / (1 + kMinExplore)) {
      explore_ = std::min(kMaxExplore, explore_ + kExploreStep);
    } else {
      explore_ = std::max(kMinExplore, explore_ - kExploreStep);
    }
    SetLimit(static_cast<int>(min_latency_ * ema_max_qps_ * (1 + explore_)));
  }

  void SetLimit(int limit) { limit_ = Clamp(limit, bounds_); }

  const LimitBounds bounds_;
  int limit_;
  std::mt19937_64 rng_;
  absl::Time remeasure_at_ = absl::InfinitePast();
  std::optional<absl::Time> ignore_until_;
  std::optional<absl::Time> sample_start_;
  int64_t succeeded_ = 0;
  int64_t failed_ = 0;
  double succeeded_seconds_ = 0;
  double min_latency_ = -1;
  double ema_max_qps_ = -1;
  double explore_ = kMaxExplore;
};

// The seed tuner: measures throughput at the kept limit, then at each variation in turn, each
// for kTrialWindows after one window to settle (commands started under the previous limit are
// still running in it), and moves to the best variation only when it beat the kept limit's
// throughput by more than 10%. Then it starts over from the limit it keeps.
class SeedTuner final : public ConcurrencyController {
 public:
  explicit SeedTuner(const LimitBounds& b) : bounds_(b), kept_(b.start), trying_(b.start) {}
  absl::string_view name() const override { return "seed"; }

  int Update(const TunerWindow& w) override {
    if (settling_) {
      settling_ = false;
      return trying_;
    }
    completions_ += w.completions;
    measured_ += w.length;
    if (++windows_ < kTrialWindows) return trying_;
    const double throughput = static_cast<double>(completions_) / absl::ToDoubleSeconds(measured_);
    completions_ = 0;
    measured_ = absl::ZeroDuration();
    windows_ = 0;
    if (trial_ < 0) {
      kept_throughput_ = throughput;
    } else if (throughput > best_throughput_) {
      best_throughput_ = throughput;
      best_limit_ = trying_;
    }
    return Try(NextTrial());
  }

 private:
  static constexpr int kTrialWindows = 4;
  static constexpr double kVariations[] = {0.5, 0.75, 1.25, 1.5};
  static constexpr double kMinGain = 1.1;

  // The next variation to try, or the limit to keep once all are tried.
  int NextTrial() {
    while (++trial_ < static_cast<int>(std::size(kVariations))) {
      const int candidate =
          Clamp(static_cast<int>(std::lround(kept_ * kVariations[trial_])), bounds_);
      if (candidate != kept_ && candidate != trying_) return candidate;
    }
    if (best_throughput_ > kept_throughput_ * kMinGain) kept_ = best_limit_;
    trial_ = -1;
    best_throughput_ = 0;
    return kept_;
  }

  int Try(int limit) {
    settling_ = limit != trying_;
    trying_ = limit;
    return trying_;
  }

  const LimitBounds bounds_;
  int kept_;
  int trying_;
  int trial_ = -1;  // index in kVariations; -1 while measuring the kept limit
  bool settling_ = false;
  int windows_ = 0;
  int64_t completions_ = 0;
  absl::Duration measured_;
  double kept_throughput_ = 0;
  double best_throughput_ = 0;
  int best_limit_ = 0;
};

}  // namespace

std::unique_ptr<ConcurrencyController> MakeStaticLimit(int limit) {
  return std::make_unique<StaticLimit>(limit);
}
std::unique_ptr<ConcurrencyController> MakeAimd(const LimitBounds& bounds) {
  return std::make_unique<Aimd>(bounds);
}
std::unique_ptr<ConcurrencyController> MakeVegas(const LimitBounds& bounds, uint64_t seed) {
  return std::make_unique<Vegas>(bounds, seed);
}
std::unique_ptr<ConcurrencyController> MakeGradient2(const LimitBounds& bounds) {
  return std::make_unique<Gradient2>(bounds);
}
std::unique_ptr<ConcurrencyController> MakeEnvoyGradient(const LimitBounds& bounds, uint64_t seed) {
  return std::make_unique<EnvoyGradient>(bounds, seed);
}
std::unique_ptr<ConcurrencyController> MakeBrpcAuto(const LimitBounds& bounds, uint64_t seed) {
  return std::make_unique<BrpcAuto>(bounds, seed);
}
std::unique_ptr<ConcurrencyController> MakeSeedTuner(const LimitBounds& bounds) {
  return std::make_unique<SeedTuner>(bounds);
}

std::vector<std::unique_ptr<ConcurrencyController>> ReferenceControllers(const LimitBounds& bounds,
                                                                         uint64_t seed) {
  std::vector<std::unique_ptr<ConcurrencyController>> all;
  all.push_back(MakeAimd(bounds));
  all.push_back(MakeVegas(bounds, seed));
  all.push_back(MakeGradient2(bounds));
  all.push_back(MakeEnvoyGradient(bounds, seed));
  all.push_back(MakeBrpcAuto(bounds, seed));
  all.push_back(MakeSeedTuner(bounds));
  return all;
}

}  // namespace execd::testing
