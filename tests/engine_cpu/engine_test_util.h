// Helpers shared by the CPU engine's test binaries: comparing against the double reference (and,
// through common/forward_run.h, running a Forward() with poisoned outputs).
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "common/forward_run.h"
#include "engine_cpu/random_model.h"
#include "engine_cpu/reference.h"
#include "moe/engine/cpu_engine.h"

namespace moe::testing {

// Relative error bound of one rounding to `dtype` (half an ulp, relative).
inline double RoundingBound(DType dtype) {
  switch (dtype) {
    case DType::kBF16:
      return std::ldexp(1.0, -8);
    case DType::kF16:
      return std::ldexp(1.0, -11);
    default:
      return 0.0;
  }
}

// Checks `r` against the reference on input `x` (the activation values as floats). Tokens whose
// routing is a near-tie (reference margin < 1e-5) are skipped; at most 10% may be. fp32 outputs:
// relative L2 error per token < 1e-5; F16/BF16: every element within one rounding of the
// reference (plus 1e-5 of the token's RMS for the fp32 arithmetic before it).
inline void ExpectMatchesReference(const Model& model, int layer, DType dtype,
                                   const std::vector<float>& x, int64_t n, const RunResult& r) {
  ASSERT_TRUE(r.status.ok()) << r.status;
  const MoeSpec& spec = model.spec();
  const int64_t h = spec.hidden;
  const int k = spec.top_k();
  const ReferenceOutput ref = ReferenceForward(model, layer, x, n);
  std::vector<float> out(static_cast<size_t>(n * h));
  ConvertToF32(dtype, r.out.data(), out.data(), out.size());
  int skipped = 0;
  for (int64_t t = 0; t < n; ++t) {
    if (ref.routing.margin[static_cast<size_t>(t)] < 1e-5) {
      ++skipped;
      continue;
    }
    for (int j = 0; j < k; ++j) {
      const size_t i = static_cast<size_t>(t * k + j);
      ASSERT_EQ(r.ids[i], ref.routing.ids[i]) << "token " << t << " slot " << j;
      ASSERT_NEAR(r.weights[i], ref.routing.weights[i],
                  1e-5 * std::max(1.0, std::fabs(ref.routing.weights[i])))
          << "token " << t << " slot " << j;
    }
    double err2 = 0, ref2 = 0;
    for (int64_t c = 0; c < h; ++c) {
      const double d =
          out[static_cast<size_t>(t * h + c)] - ref.out[static_cast<size_t>(t * h + c)];
      err2 += d * d;
      ref2 += ref.out[static_cast<size_t>(t * h + c)] * ref.out[static_cast<size_t>(t * h + c)];
    }
    ASSERT_GT(ref2, 0.0);
    if (dtype == DType::kF32) {
      ASSERT_LT(std::sqrt(err2 / ref2), 1e-5) << "token " << t;
    } else {
      const double rms = std::sqrt(ref2 / static_cast<double>(h));
      for (int64_t c = 0; c < h; ++c) {
        const double want = ref.out[static_cast<size_t>(t * h + c)];
        ASSERT_NEAR(out[static_cast<size_t>(t * h + c)], want,
                    RoundingBound(dtype) * std::fabs(want) + 1e-5 * rms)
            << "token " << t << " element " << c;
      }
    }
  }
  EXPECT_LE(skipped, n / 10 + 1) << "too many near-tie tokens";
}

// Bitwise equality of row `a_row` of `a` and row `b_row` of `b` (outputs, ids, weights).
inline void ExpectSameToken(const RunResult& a, int64_t a_row, const RunResult& b, int64_t b_row,
                            int64_t row_bytes, int k) {
  ASSERT_EQ(std::memcmp(a.out.data() + a_row * row_bytes, b.out.data() + b_row * row_bytes,
                        static_cast<size_t>(row_bytes)),
            0)
      << "output rows differ (" << a_row << " vs " << b_row << ")";
  ASSERT_EQ(
      std::memcmp(a.ids.data() + a_row * k, b.ids.data() + b_row * k, static_cast<size_t>(k) * 4),
      0);
  ASSERT_EQ(std::memcmp(a.weights.data() + a_row * k, b.weights.data() + b_row * k,
                        static_cast<size_t>(k) * 4),
            0);
}

}  // namespace moe::testing
