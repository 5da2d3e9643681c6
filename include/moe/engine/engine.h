// The engine interface: one MoE layer forward for a batch of tokens. The CPU engine
// (src/engine/cpu) is the reference; the CUDA engine (src/engine/cuda) must match it.
//
// Thread safety: Forward() may be called concurrently from different slots (one per swarm worker);
// calls on the same slot must not overlap.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "moe/common/dtype.h"
#include "moe/common/status.h"
#include "moe/model/model.h"

namespace moe {

struct ForwardArgs {
  int layer = -1;                     // decoder layer index; must be a MoE layer of the model
  DType dtype = DType::kBF16;         // activation dtype of `input` and `output` (F32, F16, BF16)
  int64_t n_tokens = 0;               // > 0
  const void* input = nullptr;        // [n_tokens, hidden] host memory, row-major
  void* output = nullptr;             // [n_tokens, hidden] host memory, same dtype
  int32_t* expert_ids = nullptr;      // optional out: [n_tokens, top_k] chosen experts, best first
  float* expert_weights = nullptr;    // optional out: [n_tokens, top_k] their final weights
  int slot = 0;                       // execution slot in [0, Engine::num_slots())
  double* routing_seconds = nullptr;  // optional out: wall time of routing (router GEMM through
                                      // top-k) in this call; engines that cannot time it leave it
};

class Engine {
 public:
  virtual ~Engine() = default;
  // "cpu" or "cuda".
  virtual std::string_view name() const = 0;
  virtual const MoeSpec& spec() const = 0;
  // How many Forward() calls may run at once (one per slot).
  virtual int num_slots() const = 0;
  // The largest n_tokens one Forward() accepts (workspaces are sized from it).
  virtual int64_t max_batch_tokens() const = 0;
  // Computes output = MoE_layer(input). INVALID_ARGUMENT for a bad layer, dtype or shape;
  // RESOURCE_EXHAUSTED when device memory runs out; INTERNAL for device faults.
  virtual Status Forward(const ForwardArgs& args) = 0;
};

// Checks the parts of `args` every engine checks the same way (layer, dtype, sizes, pointers).
Status ValidateForwardArgs(const MoeSpec& spec, const ForwardArgs& args, int num_slots,
                           int64_t max_batch_tokens);

}  // namespace moe
