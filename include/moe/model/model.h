// A loaded MoE checkpoint: its spec and, for each MoE layer, views of its weights.
// Weights are views into read-only mmap'd safetensors files owned by the Model; nothing is copied.
//
// Thread safety: a Model is immutable after Open(); every const method is safe from any thread.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "moe/common/dtype.h"
#include "moe/common/status.h"
#include "moe/model/spec.h"

namespace moe {

// A contiguous row-major tensor inside a mapped file (or any host memory the owner keeps alive).
struct TensorView {
  std::string name;            // checkpoint tensor name (with a [e] suffix for a slice of a fused tensor)
  DType dtype = DType::kBF16;
  std::vector<int64_t> shape;  // row-major
  const void* data = nullptr;
  int64_t nbytes = 0;

  int64_t numel() const;
  int64_t dim(int i) const { return shape[static_cast<size_t>(i)]; }
};

// One SwiGLU FFN: down(silu(gate(x)) * up(x)). Matrices in torch Linear layout [out, in]:
//   gate [inter, hidden], up [inter, hidden], down [hidden, inter].
struct ExpertWeights {
  TensorView gate;
  TensorView up;
  TensorView down;
  // F8_E4M3 weights only (MoeSpec::quant_block_out > 0): the weight_scale_inv tensors.
  std::optional<TensorView> gate_scale;
  std::optional<TensorView> up_scale;
  std::optional<TensorView> down_scale;
  int intermediate() const { return static_cast<int>(gate.dim(0)); }
};

// Weights of one MoE layer, addressable per expert (the expert cache moves them one by one).
struct MoeLayerWeights {
  int layer = -1;                          // decoder layer index
  TensorView router;                       // [n_experts, hidden]
  std::optional<TensorView> correction_bias;  // [n_experts] F32 usually (DeepSeek-V3 only)
  std::vector<ExpertWeights> experts;      // [n_experts]
  std::optional<ExpertWeights> shared;     // shared experts (one fused MLP), if the family has them
  std::optional<TensorView> shared_gate;   // [1, hidden] (Qwen2-MoE only)
};

class Model {
 public:
  // Opens a Hugging Face checkpoint directory: config.json plus model.safetensors or shards listed
  // by model.safetensors.index.json. Every shard is mmap'd read-only (MAP_SHARED). Fails with
  // INVALID_ARGUMENT / NOT_FOUND / DATA_LOSS and a message naming the file, tensor and problem
  // (UNIMPLEMENTED for quantisation other than block-wise fp8). Tensor bytes are not read.
  // Details: moe/store/safetensors.h, moe/store/checkpoint.h, moe/model/config.h,
  // moe/model/loader.h (implemented in src/model/loader.cc).
  static StatusOr<std::unique_ptr<Model>> Open(const std::string& dir);

  // Builds a model from a spec and weights kept alive by `keepalive` (tests, generated models).
  static std::unique_ptr<Model> FromWeights(MoeSpec spec, std::vector<MoeLayerWeights> layers,
                                            std::shared_ptr<const void> keepalive);

  ~Model();
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;

  const MoeSpec& spec() const { return spec_; }
  const std::string& dir() const { return dir_; }
  // The weights of decoder layer `layer`, or nullptr if it is not a MoE layer of this model.
  const MoeLayerWeights* layer(int layer) const;
  const std::vector<MoeLayerWeights>& layers() const { return layers_; }
  // Total bytes of mapped checkpoint files.
  int64_t mapped_bytes() const { return mapped_bytes_; }

 private:
  Model() = default;
  friend class ModelLoader;
  MoeSpec spec_;
  std::string dir_;
  std::vector<MoeLayerWeights> layers_;  // ascending by layer
  std::map<int, size_t> index_;          // layer -> position in layers_
  int64_t mapped_bytes_ = 0;
  std::shared_ptr<const void> keepalive_;  // mapped files (or test buffers)
};

}  // namespace moe
