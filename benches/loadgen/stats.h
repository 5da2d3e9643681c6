// Small pure helpers of the load generator: the request-size distribution (--tokens) and latency
// percentiles. No I/O, no threads; unit-tested in loadgen_test.cc.
#pragma once

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "moe/common/status.h"

namespace moe::loadgen {

// How many tokens each request carries: one fixed count ("16"), a list picked uniformly
// ("1,4,16"), or an inclusive range picked uniformly ("1-16"). List items may be ranges
// ("1-4,64").
class TokenDistribution {
 public:
  // INVALID_ARGUMENT for an empty spec, a non-number, a count < 1 or a range with lo > hi.
  static StatusOr<TokenDistribution> Parse(const std::string& spec);

  // One draw.
  int64_t Sample(std::mt19937_64& rng) const;
  // Largest count any draw can return.
  int64_t max_tokens() const;
  // Expected tokens per request.
  double mean_tokens() const;
  // The spec as given (for reports).
  const std::string& spec() const { return spec_; }

 private:
  struct Range {
    int64_t lo;
    int64_t hi;  // inclusive
  };
  std::string spec_;
  std::vector<Range> ranges_;  // one picked uniformly, then a count uniformly within it
};

// Percentiles of a set of latencies, in the unit they were recorded in.
struct LatencySummary {
  int64_t count = 0;
  double mean = 0;
  double p50 = 0;
  double p90 = 0;
  double p99 = 0;
  double max = 0;
};

// Nearest-rank percentiles (p-th percentile = the ceil(p/100 * n)-th smallest sample).
// Sorts `samples` in place. All zeros for an empty set.
LatencySummary Summarize(std::vector<double>& samples);

// Nearest-rank percentile of already sorted samples; 0 for an empty set. `p` in [0, 100].
double PercentileOfSorted(const std::vector<double>& sorted, double p);

}  // namespace moe::loadgen
