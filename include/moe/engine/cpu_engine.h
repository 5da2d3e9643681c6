// The CPU engine: the reference every other engine is tested against, and the engine used where
// there is no GPU. One MoE layer forward for a batch of tokens, every family of moe/model/spec.h.
//
// What Forward() computes (per token x, fp32 throughout, one rounding to the output dtype at the
// end):
//   1. logits = x · routerᵀ (fp32); Qwen2-MoE's shared_expert_gate is computed as an extra router
//   row.
//   2. (ids, weights) = Route(spec.routing, logits, correction_bias)  (moe/engine/routing.h).
//   3. routed = sum over j = 0..top_k-1, IN THAT ORDER, of weights[j] * FFN_{ids[j]}(x), where
//      FFN(x) = down(silu(gate(x)) * up(x)) (SwiGLU, torch Linear [out, in] matrices).
//   4. out = routed + s * Shared(x), s = sigmoid(x · shared_expert_gate) for Qwen2-MoE, 1 for
//   DeepSeek;
//      no term for families without shared experts.
// Tokens are grouped by expert (counts, offsets), each expert's rows go through its GEMMs together
// and are combined back per token; nothing of size [n_tokens, n_experts, ...] is materialised.
//
// Batch invariance: with GemmBackend::kFixedOrder (the default) a token's output, ids and weights
// are bitwise identical whatever else is in the batch and wherever the token sits in it: every GEMM
// element is one fixed FMA chain (src/engine/cpu/fixed_gemm.h), routing is per token, and the
// combine order is fixed. kOpenBlas is faster on large batches but OpenBLAS's sgemm is not
// row-invariant (a token's last bits depend on its batch), so it is opt-in.
//
// Memory: Create() converts every weight of every MoE layer to fp32 once (4 bytes per parameter,
// plus zero padding of each matrix's output dimension to a multiple of 32 with kFixedOrder): twice
// the checkpoint's bytes for BF16/F16 weights. Per slot, workspaces for
// min(max_batch_tokens, 512) tokens are allocated at Create(); larger batches run in chunks of that
// size (chunking does not change results).
//
// Threads: one pool of num_threads - 1 workers shared by all slots; each Forward() also works on
// its own tasks. With kOpenBlas, OpenBLAS is set to one thread process-wide
// (openblas_set_num_threads(1)) so its threads do not oversubscribe the cores our pool already
// uses.
//
// Thread safety: Forward() may be called concurrently from different slots; calls on the same slot
// must not overlap. Everything else is immutable after Create().
#pragma once

#include <cstdint>
#include <memory>
#include <string_view>
#include <vector>

#include "moe/common/status.h"
#include "moe/engine/engine.h"
#include "moe/model/model.h"

namespace moe {

struct CpuEngineOptions {
  enum class GemmBackend : uint8_t {
    kFixedOrder,  // our fixed-order kernels: batch invariant, bit for bit (default)
    kOpenBlas,    // cblas_sgemm: faster for large batches, NOT batch invariant
  };
  int num_threads = 0;              // 0 = every core (std::thread::hardware_concurrency())
  int num_slots = 1;                // concurrent Forward() calls allowed
  int64_t max_batch_tokens = 4096;  // largest n_tokens one Forward() accepts
  GemmBackend gemm = GemmBackend::kFixedOrder;
};

class CpuEngine : public Engine {
 public:
  // Builds the engine for every MoE layer of `model` (kept alive by the engine).
  // INVALID_ARGUMENT for F8_E4M3 weights ("F8_E4M3 weights are not supported by the CPU engine
  // yet"), tensors whose dtype or shape does not match the spec, a routing spec that cannot be
  // routed (ValidateRoutingSpec), or options out of range (num_threads < 0, num_slots < 1,
  // max_batch_tokens < 1).
  static StatusOr<std::unique_ptr<CpuEngine>> Create(std::shared_ptr<const Model> model,
                                                     const CpuEngineOptions& options);
  ~CpuEngine() override;

  std::string_view name() const override { return "cpu"; }
  const MoeSpec& spec() const override;
  int num_slots() const override;
  int64_t max_batch_tokens() const override;
  // See the file comment. Errors: those of ValidateForwardArgs.
  Status Forward(const ForwardArgs& args) override;

  // Bytes of fp32 weights held (converted and packed at Create()).
  int64_t weight_bytes() const;
  // Bytes of per-slot workspaces, all slots together.
  int64_t workspace_bytes() const;
  // Threads computing a Forward(): the pool's workers plus the caller.
  int num_threads() const;
  // Floating-point operations of the expert FFNs (routed + shared) and the router for `n_tokens`
  // tokens: 2 * n * (hidden * (n_experts + top_k * 3 * inter) + 3 * hidden * shared_inter).
  double FlopsPerForward(int64_t n_tokens) const;

 private:
  struct Impl;
  explicit CpuEngine(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace moe
