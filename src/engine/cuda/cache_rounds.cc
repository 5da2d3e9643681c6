#include "engine/cuda/cache_rounds.h"

#include <algorithm>
#include <map>
#include <numeric>

namespace moe::cuda {

Status CheckOffsets(std::span<const int32_t> offsets, int64_t rows) {
  if (offsets.empty() || offsets.front() != 0 || offsets.back() != rows) {
    return absl::InvalidArgumentError(
        absl::StrCat("expert row offsets must run from 0 to ", rows, " rows"));
  }
  for (size_t e = 1; e < offsets.size(); ++e) {
    if (offsets[e] < offsets[e - 1]) {
      return absl::InvalidArgumentError(
          absl::StrCat("expert row offsets decrease at expert ", e - 1));
    }
  }
  return absl::OkStatus();
}

std::vector<int32_t> ActiveExperts(std::span<const int32_t> offsets) {
  std::vector<int32_t> active;
  for (size_t e = 0; e + 1 < offsets.size(); ++e) {
    if (offsets[e + 1] > offsets[e]) active.push_back(static_cast<int32_t>(e));
  }
  return active;
}

void AppendExpertTiles(std::span<const int32_t> offsets, std::span<const int32_t> experts, int bm,
                       std::vector<TileEntry>* out) {
  if (bm <= 0) return;
  const int32_t n_experts = static_cast<int32_t>(offsets.size()) - 1;
  for (const int32_t e : experts) {
    if (e < 0 || e >= n_experts) continue;
    for (int32_t row = offsets[e]; row < offsets[e + 1]; row += bm) out->push_back({e, row});
  }
}

std::vector<int32_t> RankPredictedExperts(std::span<const int32_t> ids,
                                          std::span<const float> weights, int32_t n_experts) {
  if (n_experts <= 0) return {};
  std::vector<double> score(static_cast<size_t>(n_experts), 0.0);
  std::vector<char> seen(static_cast<size_t>(n_experts), 0);
  for (size_t i = 0; i < ids.size(); ++i) {
    const int32_t e = ids[i];
    if (e < 0 || e >= n_experts) continue;
    seen[e] = 1;
    if (i < weights.size()) score[e] += weights[i];
  }
  std::vector<int32_t> ranked;
  for (int32_t e = 0; e < n_experts; ++e) {
    if (seen[e]) ranked.push_back(e);
  }
  std::stable_sort(ranked.begin(), ranked.end(),
                   [&](int32_t a, int32_t b) { return score[a] > score[b]; });
  return ranked;
}

void LookaheadGate::Record(std::span<const int32_t> predicted, std::span<const int32_t> actual) {
  for (const int32_t x : predicted) {
    const bool hit = std::binary_search(actual.begin(), actual.end(), x);
    predicted_ = predicted_ * decay_ + 1.0;
    correct_ = correct_ * decay_ + (hit ? 1.0 : 0.0);
  }
}

std::vector<experts::ExpertKey> RankTraceExperts(const experts::Trace& trace) {
  std::map<experts::ExpertKey, int64_t> uses;  // ordered: ties resolve to (layer, expert)
  for (const experts::TraceStep& step : trace.steps) {
    for (const int32_t e : step.experts) ++uses[{step.layer, e}];
  }
  std::vector<std::pair<experts::ExpertKey, int64_t>> ranked(uses.begin(), uses.end());
  std::stable_sort(ranked.begin(), ranked.end(),
                   [](const auto& a, const auto& b) { return a.second > b.second; });
  std::vector<experts::ExpertKey> keys;
  keys.reserve(ranked.size());
  for (const auto& [key, n] : ranked) keys.push_back(key);
  return keys;
}

}  // namespace moe::cuda
