// Synthetic routing traces for expert-cache studies when no recorded trace is at hand.
//
// Model (decode-style batches of concurrent sequences, one token per sequence per batch):
//   1. Popularity: at each layer the experts have Zipf(s) popularity over a random per-layer
//      ranking (expert perm[L][r] has weight 1 / (r + 1)^s), so each layer has its own hot set.
//   2. Temporal locality (a Markov working-set model): each sequence remembers the experts it used
//      at each layer in the previous batch; each of its top_k picks re-uses the pick of the same
//      position with probability `stickiness`, else draws from the Zipf popularity (distinct ids).
//   3. Churn: a sequence ends with probability `sequence_end_prob` per batch and a fresh one (no
//      history) takes its place; with probability `drift_prob` per batch and layer, two random
//      ranks of that layer's ranking swap (popularity drifts over time).
// The batch's step at a layer is the union of its sequences' picks, in ascending id order.
// Deterministic for a given seed (own generator and samplers, no std:: distributions).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "moe/common/status.h"
#include "moe/experts/trace.h"

namespace moe::experts {

struct SyntheticTraceOptions {
  TraceShape shape;
  int32_t n_batches = 2000;
  int32_t tokens_per_batch = 8;     // concurrent sequences
  double zipf_exponent = 1.0;       // s >= 0; 0 = uniform popularity
  double stickiness = 0.5;          // in [0, 1]
  double sequence_end_prob = 0.01;  // in [0, 1]
  double drift_prob = 0.01;         // in [0, 1]
  uint64_t seed = 1;

  // Qwen3-30B-A3B: 48 MoE layers, 128 experts, top-8.
  static SyntheticTraceOptions Qwen3_30B_A3B();
  // Mixtral-8x7B: 32 MoE layers, 8 experts, top-2 (its routing is far less skewed).
  static SyntheticTraceOptions Mixtral_8x7B();

  // InvalidArgument on out-of-range fields.
  Status Validate() const;
};

StatusOr<Trace> GenerateSyntheticTrace(const SyntheticTraceOptions& options);

// The generator one batch at a time, with the probabilities of the next batch given its hidden
// state (popularity rankings and every sequence's last picks), for the online bound of
// expert_cache_sim: under demand paging, the hits of one forward pass are at most the uses of the
// set resident at its start, chosen without knowing the pass; in expectation at most the sum of
// the budget's largest next-batch use probabilities given everything before the pass (what the
// hidden state captures, and more than a cache can observe).
//
// Thread safety: not thread safe.
class SyntheticTraceGenerator {
 public:
  // InvalidArgument on invalid options (n_batches is ignored).
  static StatusOr<std::unique_ptr<SyntheticTraceGenerator>> Create(
      const SyntheticTraceOptions& options);
  ~SyntheticTraceGenerator();

  // Appends the next batch's steps (one per layer, in layer order) to `trace`.
  void NextBatch(Trace& trace);

  // P(the next batch uses expert e of layer L), [n_layers * n_experts] at L * n_experts + e,
  // estimated from `samples` simulated next batches per layer drawn with a generator of its own
  // (seeded `seed`); the state is left unchanged. Each estimate is unbiased; the largest ones
  // are biased upward (the bound errs on the safe side).
  std::vector<double> NextBatchUseProbabilities(int32_t samples, uint64_t seed) const;

 private:
  struct State;
  explicit SyntheticTraceGenerator(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

}  // namespace moe::experts
