// Route(): hand-built cases for every routing rule, and random logits against the double reference.
#include "moe/engine/routing.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "engine_cpu/random_model.h"
#include "engine_cpu/reference.h"

namespace moe {
namespace {

struct Routed {
  std::vector<int32_t> ids;
  std::vector<float> weights;
};

Routed RouteOne(const RoutingSpec& spec, const std::vector<float>& logits,
                const std::vector<float>& bias = {}) {
  EXPECT_TRUE(ValidateRoutingSpec(spec).ok()) << ValidateRoutingSpec(spec);
  Routed r;
  r.ids.assign(static_cast<size_t>(spec.top_k), -1);
  r.weights.assign(static_cast<size_t>(spec.top_k), std::nanf(""));
  Route(spec, logits.data(), bias.empty() ? nullptr : bias.data(), 1, r.ids.data(),
        r.weights.data());
  return r;
}

RoutingSpec Softmax(int n, int k, bool norm) {
  RoutingSpec s;
  s.n_experts = n;
  s.top_k = k;
  s.norm_topk_prob = norm;
  return s;
}

double Sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

TEST(RoutingTest, SoftmaxTopKRenormalised) {
  const Routed r = RouteOne(Softmax(4, 2, true), {1, 3, 2, 0});
  EXPECT_EQ(r.ids, (std::vector<int32_t>{1, 2}));
  const double a = std::exp(3.0), b = std::exp(2.0);
  EXPECT_NEAR(r.weights[0], a / (a + b), 1e-6);
  EXPECT_NEAR(r.weights[1], b / (a + b), 1e-6);
}

TEST(RoutingTest, SoftmaxTopKWithoutRenormalisation) {
  const Routed r = RouteOne(Softmax(4, 2, false), {1, 3, 2, 0});
  const double z = std::exp(1.0) + std::exp(3.0) + std::exp(2.0) + 1.0;
  EXPECT_EQ(r.ids, (std::vector<int32_t>{1, 2}));
  EXPECT_NEAR(r.weights[0], std::exp(3.0) / z, 1e-6);
  EXPECT_NEAR(r.weights[1], std::exp(2.0) / z, 1e-6);
}

TEST(RoutingTest, TopOneRenormalisedWeighsOne) {
  const Routed r = RouteOne(Softmax(5, 1, true), {0.1f, -2, 0.3f, 0.2f, 0});
  EXPECT_EQ(r.ids, (std::vector<int32_t>{2}));
  EXPECT_FLOAT_EQ(r.weights[0], 1.0f);
}

TEST(RoutingTest, TiesGoToTheLowerIndex) {
  EXPECT_EQ(RouteOne(Softmax(6, 3, true), std::vector<float>(6, 0.5f)).ids,
            (std::vector<int32_t>{0, 1, 2}));
  EXPECT_EQ(RouteOne(Softmax(4, 3, false), {1, 2, 2, 1}).ids, (std::vector<int32_t>{1, 2, 0}));
  const Routed r = RouteOne(Softmax(4, 2, true), {7, 7, 7, 7});
  EXPECT_EQ(r.ids, (std::vector<int32_t>{0, 1}));
  EXPECT_EQ(r.weights[0], r.weights[1]);
}

TEST(RoutingTest, NanScoresOrderFirst) {
  const Routed r = RouteOne(Softmax(3, 1, false), {0, std::nanf(""), 1});
  // softmax of a NaN logit makes every score NaN; the first NaN (lowest index) wins.
  EXPECT_EQ(r.ids[0], 0);
}

TEST(RoutingTest, GroupLimitedGreedyPicksFromTheBestGroupsOnly) {
  RoutingSpec s = Softmax(8, 2, false);
  s.topk_method = TopkMethod::kGroupLimitedGreedy;
  s.n_group = 4;
  s.topk_group = 1;
  s.routed_scaling_factor = 16.0f;
  // Group 0 = {5.0, -3}: max 5.0. Group 1 = {4.9, 4.8}: max 4.9. Only group 0 is kept, so the
  // second expert is 1 (not 2, the global runner-up).
  const std::vector<float> logits = {5.0f, -3, 4.9f, 4.8f, 0, 0, 0, 0};
  const Routed r = RouteOne(s, logits);
  EXPECT_EQ(r.ids, (std::vector<int32_t>{0, 1}));
  double z = 0;
  for (float l : logits) z += std::exp(static_cast<double>(l));
  EXPECT_NEAR(r.weights[0], 16.0 * std::exp(5.0) / z, 1e-5);
  EXPECT_NEAR(r.weights[1], 16.0 * std::exp(-3.0) / z, 1e-7);
  // With two groups kept the global top-2 wins again.
  s.topk_group = 2;
  EXPECT_EQ(RouteOne(s, logits).ids, (std::vector<int32_t>{0, 2}));
}

TEST(RoutingTest, GroupLimitedGreedyWeighsExpertsOfDroppedGroupsZero) {
  // top_k larger than the kept experts: transformers' masked_fill(0.0) lets dropped experts in,
  // with weight 0; ties among them go to the lower index.
  RoutingSpec s = Softmax(4, 3, false);
  s.topk_method = TopkMethod::kGroupLimitedGreedy;
  s.n_group = 2;
  s.topk_group = 1;
  const Routed r = RouteOne(s, {0, 1, 3, 2});
  EXPECT_EQ(r.ids, (std::vector<int32_t>{2, 3, 0}));
  EXPECT_EQ(r.weights[2], 0.0f);
}

RoutingSpec NoAuxTc(int n, int k, int n_group, int topk_group, bool norm, float scale) {
  RoutingSpec s = Softmax(n, k, norm);
  s.scoring = ScoringFunc::kSigmoid;
  s.topk_method = TopkMethod::kNoAuxTc;
  s.n_group = n_group;
  s.topk_group = topk_group;
  s.has_correction_bias = true;
  s.routed_scaling_factor = scale;
  return s;
}

TEST(RoutingTest, NoAuxTcKeepsGroupsByTopTwoSum) {
  // Group 0 = {4, -4}: sigmoid sum ~1.0 though it holds the best expert; group 1 = {2, 2}: ~1.76.
  const RoutingSpec s = NoAuxTc(8, 2, 4, 1, true, 2.5f);
  const Routed r = RouteOne(s, {4, -4, 2, 2, -5, -5, -5, -5}, std::vector<float>(8, 0.0f));
  EXPECT_EQ(r.ids, (std::vector<int32_t>{2, 3}));
  EXPECT_NEAR(r.weights[0], 1.25, 1e-6);
  EXPECT_NEAR(r.weights[1], 1.25, 1e-6);
}

TEST(RoutingTest, CorrectionBiasChangesSelectionButNotWeights) {
  const RoutingSpec s = NoAuxTc(4, 2, 1, 1, false, 1.0f);
  const std::vector<float> logits = {1, 0, 0, -1};
  EXPECT_EQ(RouteOne(s, logits, {0, 0, 0, 0}).ids, (std::vector<int32_t>{0, 1}));
  const Routed r = RouteOne(s, logits, {0, 0.5f, 0, 0.1f});
  // Selection: 0.731, 1.0, 0.5, 0.369 -> experts 1 then 0; weights are the unbiased sigmoids.
  EXPECT_EQ(r.ids, (std::vector<int32_t>{1, 0}));
  EXPECT_NEAR(r.weights[0], Sigmoid(0.0), 1e-6);
  EXPECT_NEAR(r.weights[1], Sigmoid(1.0), 1e-6);
}

TEST(RoutingTest, RenormalisationAndScalingFactor) {
  const std::vector<float> logits = {0.3f, -0.2f, 1.1f, 0.7f, -1, 0, 0.2f, 0.5f};
  const std::vector<float> bias(8, 0.0f);
  const Routed plain = RouteOne(NoAuxTc(8, 3, 1, 1, false, 1.0f), logits, bias);
  const Routed norm = RouteOne(NoAuxTc(8, 3, 1, 1, true, 1.0f), logits, bias);
  const Routed scaled = RouteOne(NoAuxTc(8, 3, 1, 1, true, 2.5f), logits, bias);
  EXPECT_EQ(plain.ids, (std::vector<int32_t>{2, 3, 7}));
  EXPECT_EQ(norm.ids, plain.ids);
  double sum = 0;
  for (int j = 0; j < 3; ++j) {
    EXPECT_NEAR(plain.weights[j], Sigmoid(logits[static_cast<size_t>(plain.ids[j])]), 1e-6);
    sum += plain.weights[j];
  }
  for (int j = 0; j < 3; ++j) {
    EXPECT_NEAR(norm.weights[j], plain.weights[j] / sum, 1e-6);
    EXPECT_NEAR(scaled.weights[j], 2.5 * plain.weights[j] / sum, 1e-6);
  }
}

TEST(RoutingTest, NoAuxTcMasksDroppedGroupsWithMinusInfinity) {
  // Biased scores of the kept group are negative; a dropped group's expert must still not win
  // (transformers 5.x masks with -inf; 4.x's 0.0 would pick experts 2 and 3).
  const RoutingSpec s = NoAuxTc(4, 2, 2, 1, false, 1.0f);
  const Routed r = RouteOne(s, {0, 0, 0, 0}, {-0.9f, -0.95f, -2, -2});
  EXPECT_EQ(r.ids, (std::vector<int32_t>{0, 1}));
  EXPECT_NEAR(r.weights[0], 0.5, 1e-7);
}

TEST(RoutingTest, ValidateRejectsImpossibleSpecs) {
  EXPECT_FALSE(ValidateRoutingSpec(Softmax(0, 1, false)).ok());
  EXPECT_FALSE(ValidateRoutingSpec(Softmax(4, 0, false)).ok());
  EXPECT_FALSE(ValidateRoutingSpec(Softmax(4, 5, false)).ok());
  EXPECT_FALSE(ValidateRoutingSpec(NoAuxTc(6, 2, 4, 1, false, 1)).ok());  // 4 does not divide 6
  EXPECT_FALSE(ValidateRoutingSpec(NoAuxTc(8, 2, 4, 5, false, 1)).ok());  // topk_group > n_group
  EXPECT_FALSE(ValidateRoutingSpec(NoAuxTc(8, 2, 4, 0, false, 1)).ok());
  EXPECT_TRUE(ValidateRoutingSpec(NoAuxTc(8, 2, 4, 2, false, 1)).ok());
}

// Every family's routing on random logits against the double reference.
class RandomRoutingTest : public ::testing::TestWithParam<std::tuple<Family, int, int>> {};

TEST_P(RandomRoutingTest, MatchesReference) {
  const auto [family, n_experts, top_k] = GetParam();
  testing::RandomModelOptions o;
  o.family = family;
  o.n_experts = n_experts;
  o.top_k = top_k;
  o.n_group = n_experts % 4 == 0 ? 4 : (n_experts % 3 == 0 ? 3 : 1);
  o.topk_group = o.n_group > 1 ? 2 : 1;
  const RoutingSpec spec = testing::RandomSpec(o).routing;
  ASSERT_TRUE(ValidateRoutingSpec(spec).ok());
  const int64_t n = 200;
  std::mt19937_64 rng(static_cast<uint64_t>(n_experts * 100 + top_k));
  std::normal_distribution<float> dist(0.0f, 2.0f);
  std::uniform_real_distribution<float> bias_dist(-0.2f, 0.2f);
  std::vector<float> logits(static_cast<size_t>(n * n_experts));
  for (float& l : logits) l = dist(rng);
  std::vector<float> bias(static_cast<size_t>(n_experts));
  for (float& b : bias) b = bias_dist(rng);
  const float* b = spec.has_correction_bias ? bias.data() : nullptr;
  std::vector<int32_t> ids(static_cast<size_t>(n * top_k), -1);
  std::vector<float> weights(static_cast<size_t>(n * top_k), std::nanf(""));
  Route(spec, logits.data(), b, n, ids.data(), weights.data());
  const testing::ReferenceRouting ref =
      testing::ReferenceRoute(spec, std::vector<double>(logits.begin(), logits.end()), b, n);
  int skipped = 0;
  for (int64_t t = 0; t < n; ++t) {
    if (ref.margin[static_cast<size_t>(t)] < 1e-5) {
      ++skipped;
      continue;
    }
    for (int j = 0; j < top_k; ++j) {
      const size_t i = static_cast<size_t>(t * top_k + j);
      ASSERT_EQ(ids[i], ref.ids[i]) << "token " << t << " slot " << j;
      EXPECT_NEAR(weights[i], ref.weights[i], 1e-5 * std::max(1.0, std::fabs(ref.weights[i])))
          << "token " << t << " slot " << j;
    }
  }
  EXPECT_LE(skipped, n / 20);
  // Per-token independence: routing one token alone gives the same bits.
  for (int64_t t : {int64_t{0}, int64_t{77}, n - 1}) {
    std::vector<int32_t> one_ids(static_cast<size_t>(top_k));
    std::vector<float> one_w(static_cast<size_t>(top_k));
    Route(spec, logits.data() + t * n_experts, b, 1, one_ids.data(), one_w.data());
    for (int j = 0; j < top_k; ++j) {
      EXPECT_EQ(one_ids[static_cast<size_t>(j)], ids[static_cast<size_t>(t * top_k + j)]);
      EXPECT_EQ(std::memcmp(&one_w[static_cast<size_t>(j)],
                            &weights[static_cast<size_t>(t * top_k + j)], 4),
                0);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Families, RandomRoutingTest,
                         ::testing::Values(std::make_tuple(Family::kMixtral, 8, 2),
                                           std::make_tuple(Family::kMixtral, 31, 1),
                                           std::make_tuple(Family::kQwen2Moe, 60, 4),
                                           std::make_tuple(Family::kQwen3Moe, 128, 8),
                                           std::make_tuple(Family::kOlmoe, 64, 8),
                                           std::make_tuple(Family::kDeepseekV2, 64, 6),
                                           std::make_tuple(Family::kDeepseekV2, 129, 6),
                                           std::make_tuple(Family::kDeepseekV3, 256, 8),
                                           std::make_tuple(Family::kDeepseekV3, 32, 4)));

}  // namespace
}  // namespace moe
