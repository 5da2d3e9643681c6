// The weights of every MoE layer on the device, reached through per-(layer, expert) pointer tables.
//
// Each layer lives in one allocation, but kernels never assume that: they read the address of each
// (layer, expert) matrix from the tables below, so an expert cache can later place experts
// anywhere. The router of each layer is stored as [router_rows, 2 * hidden] in the weight dtype:
// rows 0..n_experts-1 are the router, row n_experts the Qwen2-MoE shared-expert gate (if any), and
// the second half of each row repeats the first (it multiplies the low part of split activations).
#pragma once

#include <cstdint>
#include <map>
#include <vector>

#include "engine/cuda/cuda_raii.h"
#include "kernels/moe_kernels.h"
#include "moe/model/model.h"

namespace moe::cuda {

struct DeviceWeights {
  WType wtype = WType::kBF16;
  int n_layers = 0;
  int n_experts = 0;
  int hidden = 0;
  int inter = 0;
  int shared_inter = 0;  // 0: no shared expert
  int router_rows = 0;   // n_experts (+1 with a shared-expert gate)
  bool has_bias = false;
  // False with an expert cache: the routed experts are not uploaded and the gate/up/down tables
  // hold null pointers (the cache builds per-round tables instead).
  bool routed_resident = true;
  // The routed experts' matrices are in kernels/weight_layout.h's kPacked layout (Pack).
  bool packed = false;
  std::map<int, int> layer_pos;  // decoder layer index -> position in the tables

  std::vector<DeviceBuffer> blobs;  // one per layer
  // Device arrays of device pointers (const void*):
  DeviceBuffer gate_table;         // [n_layers * n_experts]
  DeviceBuffer up_table;           // [n_layers * n_experts]
  DeviceBuffer down_table;         // [n_layers * n_experts]
  DeviceBuffer router_table;       // [n_layers]
  DeviceBuffer shared_gate_table;  // [n_layers] (shared expert's gate projection)
  DeviceBuffer shared_up_table;    // [n_layers]
  DeviceBuffer shared_down_table;  // [n_layers]
  DeviceBuffer bias;               // f32 [n_layers * n_experts] (has_bias)
  // TMA descriptors of every routed expert matrix (kernels/tensor_map.h), read by the kWgmmaWsMc
  // GEMM tile: tables [n_layers * n_experts] of device pointers into `tensor_maps`. Empty until
  // BuildTensorMaps.
  DeviceBuffer tensor_maps;
  DeviceBuffer gate_tmap_table;
  DeviceBuffer up_tmap_table;
  DeviceBuffer down_tmap_table;
  int64_t device_bytes = 0;

  const void* const* table(const DeviceBuffer& b) const {
    return static_cast<const void* const*>(b.get());
  }

  // Checks that the engine supports `spec` (dtypes, sizes, routing limits).
  static Status CheckSpec(const MoeSpec& spec);
  // Copies every MoE layer of `model` to the current device; routers, shared experts and biases
  // only when `routed_experts` is false (the routed experts' shapes are still checked).
  static StatusOr<DeviceWeights> Upload(const Model& model, cudaStream_t stream,
                                        bool routed_experts = true);
  // Whether Pack can pack the routed experts (resident, hidden and inter multiples of 128).
  bool CanPack() const;
  // Rewrites every routed expert matrix in place in the kPacked layout (through one matrix of
  // scratch device memory) and sets `packed`; returns when done. Call before BuildTensorMaps.
  Status Pack(cudaStream_t stream);
  // Encodes the TMA descriptors of the routed experts (resident weights only; 4-D descriptors of
  // the packed layout when packed) and fills the *_tmap_table tables; returns when they are on the
  // device.
  Status BuildTensorMaps(cudaStream_t stream);
  // Generates weights for the layers in spec.moe_layers on the current device.
  static StatusOr<DeviceWeights> Random(const MoeSpec& spec, uint64_t seed, cudaStream_t stream);
};

}  // namespace moe::cuda
