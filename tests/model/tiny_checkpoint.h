// Test helpers: temporary directories and tiny checkpoints of every family, in either layout,
// written with the store's SafetensorsWriter. Tensor element i of tensor `name` holds
// TinyValue(name, i), so tests can check that a view points at the right bytes.
#pragma once

#include <stdlib.h>

#include <cstring>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "moe/common/dtype.h"
#include "moe/model/spec.h"
#include "moe/store/checkpoint.h"
#include "moe/store/safetensors_writer.h"
#include "nlohmann/json.hpp"

namespace moe::testing {

class TempDir {
 public:
  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "moe-store-test-XXXXXX").string();
    char* made = ::mkdtemp(tmpl.data());
    path_ = made != nullptr ? made : "";
  }
  ~TempDir() {
    std::error_code ec;
    if (!path_.empty()) std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::string& path() const { return path_; }
  // A new sub-directory.
  std::string Sub(const std::string& name) const {
    const std::string p = store::JoinPath(path_, name);
    std::filesystem::create_directories(p);
    return p;
  }

 private:
  std::string path_;
};

inline void WriteFile(const std::string& path, const std::string& bytes) {
  FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) return;
  std::fwrite(bytes.data(), 1, bytes.size(), f);
  std::fclose(f);
}

inline std::string ReadFile(const std::string& path) {
  auto text = store::ReadSmallFile(path, int64_t{1} << 30);
  return text.ok() ? *text : std::string();
}

// Value of element `i` of tensor `name`: distinct per tensor and per element, exact in BF16.
inline float TinyValue(const std::string& name, int64_t i) {
  uint32_t h = 2166136261u;
  for (unsigned char c : name) h = (h ^ c) * 16777619u;
  return static_cast<float>(static_cast<int>((h + static_cast<uint32_t>(i) * 7u) % 255u) - 127) /
         64.0f;
}

struct TinyTensor {
  std::string name;
  DType dtype = DType::kBF16;
  std::vector<int64_t> shape;
};

struct TinyOptions {
  Family family = Family::kQwen2Moe;
  bool fused = false;               // transformers v5 fused 3-D expert tensors
  bool mixtral_mlp_prefix = false;  // Mixtral: "mlp" (v5) instead of "block_sparse_moe"
  DType dtype = DType::kBF16;       // expert weights (F8_E4M3 adds weight_scale_inv tensors)
  bool with_attention = true;       // also write non-MoE tensors (ignored by the loader)
};

// A tiny checkpoint: hidden 16, expert width 8, 4 experts, top-2, 3 decoder layers. DeepSeek
// makes layer 0 dense (first_k_dense_replace 1); Qwen makes layer 1 dense (mlp_only_layers).
class TinyCheckpoint {
 public:
  static constexpr int kHidden = 16, kInter = 8, kExperts = 4, kTopK = 2, kLayers = 3;

  explicit TinyCheckpoint(const TinyOptions& o) : options_(o) {
    using nlohmann::json;
    config["hidden_size"] = kHidden;
    config["num_hidden_layers"] = kLayers;
    config["num_experts_per_tok"] = kTopK;
    config["hidden_act"] = "silu";
    config["dtype"] = "bfloat16";
    std::string block = "mlp";
    std::vector<int> moe_layers = {0, 1, 2};
    int shared = 0;
    switch (o.family) {
      case Family::kMixtral:
        config["architectures"] = {"MixtralForCausalLM"};
        config["model_type"] = "mixtral";
        config["num_local_experts"] = kExperts;
        config["intermediate_size"] = kInter;
        block = o.mixtral_mlp_prefix ? "mlp" : "block_sparse_moe";
        break;
      case Family::kOlmoe:
        config["architectures"] = {"OlmoeForCausalLM"};
        config["model_type"] = "olmoe";
        config["num_experts"] = kExperts;
        config["intermediate_size"] = kInter;
        config["norm_topk_prob"] = false;
        break;
      case Family::kQwen2Moe:
      case Family::kQwen3Moe: {
        const bool qwen2 = o.family == Family::kQwen2Moe;
        config["architectures"] = {qwen2 ? "Qwen2MoeForCausalLM" : "Qwen3MoeForCausalLM"};
        config["model_type"] = qwen2 ? "qwen2_moe" : "qwen3_moe";
        config["num_experts"] = kExperts;
        config["moe_intermediate_size"] = kInter;
        config["intermediate_size"] = 32;
        config["mlp_only_layers"] = {1};
        config["decoder_sparse_step"] = 1;
        config["norm_topk_prob"] = !qwen2;
        if (qwen2) {
          shared = 12;
          config["shared_expert_intermediate_size"] = shared;
        }
        moe_layers = {0, 2};
        break;
      }
      case Family::kDeepseekV2:
      case Family::kDeepseekV3: {
        const bool v3 = o.family == Family::kDeepseekV3;
        config["architectures"] = {v3 ? "DeepseekV3ForCausalLM" : "DeepseekV2ForCausalLM"};
        config["model_type"] = v3 ? "deepseek_v3" : "deepseek_v2";
        config["n_routed_experts"] = kExperts;
        config["n_shared_experts"] = 2;
        config["moe_intermediate_size"] = kInter;
        config["intermediate_size"] = 32;
        config["first_k_dense_replace"] = 1;
        config["routed_scaling_factor"] = v3 ? 2.5 : 1.0;
        config["n_group"] = 2;
        config["topk_group"] = 1;
        config["topk_method"] = v3 ? "noaux_tc" : "group_limited_greedy";
        config["norm_topk_prob"] = v3;
        shared = 2 * kInter;
        moe_layers = {1, 2};
        break;
      }
    }
    if (o.dtype == DType::kF8E4M3) {
      config["quantization_config"] = {{"quant_method", "fp8"},
                                       {"fmt", "e4m3"},
                                       {"weight_block_size", {4, 8}},
                                       {"activation_scheme", "dynamic"}};
    }
    const char* g = o.family == Family::kMixtral ? "w1" : "gate_proj";
    const char* u = o.family == Family::kMixtral ? "w3" : "up_proj";
    const char* d = o.family == Family::kMixtral ? "w2" : "down_proj";
    for (int layer = 0; layer < kLayers; ++layer) {
      const std::string base = "model.layers." + std::to_string(layer) + ".";
      if (o.with_attention) {
        Add(base + "self_attn.q_proj.weight", DType::kBF16, {kHidden, kHidden});
        Add(base + "input_layernorm.weight", DType::kBF16, {kHidden});
      }
      bool moe = false;
      for (int m : moe_layers) moe |= m == layer;
      if (!moe) {  // a dense MLP
        for (const char* p : {"gate_proj", "up_proj"}) {
          Add(base + "mlp." + p + ".weight", DType::kBF16, {32, kHidden});
        }
        Add(base + "mlp.down_proj.weight", DType::kBF16, {kHidden, 32});
        continue;
      }
      const std::string b = base + block + ".";
      Add(b + "gate.weight", DType::kBF16, {kExperts, kHidden});
      if (o.family == Family::kDeepseekV3) {
        Add(b + "gate.e_score_correction_bias", DType::kF32, {kExperts});
      }
      if (o.fused) {
        Add(b + "experts.gate_up_proj", o.dtype, {kExperts, 2 * kInter, kHidden});
        Add(b + "experts.down_proj", o.dtype, {kExperts, kHidden, kInter});
      } else {
        for (int e = 0; e < kExperts; ++e) {
          const std::string x = b + "experts." + std::to_string(e) + ".";
          AddWeight(x + g + ".weight", {kInter, kHidden});
          AddWeight(x + u + ".weight", {kInter, kHidden});
          AddWeight(x + d + ".weight", {kHidden, kInter});
        }
      }
      if (shared > 0) {
        const std::string s =
            b + (o.family == Family::kQwen2Moe ? "shared_expert." : "shared_experts.");
        AddWeight(s + "gate_proj.weight", {shared, kHidden});
        AddWeight(s + "up_proj.weight", {shared, kHidden});
        AddWeight(s + "down_proj.weight", {kHidden, shared});
        if (o.family == Family::kQwen2Moe) {
          Add(b + "shared_expert_gate.weight", DType::kBF16, {1, kHidden});
        }
      }
    }
    if (o.with_attention) {
      Add("model.embed_tokens.weight", DType::kBF16, {32, kHidden});
      Add("model.norm.weight", DType::kBF16, {kHidden});
      Add("lm_head.weight", DType::kBF16, {32, kHidden});
    }
  }

  void Add(const std::string& name, DType dtype, std::vector<int64_t> shape) {
    tensors.push_back({name, dtype, std::move(shape)});
  }
  // An expert weight in the options' dtype, with its scale tensor when F8.
  void AddWeight(const std::string& name, std::vector<int64_t> shape) {
    if (options_.dtype == DType::kF8E4M3) {
      Add(name + "_scale_inv", DType::kF32, {(shape[0] + 3) / 4, (shape[1] + 7) / 8});
    }
    Add(name, options_.dtype, std::move(shape));
  }
  TinyTensor* Find(const std::string& name) {
    for (TinyTensor& t : tensors) {
      if (t.name == name) return &t;
    }
    return nullptr;
  }
  bool Remove(const std::string& name) {
    for (auto it = tensors.begin(); it != tensors.end(); ++it) {
      if (it->name == name) {
        tensors.erase(it);
        return true;
      }
    }
    return false;
  }

  // Writes config.json and one model.safetensors (n_shards == 1) or indexed shards split
  // round-robin by tensor. Returns false on failure.
  bool Write(const std::string& dir, int n_shards = 1) const {
    WriteFile(store::JoinPath(dir, "config.json"), config.dump(2));
    std::vector<store::SafetensorsWriter> writers(static_cast<size_t>(n_shards));
    nlohmann::json index;
    for (size_t i = 0; i < tensors.size(); ++i) {
      const TinyTensor& t = tensors[i];
      const size_t shard = i % static_cast<size_t>(n_shards);
      auto fill = [name = t.name, dtype = t.dtype](void* dst, size_t nbytes) {
        const size_t n = nbytes / DTypeSize(dtype);
        for (size_t k = 0; k < n; ++k) {
          const float v = TinyValue(name, static_cast<int64_t>(k));
          if (dtype == DType::kBF16) {
            static_cast<uint16_t*>(dst)[k] = F32ToBf16(v);
          } else if (dtype == DType::kF16) {
            static_cast<uint16_t*>(dst)[k] = F32ToF16(v);
          } else if (dtype == DType::kF32) {
            static_cast<float*>(dst)[k] = v;
          } else {
            std::memset(static_cast<uint8_t*>(dst) + k * DTypeSize(dtype),
                        static_cast<int>(k & 0x7f), DTypeSize(dtype));
          }
        }
      };
      if (!writers[shard].AddGenerated(t.name, t.dtype, t.shape, fill).ok()) return false;
      index["weight_map"][t.name] = ShardName(shard, n_shards);
    }
    if (n_shards == 1) return writers[0].Write(store::JoinPath(dir, "model.safetensors")).ok();
    for (int s = 0; s < n_shards; ++s) {
      if (!writers[static_cast<size_t>(s)]
               .Write(store::JoinPath(dir, ShardName(s, n_shards)))
               .ok()) {
        return false;
      }
    }
    WriteFile(store::JoinPath(dir, "model.safetensors.index.json"), index.dump(2));
    return true;
  }

  static std::string ShardName(size_t shard, int n_shards) {
    char buf[64];
    std::snprintf(buf, sizeof(buf), "model-%05zu-of-%05d.safetensors", shard + 1, n_shards);
    return buf;
  }

  nlohmann::json config;
  std::vector<TinyTensor> tensors;

 private:
  TinyOptions options_;
};

}  // namespace moe::testing
