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

struct SyntheticTraceGenerator::State {
  State(const SyntheticTraceOptions& o)
      : options(o),
        rng(o.seed),
        zipf(o.shape.n_experts, o.zipf_exponent),
        perm(o.shape.n_layers, std::vector<int32_t>(o.shape.n_experts)),
        history(o.tokens_per_batch, std::vector<std::vector<int32_t>>(o.shape.n_layers)) {}

  // One sequence's top_k distinct picks at a layer with ranking `ranking`, given its picks there
  // in the previous batch (`prev`, empty for a new sequence).
  void Pick(Rng& r, const std::vector<int32_t>& ranking, const std::vector<int32_t>& prev,
            std::vector<int32_t>& picks) const {
    picks.clear();
    for (int32_t k = 0; k < options.shape.top_k; ++k) {
      int32_t expert = -1;
      if (!prev.empty() && r.Bernoulli(options.stickiness)) expert = prev[k];
      // Re-draw on a repeat of this token's picks (a token's top-k ids are distinct).
      while (expert < 0 || std::find(picks.begin(), picks.end(), expert) != picks.end()) {
        expert = ranking[zipf.Sample(r)];
      }
      picks.push_back(expert);
    }
  }

  SyntheticTraceOptions options;
  Rng rng;
  ZipfSampler zipf;
  int64_t batch = 0;
  // perm[L][rank] = expert id: an independent random ranking per layer.
  std::vector<std::vector<int32_t>> perm;
  // history[s][L]: sequence s's top_k picks at layer L in the previous batch (empty = new).
  std::vector<std::vector<std::vector<int32_t>>> history;
};

StatusOr<std::unique_ptr<SyntheticTraceGenerator>> SyntheticTraceGenerator::Create(
    const SyntheticTraceOptions& options) {
  MOE_RETURN_IF_ERROR(options.Validate());
  auto state = std::make_unique<State>(options);
  for (auto& p : state->perm) {  // Fisher-Yates
    std::iota(p.begin(), p.end(), 0);
    for (int32_t i = options.shape.n_experts - 1; i > 0; --i) {
      std::swap(p[i], p[state->rng.Below(i + 1)]);
    }
  }
  return std::unique_ptr<SyntheticTraceGenerator>(new SyntheticTraceGenerator(std::move(state)));
}

SyntheticTraceGenerator::SyntheticTraceGenerator(std::unique_ptr<State> state)
    : state_(std::move(state)) {}
SyntheticTraceGenerator::~SyntheticTraceGenerator() = default;

void SyntheticTraceGenerator::NextBatch(Trace& trace) {
  State& st = *state_;
  const TraceShape& shape = st.options.shape;
  for (auto& seq : st.history) {
    if (st.rng.Bernoulli(st.options.sequence_end_prob)) {
      for (auto& layer_picks : seq) layer_picks.clear();
    }
  }
  std::vector<int32_t> used(shape.n_experts);  // tokens per expert
  std::vector<int32_t> picks;
  for (int32_t layer = 0; layer < shape.n_layers; ++layer) {
    if (st.rng.Bernoulli(st.options.drift_prob)) {
      std::swap(st.perm[layer][st.rng.Below(shape.n_experts)],
                st.perm[layer][st.rng.Below(shape.n_experts)]);
    }
    std::fill(used.begin(), used.end(), 0);
    for (auto& seq : st.history) {
      st.Pick(st.rng, st.perm[layer], seq[layer], picks);
      for (int32_t e : picks) ++used[e];
      seq[layer] = picks;
    }
    TraceStep step;
    step.batch = st.batch;
    step.layer = layer;
    for (int32_t e = 0; e < shape.n_experts; ++e) {
      if (used[e] > 0) {
        step.experts.push_back(e);
        step.uses.push_back(used[e]);
      }
    }
    trace.steps.push_back(std::move(step));
  }
  ++st.batch;
}

std::vector<double> SyntheticTraceGenerator::NextBatchUseProbabilities(int32_t samples,
                                                                       uint64_t seed) const {
  const State& st = *state_;
  const TraceShape& shape = st.options.shape;
  std::vector<double> probability(static_cast<size_t>(shape.n_layers) * shape.n_experts, 0.0);
  if (samples <= 0) return probability;
  Rng rng(seed);
  std::vector<uint8_t> used(shape.n_experts);
  std::vector<int32_t> picks, ranking;
  const std::vector<int32_t> none;
  for (int32_t layer = 0; layer < shape.n_layers; ++layer) {
    double* p = &probability[static_cast<size_t>(layer) * shape.n_experts];
    for (int32_t sample = 0; sample < samples; ++sample) {
      // The same random events as NextBatch, for this layer (only marginals are estimated, so a
      // sequence's end is drawn per layer).
      ranking = st.perm[layer];
      if (rng.Bernoulli(st.options.drift_prob)) {
        std::swap(ranking[rng.Below(shape.n_experts)], ranking[rng.Below(shape.n_experts)]);
      }
      std::fill(used.begin(), used.end(), 0);
      for (const auto& seq : st.history) {
        const bool ended = rng.Bernoulli(st.options.sequence_end_prob);
        st.Pick(rng, ranking, ended ? none : seq[layer], picks);
        for (int32_t e : picks) used[e] = 1;
      }
      for (int32_t e = 0; e < shape.n_experts; ++e) p[e] += used[e];
    }
    for (int32_t e = 0; e < shape.n_experts; ++e) p[e] /= samples;
  }
  return probability;
}

StatusOr<Trace> GenerateSyntheticTrace(const SyntheticTraceOptions& options) {
  MOE_ASSIGN_OR_RETURN(std::unique_ptr<SyntheticTraceGenerator> generator,
                       SyntheticTraceGenerator::Create(options));
  Trace trace;
  trace.shape = options.shape;
  trace.steps.reserve(static_cast<size_t>(options.n_batches) * options.shape.n_layers);
  for (int32_t batch = 0; batch < options.n_batches; ++batch) generator->NextBatch(trace);
  return trace;
}

}  // namespace moe::experts
