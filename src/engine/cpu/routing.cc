// Routing functions (see include/moe/engine/routing.h for the exact semantics per family).
#include "moe/engine/routing.h"

#include <cmath>
#include <limits>
#include <vector>

namespace moe {
namespace {

// The total order every selection uses: higher score first, NaN above everything, ties to the
// lower index.
inline bool Better(float a, int ia, float b, int ib) {
  const bool a_nan = std::isnan(a);
  const bool b_nan = std::isnan(b);
  if (a_nan != b_nan) return a_nan;
  if (!a_nan && a != b) return a > b;
  return ia < ib;
}

// Writes to `out` [k] the indices of the k best of `v` [n] (k <= n), best first. O(k * n); n is at
// most a few hundred experts and k at most a few dozen.
void TopK(const float* v, int n, int k, std::vector<char>& taken, int* out) {
  taken.assign(static_cast<size_t>(n), 0);
  for (int j = 0; j < k; ++j) {
    int best = -1;
    for (int i = 0; i < n; ++i) {
      if (taken[static_cast<size_t>(i)]) continue;
      if (best < 0 || Better(v[i], i, v[best], best)) best = i;
    }
    taken[static_cast<size_t>(best)] = 1;
    out[j] = best;
  }
}

void Scores(ScoringFunc scoring, const float* logits, int n, float* scores) {
  if (scoring == ScoringFunc::kSigmoid) {
    for (int i = 0; i < n; ++i) scores[i] = 1.0f / (1.0f + std::exp(-logits[i]));
    return;
  }
  float max = logits[0];
  for (int i = 1; i < n; ++i) max = std::fmax(max, logits[i]);
  float sum = 0.0f;
  for (int i = 0; i < n; ++i) {
    scores[i] = std::exp(logits[i] - max);
    sum += scores[i];
  }
  for (int i = 0; i < n; ++i) scores[i] /= sum;
}

}  // namespace

Status ValidateRoutingSpec(const RoutingSpec& spec) {
  if (spec.n_experts <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("routing: n_experts must be > 0, got ", spec.n_experts));
  }
  if (spec.top_k <= 0 || spec.top_k > spec.n_experts) {
    return absl::InvalidArgumentError(absl::StrCat(
        "routing: top_k must be in [1, n_experts=", spec.n_experts, "], got ", spec.top_k));
  }
  if (spec.topk_method != TopkMethod::kGreedy) {
    if (spec.n_group <= 0 || spec.n_experts % spec.n_group != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "routing: n_group ", spec.n_group, " must be > 0 and divide n_experts ", spec.n_experts));
    }
    if (spec.topk_group <= 0 || spec.topk_group > spec.n_group) {
      return absl::InvalidArgumentError(absl::StrCat(
          "routing: topk_group must be in [1, n_group=", spec.n_group, "], got ", spec.topk_group));
    }
  }
  return absl::OkStatus();
}

void Route(const RoutingSpec& spec, const float* logits, const float* correction_bias,
           int64_t n_tokens, int32_t* ids, float* weights) {
  const int n = spec.n_experts;
  const int k = spec.top_k;
  const bool grouped = spec.topk_method != TopkMethod::kGreedy;
  const int n_group = grouped ? spec.n_group : 1;
  const int group_size = n / n_group;
  std::vector<float> scores(static_cast<size_t>(n));
  std::vector<float> select(static_cast<size_t>(n));
  std::vector<float> group_scores(static_cast<size_t>(n_group));
  std::vector<int> kept_groups(static_cast<size_t>(spec.topk_group > 0 ? spec.topk_group : 1));
  std::vector<char> keep(static_cast<size_t>(n_group));
  std::vector<char> taken;
  std::vector<int> top(static_cast<size_t>(k));
  int best2[2];

  for (int64_t t = 0; t < n_tokens; ++t) {
    // 1-2. Scores, and selection scores (biased for noaux_tc).
    Scores(spec.scoring, logits + t * n, n, scores.data());
    for (int i = 0; i < n; ++i) {
      select[static_cast<size_t>(i)] = correction_bias != nullptr
                                           ? scores[static_cast<size_t>(i)] + correction_bias[i]
                                           : scores[static_cast<size_t>(i)];
    }
    // 3. Group limit: keep the topk_group best groups, mask the selection scores of the others.
    if (grouped && spec.topk_group < n_group) {
      for (int g = 0; g < n_group; ++g) {
        const float* s = select.data() + static_cast<size_t>(g) * group_size;
        if (spec.topk_method == TopkMethod::kGroupLimitedGreedy) {
          float max = s[0];
          for (int i = 1; i < group_size; ++i) {
            if (Better(s[i], i, max, 0)) max = s[i];
          }
          group_scores[static_cast<size_t>(g)] = max;
        } else {  // kNoAuxTc: sum of the top-2 (top-1 when a group has one expert).
          const int m = group_size >= 2 ? 2 : 1;
          TopK(s, group_size, m, taken, best2);
          group_scores[static_cast<size_t>(g)] = m == 2 ? s[best2[0]] + s[best2[1]] : s[best2[0]];
        }
      }
      TopK(group_scores.data(), n_group, spec.topk_group, taken, kept_groups.data());
      keep.assign(static_cast<size_t>(n_group), 0);
      for (int g : kept_groups) keep[static_cast<size_t>(g)] = 1;
      const float masked =
          spec.topk_method == TopkMethod::kNoAuxTc ? -std::numeric_limits<float>::infinity() : 0.0f;
      for (int i = 0; i < n; ++i) {
        if (!keep[static_cast<size_t>(i / group_size)]) select[static_cast<size_t>(i)] = masked;
      }
    }
    // 4. Top-k by (masked) selection score, best first.
    TopK(select.data(), n, k, taken, top.data());
    // 5. Weights: unbiased scores (DeepSeek-V2's group-limited greedy: the masked scores).
    int32_t* out_ids = ids + t * k;
    float* out_w = weights + t * k;
    float sum = 0.0f;
    for (int j = 0; j < k; ++j) {
      const int e = top[static_cast<size_t>(j)];
      float w = scores[static_cast<size_t>(e)];
      if (spec.topk_method == TopkMethod::kGroupLimitedGreedy && spec.topk_group < n_group &&
          !keep[static_cast<size_t>(e / group_size)]) {
        w = 0.0f;
      }
      out_ids[j] = e;
      out_w[j] = w;
      sum += w;
    }
    if (spec.norm_topk_prob) {
      const float denominator = sum + 1e-20f;
      for (int j = 0; j < k; ++j) out_w[j] /= denominator;
    }
    if (spec.routed_scaling_factor != 1.0f) {
      for (int j = 0; j < k; ++j) out_w[j] *= spec.routed_scaling_factor;
    }
  }
}

}  // namespace moe
