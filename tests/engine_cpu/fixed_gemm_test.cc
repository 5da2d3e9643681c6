// The fixed-order GEMM: correct against double, the same bits on every instruction set, and the
// same bits for a row whatever the number of rows and the row's position (batch invariance).
#include "engine/cpu/fixed_gemm.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

namespace moe::cpu {
namespace {

struct Problem {
  int64_t n, k;
  std::vector<float> w;  // [n, k]
  std::vector<float> x;  // [rows, k]
  PackedMatrix packed;
};

Problem MakeProblem(int64_t n, int64_t k, int64_t rows, uint64_t seed) {
  Problem p{n,
            k,
            std::vector<float>(static_cast<size_t>(n * k)),
            std::vector<float>(static_cast<size_t>(rows * k)),
            {}};
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> dist;
  for (float& v : p.w) v = dist(rng);
  for (float& v : p.x) v = dist(rng);
  p.packed = PackMatrix(p.w.data(), DType::kF32, n, k);
  return p;
}

// C [rows, n_panels * 32] for rows [first, first + rows) of p.x.
std::vector<float> RunGemm(const Problem& p, int64_t first, int64_t rows, GemmKernel kernel) {
  const int64_t ld = p.packed.n_panels * kPanel;
  std::vector<float> c(static_cast<size_t>(rows * ld), std::nanf(""));
  std::vector<const float*> x_rows(static_cast<size_t>(rows));
  for (int64_t r = 0; r < rows; ++r)
    x_rows[static_cast<size_t>(r)] = p.x.data() + (first + r) * p.k;
  // Odd panels one at a time, the rest together: the split must not matter either.
  GemmPanels(x_rows.data(), rows, p.packed, 0, 1, c.data(), ld, kernel);
  if (p.packed.n_panels > 1) {
    GemmPanels(x_rows.data(), rows, p.packed, 1, p.packed.n_panels - 1, c.data() + kPanel, ld,
               kernel);
  }
  return c;
}

std::vector<GemmKernel> Supported() {
  std::vector<GemmKernel> out;
  for (GemmKernel k : {GemmKernel::kPortable, GemmKernel::kAvx2, GemmKernel::kAvx512}) {
    if (GemmKernelSupported(k)) out.push_back(k);
  }
  return out;
}

TEST(FixedGemmTest, PackedMatrixLayoutAndPadding) {
  const std::vector<uint16_t> bf16 = {F32ToBf16(1), F32ToBf16(2), F32ToBf16(3),
                                      F32ToBf16(4), F32ToBf16(5), F32ToBf16(6)};
  const PackedMatrix m = PackMatrix(bf16.data(), DType::kBF16, 3, 2);  // W [3, 2]
  ASSERT_EQ(m.n_panels, 1);
  EXPECT_EQ(m.panel(0)[0 * kPanel + 0], 1.0f);  // W[0, 0]
  EXPECT_EQ(m.panel(0)[1 * kPanel + 0], 2.0f);  // W[0, 1]
  EXPECT_EQ(m.panel(0)[0 * kPanel + 2], 5.0f);  // W[2, 0]
  EXPECT_EQ(m.panel(0)[1 * kPanel + 3], 0.0f);  // padding column
  EXPECT_EQ(m.bytes(), 2 * kPanel * 4);
}

TEST(FixedGemmTest, MatchesDoubleOnEveryKernel) {
  for (int64_t n : {1, 31, 33, 77}) {
    for (int64_t k : {1, 7, 67, 512}) {
      const int64_t rows = 13;
      const Problem p = MakeProblem(n, k, rows, static_cast<uint64_t>(n * 1000 + k));
      for (GemmKernel kernel : Supported()) {
        const std::vector<float> c = RunGemm(p, 0, rows, kernel);
        const int64_t ld = p.packed.n_panels * kPanel;
        for (int64_t r = 0; r < rows; ++r) {
          for (int64_t j = 0; j < n; ++j) {
            double ref = 0, mag = 0;
            for (int64_t i = 0; i < k; ++i) {
              const double prod =
                  double{p.x[static_cast<size_t>(r * k + i)]} * p.w[static_cast<size_t>(j * k + i)];
              ref += prod;
              mag += std::fabs(prod);
            }
            // Worst-case bound of a k-term fp32 FMA chain: (k + 1) * 2^-24 * sum |products|.
            ASSERT_NEAR(c[static_cast<size_t>(r * ld + j)], ref,
                        static_cast<double>(k + 1) * 6e-8 * mag + 1e-30)
                << GemmKernelName(kernel) << " n=" << n << " k=" << k << " r=" << r << " j=" << j;
          }
        }
      }
    }
  }
}

TEST(FixedGemmTest, EveryKernelGivesTheSameBits) {
  const std::vector<GemmKernel> kernels = Supported();
  std::cout << "best kernel on this CPU: " << GemmKernelName(BestGemmKernel()) << "\n";
  const Problem p = MakeProblem(70, 800, 21, 7);  // k > one K block
  const std::vector<float> portable = RunGemm(p, 0, 21, GemmKernel::kPortable);
  for (GemmKernel kernel : kernels) {
    const std::vector<float> c = RunGemm(p, 0, 21, kernel);
    EXPECT_EQ(std::memcmp(c.data(), portable.data(), c.size() * sizeof(float)), 0)
        << GemmKernelName(kernel);
  }
}

TEST(FixedGemmTest, RowsAreBitwiseInvariantToBatchSizeAndPosition) {
  const int64_t total = 200;
  for (int64_t k : {5, 64, 512, 1000}) {
    const Problem p = MakeProblem(45, k, total, static_cast<uint64_t>(k));
    const int64_t ld = p.packed.n_panels * kPanel;
    const std::vector<float> all = RunGemm(p, 0, total, BestGemmKernel());
    for (int64_t m : {1, 2, 3, 7, 8, 9, 15, 16, 17, 64, 199}) {
      for (int64_t first : {int64_t{0}, int64_t{5}, total - m}) {
        if (first + m > total) continue;
        const std::vector<float> part = RunGemm(p, first, m, BestGemmKernel());
        for (int64_t r = 0; r < m; ++r) {
          ASSERT_EQ(
              std::memcmp(part.data() + r * ld, all.data() + (first + r) * ld, p.n * sizeof(float)),
              0)
              << "k=" << k << " m=" << m << " first=" << first << " row " << r;
        }
      }
    }
  }
}

}  // namespace
}  // namespace moe::cpu
