// A naive double-precision MoE layer written independently of the engine: dense per-token loops,
// routing by sorting every expert. Tests compare engines against it by relative error.
#pragma once

#include <cstdint>
#include <vector>

#include "moe/model/model.h"
#include "moe/model/spec.h"

namespace moe::testing {

struct ReferenceRouting {
  std::vector<int32_t> ids;     // [n, top_k] best first, ties to the lower index
  std::vector<double> weights;  // [n, top_k]
  // [n] the smallest gap between selection (or group) scores at any decision the routing makes
  // (k-th vs (k+1)-th expert, consecutive chosen experts, kept vs dropped group). Tokens with a
  // tiny margin may legitimately route differently in fp32; tests skip them.
  std::vector<double> margin;
};

// Routes `n` tokens from double logits [n, n_experts]; `bias` [n_experts] or nullptr.
ReferenceRouting ReferenceRoute(const RoutingSpec& spec, const std::vector<double>& logits,
                                const float* bias, int64_t n);

struct ReferenceOutput {
  ReferenceRouting routing;
  std::vector<double> out;  // [n, hidden]
};

// The MoE layer `layer` of `model` on `x` [n, hidden].
ReferenceOutput ReferenceForward(const Model& model, int layer, const std::vector<float>& x,
                                 int64_t n);

}  // namespace moe::testing
