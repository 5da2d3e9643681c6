// Where the bytes of each routed expert come from (the host tier: the mmap'd checkpoint) and where
// they land in a GPU slot. Pure host code, no CUDA: the copy plan that HostExpertSource
// (host_tier.h) executes, testable without a device.
//
// A slot holds the three matrices of one expert at fixed, 256-byte aligned offsets (SlotLayout).
// The order of the matrices inside the slot follows the checkpoint: if one expert's gate, up and
// down sit back to back in the file (Hugging Face files are sorted by tensor name, so per-expert
// checkpoints store "<e>.down_proj, <e>.gate_proj, <e>.up_proj" contiguously), the slot uses that
// order and each miss is ONE host-to-device copy. Where the file keeps them apart (the fused
// gate_up_proj / down_proj layout, or an unusual writer), an expert is 2 or 3 copies of one
// matrix or more each (>= 2 MB for real models), which run at nearly the same bandwidth as one
// blob; nothing is repacked in host memory (that would double host memory and start-up time).
//
// Thread safety: a HostCopyPlan is immutable after Build(); const methods are safe from any
// thread.
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "moe/common/status.h"
#include "moe/experts/slot_pool.h"  // ExpertKey
#include "moe/model/model.h"

namespace moe::experts {

// Byte alignment of every matrix inside a slot (and of slot_bytes).
inline constexpr int64_t kSlotAlignBytes = 256;

// Where the bytes of one routed expert land inside its GPU slot: gate [inter, hidden], up
// [inter, hidden], down [hidden, inter] (torch Linear layout, the weight dtype), each at a fixed
// byte offset, identical for every (layer, expert) of a model. Offsets are multiples of
// kSlotAlignBytes; slot_bytes (>= 3 * matrix_bytes) is what one slot must hold, a multiple of
// kSlotAlignBytes: use it as the slot size of the pool (ShapeClass::expert_bytes), not
// MoeSpec::BytesPerExpert(), which has no padding.
struct SlotLayout {
  int64_t gate_offset = 0;
  int64_t up_offset = 0;
  int64_t down_offset = 0;
  int64_t slot_bytes = 0;
  int64_t matrix_bytes = 0;  // bytes of each of the three matrices (inter * hidden * dtype size)

  friend bool operator==(const SlotLayout&, const SlotLayout&) = default;
};

// One contiguous host-to-device copy: `bytes` bytes from host address `src` to byte offset
// `dst_offset` of the slot.
struct HostCopy {
  const uint8_t* src = nullptr;
  int64_t dst_offset = 0;
  int64_t bytes = 0;
};

// The copies of every routed expert of a model, merged where the file layout allows.
class HostCopyPlan {
 public:
  // Builds the plan of `model`'s routed experts (layers in spec().moe_layers). The slot order of
  // gate/up/down is the one (of six) with the fewest copies over all experts; ties prefer gate,
  // up, down. InvalidArgument when the model has no MoE layer or no expert, a layer lacks
  // weights, a matrix has a shape, dtype or byte size other than the spec's, or a pointer is null;
  // Unimplemented for quantised experts (F8 scales have no place in a slot).
  // `model` must outlive the plan (the plan points into its mapped files).
  static StatusOr<HostCopyPlan> Build(const Model& model);

  HostCopyPlan() = default;

  const SlotLayout& layout() const { return layout_; }
  // The copies of `key` in slot order (1 to 3 of them); each lies inside one matrix run of the
  // file. InvalidArgument when key.layer is not a MoE layer of the model or key.expert is out of
  // range.
  StatusOr<std::span<const HostCopy>> Copies(const ExpertKey& key) const;
  Status ValidateKey(const ExpertKey& key) const;
  // Position of a valid key (ValidateKey) among all experts, layer-major: the position of its
  // layer in layers() times n_experts() plus its expert.
  int64_t Index(const ExpertKey& key) const;

  // Decoder layer indices served (spec.moe_layers) and routed experts per layer.
  const std::vector<int32_t>& layers() const { return layers_; }
  int32_t n_experts() const { return n_experts_; }
  // Copies of all experts together (n_layers * n_experts when every expert is one blob).
  int64_t total_copies() const { return total_copies_; }
  // Matrices in slot order, e.g. {"down", "gate", "up"} (for logs and benchmarks).
  std::string OrderName() const;

 private:
  SlotLayout layout_;
  std::array<int, 3> order_ = {0, 1, 2};  // slot order of the matrices (0 gate, 1 up, 2 down)
  std::vector<int32_t> layers_;           // decoder layers served, ascending
  std::vector<int32_t> layer_pos_;        // [max layer + 1] position in layers_, or -1
  int32_t n_experts_ = 0;
  std::vector<std::array<HostCopy, 3>> copies_;  // [n_layers * n_experts]
  std::vector<uint8_t> n_copies_;                // [n_layers * n_experts], 1..3
  int64_t total_copies_ = 0;
};

}  // namespace moe::experts
