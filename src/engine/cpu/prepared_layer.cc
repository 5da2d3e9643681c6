#include "engine/cpu/prepared_layer.h"

#include <cstring>
#include <string>

namespace moe::cpu {
namespace {

constexpr char kF8Message[] = "F8_E4M3 weights are not supported by the CPU engine yet";

std::string ShapeString(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) absl::StrAppend(&s, i ? ", " : "", shape[i]);
  return s + "]";
}

// OK if `t` is a compute-dtype tensor of exactly `shape` with enough bytes behind it.
Status CheckTensor(const TensorView& t, const std::vector<int64_t>& shape, int layer,
                   const std::string& what) {
  if (t.dtype == DType::kF8E4M3) {
    return absl::InvalidArgumentError(
        absl::StrCat(kF8Message, " (layer ", layer, " ", what, " '", t.name, "')"));
  }
  if (!IsComputeDType(t.dtype)) {
    return absl::InvalidArgumentError(absl::StrCat("layer ", layer, " ", what, " '", t.name,
                                                   "' has dtype ", std::string(DTypeName(t.dtype)),
                                                   "; expected F32, F16 or BF16"));
  }
  if (t.shape != shape) {
    return absl::InvalidArgumentError(absl::StrCat("layer ", layer, " ", what, " '", t.name,
                                                   "' has shape ", ShapeString(t.shape),
                                                   "; expected ", ShapeString(shape)));
  }
  if (t.data == nullptr || t.nbytes < t.numel() * static_cast<int64_t>(DTypeSize(t.dtype))) {
    return absl::InvalidArgumentError(
        absl::StrCat("layer ", layer, " ", what, " '", t.name, "' has no data or too few bytes"));
  }
  return absl::OkStatus();
}

Status CheckFfn(const ExpertWeights& w, int64_t hidden, int64_t inter, int layer,
                const std::string& what) {
  MOE_RETURN_IF_ERROR(CheckTensor(w.gate, {inter, hidden}, layer, what + " gate"));
  MOE_RETURN_IF_ERROR(CheckTensor(w.up, {inter, hidden}, layer, what + " up"));
  return CheckTensor(w.down, {hidden, inter}, layer, what + " down");
}

Fp32Matrix Convert(const TensorView& t, bool plain) {
  Fp32Matrix m;
  m.n = t.dim(0);
  m.k = t.dim(1);
  if (plain) {
    m.plain = AllocateFloats(m.n * m.k);
    ConvertToF32(t.dtype, t.data, m.plain.get(), static_cast<size_t>(m.n * m.k));
  } else {
    m.packed = PackMatrix(t.data, t.dtype, m.n, m.k);
  }
  return m;
}

Fp32Ffn ConvertFfn(const ExpertWeights& w, bool plain) {
  Fp32Ffn f;
  f.inter = w.gate.dim(0);
  f.gate = Convert(w.gate, plain);
  f.up = Convert(w.up, plain);
  f.down = Convert(w.down, plain);
  return f;
}

int64_t FfnBytes(const Fp32Ffn& f) { return f.gate.bytes() + f.up.bytes() + f.down.bytes(); }

}  // namespace

int64_t Fp32Matrix::bytes() const {
  return plain ? n * k * static_cast<int64_t>(sizeof(float)) : packed.bytes();
}

int64_t PreparedLayer::bytes() const {
  int64_t total = router.bytes() + static_cast<int64_t>(correction_bias.size() * sizeof(float));
  for (const Fp32Ffn& e : experts) total += FfnBytes(e);
  if (shared) total += FfnBytes(*shared);
  return total;
}

StatusOr<PreparedLayer> PrepareLayer(const MoeSpec& spec, const MoeLayerWeights& w,
                                     bool plain_experts, ThreadPool& pool) {
  const int layer = w.layer;
  const int64_t hidden = spec.hidden;
  const int64_t n_experts = spec.n_experts();
  if (spec.weight_dtype == DType::kF8E4M3) {
    return absl::InvalidArgumentError(absl::StrCat(kF8Message, " (model weight dtype F8_E4M3)"));
  }
  if (hidden <= 0 || spec.moe_intermediate <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("spec: hidden (", hidden,
                                                   ") and moe_intermediate (",
                                                   spec.moe_intermediate, ") must be > 0"));
  }
  // Validate everything before converting anything.
  MOE_RETURN_IF_ERROR(CheckTensor(w.router, {n_experts, hidden}, layer, "router"));
  if (static_cast<int64_t>(w.experts.size()) != n_experts) {
    return absl::InvalidArgumentError(absl::StrCat("layer ", layer, " has ", w.experts.size(),
                                                   " experts; the spec says ", n_experts));
  }
  for (int64_t e = 0; e < n_experts; ++e) {
    MOE_RETURN_IF_ERROR(CheckFfn(w.experts[static_cast<size_t>(e)], hidden, spec.moe_intermediate,
                                 layer, absl::StrCat("expert ", e)));
  }
  if (spec.shared_intermediate > 0) {
    if (!w.shared) {
      return absl::InvalidArgumentError(absl::StrCat(
          "layer ", layer, ": the spec has a shared expert but the weights have none"));
    }
    MOE_RETURN_IF_ERROR(
        CheckFfn(*w.shared, hidden, spec.shared_intermediate, layer, "shared expert"));
  } else if (w.shared) {
    return absl::InvalidArgumentError(absl::StrCat(
        "layer ", layer, ": the weights have a shared expert but spec.shared_intermediate is 0"));
  }
  if (spec.shared_expert_gate) {
    if (!w.shared_gate || spec.shared_intermediate <= 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("layer ", layer,
                       ": the spec has a shared_expert_gate but no shared expert or gate weights"));
    }
    MOE_RETURN_IF_ERROR(CheckTensor(*w.shared_gate, {1, hidden}, layer, "shared_expert_gate"));
  }
  if (spec.routing.has_correction_bias) {
    if (!w.correction_bias) {
      return absl::InvalidArgumentError(absl::StrCat(
          "layer ", layer, ": the spec has an e_score_correction_bias but the weights have none"));
    }
    MOE_RETURN_IF_ERROR(CheckTensor(*w.correction_bias, {n_experts}, layer, "correction bias"));
  }

  PreparedLayer out;
  out.layer = layer;
  // Router (+ shared gate row), always panels.
  const int64_t router_rows = n_experts + (spec.shared_expert_gate ? 1 : 0);
  std::vector<float> router(static_cast<size_t>(router_rows * hidden));
  ConvertToF32(w.router.dtype, w.router.data, router.data(),
               static_cast<size_t>(n_experts * hidden));
  if (spec.shared_expert_gate) {
    out.shared_gate_row = n_experts;
    ConvertToF32(w.shared_gate->dtype, w.shared_gate->data, router.data() + n_experts * hidden,
                 static_cast<size_t>(hidden));
  }
  out.router = PackMatrix(router.data(), DType::kF32, router_rows, hidden);
  if (spec.routing.has_correction_bias) {
    out.correction_bias.resize(static_cast<size_t>(n_experts));
    ConvertToF32(w.correction_bias->dtype, w.correction_bias->data, out.correction_bias.data(),
                 static_cast<size_t>(n_experts));
  }
  // Experts (+ shared) converted in parallel; index n_experts is the shared expert.
  out.experts.resize(static_cast<size_t>(n_experts));
  if (w.shared) out.shared.emplace();
  pool.ParallelFor(n_experts + (w.shared ? 1 : 0), [&](int64_t e) {
    if (e == n_experts) {
      *out.shared = ConvertFfn(*w.shared, plain_experts);
    } else {
      out.experts[static_cast<size_t>(e)] =
          ConvertFfn(w.experts[static_cast<size_t>(e)], plain_experts);
    }
  });
  return out;
}

}  // namespace moe::cpu
