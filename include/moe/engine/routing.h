// The routing functions of every supported family, on the CPU, in fp32: from router logits to each
// token's top-k experts and their weights. The CPU engine uses them; the CUDA engine's tests
// compare against them.
//
// What Route() computes for one token (transformers' modeling code, see below per family):
//   1. scores = softmax(logits) or sigmoid(logits) (RoutingSpec::scoring), fp32.
//   2. selection scores s = scores (+ correction_bias when given: DeepSeek-V3 noaux_tc).
//   3. candidate mask:
//        kGreedy:            every expert.
//        kGroupLimitedGreedy: group score = max of s in the group (DeepSeek-V2);
//        kNoAuxTc:           group score = sum of the top-2 s in the group (DeepSeek-V3);
//        for both, the topk_group best groups are kept and the s of every expert outside them is
//        masked: kGroupLimitedGreedy replaces it by 0.0 (transformers' DeepseekV2Moe:
//        `masked_fill(~score_mask, 0.0)`; softmax scores are > 0, so only kept experts win unless
//        top_k exceeds the kept experts); kNoAuxTc replaces it by -inf (transformers 5.x
//        DeepseekV3TopkRouter; 4.x used 0.0, which lets a dropped expert beat a kept expert whose
//        biased score is negative; we follow 5.x, verified against transformers 5.17 outputs in
//        tests/fixtures/hf/deepseek_v3_negbias-fp32).
//   4. ids = the top_k experts by masked s, best first.
//   5. weights = the chosen experts' UNBIASED scores (kGroupLimitedGreedy: an expert outside the
//      kept groups weighs 0.0, since DeepSeek-V2 takes its weights from the masked scores;
//      kNoAuxTc takes them from the unmasked sigmoid scores, like DeepSeek-V3);
//      if norm_topk_prob: weights /= (sum(weights) + 1e-20); then weights *= routed_scaling_factor.
//      (The 1e-20 is DeepSeek-V3's epsilon; for softmax scores the sum is >= 1/n_experts and
//      adding 1e-20 does not change a float, so Mixtral/Qwen/OLMoE's epsilon-free division is
//      matched bit for bit.)
//
// Ties: ordering is by (score descending, index ascending): of equal scores the lower expert index
// (or group index) is chosen and listed first. NaN scores order above everything (like torch.topk).
//
// Families (verified against transformers' modeling_*.py, 4.5x and 5.x, and against transformers
// 5.17 outputs by tests/parity/hf_parity_test):
//   Mixtral:      softmax, kGreedy, norm_topk_prob = true, scale 1.
//   Qwen2-MoE:    softmax, kGreedy, norm_topk_prob from config (the shared expert and its sigmoid
//                 gate are applied by the engine, not here).
//   Qwen3-MoE, OLMoE: softmax, kGreedy, norm_topk_prob from config.
//   DeepSeek-V2:  softmax, kGreedy or kGroupLimitedGreedy, weights * routed_scaling_factor.
//                 transformers' DeepseekV2Moe.route_tokens_to_experts never renormalises (it
//                 ignores norm_topk_prob), so a V2 RoutingSpec carries norm_topk_prob = false
//                 (src/model/config.cc sets it so).
//   DeepSeek-V3:  sigmoid, kNoAuxTc with e_score_correction_bias, renormalise iff norm_topk_prob
//                 (+1e-20), then * routed_scaling_factor.
#pragma once

#include <cstdint>

#include "moe/common/status.h"
#include "moe/model/spec.h"

namespace moe {

// OK if `spec` can be routed: n_experts > 0, 0 < top_k <= n_experts, and for the group-limited
// methods n_group > 0 dividing n_experts and 0 < topk_group <= n_group. INVALID_ARGUMENT otherwise.
Status ValidateRoutingSpec(const RoutingSpec& spec);

// Routes `n_tokens` tokens. `logits` [n_tokens, n_experts] fp32 router logits (x @ router^T);
// `correction_bias` [n_experts] or nullptr (treated as zeros; used for selection only);
// out: `ids` [n_tokens, top_k] chosen experts, best first; `weights` [n_tokens, top_k] their
// weights. Each token is routed independently of the others (batch invariant, bit for bit).
// Precondition: ValidateRoutingSpec(spec).ok().
void Route(const RoutingSpec& spec, const float* logits, const float* correction_bias,
           int64_t n_tokens, int32_t* ids, float* weights);

}  // namespace moe
