// config.json -> MoeSpec for every supported family, with the keys and defaults of transformers'
// configuration_<family>.py (a key that is absent or null takes transformers' default):
//
//   family       experts / top-k / widths                         routing
//   mixtral      num_local_experts, num_experts_per_tok,          softmax, top-k, renormalise
//                intermediate_size
//   qwen2_moe    num_experts, num_experts_per_tok,                softmax, top-k, renormalise iff
//                moe_intermediate_size,                           norm_topk_prob; shared expert
//                shared_expert_intermediate_size                  with sigmoid gate
//   qwen3_moe    num_experts (or num_local_experts), ...          softmax, top-k, norm_topk_prob
//   deepseek_v2  n_routed_experts, n_shared_experts,              softmax, greedy or
//                moe_intermediate_size                            group_limited_greedy (n_group,
//                                                                 topk_group),
//                                                                 routed_scaling_factor
//   deepseek_v3  as deepseek_v2                                   sigmoid, noaux_tc with
//                                                                 e_score_correction_bias,
//                                                                 norm_topk_prob, scaling factor
//   olmoe        num_experts, num_experts_per_tok,                softmax, top-k, norm_topk_prob
//                intermediate_size
//
// MoE layers (dense layers are not served):
//   mixtral, olmoe: every layer.
//   qwen2_moe, qwen3_moe: layer i iff i not in mlp_only_layers, num_experts > 0 and
//     (i + 1) % decoder_sparse_step == 0.
//   deepseek_v2, deepseek_v3: layer i iff i >= first_k_dense_replace (transformers' rule; a
//     moe_layer_freq other than 1, which DeepSeek's own code would honour, is refused).
// Like transformers, deepseek_v2 never renormalises (its norm_topk_prob is ignored, with a note).
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "moe/common/status.h"
#include "moe/model/spec.h"

namespace moe {

// The family for a config.json "model_type" ("mixtral", "qwen2_moe", ...) or, failing that, an
// "architectures" entry ("MixtralForCausalLM", ...); nullopt for anything else.
std::optional<Family> FamilyFromModelType(std::string_view model_type);
std::optional<Family> FamilyFromArchitecture(std::string_view architecture);

// Parses the text of a config.json. `source` (its path) prefixes every message. Fails with
// INVALID_ARGUMENT for invalid JSON, an unknown family, wrong-typed or out-of-range values,
// inconsistent routing parameters (top-k > experts, groups not dividing experts, ...), an
// activation other than silu, or no MoE layer; UNIMPLEMENTED for a quantisation method other
// than block-wise fp8. weight_dtype is set from "torch_dtype"/"dtype" (fp8 when quantised); the
// loader then checks it against the tensors. Non-fatal observations are appended to `notes`.
StatusOr<MoeSpec> ParseMoeConfig(std::string_view json_text, const std::string& source,
                                 std::vector<std::string>* notes = nullptr);

}  // namespace moe
