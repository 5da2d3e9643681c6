// Random in-memory MoE models of every family, for the CPU engine's tests and benchmark (and any
// engine test that wants them): a spec with the family's routing, and weights drawn from a fixed
// seed, stored in the requested dtype in one buffer the Model keeps alive.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "moe/common/dtype.h"
#include "moe/model/model.h"
#include "moe/model/spec.h"

namespace moe::testing {

struct RandomModelOptions {
  Family family = Family::kMixtral;
  int hidden = 64;
  int moe_intermediate = 32;
  int n_experts = 8;
  int top_k = 2;
  // DeepSeek only: groups (group-limited methods) and kept groups. V2 uses group-limited greedy
  // when n_group > 1, greedy otherwise.
  int n_group = 4;
  int topk_group = 2;
  // Shared expert width for Qwen2-MoE and DeepSeek (0 picks 2 * moe_intermediate); ignored by the
  // families without one.
  int shared_intermediate = 0;
  bool norm_topk_prob = true;          // Qwen2/Qwen3/OLMoE/V3 (Mixtral: always, V2: never)
  float routed_scaling_factor = 2.5f;  // DeepSeek only
  DType weight_dtype = DType::kBF16;
  std::vector<int> moe_layers = {1, 3};  // n_layers = last + 1
  uint64_t seed = 1;
};

// Options for a `family` model of the given shape, weight dtype, seed and MoE layers; the other
// fields keep their defaults.
RandomModelOptions ShapedModelOptions(Family family, int n_experts, int top_k, int hidden,
                                      int moe_intermediate, DType weight_dtype, uint64_t seed,
                                      std::vector<int> moe_layers);

// The spec `options` describe, with the family's routing function (see moe/engine/routing.h).
MoeSpec RandomSpec(const RandomModelOptions& options);

// A model with random weights: router and experts uniform in +-sqrt(3 / fan_in) (unit-variance
// outputs for unit-variance inputs), DeepSeek-V3 correction bias uniform in [-0.1, 0.1).
std::shared_ptr<const Model> RandomModel(const RandomModelOptions& options);

// `n` values ~ N(0, 1) from `seed`, rounded to `dtype` and returned as floats (exactly the values a
// `dtype` buffer holds), plus that buffer.
struct RandomActivations {
  std::vector<float> values;   // [n] as floats
  std::vector<uint8_t> bytes;  // [n * DTypeSize(dtype)]
};
RandomActivations MakeActivations(DType dtype, int64_t n, uint64_t seed);

}  // namespace moe::testing
