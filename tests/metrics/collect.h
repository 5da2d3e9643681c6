// Test helpers: look up collected Prometheus families and series by name and labels.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "moe/metrics/metrics.h"
#include "prometheus/metric_family.h"
#include "prometheus/registry.h"

namespace moe::metrics::testing {

// One collection of the registry, searchable.
class Collected {
 public:
  explicit Collected(const Metrics& metrics) : families_(metrics.registry()->Collect()) {}

  const std::vector<prometheus::MetricFamily>& families() const { return families_; }

  const prometheus::MetricFamily* Family(const std::string& name) const {
    for (const auto& f : families_) {
      if (f.name == name) return &f;
    }
    return nullptr;
  }

  // The series of family `name` whose labels are exactly `labels`; nullptr when absent.
  const prometheus::ClientMetric* Series(const std::string& name,
                                         const std::map<std::string, std::string>& labels) const {
    const prometheus::MetricFamily* f = Family(name);
    if (f == nullptr) return nullptr;
    for (const auto& m : f->metric) {
      std::map<std::string, std::string> have;
      for (const auto& l : m.label) have[l.name] = l.value;
      if (have == labels) return &m;
    }
    return nullptr;
  }

  double Counter(const std::string& name,
                 const std::map<std::string, std::string>& labels = {}) const {
    const auto* m = Series(name, labels);
    return m == nullptr ? -1.0 : m->counter.value;
  }
  double Gauge(const std::string& name,
               const std::map<std::string, std::string>& labels = {}) const {
    const auto* m = Series(name, labels);
    return m == nullptr ? -1.0 : m->gauge.value;
  }
  // sample_count of a histogram series; -1 when absent.
  double HistogramCount(const std::string& name,
                        const std::map<std::string, std::string>& labels = {}) const {
    const auto* m = Series(name, labels);
    return m == nullptr ? -1.0 : static_cast<double>(m->histogram.sample_count);
  }
  size_t NumSeries(const std::string& name) const {
    const prometheus::MetricFamily* f = Family(name);
    return f == nullptr ? 0 : f->metric.size();
  }

 private:
  std::vector<prometheus::MetricFamily> families_;
};

}  // namespace moe::metrics::testing
