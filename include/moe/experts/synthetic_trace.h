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

}  // namespace moe::experts
