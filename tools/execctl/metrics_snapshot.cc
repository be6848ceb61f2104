#include "tools/execctl/metrics_snapshot.h"

#include <algorithm>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace execd::execctl {
namespace {

std::string Key(absl::string_view name, const Labels& labels) {
  std::string key = absl::StrCat(name, "{");
  for (const auto& [label, value] : labels) absl::StrAppend(&key, label, "=", value, ",");
  key.push_back('}');
  return key;
}

bool IsCounter(absl::string_view name) {
  return absl::EndsWith(name, "_total") || absl::EndsWith(name, "_bucket") ||
         absl::EndsWith(name, "_count");
}

}  // namespace

bool Includes(const Labels& labels, const Labels& match) {
  for (const auto& [label, value] : match) {
    auto it = labels.find(label);
    if (it == labels.end() || it->second != value) return false;
  }
  return true;
}

MetricsSnapshot::MetricsSnapshot(
    const google::protobuf::RepeatedPtrField<v1::MetricSample>& samples, absl::Time taken)
    : taken_(taken) {
  for (const v1::MetricSample& sample : samples) {
    Series series{{}, sample.value()};
    for (const auto& [label, value] : sample.labels()) series.labels.emplace(label, value);
    by_key_[Key(sample.name(), series.labels)] = series.value;
    by_name_[sample.name()].push_back(std::move(series));
  }
}

const std::vector<MetricsSnapshot::Series>& MetricsSnapshot::Of(absl::string_view name) const {
  static const std::vector<Series>* const kNone = new std::vector<Series>;
  auto it = by_name_.find(name);
  return it == by_name_.end() ? *kNone : it->second;
}

double MetricsSnapshot::Sum(absl::string_view name, const Labels& match) const {
  double sum = 0;
  for (const Series& series : Of(name)) {
    if (Includes(series.labels, match)) sum += series.value;
  }
  return sum;
}

std::vector<std::string> MetricsSnapshot::LabelValues(absl::string_view name,
                                                      absl::string_view label) const {
  std::vector<std::string> values;
  for (const Series& series : Of(name)) {
    auto it = series.labels.find(label);
    if (it == series.labels.end()) continue;
    if (std::find(values.begin(), values.end(), it->second) == values.end()) {
      values.push_back(it->second);
    }
  }
  return values;
}

bool MetricsSnapshot::CounterWentDownSince(const MetricsSnapshot& before) const {
  for (const auto& [name, series] : before.by_name_) {
    if (!IsCounter(name)) continue;
    for (const Series& s : series) {
      auto now = by_key_.find(Key(name, s.labels));
      // A series gone since is no sign: pools come and go with the pools file.
      if (now != by_key_.end() && now->second < s.value) return true;
    }
  }
  return false;
}

}  // namespace execd::execctl
