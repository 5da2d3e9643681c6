// Request-size distribution and latency percentiles of the load generator.
#include "stats.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"

namespace moe::loadgen {

StatusOr<TokenDistribution> TokenDistribution::Parse(const std::string& spec) {
  TokenDistribution dist;
  dist.spec_ = spec;
  if (spec.empty()) return absl::InvalidArgumentError("--tokens: empty");
  for (absl::string_view item : absl::StrSplit(spec, ',')) {
    std::vector<absl::string_view> bounds = absl::StrSplit(item, absl::MaxSplits('-', 1));
    Range range{};
    if (!absl::SimpleAtoi(bounds[0], &range.lo)) {
      return absl::InvalidArgumentError(
          absl::StrCat("--tokens: '", std::string(item), "' is not N or LO-HI"));
    }
    range.hi = range.lo;
    if (bounds.size() == 2 && !absl::SimpleAtoi(bounds[1], &range.hi)) {
      return absl::InvalidArgumentError(
          absl::StrCat("--tokens: '", std::string(item), "' is not N or LO-HI"));
    }
    if (range.lo < 1 || range.hi < range.lo) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--tokens: '", std::string(item), "' needs 1 <= LO <= HI (token counts are positive)"));
    }
    dist.ranges_.push_back(range);
  }
  return dist;
}

int64_t TokenDistribution::Sample(std::mt19937_64& rng) const {
  const Range& r = ranges_.size() == 1
                       ? ranges_[0]
                       : ranges_[std::uniform_int_distribution<size_t>(0, ranges_.size() - 1)(rng)];
  if (r.lo == r.hi) return r.lo;
  return std::uniform_int_distribution<int64_t>(r.lo, r.hi)(rng);
}

int64_t TokenDistribution::max_tokens() const {
  int64_t m = 0;
  for (const Range& r : ranges_) m = std::max(m, r.hi);
  return m;
}

double TokenDistribution::mean_tokens() const {
  double sum = 0;
  for (const Range& r : ranges_) sum += 0.5 * static_cast<double>(r.lo + r.hi);
  return ranges_.empty() ? 0 : sum / static_cast<double>(ranges_.size());
}

double PercentileOfSorted(const std::vector<double>& sorted, double p) {
  if (sorted.empty()) return 0;
  const double n = static_cast<double>(sorted.size());
  int64_t rank = static_cast<int64_t>(std::ceil(p / 100.0 * n));  // 1-based
  rank = std::clamp<int64_t>(rank, 1, static_cast<int64_t>(sorted.size()));
  return sorted[static_cast<size_t>(rank - 1)];
}

LatencySummary Summarize(std::vector<double>& samples) {
  LatencySummary s;
  if (samples.empty()) return s;
  std::sort(samples.begin(), samples.end());
  s.count = static_cast<int64_t>(samples.size());
  s.mean = std::accumulate(samples.begin(), samples.end(), 0.0) / static_cast<double>(s.count);
  s.p50 = PercentileOfSorted(samples, 50);
  s.p90 = PercentileOfSorted(samples, 90);
  s.p99 = PercentileOfSorted(samples, 99);
  s.max = samples.back();
  return s;
}

}  // namespace moe::loadgen
