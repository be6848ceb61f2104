// MetricsSnapshot: the metric samples of one GetStatus(include_metrics) answer and when they
// arrived, indexed by name and labels. Rates and quantiles come from the difference of two
// snapshots; see top_figures.h. Immutable once built, so safe to share between threads.
#pragma once

#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "execd/v1/execd.pb.h"
#include "google/protobuf/repeated_ptr_field.h"

namespace execd::execctl {

// Label name to value, ordered so that equal label sets compare and print alike.
using Labels = std::map<std::string, std::string, std::less<>>;

// Whether `labels` has every pair of `match`.
bool Includes(const Labels& labels, const Labels& match);

class MetricsSnapshot {
 public:
  struct Series {
    Labels labels;
    double value = 0;
  };

  // No samples: every counter zero, as on a server that has just started.
  MetricsSnapshot() = default;
  MetricsSnapshot(const google::protobuf::RepeatedPtrField<v1::MetricSample>& samples,
                  absl::Time taken);

  // When the samples arrived, on the caller's clock.
  absl::Time taken() const { return taken_; }

  // The series named `name`, in the server's order; empty when there are none.
  const std::vector<Series>& Of(absl::string_view name) const;
  bool Has(absl::string_view name) const { return !Of(name).empty(); }
  // The sum of the series named `name` whose labels include every pair of `match`; 0 when
  // none does.
  double Sum(absl::string_view name, const Labels& match = {}) const;
  // The distinct values of `label` among the series named `name`, in order of appearance.
  std::vector<std::string> LabelValues(absl::string_view name, absl::string_view label) const;

  // Whether a counter of `before` (a _total, _bucket or _count sample) is lower here: its
  // server restarted in between, since a counter only falls by starting again from zero.
  bool CounterWentDownSince(const MetricsSnapshot& before) const;

 private:
  absl::Time taken_ = absl::UnixEpoch();
  absl::flat_hash_map<std::string, std::vector<Series>> by_name_;
  // "name{label=value,...}" (labels in order) to value, for matching one series exactly.
  absl::flat_hash_map<std::string, double> by_key_;
};

}  // namespace execd::execctl
