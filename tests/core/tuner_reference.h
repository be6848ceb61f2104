// Reference concurrency controllers: the published algorithms users know, for execd's own
// controller to be compared with in the simulator (tuner_sim.h). Each is written from its
// authors' source, cited in tuner_reference.cc, and adapted the way Netflix's WindowedLimit
// feeds its limits: one sample per control window, whose round-trip time is the window's mean
// spawn-to-exit time. A window without completions changes nothing. A "drop" is a window with
// requests shed or expired in the queue or spawns refused for lack of resources; each algorithm
// reacts to it as its authors wrote (some ignore drops).
//
// All start at the same limit and stay within the same [floor, cap]. Those with jitter draw it
// from their own seeded generator, so runs are repeatable. Not thread-safe.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "core/tuner_controller.h"

namespace execd::testing {

struct LimitBounds {
  int start = 8;
  int floor = 1;  // the machine's cores, in the comparisons
  int cap = 64;
};

// Always `limit`: the baseline every tuner must beat, and what a sweep of limits is made of.
std::unique_ptr<core::ConcurrencyController> MakeStaticLimit(int limit);

// Netflix AIMDLimit: a drop takes 10% off, otherwise +1 while at least half the limit is used.
std::unique_ptr<core::ConcurrencyController> MakeAimd(const LimitBounds& bounds);
// Netflix VegasLimit: estimates the queue from the window's rtt against the smallest seen.
std::unique_ptr<core::ConcurrencyController> MakeVegas(const LimitBounds& bounds, uint64_t seed);
// Netflix Gradient2Limit: compares the window's rtt with a long exponential average.
std::unique_ptr<core::ConcurrencyController> MakeGradient2(const LimitBounds& bounds);
// Envoy's adaptive concurrency gradient controller: compares with a minRTT it re-measures
// periodically with the limit pinned low.
std::unique_ptr<core::ConcurrencyController> MakeEnvoyGradient(const LimitBounds& bounds,
                                                               uint64_t seed);
// brpc's auto concurrency limiter: Little's law on the lowest latency and the peak throughput,
// plus an exploration margin.
std::unique_ptr<core::ConcurrencyController> MakeBrpcAuto(const LimitBounds& bounds, uint64_t seed);
// The seed tuner: tries the limit ±25% and ±50% and keeps a variation only when it raises
// throughput by more than 10%.
std::unique_ptr<core::ConcurrencyController> MakeSeedTuner(const LimitBounds& bounds);

// All the adaptive ones above, in that order.
std::vector<std::unique_ptr<core::ConcurrencyController>> ReferenceControllers(
    const LimitBounds& bounds, uint64_t seed);

}  // namespace execd::testing
