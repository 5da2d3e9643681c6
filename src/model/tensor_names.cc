#include "model/tensor_names.h"

#include <cstdlib>

#include "absl/strings/str_cat.h"

namespace moe::model_internal {

namespace {

bool StartsWith(const std::string& s, const std::string& prefix) {
  return s.compare(0, prefix.size(), prefix) == 0;
}
bool EndsWith(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}
bool Contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

}  // namespace

ProjectionNames RoutedProjections(Family family) {
  if (family == Family::kMixtral) return {"w1", "w3", "w2"};
  return {"gate_proj", "up_proj", "down_proj"};
}

std::vector<std::string> MoeBlockPrefixes(Family family, int layer) {
  const std::string base = absl::StrCat("model.layers.", layer, ".");
  if (family == Family::kMixtral) return {base + "block_sparse_moe", base + "mlp"};
  return {base + "mlp"};
}

MoeBlockNames BlockNames(Family family, const std::string& block) {
  MoeBlockNames n;
  n.block = block;
  n.router = block + ".gate.weight";
  n.correction_bias = block + ".gate.e_score_correction_bias";
  n.fused_gate_up = block + ".experts.gate_up_proj";
  n.fused_down = block + ".experts.down_proj";
  if (family == Family::kQwen2Moe) {
    n.shared_prefix = block + ".shared_expert.";
    n.shared_gate = block + ".shared_expert_gate.weight";
  } else if (family == Family::kDeepseekV2 || family == Family::kDeepseekV3) {
    n.shared_prefix = block + ".shared_experts.";
  }
  n.routed = RoutedProjections(family);
  return n;
}

std::string MoeBlockNames::Expert(int e, const char* proj) const {
  return absl::StrCat(block, ".experts.", e, ".", proj, ".weight");
}

std::string MoeBlockNames::Shared(const char* proj) const {
  return absl::StrCat(shared_prefix, proj, ".weight");
}

std::string ScaleName(const std::string& weight_name) { return weight_name + "_scale_inv"; }

const char* TensorKindName(TensorKind kind) {
  switch (kind) {
    case TensorKind::kRouter:
      return "router";
    case TensorKind::kCorrectionBias:
      return "correction bias";
    case TensorKind::kRoutedExpert:
      return "routed expert";
    case TensorKind::kSharedExpert:
      return "shared expert";
    case TensorKind::kSharedGate:
      return "shared expert gate";
    case TensorKind::kQuantScale:
      return "quantisation scale";
    case TensorKind::kDenseMlp:
      return "dense MLP";
    case TensorKind::kAttention:
      return "attention";
    case TensorKind::kNorm:
      return "norm";
    case TensorKind::kEmbedding:
      return "embedding";
    case TensorKind::kLmHead:
      return "lm head";
    case TensorKind::kOther:
      return "other";
  }
  return "?";
}

TensorKind ClassifyTensor(const std::string& name, int* layer) {
  *layer = -1;
  if (StartsWith(name, "lm_head.")) return TensorKind::kLmHead;
  if (Contains(name, "embed_tokens.")) return TensorKind::kEmbedding;
  if (EndsWith(name, "_scale_inv") || EndsWith(name, ".weight_scale") ||
      EndsWith(name, ".input_scale")) {
    const std::string prefix = "model.layers.";
    if (StartsWith(name, prefix)) *layer = std::atoi(name.c_str() + prefix.size());
    return TensorKind::kQuantScale;
  }
  const std::string prefix = "model.layers.";
  if (!StartsWith(name, prefix)) {
    return Contains(name, "norm") ? TensorKind::kNorm : TensorKind::kOther;
  }
  size_t dot = name.find('.', prefix.size());
  if (dot == std::string::npos) return TensorKind::kOther;
  const std::string index = name.substr(prefix.size(), dot - prefix.size());
  if (index.empty() || index.find_first_not_of("0123456789") != std::string::npos) {
    return TensorKind::kOther;
  }
  *layer = std::atoi(index.c_str());
  const std::string rest = name.substr(dot + 1);
  if (StartsWith(rest, "self_attn.")) return TensorKind::kAttention;
  if (Contains(rest, "norm")) return TensorKind::kNorm;
  for (const char* block : {"mlp.", "block_sparse_moe."}) {
    if (!StartsWith(rest, block)) continue;
    const std::string inner = rest.substr(std::string(block).size());
    if (inner == "gate.weight") return TensorKind::kRouter;
    if (inner == "gate.e_score_correction_bias") return TensorKind::kCorrectionBias;
    if (StartsWith(inner, "experts.")) return TensorKind::kRoutedExpert;
    if (StartsWith(inner, "shared_expert_gate.")) return TensorKind::kSharedGate;
    if (StartsWith(inner, "shared_expert.") || StartsWith(inner, "shared_experts.")) {
      return TensorKind::kSharedExpert;
    }
    if (StartsWith(inner, "gate_proj.") || StartsWith(inner, "up_proj.") ||
        StartsWith(inner, "down_proj.")) {
      return TensorKind::kDenseMlp;
    }
  }
  return TensorKind::kOther;
}

}  // namespace moe::model_internal
