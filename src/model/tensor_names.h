// Checkpoint tensor names of the MoE blocks of each family, in both layouts:
//   per-expert (as published on the Hub):  <block>.experts.<e>.<gate|up|down>.weight
//   fused (transformers v5 in memory):     <block>.experts.gate_up_proj [E, 2*inter, hidden]
//                                          <block>.experts.down_proj    [E, hidden, inter]
// where <block> is model.layers.<L>.mlp, or model.layers.<L>.block_sparse_moe for Mixtral as
// published (transformers v5 renames it to mlp).
#pragma once

#include <string>
#include <vector>

#include "moe/model/spec.h"

namespace moe::model_internal {

// The projection names of one SwiGLU MLP in a family's per-expert tensors.
struct ProjectionNames {
  const char* gate;  // "w1" or "gate_proj"
  const char* up;    // "w3" or "up_proj"
  const char* down;  // "w2" or "down_proj"
};
ProjectionNames RoutedProjections(Family family);

// Candidate <block> prefixes of decoder layer `layer`, in the order they are tried.
std::vector<std::string> MoeBlockPrefixes(Family family, int layer);

// Names under one <block>.
struct MoeBlockNames {
  std::string block;
  std::string router;           // <block>.gate.weight [E, hidden]
  std::string correction_bias;  // <block>.gate.e_score_correction_bias [E] (deepseek_v3)
  std::string fused_gate_up;    // <block>.experts.gate_up_proj
  std::string fused_down;       // <block>.experts.down_proj
  std::string shared_prefix;    // <block>.shared_expert(s). (families with shared experts)
  std::string shared_gate;      // <block>.shared_expert_gate.weight [1, hidden] (qwen2_moe)
  ProjectionNames routed;

  // <block>.experts.<e>.<proj>.weight
  std::string Expert(int e, const char* proj) const;
  // <shared_prefix><proj>.weight with gate_proj/up_proj/down_proj
  std::string Shared(const char* proj) const;
};
MoeBlockNames BlockNames(Family family, const std::string& block);

// Name of the scale tensor of an F8 weight: "<x>.weight" -> "<x>.weight_scale_inv".
std::string ScaleName(const std::string& weight_name);

// What a checkpoint tensor is, from its name alone (for the inventory).
enum class TensorKind {
  kRouter,
  kCorrectionBias,
  kRoutedExpert,
  kSharedExpert,
  kSharedGate,
  kQuantScale,
  kDenseMlp,
  kAttention,
  kNorm,
  kEmbedding,
  kLmHead,
  kOther,
};
const char* TensorKindName(TensorKind kind);
// Classifies `name`; sets `*layer` to its decoder layer, or -1.
TensorKind ClassifyTensor(const std::string& name, int* layer);

}  // namespace moe::model_internal
