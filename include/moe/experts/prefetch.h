// Gate-lookahead prefetch helpers, engine independent.
//
// While layer L computes, the engine applies layer L+1's router to layer L's hidden states
// (logits [n_tokens, n_experts] = hidden_L . W_router(L+1)^T, on the device or the host), ranks
// the experts those logits select with RankLookaheadExperts, and passes the ranking to
// ExpertSlotPool::Prefetch. When layer L+1 really routes, PredictionAccuracy::Record compares.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace moe::experts {

// The union of each token's top_k experts by logit, ranked by the sum over tokens of their
// softmax probability (most likely first; ties -> lower id). `logits` is [n_tokens, n_experts]
// row-major. Group-limited routing (DeepSeek) is not applied: this is a prediction, and plain
// top-k is a superset-leaning approximation. Empty when any size is not positive or the span is
// too short.
std::vector<int32_t> RankLookaheadExperts(std::span<const float> logits, int32_t n_tokens,
                                          int32_t n_experts, int32_t top_k);

// Precision and recall of predicted expert sets against the ones really used, accumulated over
// steps (micro-averaged: sums of counts, not a mean of ratios).
// Thread safety: none (a plain value; the owner synchronizes).
class PredictionAccuracy {
 public:
  // Both spans hold distinct expert ids of one layer.
  void Record(std::span<const int32_t> predicted, std::span<const int32_t> actual);

  uint64_t predicted() const { return predicted_; }
  uint64_t actual() const { return actual_; }
  uint64_t correct() const { return correct_; }
  // correct / predicted and correct / actual; 0 when the denominator is 0.
  double Precision() const;
  double Recall() const;

 private:
  uint64_t predicted_ = 0;
  uint64_t actual_ = 0;
  uint64_t correct_ = 0;
};

}  // namespace moe::experts
