// One MoE layer's weights, validated against the spec and converted to fp32 once, in the layout the
// CPU engine's GEMM backend wants: panels for the fixed-order kernel (fixed_gemm.h), plain
// row-major [out, in] for OpenBLAS.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "engine/cpu/fixed_gemm.h"
#include "engine/cpu/thread_pool.h"
#include "moe/common/status.h"
#include "moe/model/model.h"

namespace moe::cpu {

// An fp32 matrix W [n, k] (torch Linear [out, in]) in one of the two layouts.
struct Fp32Matrix {
  int64_t n = 0;
  int64_t k = 0;
  PackedMatrix packed;  // fixed-order backend: panels
  AlignedFloats plain;  // OpenBLAS backend: row-major [n, k]
  int64_t bytes() const;
};

// A SwiGLU FFN: down(silu(gate(x)) * up(x)).
struct Fp32Ffn {
  int64_t inter = 0;
  Fp32Matrix gate;  // [inter, hidden]
  Fp32Matrix up;    // [inter, hidden]
  Fp32Matrix down;  // [hidden, inter]
};

struct PreparedLayer {
  int layer = -1;
  // [n_experts (+1), hidden], always panels: the router, followed for Qwen2-MoE by the
  // shared_expert_gate row (so its logit comes out of the same row-invariant GEMM).
  PackedMatrix router;
  int64_t shared_gate_row = -1;        // row of `router` holding shared_expert_gate, or -1
  std::vector<float> correction_bias;  // [n_experts], empty unless routing.has_correction_bias
  std::vector<Fp32Ffn> experts;        // [n_experts]
  std::optional<Fp32Ffn> shared;       // shared experts fused into one FFN
  int64_t bytes() const;
};

// Checks `weights` against `spec` (shapes, dtypes, presence of the shared expert, its gate and the
// correction bias) and converts them. INVALID_ARGUMENT naming the tensor on any mismatch, and for
// F8_E4M3 weights. Conversion runs on `pool`.
StatusOr<PreparedLayer> PrepareLayer(const MoeSpec& spec, const MoeLayerWeights& weights,
                                     bool plain_experts, ThreadPool& pool);

}  // namespace moe::cpu
