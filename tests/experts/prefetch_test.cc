// Gate-lookahead ranking and prediction accuracy.
#include "moe/experts/prefetch.h"

#include <gtest/gtest.h>

#include <random>

namespace moe::experts {
namespace {

TEST(RankLookaheadExperts, UnionOfTopKRankedBySummedProbability) {
  // Token 0 selects {0, 2} (p ~ 0.644, 0.237); token 1 selects {2, 3} (p ~ 0.724, 0.266).
  const std::vector<float> logits = {3, 1, 2, 0,  //
                                     0, 0, 5, 4};
  EXPECT_EQ(RankLookaheadExperts(logits, 2, 4, 2), (std::vector<int32_t>{2, 0, 3}));
  EXPECT_EQ(RankLookaheadExperts(logits, 2, 4, 1), (std::vector<int32_t>{2, 0}));
  EXPECT_EQ(RankLookaheadExperts(logits, 2, 4, 9).size(), 4u);  // top_k clamped
}

TEST(RankLookaheadExperts, TiesGoToTheLowerIdAndBadSizesGiveNothing) {
  const std::vector<float> flat = {1, 1, 1, 1};
  EXPECT_EQ(RankLookaheadExperts(flat, 1, 4, 2), (std::vector<int32_t>{0, 1}));
  EXPECT_TRUE(RankLookaheadExperts(flat, 2, 4, 2).empty());  // span too short
  EXPECT_TRUE(RankLookaheadExperts(flat, 1, 4, 0).empty());
  EXPECT_TRUE(RankLookaheadExperts({}, 0, 4, 2).empty());
}

TEST(RankLookaheadExperts, MatchesAPerTokenReferenceOnRandomLogits) {
  std::mt19937 rng(11);
  std::normal_distribution<float> normal;
  for (int32_t n_experts : {8, 31, 64}) {
    const int32_t n_tokens = 5, top_k = 3;
    std::vector<float> logits(n_tokens * n_experts);
    for (float& x : logits) x = normal(rng);
    const std::vector<int32_t> ranked = RankLookaheadExperts(logits, n_tokens, n_experts, top_k);
    // Reference: the set of experts that are among some token's top_k (count of larger logits).
    std::vector<int32_t> expected;
    for (int32_t e = 0; e < n_experts; ++e) {
      bool selected = false;
      for (int32_t t = 0; t < n_tokens; ++t) {
        int larger = 0;
        for (int32_t o = 0; o < n_experts; ++o)
          larger += logits[t * n_experts + o] > logits[t * n_experts + e];
        selected |= larger < top_k;
      }
      if (selected) expected.push_back(e);
    }
    std::vector<int32_t> sorted = ranked;
    std::sort(sorted.begin(), sorted.end());
    EXPECT_EQ(sorted, expected) << n_experts;
  }
}

TEST(PredictionAccuracy, MicroAveragesPrecisionAndRecall) {
  PredictionAccuracy acc;
  EXPECT_EQ(acc.Precision(), 0.0);
  EXPECT_EQ(acc.Recall(), 0.0);
  acc.Record(std::vector<int32_t>{1, 2, 3}, std::vector<int32_t>{2, 3, 4, 5});
  acc.Record(std::vector<int32_t>{7}, std::vector<int32_t>{7});
  EXPECT_EQ(acc.correct(), 3u);
  EXPECT_EQ(acc.predicted(), 4u);
  EXPECT_EQ(acc.actual(), 5u);
  EXPECT_DOUBLE_EQ(acc.Precision(), 3.0 / 4.0);
  EXPECT_DOUBLE_EQ(acc.Recall(), 3.0 / 5.0);
}

}  // namespace
}  // namespace moe::experts
