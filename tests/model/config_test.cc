// config.json -> MoeSpec for every family, with published configs and transformers' defaults.
#include "moe/model/config.h"

#include <gtest/gtest.h>

namespace moe {
namespace {

MoeSpec Parse(const std::string& json, std::vector<std::string>* notes = nullptr) {
  auto spec = ParseMoeConfig(json, "test/config.json", notes);
  EXPECT_TRUE(spec.ok()) << spec.status();
  return spec.ok() ? *spec : MoeSpec();
}

void ExpectInvalid(const std::string& json, const std::string& part,
                   absl::StatusCode code = absl::StatusCode::kInvalidArgument) {
  auto spec = ParseMoeConfig(json, "test/config.json");
  ASSERT_FALSE(spec.ok()) << json;
  EXPECT_EQ(spec.status().code(), code) << spec.status();
  EXPECT_NE(spec.status().message().find(part), absl::string_view::npos) << spec.status();
  EXPECT_NE(spec.status().message().find("test/config.json"), absl::string_view::npos);
}

std::vector<int> Range(int begin, int end) {
  std::vector<int> v;
  for (int i = begin; i < end; ++i) v.push_back(i);
  return v;
}

TEST(ConfigTest, Mixtral8x7B) {
  MoeSpec s = Parse(R"({"architectures": ["MixtralForCausalLM"], "model_type": "mixtral",
      "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
      "num_local_experts": 8, "num_experts_per_tok": 2, "hidden_act": "silu",
      "torch_dtype": "bfloat16", "router_aux_loss_coef": 0.02})");
  EXPECT_EQ(s.family, Family::kMixtral);
  EXPECT_EQ(s.architecture, "MixtralForCausalLM");
  EXPECT_EQ(s.hidden, 4096);
  EXPECT_EQ(s.moe_intermediate, 14336);
  EXPECT_EQ(s.n_experts(), 8);
  EXPECT_EQ(s.top_k(), 2);
  EXPECT_EQ(s.moe_layers, Range(0, 32));
  EXPECT_EQ(s.routing.scoring, ScoringFunc::kSoftmax);
  EXPECT_EQ(s.routing.topk_method, TopkMethod::kGreedy);
  EXPECT_TRUE(s.routing.norm_topk_prob);
  EXPECT_EQ(s.shared_intermediate, 0);
  EXPECT_EQ(s.weight_dtype, DType::kBF16);
  EXPECT_EQ(s.torch_dtype, "bfloat16");
  EXPECT_EQ(s.BytesPerExpert(), int64_t{3} * 4096 * 14336 * 2);
}

TEST(ConfigTest, MixtralDefaultsMatchTransformers) {
  MoeSpec s = Parse(R"({"model_type": "mixtral"})");
  EXPECT_EQ(s.hidden, 4096);
  EXPECT_EQ(s.n_layers, 32);
  EXPECT_EQ(s.moe_intermediate, 14336);
  EXPECT_EQ(s.n_experts(), 8);
  EXPECT_EQ(s.top_k(), 2);
}

TEST(ConfigTest, Qwen15MoeA27B) {
  MoeSpec s = Parse(R"({"architectures": ["Qwen2MoeForCausalLM"], "model_type": "qwen2_moe",
      "hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 24,
      "moe_intermediate_size": 1408, "shared_expert_intermediate_size": 5632,
      "num_experts": 60, "num_experts_per_tok": 4, "norm_topk_prob": false,
      "decoder_sparse_step": 1, "mlp_only_layers": [], "torch_dtype": "bfloat16"})");
  EXPECT_EQ(s.family, Family::kQwen2Moe);
  EXPECT_EQ(s.n_experts(), 60);
  EXPECT_EQ(s.top_k(), 4);
  EXPECT_EQ(s.moe_intermediate, 1408);
  EXPECT_EQ(s.shared_intermediate, 5632);
  EXPECT_TRUE(s.shared_expert_gate);
  EXPECT_FALSE(s.routing.norm_topk_prob);
  EXPECT_EQ(s.moe_layers, Range(0, 24));
}

TEST(ConfigTest, Qwen2MoeDefaults) {
  MoeSpec s = Parse(R"({"model_type": "qwen2_moe"})");
  EXPECT_EQ(s.n_experts(), 60);
  EXPECT_EQ(s.top_k(), 4);
  EXPECT_EQ(s.moe_intermediate, 1408);
  EXPECT_EQ(s.shared_intermediate, 5632);
  EXPECT_FALSE(s.routing.norm_topk_prob);
  EXPECT_EQ(s.n_layers, 24);
}

TEST(ConfigTest, QwenMoeLayerSelection) {
  // layer i is MoE iff i not in mlp_only_layers and (i + 1) % decoder_sparse_step == 0.
  MoeSpec s = Parse(R"({"model_type": "qwen2_moe", "num_hidden_layers": 8,
      "decoder_sparse_step": 2, "mlp_only_layers": [3, 6]})");
  EXPECT_EQ(s.moe_layers, (std::vector<int>{1, 5, 7}));
  EXPECT_TRUE(s.IsMoeLayer(5));
  EXPECT_FALSE(s.IsMoeLayer(3));
  EXPECT_FALSE(s.IsMoeLayer(0));
  MoeSpec q3 = Parse(R"({"model_type": "qwen3_moe", "num_hidden_layers": 4,
      "mlp_only_layers": [0]})");
  EXPECT_EQ(q3.moe_layers, (std::vector<int>{1, 2, 3}));
  ExpectInvalid(R"({"model_type": "qwen3_moe", "num_hidden_layers": 2,
      "mlp_only_layers": [0, 1]})",
                "no decoder layer is a MoE layer");
  ExpectInvalid(R"({"model_type": "qwen3_moe", "decoder_sparse_step": 0})", "decoder_sparse_step");
}

TEST(ConfigTest, Qwen3_30B_A3B) {
  MoeSpec s = Parse(R"({"architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe",
      "hidden_size": 2048, "num_hidden_layers": 48, "moe_intermediate_size": 768,
      "num_experts": 128, "num_experts_per_tok": 8, "norm_topk_prob": true,
      "decoder_sparse_step": 1, "mlp_only_layers": [], "torch_dtype": "bfloat16"})");
  EXPECT_EQ(s.family, Family::kQwen3Moe);
  EXPECT_EQ(s.n_experts(), 128);
  EXPECT_EQ(s.top_k(), 8);
  EXPECT_TRUE(s.routing.norm_topk_prob);
  EXPECT_EQ(s.shared_intermediate, 0);
  EXPECT_FALSE(s.shared_expert_gate);
  EXPECT_EQ(s.moe_layers.size(), 48u);
  // transformers' attribute_map lets the expert count be spelled num_local_experts.
  MoeSpec alias = Parse(R"({"model_type": "qwen3_moe", "num_local_experts": 16,
      "num_experts_per_tok": 2})");
  EXPECT_EQ(alias.n_experts(), 16);
  MoeSpec d = Parse(R"({"model_type": "qwen3_moe"})");
  EXPECT_EQ(d.n_experts(), 128);
  EXPECT_EQ(d.top_k(), 8);
  EXPECT_EQ(d.moe_intermediate, 768);
  EXPECT_FALSE(d.routing.norm_topk_prob);
}

TEST(ConfigTest, DeepseekV2Lite) {
  MoeSpec s = Parse(R"({"architectures": ["DeepseekV2ForCausalLM"], "model_type": "deepseek_v2",
      "hidden_size": 2048, "num_hidden_layers": 27, "moe_intermediate_size": 1408,
      "n_routed_experts": 64, "n_shared_experts": 2, "num_experts_per_tok": 6,
      "first_k_dense_replace": 1, "moe_layer_freq": 1, "topk_method": "greedy",
      "n_group": 1, "topk_group": 1, "routed_scaling_factor": 1.0, "scoring_func": "softmax",
      "norm_topk_prob": false, "torch_dtype": "bfloat16"})");
  EXPECT_EQ(s.family, Family::kDeepseekV2);
  EXPECT_EQ(s.n_experts(), 64);
  EXPECT_EQ(s.top_k(), 6);
  EXPECT_EQ(s.shared_intermediate, 2 * 1408);
  EXPECT_FALSE(s.shared_expert_gate);
  EXPECT_EQ(s.routing.topk_method, TopkMethod::kGreedy);
  EXPECT_EQ(s.routing.scoring, ScoringFunc::kSoftmax);
  EXPECT_EQ(s.moe_layers, Range(1, 27));
}

TEST(ConfigTest, DeepseekV2GroupLimitedGreedy) {
  std::vector<std::string> notes;
  MoeSpec s = Parse(R"({"model_type": "deepseek_v2", "num_hidden_layers": 60,
      "n_routed_experts": 160, "num_experts_per_tok": 6, "topk_method": "group_limited_greedy",
      "n_group": 8, "topk_group": 3, "routed_scaling_factor": 16.0, "norm_topk_prob": true,
      "first_k_dense_replace": 1})",
                    &notes);
  EXPECT_EQ(s.routing.topk_method, TopkMethod::kGroupLimitedGreedy);
  EXPECT_EQ(s.routing.n_group, 8);
  EXPECT_EQ(s.routing.topk_group, 3);
  EXPECT_FLOAT_EQ(s.routing.routed_scaling_factor, 16.0f);
  // transformers' DeepseekV2Moe never renormalises.
  EXPECT_FALSE(s.routing.norm_topk_prob);
  bool noted = false;
  for (const std::string& n : notes) noted |= n.find("norm_topk_prob") != std::string::npos;
  EXPECT_TRUE(noted);
  ExpectInvalid(R"({"model_type": "deepseek_v2", "num_experts_per_tok": 2,
      "topk_method": "group_limited_greedy"})",
                "n_group");
  ExpectInvalid(R"({"model_type": "deepseek_v2", "num_experts_per_tok": 2,
      "topk_method": "noaux_tc"})",
                "topk_method");
  ExpectInvalid(R"({"model_type": "deepseek_v2"})", "num_experts_per_tok");
  MoeSpec no_shared = Parse(R"({"model_type": "deepseek_v2", "num_experts_per_tok": 2,
      "n_shared_experts": null})");
  EXPECT_EQ(no_shared.shared_intermediate, 0);
  MoeSpec default_shared = Parse(R"({"model_type": "deepseek_v2", "num_experts_per_tok": 2})");
  EXPECT_EQ(default_shared.shared_intermediate, 2 * 1407);
  ExpectInvalid(R"({"model_type": "deepseek_v2", "num_experts_per_tok": 2,
      "moe_layer_freq": 2})",
                "moe_layer_freq");
  ExpectInvalid(R"({"model_type": "deepseek_v2", "num_experts_per_tok": 2,
      "scoring_func": "sigmoid"})",
                "scoring_func");
}

TEST(ConfigTest, DeepseekV3WithFp8) {
  MoeSpec s = Parse(R"({"architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3",
      "hidden_size": 7168, "num_hidden_layers": 61, "moe_intermediate_size": 2048,
      "n_routed_experts": 256, "n_shared_experts": 1, "num_experts_per_tok": 8,
      "first_k_dense_replace": 3, "moe_layer_freq": 1, "n_group": 8, "topk_group": 4,
      "topk_method": "noaux_tc", "scoring_func": "sigmoid", "norm_topk_prob": true,
      "routed_scaling_factor": 2.5, "torch_dtype": "bfloat16", "num_nextn_predict_layers": 1,
      "quantization_config": {"activation_scheme": "dynamic", "fmt": "e4m3",
                              "quant_method": "fp8", "weight_block_size": [128, 128]}})");
  EXPECT_EQ(s.family, Family::kDeepseekV3);
  EXPECT_EQ(s.routing.scoring, ScoringFunc::kSigmoid);
  EXPECT_EQ(s.routing.topk_method, TopkMethod::kNoAuxTc);
  EXPECT_TRUE(s.routing.has_correction_bias);
  EXPECT_TRUE(s.routing.norm_topk_prob);
  EXPECT_EQ(s.routing.n_group, 8);
  EXPECT_EQ(s.routing.topk_group, 4);
  EXPECT_FLOAT_EQ(s.routing.routed_scaling_factor, 2.5f);
  EXPECT_EQ(s.shared_intermediate, 2048);
  EXPECT_EQ(s.moe_layers, Range(3, 61));
  EXPECT_EQ(s.n_mtp_layers, 1);
  EXPECT_EQ(s.weight_dtype, DType::kF8E4M3);
  EXPECT_EQ(s.quant_block_out, 128);
  EXPECT_EQ(s.quant_block_in, 128);
  EXPECT_EQ(s.BytesPerExpert(), int64_t{3} * 7168 * 2048);
}

TEST(ConfigTest, DeepseekV3Defaults) {
  MoeSpec s = Parse(R"({"model_type": "deepseek_v3", "dtype": "float16"})");
  EXPECT_EQ(s.n_experts(), 256);
  EXPECT_EQ(s.top_k(), 8);
  EXPECT_EQ(s.routing.n_group, 8);
  EXPECT_EQ(s.routing.topk_group, 4);
  EXPECT_TRUE(s.routing.norm_topk_prob);
  EXPECT_FLOAT_EQ(s.routing.routed_scaling_factor, 2.5f);
  EXPECT_EQ(s.moe_layers.front(), 3);
  EXPECT_EQ(s.weight_dtype, DType::kF16);
  EXPECT_EQ(s.torch_dtype, "float16");
  // null means "use the default", as in transformers.
  MoeSpec n = Parse(R"({"model_type": "deepseek_v3", "n_group": null, "topk_group": null})");
  EXPECT_EQ(n.routing.n_group, 8);
  ExpectInvalid(R"({"model_type": "deepseek_v3", "topk_method": "greedy"})", "noaux_tc");
  ExpectInvalid(R"({"model_type": "deepseek_v3", "n_routed_experts": 8, "n_group": 8,
      "topk_group": 2, "num_experts_per_tok": 2})",
                "top-2");
}

TEST(ConfigTest, Olmoe1B7B) {
  MoeSpec s = Parse(R"({"architectures": ["OlmoeForCausalLM"], "model_type": "olmoe",
      "hidden_size": 2048, "intermediate_size": 1024, "num_hidden_layers": 16,
      "num_experts": 64, "num_experts_per_tok": 8, "norm_topk_prob": false})");
  EXPECT_EQ(s.family, Family::kOlmoe);
  EXPECT_EQ(s.moe_intermediate, 1024);
  EXPECT_EQ(s.n_experts(), 64);
  EXPECT_FALSE(s.routing.norm_topk_prob);
  EXPECT_EQ(s.moe_layers, Range(0, 16));
}

TEST(ConfigTest, FamilyFromArchitectureWhenModelTypeMissing) {
  MoeSpec s = Parse(R"({"architectures": ["OlmoeForCausalLM"]})");
  EXPECT_EQ(s.family, Family::kOlmoe);
  EXPECT_EQ(s.model_type, "olmoe");
}

TEST(ConfigTest, RejectsBadConfigs) {
  ExpectInvalid("{not json", "invalid JSON");
  ExpectInvalid("[]", "not a JSON object");
  ExpectInvalid(R"({"model_type": "llama"})", "not a supported MoE family");
  ExpectInvalid(R"({"architectures": ["LlamaForCausalLM"]})", "supported MoE family");
  ExpectInvalid(R"({"model_type": "mixtral", "architectures": ["OlmoeForCausalLM"]})", "disagrees");
  ExpectInvalid(R"({"model_type": "mixtral", "num_local_experts": "8"})", "num_local_experts");
  ExpectInvalid(R"({"model_type": "mixtral", "num_experts_per_tok": 9})", "num_experts_per_tok");
  ExpectInvalid(R"({"model_type": "mixtral", "num_experts_per_tok": 0})", "num_experts_per_tok");
  ExpectInvalid(R"({"model_type": "mixtral", "hidden_size": -1})", "hidden_size");
  ExpectInvalid(R"({"model_type": "mixtral", "hidden_act": "gelu"})", "hidden_act");
  ExpectInvalid(R"({"model_type": "olmoe", "norm_topk_prob": 1})", "norm_topk_prob");
  ExpectInvalid(R"({"model_type": "qwen2_moe", "mlp_only_layers": [0.5]})", "mlp_only_layers");
  ExpectInvalid(R"({"model_type": "deepseek_v3", "n_group": 3})", "n_group");
  ExpectInvalid(R"({"model_type": "deepseek_v3", "topk_group": 9})", "topk_group");
  ExpectInvalid(R"({"model_type": "mixtral", "quantization_config": {"quant_method": "awq"}})",
                "awq", absl::StatusCode::kUnimplemented);
  ExpectInvalid(R"({"model_type": "mixtral", "quantization_config": {"quant_method": "fp8",
      "weight_block_size": [0, 128]}})",
                "weight_block_size");
}

}  // namespace
}  // namespace moe
