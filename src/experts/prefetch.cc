// Gate-lookahead ranking and prediction accuracy (include/moe/experts/prefetch.h).
#include "moe/experts/prefetch.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "absl/container/flat_hash_set.h"

namespace moe::experts {

std::vector<int32_t> RankLookaheadExperts(std::span<const float> logits, int32_t n_tokens,
                                          int32_t n_experts, int32_t top_k) {
  if (n_tokens <= 0 || n_experts <= 0 || top_k <= 0 ||
      logits.size() < static_cast<size_t>(n_tokens) * n_experts) {
    return {};
  }
  top_k = std::min(top_k, n_experts);
  std::vector<double> mass(n_experts, 0.0);  // summed probability of the selected experts
  std::vector<uint8_t> selected(n_experts, 0);
  std::vector<int32_t> order(n_experts);
  for (int32_t t = 0; t < n_tokens; ++t) {
    const float* row = logits.data() + static_cast<size_t>(t) * n_experts;
    // 1. Softmax of the row (max-subtracted).
    const float max_logit = *std::max_element(row, row + n_experts);
    double denom = 0;
    for (int32_t e = 0; e < n_experts; ++e) denom += std::exp(double{row[e]} - max_logit);
    // 2. The row's top_k by logit (ties -> lower id), credited with their probability.
    std::iota(order.begin(), order.end(), 0);
    std::partial_sort(order.begin(), order.begin() + top_k, order.end(), [&](int32_t a, int32_t b) {
      return row[a] > row[b] || (row[a] == row[b] && a < b);
    });
    for (int32_t i = 0; i < top_k; ++i) {
      const int32_t e = order[i];
      selected[e] = 1;
      mass[e] += std::exp(double{row[e]} - max_logit) / denom;
    }
  }
  // 3. The union, most probable first.
  std::vector<int32_t> ranked;
  for (int32_t e = 0; e < n_experts; ++e) {
    if (selected[e]) ranked.push_back(e);
  }
  std::stable_sort(ranked.begin(), ranked.end(),
                   [&](int32_t a, int32_t b) { return mass[a] > mass[b]; });
  return ranked;
}

void PredictionAccuracy::Record(std::span<const int32_t> predicted,
                                std::span<const int32_t> actual) {
  const absl::flat_hash_set<int32_t> used(actual.begin(), actual.end());
  for (int32_t e : predicted) correct_ += used.contains(e) ? 1 : 0;
  predicted_ += predicted.size();
  actual_ += actual.size();
}

double PredictionAccuracy::Precision() const {
  return predicted_ == 0 ? 0.0 : static_cast<double>(correct_) / predicted_;
}

double PredictionAccuracy::Recall() const {
  return actual_ == 0 ? 0.0 : static_cast<double>(correct_) / actual_;
}

}  // namespace moe::experts
