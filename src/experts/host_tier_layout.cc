// HostCopyPlan: per-expert copy lists, merged where the checkpoint keeps matrices back to back.
#include "moe/experts/host_tier_layout.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace moe::experts {
namespace {

constexpr const char* kMatrixNames[3] = {"gate", "up", "down"};

int64_t AlignUp(int64_t v) { return (v + kSlotAlignBytes - 1) / kSlotAlignBytes * kSlotAlignBytes; }

// Slot offsets of the matrices for one order (order[i] = matrix at position i).
SlotLayout LayoutFor(const std::array<int, 3>& order, int64_t matrix_bytes) {
  SlotLayout l;
  l.matrix_bytes = matrix_bytes;
  int64_t offsets[3] = {};
  int64_t at = 0;
  for (int pos = 0; pos < 3; ++pos) {
    offsets[order[pos]] = at;
    at = AlignUp(at + matrix_bytes);
  }
  l.gate_offset = offsets[0];
  l.up_offset = offsets[1];
  l.down_offset = offsets[2];
  l.slot_bytes = at;
  return l;
}

int64_t OffsetOf(const SlotLayout& l, int matrix) {
  return matrix == 0 ? l.gate_offset : matrix == 1 ? l.up_offset : l.down_offset;
}

// The copies of one expert whose matrices start at src[0..2], in slot order, merged when a matrix
// follows the previous one both in the file and in the slot. Returns the count.
int MergeCopies(const std::array<const uint8_t*, 3>& src, const std::array<int, 3>& order,
                const SlotLayout& l, std::array<HostCopy, 3>* out) {
  int n = 0;
  for (int pos = 0; pos < 3; ++pos) {
    const int m = order[pos];
    const int64_t dst = OffsetOf(l, m);
    if (n > 0) {
      HostCopy& last = (*out)[static_cast<size_t>(n - 1)];
      if (last.src + last.bytes == src[static_cast<size_t>(m)] &&
          last.dst_offset + last.bytes == dst) {
        last.bytes += l.matrix_bytes;
        continue;
      }
    }
    (*out)[static_cast<size_t>(n++)] = HostCopy{src[static_cast<size_t>(m)], dst, l.matrix_bytes};
  }
  return n;
}

Status CheckMatrix(const TensorView& t, DType dtype, int64_t rows, int64_t cols, int64_t bytes,
                   const std::string& what) {
  if (t.data == nullptr || t.shape.size() != 2 || t.dim(0) != rows || t.dim(1) != cols ||
      t.dtype != dtype || t.nbytes != bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "host tier: ", what, " (tensor '", t.name, "') must be ", std::string(DTypeName(dtype)),
        " [", rows, ", ", cols, "] of ", bytes, " bytes with data"));
  }
  return absl::OkStatus();
}

}  // namespace

StatusOr<HostCopyPlan> HostCopyPlan::Build(const Model& model) {
  const MoeSpec& spec = model.spec();
  if (spec.quant_block_out > 0 || spec.weight_dtype == DType::kF8E4M3) {
    return absl::UnimplementedError(
        "host tier: quantised (F8) experts are not served: their scales have no place in a slot");
  }
  if (spec.moe_layers.empty() || spec.n_experts() <= 0 || spec.hidden <= 0 ||
      spec.moe_intermediate <= 0) {
    return absl::InvalidArgumentError("host tier: the model has no routed experts");
  }
  HostCopyPlan plan;
  plan.n_experts_ = spec.n_experts();
  plan.layers_.assign(spec.moe_layers.begin(), spec.moe_layers.end());
  std::sort(plan.layers_.begin(), plan.layers_.end());
  if (plan.layers_.front() < 0) {
    return absl::InvalidArgumentError("host tier: negative MoE layer index");
  }
  plan.layer_pos_.assign(static_cast<size_t>(plan.layers_.back()) + 1, -1);
  for (size_t i = 0; i < plan.layers_.size(); ++i) {
    if (plan.layer_pos_[static_cast<size_t>(plan.layers_[i])] >= 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("host tier: MoE layer ", plan.layers_[i], " listed twice"));
    }
    plan.layer_pos_[static_cast<size_t>(plan.layers_[i])] = static_cast<int32_t>(i);
  }

  const int64_t h = spec.hidden, inter = spec.moe_intermediate;
  const int64_t matrix_bytes = h * inter * static_cast<int64_t>(DTypeSize(spec.weight_dtype));
  const size_t n_keys = plan.layers_.size() * static_cast<size_t>(plan.n_experts_);
  // Source address of each matrix of each expert, [n_keys][gate, up, down].
  std::vector<std::array<const uint8_t*, 3>> src(n_keys);
  for (size_t li = 0; li < plan.layers_.size(); ++li) {
    const int32_t layer = plan.layers_[li];
    const MoeLayerWeights* w = model.layer(layer);
    if (w == nullptr || static_cast<int32_t>(w->experts.size()) != plan.n_experts_) {
      return absl::InvalidArgumentError(absl::StrCat(
          "host tier: MoE layer ", layer, " has no weights or not ", plan.n_experts_, " experts"));
    }
    for (int32_t e = 0; e < plan.n_experts_; ++e) {
      const ExpertWeights& x = w->experts[static_cast<size_t>(e)];
      const std::string what = absl::StrCat("layer ", layer, " expert ", e, " ");
      MOE_RETURN_IF_ERROR(
          CheckMatrix(x.gate, spec.weight_dtype, inter, h, matrix_bytes, what + "gate"));
      MOE_RETURN_IF_ERROR(
          CheckMatrix(x.up, spec.weight_dtype, inter, h, matrix_bytes, what + "up"));
      MOE_RETURN_IF_ERROR(
          CheckMatrix(x.down, spec.weight_dtype, h, inter, matrix_bytes, what + "down"));
      src[li * static_cast<size_t>(plan.n_experts_) + static_cast<size_t>(e)] = {
          static_cast<const uint8_t*>(x.gate.data), static_cast<const uint8_t*>(x.up.data),
          static_cast<const uint8_t*>(x.down.data)};
    }
  }

  // The slot order with the fewest copies over all experts (next_permutation visits gate, up,
  // down first, so ties keep it).
  std::array<int, 3> order = {0, 1, 2};
  std::array<int, 3> best = order;
  int64_t best_copies = -1;
  std::array<HostCopy, 3> scratch;
  do {
    const SlotLayout l = LayoutFor(order, matrix_bytes);
    int64_t copies = 0;
    for (const auto& s : src) copies += MergeCopies(s, order, l, &scratch);
    if (best_copies < 0 || copies < best_copies) {
      best_copies = copies;
      best = order;
    }
  } while (std::next_permutation(order.begin(), order.end()));

  plan.order_ = best;
  plan.layout_ = LayoutFor(best, matrix_bytes);
  plan.copies_.resize(n_keys);
  plan.n_copies_.resize(n_keys);
  for (size_t k = 0; k < n_keys; ++k) {
    plan.n_copies_[k] =
        static_cast<uint8_t>(MergeCopies(src[k], best, plan.layout_, &plan.copies_[k]));
  }
  plan.total_copies_ = best_copies;
  return plan;
}

Status HostCopyPlan::ValidateKey(const ExpertKey& key) const {
  if (key.layer < 0 || static_cast<size_t>(key.layer) >= layer_pos_.size() ||
      layer_pos_[static_cast<size_t>(key.layer)] < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("host tier: ", ToString(key), ": layer ", key.layer, " is not a MoE layer"));
  }
  if (key.expert < 0 || key.expert >= n_experts_) {
    return absl::InvalidArgumentError(absl::StrCat("host tier: ", ToString(key), ": expert ",
                                                   key.expert, " is not in [0, ", n_experts_, ")"));
  }
  return absl::OkStatus();
}

int64_t HostCopyPlan::Index(const ExpertKey& key) const {
  return int64_t{layer_pos_[static_cast<size_t>(key.layer)]} * n_experts_ + key.expert;
}

StatusOr<std::span<const HostCopy>> HostCopyPlan::Copies(const ExpertKey& key) const {
  MOE_RETURN_IF_ERROR(ValidateKey(key));
  const size_t i = static_cast<size_t>(Index(key));
  return std::span<const HostCopy>(copies_[i].data(), n_copies_[i]);
}

std::string HostCopyPlan::OrderName() const {
  return absl::StrCat(kMatrixNames[order_[0]], ",", kMatrixNames[order_[1]], ",",
                      kMatrixNames[order_[2]]);
}

}  // namespace moe::experts
