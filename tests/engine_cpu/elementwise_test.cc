// The engine's element-wise loops: accurate, and the same bits for an element whether it falls in
// a vector body or a scalar tail (the property batch invariance needs).
#include "engine/cpu/elementwise.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

namespace moe::cpu {
namespace {

TEST(ElementwiseTest, FastExpIsAccurate) {
  for (float x = -87.0f; x < 88.0f; x += 0.01731f) {
    const double want = std::exp(static_cast<double>(x));
    ASSERT_NEAR(FastExp(x), want, 3e-7 * want) << x;
  }
  EXPECT_EQ(FastExp(0.0f), 1.0f);
  EXPECT_TRUE(std::isfinite(FastExp(1000.0f)));
  EXPECT_GE(FastExp(-1000.0f), 0.0f);
}

TEST(ElementwiseTest, SiluMulMatchesDoubleAndIsPositionIndependent) {
  const int64_t n = 203;
  std::mt19937_64 rng(5);
  std::normal_distribution<float> dist(0.0f, 4.0f);
  std::vector<float> g(n), u(n), all(n), part(n);
  for (int64_t i = 0; i < n; ++i) {
    g[i] = dist(rng);
    u[i] = dist(rng);
  }
  SiluMul(g.data(), u.data(), all.data(), n);
  for (int64_t i = 0; i < n; ++i) {
    const double gd = g[i];
    const double want = gd / (1.0 + std::exp(-gd)) * u[i];
    ASSERT_NEAR(all[i], want, 1e-6 * std::fabs(want) + 1e-30) << i;
  }
  // Odd offsets and lengths put each element in a different lane or in the scalar tail.
  for (int64_t start : {0, 1, 3, 17}) {
    for (int64_t len : {1, 5, 15, 16, 33, 100}) {
      if (start + len > n) continue;
      SiluMul(g.data() + start, u.data() + start, part.data(), len);
      ASSERT_EQ(std::memcmp(part.data(), all.data() + start, len * sizeof(float)), 0)
          << start << " " << len;
    }
  }
}

TEST(ElementwiseTest, AddScaledIsPositionIndependent) {
  const int64_t n = 77;
  std::vector<float> y(n), acc(n, 0.25f), ref(n);
  for (int64_t i = 0; i < n; ++i) y[i] = 0.1f * static_cast<float>(i) - 3.3f;
  AddScaled(acc.data(), 0.37f, y.data(), n);
  for (int64_t i = 0; i < n; ++i) {
    const float prod = 0.37f * y[i];
    ASSERT_EQ(acc[i], 0.25f + prod) << i;
  }
  std::vector<float> tail(5, 0.25f);
  AddScaled(tail.data(), 0.37f, y.data() + 70, 5);
  EXPECT_EQ(std::memcmp(tail.data(), acc.data() + 70, 5 * sizeof(float)), 0);
}

}  // namespace
}  // namespace moe::cpu
