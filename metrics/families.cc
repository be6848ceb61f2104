#include "metrics/families.h"

#include <cmath>

#include "absl/strings/str_split.h"

namespace execd::metrics {

std::vector<double> DurationBuckets() {
  std::vector<double> bounds;
  for (int k = 0;; ++k) {
    const double bound = 100e-6 * std::exp2(k / 4.0);
    if (bound > 60.0) break;
    bounds.push_back(bound);
  }
  return bounds;
}

const std::vector<FamilySpec>& Families() {
  static const std::vector<FamilySpec>* const families = [] {
    auto* all = new std::vector<FamilySpec>;
#define EXECD_METRIC_SPEC(id, name, type, buckets, labels, help)                          \
  all->push_back(FamilySpec{                                                              \
      Family::id, name, Type::type, absl::StrSplit(labels, ',', absl::SkipEmpty()), help, \
      Buckets::buckets == Buckets::kDuration ? DurationBuckets() : std::vector<double>{}});
    EXECD_METRIC_FAMILIES(EXECD_METRIC_SPEC)
#undef EXECD_METRIC_SPEC
    return all;
  }();
  return *families;
}

const FamilySpec& Spec(Family id) { return Families()[static_cast<size_t>(id)]; }

}  // namespace execd::metrics
