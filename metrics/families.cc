#include "metrics/families.h"

#include "absl/strings/str_split.h"
#include "core/metrics.h"

namespace execd::metrics {

const std::vector<FamilySpec>& Families() {
  static const std::vector<FamilySpec>* const families = [] {
    auto* all = new std::vector<FamilySpec>;
#define EXECD_METRIC_SPEC(id, name, type, buckets, labels, help)                                  \
  all->push_back(FamilySpec{Family::id, name, Type::type,                                         \
                            absl::StrSplit(labels, ',', absl::SkipEmpty()), help,                 \
                            Buckets::buckets == Buckets::kDuration ? core::DurationBucketBounds() \
                                                                   : std::vector<double>{}});
    EXECD_METRIC_FAMILIES(EXECD_METRIC_SPEC)
#undef EXECD_METRIC_SPEC
    return all;
  }();
  return *families;
}

const FamilySpec& Spec(Family id) { return Families()[static_cast<size_t>(id)]; }

}  // namespace execd::metrics
