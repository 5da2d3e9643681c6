// Synthetic routing traces (model in include/moe/experts/synthetic_trace.h).
#include "moe/experts/synthetic_trace.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

namespace moe::experts {
namespace {

// Portable samplers over std::mt19937_64 (whose output sequence the standard fixes).
class Rng {
 public:
  explicit Rng(uint64_t seed) : engine_(seed) {}
  double Uniform() { return static_cast<double>(engine_() >> 11) * 0x1.0p-53; }  // [0, 1)
  bool Bernoulli(double p) { return Uniform() < p; }
  int32_t Below(int32_t n) { return static_cast<int32_t>(engine_() % static_cast<uint64_t>(n)); }

 private:
  std::mt19937_64 engine_;
};

// Rank r has probability proportional to 1 / (r + 1)^s.
class ZipfSampler {
 public:
  ZipfSampler(int32_t n, double s) : cdf_(n) {
    double sum = 0;
    for (int32_t r = 0; r < n; ++r) cdf_[r] = (sum += std::pow(r + 1.0, -s));
    for (double& c : cdf_) c /= sum;
  }
  int32_t Sample(Rng& rng) const {
    const auto it = std::upper_bound(cdf_.begin(), cdf_.end(), rng.Uniform());
    return std::min<int32_t>(static_cast<int32_t>(it - cdf_.begin()),
                             static_cast<int32_t>(cdf_.size()) - 1);
  }

 private:
  std::vector<double> cdf_;
};

bool Probability(double p) { return p >= 0.0 && p <= 1.0; }

}  // namespace

SyntheticTraceOptions SyntheticTraceOptions::Qwen3_30B_A3B() {
  SyntheticTraceOptions o;
  o.shape = {48, 128, 8};
  return o;
}

SyntheticTraceOptions SyntheticTraceOptions::Mixtral_8x7B() {
  SyntheticTraceOptions o;
  o.shape = {32, 8, 2};
  o.zipf_exponent = 0.5;
  o.tokens_per_batch = 2;
  return o;
}

Status SyntheticTraceOptions::Validate() const {
  if (shape.n_layers <= 0 || shape.n_experts <= 0 || shape.top_k <= 0 ||
      shape.top_k > shape.n_experts || n_batches < 0 || tokens_per_batch <= 0 ||
      zipf_exponent < 0 || !Probability(stickiness) || !Probability(sequence_end_prob) ||
      !Probability(drift_prob)) {
    return absl::InvalidArgumentError("synthetic trace: option out of range");
  }
  return absl::OkStatus();
}

StatusOr<Trace> GenerateSyntheticTrace(const SyntheticTraceOptions& options) {
  MOE_RETURN_IF_ERROR(options.Validate());
  const TraceShape& shape = options.shape;
  Rng rng(options.seed);
  const ZipfSampler zipf(shape.n_experts, options.zipf_exponent);

  // perm[L][rank] = expert id: an independent random ranking per layer (Fisher-Yates).
  std::vector<std::vector<int32_t>> perm(shape.n_layers, std::vector<int32_t>(shape.n_experts));
  for (auto& p : perm) {
    std::iota(p.begin(), p.end(), 0);
    for (int32_t i = shape.n_experts - 1; i > 0; --i) std::swap(p[i], p[rng.Below(i + 1)]);
  }
  // history[s][L]: sequence s's top_k picks at layer L in the previous batch (empty = new).
  std::vector<std::vector<std::vector<int32_t>>> history(
      options.tokens_per_batch, std::vector<std::vector<int32_t>>(shape.n_layers));

  Trace trace;
  trace.shape = shape;
  trace.steps.reserve(static_cast<size_t>(options.n_batches) * shape.n_layers);
  std::vector<uint8_t> used(shape.n_experts);
  std::vector<int32_t> picks;
  for (int32_t batch = 0; batch < options.n_batches; ++batch) {
    for (auto& seq : history) {
      if (rng.Bernoulli(options.sequence_end_prob)) {
        for (auto& layer_picks : seq) layer_picks.clear();
      }
    }
    for (int32_t layer = 0; layer < shape.n_layers; ++layer) {
      if (rng.Bernoulli(options.drift_prob)) {
        std::swap(perm[layer][rng.Below(shape.n_experts)], perm[layer][rng.Below(shape.n_experts)]);
      }
      std::fill(used.begin(), used.end(), 0);
      for (auto& seq : history) {
        std::vector<int32_t>& prev = seq[layer];
        picks.clear();
        for (int32_t k = 0; k < shape.top_k; ++k) {
          int32_t expert = -1;
          if (!prev.empty() && rng.Bernoulli(options.stickiness)) expert = prev[k];
          // Re-draw on a repeat of this token's picks (a token's top-k ids are distinct).
          while (expert < 0 || std::find(picks.begin(), picks.end(), expert) != picks.end()) {
            expert = perm[layer][zipf.Sample(rng)];
          }
          picks.push_back(expert);
          used[expert] = 1;
        }
        prev = picks;
      }
      TraceStep step;
      step.batch = batch;
      step.layer = layer;
      for (int32_t e = 0; e < shape.n_experts; ++e) {
        if (used[e]) step.experts.push_back(e);
      }
      trace.steps.push_back(std::move(step));
    }
  }
  return trace;
}

}  // namespace moe::experts
