// The MoE spec of a model: family, shapes, routing function, and which decoder layers are MoE.
// Parsed from a Hugging Face config.json (src/model/config.cc); engines read it, never the JSON.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "moe/common/dtype.h"

namespace moe {

// Model families, each with its own routing function and tensor names (compare transformers'
// modeling code of the same name).
enum class Family : uint8_t {
  kMixtral,   // MixtralForCausalLM: softmax, top-k, renormalise.
  kQwen2Moe,  // Qwen2MoeForCausalLM: softmax, top-k, renormalise iff norm_topk_prob; shared expert
              //   scaled by sigmoid(shared_expert_gate(x)).
  kQwen3Moe,  // Qwen3MoeForCausalLM: softmax, top-k, renormalise iff norm_topk_prob.
  kDeepseekV2,  // DeepseekV2ForCausalLM: softmax, greedy or group-limited greedy top-k,
                //   routed_scaling_factor, shared experts.
  kDeepseekV3,  // DeepseekV3ForCausalLM: sigmoid, e_score_correction_bias for selection only,
                //   group-limited top-k, renormalise, routed_scaling_factor, shared experts.
  kOlmoe,       // OlmoeForCausalLM: softmax, top-k, renormalise iff norm_topk_prob.
};
std::string_view FamilyName(Family family);

enum class ScoringFunc : uint8_t { kSoftmax, kSigmoid };

// How top-k experts are selected from the scores.
enum class TopkMethod : uint8_t {
  kGreedy,              // plain top-k over all experts.
  kGroupLimitedGreedy,  // DeepSeek-V2: group score = max expert score in the group; keep the best
                        //   topk_group groups, then top-k among their experts.
  kNoAuxTc,             // DeepSeek-V3: selection scores = scores + e_score_correction_bias; group
                        //   score = sum of the top-2 selection scores in the group; keep the best
                        //   topk_group groups; top-k by selection score; weights = unbiased scores.
};

// The routing function, complete: engines implement exactly this.
struct RoutingSpec {
  ScoringFunc scoring = ScoringFunc::kSoftmax;
  TopkMethod topk_method = TopkMethod::kGreedy;
  int n_experts = 0;
  int top_k = 0;
  int n_group = 1;                     // expert groups (group-limited methods only)
  int topk_group = 1;                  // groups kept (group-limited methods only)
  bool norm_topk_prob = false;         // renormalise the k weights to sum to 1
  bool has_correction_bias = false;    // e_score_correction_bias [n_experts] (kNoAuxTc)
  float routed_scaling_factor = 1.0f;  // multiplies the final routed weights
};

struct MoeSpec {
  Family family = Family::kMixtral;
  std::string architecture;     // config.json "architectures"[0], e.g. "MixtralForCausalLM"
  std::string model_type;       // config.json "model_type", e.g. "mixtral"
  int hidden = 0;               // hidden_size
  int moe_intermediate = 0;     // each routed expert's FFN width
  int n_layers = 0;             // num_hidden_layers (all decoder layers)
  int n_mtp_layers = 0;         // DeepSeek-V3 num_nextn_predict_layers: checkpoint layers
                                //   n_layers.. (multi-token prediction), never served
  std::vector<int> moe_layers;  // decoder layer indices whose MLP is MoE, ascending
  RoutingSpec routing;
  // Shared (always-on) experts, applied to every token and added to the routed output.
  // DeepSeek: n_shared_experts experts fused into one MLP of width n_shared * moe_intermediate.
  // Qwen2-MoE: one MLP of width shared_expert_intermediate_size with a sigmoid gate.
  int shared_intermediate = 0;        // 0 = no shared expert
  bool shared_expert_gate = false;    // Qwen2-MoE: output *= sigmoid(x . shared_expert_gate)
  DType weight_dtype = DType::kBF16;  // dtype of the expert weights in the checkpoint
  std::string torch_dtype;            // config.json "torch_dtype"/"dtype" as written
  // Block-quantised F8_E4M3 weights (config.json quantization_config {"quant_method": "fp8",
  // "weight_block_size": [out, in]}): every weight W [rows, cols] comes with W_scale_inv
  // [ceil(rows / block_out), ceil(cols / block_in)], real W = W_f8 * scale_inv per tile.
  // 0 when the weights are not quantised.
  int quant_block_out = 0;
  int quant_block_in = 0;

  int n_experts() const { return routing.n_experts; }
  int top_k() const { return routing.top_k; }
  bool IsMoeLayer(int layer) const;
  // Bytes of one routed expert's three matrices in weight_dtype.
  int64_t BytesPerExpert() const;
};

}  // namespace moe
