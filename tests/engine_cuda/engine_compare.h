// What the CUDA engine's GPU suites (cuda_engine_test, decode_path_test) share to compare a forward
// with the CPU engine and the double-precision reference: the test case, its model shape, the
// near-tie rule and the relative error over the tokens that rule keeps.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "engine_cpu/random_model.h"
#include "engine_cpu/reference.h"
#include "moe/common/dtype.h"
#include "moe/engine/cpu_engine.h"

namespace moe::testing {

// Tokens whose reference routing has a decision closer than this are skipped (fp32 may route them
// either way); the tests require them to be rare. Margins are in score units (softmax
// probabilities or sigmoids); the engine's scores are within ~1e-7 of the double reference.
inline constexpr double kMinMargin = 2e-6;

struct EngineCase {
  std::string name;
  RandomModelOptions model;
  DType act = DType::kBF16;
  std::vector<int64_t> tokens;
};

// A random model of `f` with MoE layers 0 and 2.
inline RandomModelOptions CaseModel(Family f, int experts, int top_k, int hidden, int inter,
                                    DType wd, uint64_t seed) {
  return ShapedModelOptions(f, experts, top_k, hidden, inter, wd, seed, {0, 2});
}

// The CPU engine the GPU results are compared with (2 threads).
inline StatusOr<std::unique_ptr<CpuEngine>> ReferenceCpuEngine(std::shared_ptr<const Model> model,
                                                               int64_t max_batch_tokens) {
  CpuEngineOptions o;
  o.num_threads = 2;
  o.max_batch_tokens = max_batch_tokens;
  return CpuEngine::Create(std::move(model), o);
}

inline std::vector<float> ToFloats(DType dtype, const std::vector<uint8_t>& bytes, size_t n) {
  std::vector<float> v(n);
  ConvertToF32(dtype, bytes.data(), v.data(), n);
  return v;
}

// keep[t]: token t's reference routing has no near tie.
inline std::vector<bool> UnambiguousTokens(const ReferenceOutput& ref, int64_t n) {
  std::vector<bool> keep(n);
  for (int64_t t = 0; t < n; ++t) keep[t] = ref.routing.margin[t] >= kMinMargin;
  return keep;
}

// ||a - b|| / ||b|| over the tokens of `keep` (rows of `hidden`).
inline double RelErr(const std::vector<float>& a, const std::vector<float>& b, int hidden,
                     const std::vector<bool>& keep) {
  double num = 0, den = 0;
  for (size_t t = 0; t < keep.size(); ++t) {
    if (!keep[t]) continue;
    for (int j = 0; j < hidden; ++j) {
      const double d = static_cast<double>(a[t * hidden + j]) - b[t * hidden + j];
      num += d * d;
      den += static_cast<double>(b[t * hidden + j]) * b[t * hidden + j];
    }
  }
  return std::sqrt(num / std::max(den, 1e-300));
}

}  // namespace moe::testing
