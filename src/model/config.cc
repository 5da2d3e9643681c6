#include "moe/model/config.h"

#include <algorithm>
#include <set>

#include "nlohmann/json.hpp"

namespace moe {

namespace {

using nlohmann::json;

// Typed access to config.json keys with transformers' semantics: absent or null means default.
class ConfigReader {
 public:
  ConfigReader(const json& root, const std::string& source) : root_(root), source_(source) {}

  // The first of `keys` that is present and not null, or nullptr.
  const json* Find(std::initializer_list<const char*> keys, std::string* found = nullptr) const {
    for (const char* key : keys) {
      auto it = root_.find(key);
      if (it != root_.end() && !it->is_null()) {
        if (found != nullptr) *found = key;
        return &*it;
      }
    }
    return nullptr;
  }

  // True when `key` is present with the value null.
  bool IsNull(const char* key) const {
    auto it = root_.find(key);
    return it != root_.end() && it->is_null();
  }

  StatusOr<std::optional<int64_t>> OptInt(std::initializer_list<const char*> keys) const {
    std::string key;
    const json* v = Find(keys, &key);
    if (v == nullptr) return std::optional<int64_t>();
    if (!v->is_number_integer()) return Error(key, "must be an integer", *v);
    return std::optional<int64_t>(v->get<int64_t>());
  }
  StatusOr<int64_t> Int(std::initializer_list<const char*> keys, int64_t default_value) const {
    MOE_ASSIGN_OR_RETURN(std::optional<int64_t> v, OptInt(keys));
    return v.value_or(default_value);
  }
  StatusOr<double> Float(const char* key, double default_value) const {
    const json* v = Find({key});
    if (v == nullptr) return default_value;
    if (!v->is_number()) return Error(key, "must be a number", *v);
    return v->get<double>();
  }
  StatusOr<bool> Bool(const char* key, bool default_value) const {
    const json* v = Find({key});
    if (v == nullptr) return default_value;
    if (!v->is_boolean()) return Error(key, "must be true or false", *v);
    return v->get<bool>();
  }
  StatusOr<std::optional<std::string>> OptString(const char* key) const {
    const json* v = Find({key});
    if (v == nullptr) return std::optional<std::string>();
    if (!v->is_string()) return Error(key, "must be a string", *v);
    return std::optional<std::string>(v->get<std::string>());
  }
  StatusOr<std::vector<int64_t>> IntList(const char* key) const {
    std::vector<int64_t> out;
    const json* v = Find({key});
    if (v == nullptr) return out;
    if (!v->is_array()) return Error(key, "must be a list of integers", *v);
    for (const json& e : *v) {
      if (!e.is_number_integer()) return Error(key, "must be a list of integers", *v);
      out.push_back(e.get<int64_t>());
    }
    return out;
  }

  Status Error(const std::string& key, const std::string& problem, const json& value) const {
    return absl::InvalidArgumentError(
        absl::StrCat(source_, ": \"", key, "\" ", problem, " (got ", value.dump(), ")"));
  }
  Status Error(const std::string& problem) const {
    return absl::InvalidArgumentError(absl::StrCat(source_, ": ", problem));
  }

 private:
  const json& root_;
  const std::string& source_;
};

Status CheckPositive(const ConfigReader& r, const char* key, int64_t value) {
  if (value <= 0 || value > (int64_t{1} << 30)) return r.Error(key, "must be positive", value);
  return absl::OkStatus();
}

DType DTypeFromTorchName(const std::string& name) {
  if (name == "float16" || name == "torch.float16" || name == "half") return DType::kF16;
  if (name == "float32" || name == "torch.float32" || name == "float") return DType::kF32;
  return DType::kBF16;
}

// Fills the routing and MoE-layer fields of `spec` for each family.
Status ParseFamily(const ConfigReader& r, MoeSpec* spec, std::vector<std::string>* notes) {
  RoutingSpec& routing = spec->routing;
  auto all_layers = [&] {
    spec->moe_layers.clear();
    for (int i = 0; i < spec->n_layers; ++i) spec->moe_layers.push_back(i);
  };
  switch (spec->family) {
    case Family::kMixtral: {
      MOE_ASSIGN_OR_RETURN(int64_t hidden, r.Int({"hidden_size"}, 4096));
      MOE_ASSIGN_OR_RETURN(int64_t layers, r.Int({"num_hidden_layers"}, 32));
      MOE_ASSIGN_OR_RETURN(int64_t inter, r.Int({"intermediate_size"}, 14336));
      MOE_ASSIGN_OR_RETURN(int64_t experts, r.Int({"num_local_experts"}, 8));
      MOE_ASSIGN_OR_RETURN(int64_t top_k, r.Int({"num_experts_per_tok"}, 2));
      spec->hidden = static_cast<int>(hidden);
      spec->n_layers = static_cast<int>(layers);
      spec->moe_intermediate = static_cast<int>(inter);
      routing.n_experts = static_cast<int>(experts);
      routing.top_k = static_cast<int>(top_k);
      routing.norm_topk_prob = true;  // MixtralSparseMoeBlock always renormalises
      all_layers();
      return absl::OkStatus();
    }
    case Family::kOlmoe: {
      MOE_ASSIGN_OR_RETURN(int64_t hidden, r.Int({"hidden_size"}, 2048));
      MOE_ASSIGN_OR_RETURN(int64_t layers, r.Int({"num_hidden_layers"}, 16));
      MOE_ASSIGN_OR_RETURN(int64_t inter, r.Int({"intermediate_size"}, 2048));
      MOE_ASSIGN_OR_RETURN(int64_t experts, r.Int({"num_experts", "num_local_experts"}, 64));
      MOE_ASSIGN_OR_RETURN(int64_t top_k, r.Int({"num_experts_per_tok"}, 8));
      MOE_ASSIGN_OR_RETURN(routing.norm_topk_prob, r.Bool("norm_topk_prob", false));
      spec->hidden = static_cast<int>(hidden);
      spec->n_layers = static_cast<int>(layers);
      spec->moe_intermediate = static_cast<int>(inter);
      routing.n_experts = static_cast<int>(experts);
      routing.top_k = static_cast<int>(top_k);
      all_layers();
      return absl::OkStatus();
    }
    case Family::kQwen2Moe:
    case Family::kQwen3Moe: {
      const bool qwen2 = spec->family == Family::kQwen2Moe;
      MOE_ASSIGN_OR_RETURN(int64_t hidden, r.Int({"hidden_size"}, 2048));
      MOE_ASSIGN_OR_RETURN(int64_t layers, r.Int({"num_hidden_layers"}, 24));
      MOE_ASSIGN_OR_RETURN(int64_t inter, r.Int({"moe_intermediate_size"}, qwen2 ? 1408 : 768));
      MOE_ASSIGN_OR_RETURN(int64_t experts,
                           r.Int({"num_experts", "num_local_experts"}, qwen2 ? 60 : 128));
      MOE_ASSIGN_OR_RETURN(int64_t top_k, r.Int({"num_experts_per_tok"}, qwen2 ? 4 : 8));
      MOE_ASSIGN_OR_RETURN(routing.norm_topk_prob, r.Bool("norm_topk_prob", false));
      MOE_ASSIGN_OR_RETURN(int64_t step, r.Int({"decoder_sparse_step"}, 1));
      MOE_ASSIGN_OR_RETURN(std::vector<int64_t> mlp_only, r.IntList("mlp_only_layers"));
      if (qwen2) {
        MOE_ASSIGN_OR_RETURN(int64_t shared, r.Int({"shared_expert_intermediate_size"}, 5632));
        if (shared < 0) return r.Error("shared_expert_intermediate_size", "is negative", shared);
        spec->shared_intermediate = static_cast<int>(shared);
        spec->shared_expert_gate = shared > 0;
      }
      if (step <= 0) return r.Error("decoder_sparse_step", "must be positive", step);
      spec->hidden = static_cast<int>(hidden);
      spec->n_layers = static_cast<int>(layers);
      spec->moe_intermediate = static_cast<int>(inter);
      routing.n_experts = static_cast<int>(experts);
      routing.top_k = static_cast<int>(top_k);
      const std::set<int64_t> dense(mlp_only.begin(), mlp_only.end());
      spec->moe_layers.clear();
      for (int i = 0; i < spec->n_layers; ++i) {
        if (!dense.contains(i) && experts > 0 && (i + 1) % step == 0) spec->moe_layers.push_back(i);
      }
      return absl::OkStatus();
    }
    case Family::kDeepseekV2:
    case Family::kDeepseekV3: {
      const bool v3 = spec->family == Family::kDeepseekV3;
      MOE_ASSIGN_OR_RETURN(int64_t hidden, r.Int({"hidden_size"}, v3 ? 7168 : 4096));
      MOE_ASSIGN_OR_RETURN(int64_t layers, r.Int({"num_hidden_layers"}, v3 ? 61 : 32));
      MOE_ASSIGN_OR_RETURN(int64_t inter, r.Int({"moe_intermediate_size"}, v3 ? 2048 : 1407));
      MOE_ASSIGN_OR_RETURN(
          int64_t experts,
          r.Int({"n_routed_experts", "num_local_experts", "num_experts"}, v3 ? 256 : 64));
      MOE_ASSIGN_OR_RETURN(std::optional<int64_t> top_k, r.OptInt({"num_experts_per_tok"}));
      if (!top_k.has_value() && v3) top_k = 8;
      if (!top_k.has_value()) {
        return r.Error(
            "\"num_experts_per_tok\" is missing or null (a dense model; nothing to "
            "serve)");
      }
      // An explicit null means no shared experts (transformers: `if n_shared_experts is not None`).
      int64_t shared = 0;
      if (!r.IsNull("n_shared_experts")) {
        MOE_ASSIGN_OR_RETURN(shared, r.Int({"n_shared_experts"}, v3 ? 1 : 2));
      }
      MOE_ASSIGN_OR_RETURN(int64_t first_dense, r.Int({"first_k_dense_replace"}, v3 ? 3 : 0));
      MOE_ASSIGN_OR_RETURN(int64_t freq, r.Int({"moe_layer_freq"}, 1));
      MOE_ASSIGN_OR_RETURN(double scale, r.Float("routed_scaling_factor", v3 ? 2.5 : 1.0));
      MOE_ASSIGN_OR_RETURN(bool norm, r.Bool("norm_topk_prob", v3));
      MOE_ASSIGN_OR_RETURN(std::optional<std::string> method, r.OptString("topk_method"));
      MOE_ASSIGN_OR_RETURN(std::optional<std::string> scoring, r.OptString("scoring_func"));
      MOE_ASSIGN_OR_RETURN(std::optional<int64_t> n_group, r.OptInt({"n_group"}));
      MOE_ASSIGN_OR_RETURN(std::optional<int64_t> topk_group, r.OptInt({"topk_group"}));
      MOE_ASSIGN_OR_RETURN(int64_t mtp, r.Int({"num_nextn_predict_layers"}, 0));
      if (mtp < 0) return r.Error("num_nextn_predict_layers", "is negative", mtp);
      spec->n_mtp_layers = static_cast<int>(mtp);
      if (shared < 0) return r.Error("n_shared_experts", "is negative", shared);
      if (first_dense < 0) return r.Error("first_k_dense_replace", "is negative", first_dense);
      if (freq != 1) {
        return r.Error("moe_layer_freq",
                       "other than 1 is not supported (transformers ignores it, DeepSeek's own "
                       "code does not)",
                       freq);
      }
      spec->hidden = static_cast<int>(hidden);
      spec->n_layers = static_cast<int>(layers);
      spec->moe_intermediate = static_cast<int>(inter);
      spec->shared_intermediate = static_cast<int>(shared * inter);
      routing.n_experts = static_cast<int>(experts);
      routing.top_k = static_cast<int>(*top_k);
      routing.routed_scaling_factor = static_cast<float>(scale);
      if (v3) {
        if (method.has_value() && *method != "noaux_tc") {
          return r.Error("topk_method", "must be \"noaux_tc\" for deepseek_v3", *method);
        }
        if (scoring.has_value() && *scoring != "sigmoid") {
          return r.Error("scoring_func", "must be \"sigmoid\" for deepseek_v3", *scoring);
        }
        routing.scoring = ScoringFunc::kSigmoid;
        routing.topk_method = TopkMethod::kNoAuxTc;
        routing.has_correction_bias = true;
        routing.norm_topk_prob = norm;
        routing.n_group = static_cast<int>(n_group.value_or(8));
        routing.topk_group = static_cast<int>(topk_group.value_or(4));
      } else {
        if (scoring.has_value() && *scoring != "softmax") {
          return r.Error("scoring_func", "must be \"softmax\" for deepseek_v2", *scoring);
        }
        routing.scoring = ScoringFunc::kSoftmax;
        const std::string m = method.value_or("greedy");
        if (m == "greedy") {
          routing.topk_method = TopkMethod::kGreedy;
          routing.n_group = 1;
          routing.topk_group = 1;
        } else if (m == "group_limited_greedy") {
          if (!n_group.has_value() || !topk_group.has_value()) {
            return r.Error("group_limited_greedy needs \"n_group\" and \"topk_group\"");
          }
          routing.topk_method = TopkMethod::kGroupLimitedGreedy;
          routing.n_group = static_cast<int>(*n_group);
          routing.topk_group = static_cast<int>(*topk_group);
        } else {
          return r.Error("topk_method",
                         "must be \"greedy\" or \"group_limited_greedy\" for deepseek_v2", m);
        }
        routing.norm_topk_prob = false;
        if (norm && notes != nullptr) {
          notes->push_back(
              "norm_topk_prob is true but ignored: transformers' DeepseekV2Moe never "
              "renormalises");
        }
      }
      spec->moe_layers.clear();
      for (int i = static_cast<int>(first_dense); i < spec->n_layers; ++i) {
        spec->moe_layers.push_back(i);
      }
      return absl::OkStatus();
    }
  }
  return r.Error("unhandled family");
}

Status Validate(const ConfigReader& r, const MoeSpec& spec) {
  MOE_RETURN_IF_ERROR(CheckPositive(r, "hidden_size", spec.hidden));
  MOE_RETURN_IF_ERROR(CheckPositive(r, "num_hidden_layers", spec.n_layers));
  MOE_RETURN_IF_ERROR(CheckPositive(r, "moe intermediate size", spec.moe_intermediate));
  const RoutingSpec& g = spec.routing;
  MOE_RETURN_IF_ERROR(CheckPositive(r, "number of experts", g.n_experts));
  if (g.top_k < 1 || g.top_k > g.n_experts) {
    return r.Error(
        absl::StrCat("num_experts_per_tok ", g.top_k, " must be in [1, ", g.n_experts, "]"));
  }
  if (g.topk_method != TopkMethod::kGreedy) {
    if (g.n_group < 1 || g.n_experts % g.n_group != 0) {
      return r.Error(
          absl::StrCat("n_group ", g.n_group, " must divide the ", g.n_experts, " experts"));
    }
    if (g.topk_group < 1 || g.topk_group > g.n_group) {
      return r.Error(
          absl::StrCat("topk_group ", g.topk_group, " must be in [1, n_group ", g.n_group, "]"));
    }
    const int per_group = g.n_experts / g.n_group;
    if (g.top_k > g.topk_group * per_group) {
      return r.Error(absl::StrCat("num_experts_per_tok ", g.top_k, " exceeds the ",
                                  g.topk_group * per_group, " experts of the kept groups"));
    }
    if (g.topk_method == TopkMethod::kNoAuxTc && per_group < 2) {
      return r.Error(absl::StrCat("noaux_tc scores groups by their top-2 experts; ", g.n_experts,
                                  " experts in ", g.n_group, " groups leaves fewer than 2"));
    }
  }
  if (!(g.routed_scaling_factor > 0.0f)) {
    return r.Error("routed_scaling_factor must be positive");
  }
  if (spec.moe_layers.empty()) return r.Error("no decoder layer is a MoE layer");
  return absl::OkStatus();
}

}  // namespace

std::optional<Family> FamilyFromModelType(std::string_view model_type) {
  if (model_type == "mixtral") return Family::kMixtral;
  if (model_type == "qwen2_moe") return Family::kQwen2Moe;
  if (model_type == "qwen3_moe") return Family::kQwen3Moe;
  if (model_type == "deepseek_v2") return Family::kDeepseekV2;
  if (model_type == "deepseek_v3") return Family::kDeepseekV3;
  if (model_type == "olmoe") return Family::kOlmoe;
  return std::nullopt;
}

std::optional<Family> FamilyFromArchitecture(std::string_view architecture) {
  if (architecture == "MixtralForCausalLM") return Family::kMixtral;
  if (architecture == "Qwen2MoeForCausalLM") return Family::kQwen2Moe;
  if (architecture == "Qwen3MoeForCausalLM") return Family::kQwen3Moe;
  if (architecture == "DeepseekV2ForCausalLM") return Family::kDeepseekV2;
  if (architecture == "DeepseekV3ForCausalLM") return Family::kDeepseekV3;
  if (architecture == "OlmoeForCausalLM") return Family::kOlmoe;
  return std::nullopt;
}

StatusOr<MoeSpec> ParseMoeConfig(std::string_view json_text, const std::string& source,
                                 std::vector<std::string>* notes) {
  json root;
  try {
    root = json::parse(json_text.begin(), json_text.end());
  } catch (const json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": invalid JSON: ", e.what()));
  }
  if (!root.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": not a JSON object"));
  }
  ConfigReader r(root, source);
  MoeSpec spec;

  MOE_ASSIGN_OR_RETURN(std::optional<std::string> model_type, r.OptString("model_type"));
  const json* archs = r.Find({"architectures"});
  if (archs != nullptr) {
    if (!archs->is_array() || archs->empty() || !(*archs)[0].is_string()) {
      return r.Error("architectures", "must be a non-empty list of strings", *archs);
    }
    spec.architecture = (*archs)[0].get<std::string>();
  }
  spec.model_type = model_type.value_or("");
  std::optional<Family> by_type = FamilyFromModelType(spec.model_type);
  std::optional<Family> by_arch = FamilyFromArchitecture(spec.architecture);
  if (model_type.has_value() && !by_type.has_value()) {
    return r.Error(absl::StrCat("model_type \"", spec.model_type,
                                "\" is not a supported MoE family (mixtral, qwen2_moe, qwen3_moe, "
                                "deepseek_v2, deepseek_v3, olmoe)"));
  }
  if (by_type.has_value() && by_arch.has_value() && *by_type != *by_arch) {
    return r.Error(absl::StrCat("model_type \"", spec.model_type, "\" disagrees with architecture ",
                                spec.architecture));
  }
  if (!by_type.has_value() && !by_arch.has_value()) {
    return r.Error(absl::StrCat("neither model_type nor architectures (\"", spec.architecture,
                                "\") names a supported MoE family"));
  }
  spec.family = by_type.has_value() ? *by_type : *by_arch;
  if (spec.model_type.empty()) spec.model_type = std::string(FamilyName(spec.family));
  if (spec.architecture.empty() && notes != nullptr) {
    notes->push_back("config.json has no \"architectures\"");
  }

  MOE_ASSIGN_OR_RETURN(std::optional<std::string> act, r.OptString("hidden_act"));
  if (act.has_value() && *act != "silu") {
    return r.Error("hidden_act", "must be \"silu\" (SwiGLU experts)", *act);
  }
  MOE_RETURN_IF_ERROR(ParseFamily(r, &spec, notes));

  // Dtype as written ("dtype" in transformers v5, "torch_dtype" before), then quantisation.
  MOE_ASSIGN_OR_RETURN(std::optional<std::string> dtype, r.OptString("dtype"));
  if (!dtype.has_value()) {
    MOE_ASSIGN_OR_RETURN(dtype, r.OptString("torch_dtype"));
  }
  spec.torch_dtype = dtype.value_or("");
  spec.weight_dtype = DTypeFromTorchName(spec.torch_dtype);
  if (const json* q = r.Find({"quantization_config"}); q != nullptr) {
    if (!q->is_object()) return r.Error("quantization_config", "must be an object", *q);
    const std::string method = q->value("quant_method", std::string());
    if (method != "fp8") {
      return absl::UnimplementedError(
          absl::StrCat(source, ": quantization_config.quant_method \"", method,
                       "\" is not supported (only block-wise \"fp8\" is recognised)"));
    }
    const std::string fmt = q->value("fmt", std::string("e4m3"));
    if (fmt != "e4m3") {
      return absl::UnimplementedError(
          absl::StrCat(source, ": fp8 format \"", fmt, "\" is not supported (only e4m3)"));
    }
    auto block = q->find("weight_block_size");
    if (block == q->end() || block->is_null()) {
      spec.quant_block_out = spec.quant_block_in = 128;  // DeepSeek's published block
    } else if (block->is_array() && block->size() == 2 && (*block)[0].is_number_integer() &&
               (*block)[1].is_number_integer() && (*block)[0].get<int64_t>() > 0 &&
               (*block)[1].get<int64_t>() > 0) {
      spec.quant_block_out = static_cast<int>((*block)[0].get<int64_t>());
      spec.quant_block_in = static_cast<int>((*block)[1].get<int64_t>());
    } else {
      return r.Error("quantization_config.weight_block_size", "must be two positive integers",
                     *block);
    }
    spec.weight_dtype = DType::kF8E4M3;
  }
  MOE_RETURN_IF_ERROR(Validate(r, spec));
  return spec;
}

}  // namespace moe
