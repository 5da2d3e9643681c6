// Test and benchmark helper: writes a Qwen3-MoE checkpoint (config.json + safetensors) whose
// routed experts have a chosen shape, dtype and file layout, filled with pseudo-random bytes.
// Used by the host tier's tests (small) and benchmark (several GB, Qwen3-30B-A3B and Mixtral
// expert shapes), so both see the layouts real checkpoints have.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "moe/common/dtype.h"
#include "moe/common/status.h"
#include "moe/model/model.h"
#include "moe/store/checkpoint.h"
#include "moe/store/safetensors_writer.h"
#include "nlohmann/json.hpp"

namespace moe::testing {

enum class ExpertFileLayout {
  kSortedByName,  // per-expert tensors in name order, as HF writes them: e<e>.down, gate, up
  kGateUpDown,    // per-expert tensors, each expert's gate, up, down back to back
  kScattered,     // per-expert tensors, every gate of a layer, then every up, then every down
  kFused,         // transformers v5: experts.gate_up_proj [E, 2I, H] + experts.down_proj [E, H, I]
};

inline const char* ExpertFileLayoutName(ExpertFileLayout l) {
  switch (l) {
    case ExpertFileLayout::kSortedByName:
      return "sorted";
    case ExpertFileLayout::kGateUpDown:
      return "gate_up_down";
    case ExpertFileLayout::kScattered:
      return "scattered";
    case ExpertFileLayout::kFused:
      return "fused";
  }
  return "?";
}

struct ExpertCheckpointOptions {
  int64_t hidden = 64;
  int64_t inter = 32;
  int n_experts = 4;
  int n_layers = 2;  // every layer is a MoE layer
  int top_k = 2;
  DType dtype = DType::kBF16;  // kBF16 or kF16
  ExpertFileLayout layout = ExpertFileLayout::kSortedByName;
  int n_shards = 1;      // > 1: layer l goes to shard l % n_shards, with an index file
  int fill_threads = 1;  // threads generating each tensor's bytes
  uint64_t seed = 1;
  // BF16 only: the random bits become values like trained weights' (exponents within 8 binades
  // under 2^-2, one in 256 of them zero or subnormal and one in 2048 tiny, 2^-77: a patch of the
  // host tier's codec, moe/experts/weight_codec.h, which compresses them); false: random bit
  // patterns (NaNs, infinities, every exponent), which it leaves raw.
  bool weight_like_bf16 = false;
};

// Rewrites random bf16 bit patterns as ExpertCheckpointOptions::weight_like_bf16 describes.
inline void MakeWeightLikeBf16(uint8_t* bytes, size_t n) {
  for (size_t i = 0; i + 1 < n; i += 2) {
    uint16_t u;
    std::memcpy(&u, bytes + i, 2);
    const uint32_t field = (u >> 7) & 0xff;
    const uint32_t e = field == 0 ? 0u : field == 1 && (u & 7) == 0 ? 50u : 118u + (field & 7u);
    u = static_cast<uint16_t>((u & 0x807f) | (e << 7));
    std::memcpy(bytes + i, &u, 2);
  }
}

// Bytes of tensor `name`: a splitmix64 stream keyed by (seed, name), 8 bytes per step.
inline void FillExpertBytes(uint64_t seed, const std::string& name, uint8_t* dst, size_t n,
                            int threads) {
  uint64_t key = seed * 0x9E3779B97F4A7C15ull;
  for (unsigned char c : name) key = (key ^ c) * 0x100000001B3ull;
  auto run = [&](size_t begin, size_t end) {  // [begin, end) in 8-byte words
    for (size_t w = begin; w < end; ++w) {
      uint64_t z = key + (w + 1) * 0x9E3779B97F4A7C15ull;
      z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
      z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
      z ^= z >> 31;
      const size_t at = w * 8;
      std::memcpy(dst + at, &z, std::min<size_t>(8, n - at));
    }
  };
  const size_t words = (n + 7) / 8;
  const size_t t = std::max<size_t>(1, std::min<size_t>(static_cast<size_t>(threads), words >> 16));
  std::vector<std::thread> pool;
  for (size_t i = 1; i < t; ++i) pool.emplace_back(run, words * i / t, words * (i + 1) / t);
  run(0, words / t);
  for (std::thread& th : pool) th.join();
}

inline Status WriteTextFile(const std::string& path, const std::string& text) {
  FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) return absl::InternalError("cannot write " + path);
  const bool ok = std::fwrite(text.data(), 1, text.size(), f) == text.size();
  return std::fclose(f) == 0 && ok ? absl::OkStatus() : absl::InternalError("cannot write " + path);
}

// Writes the checkpoint into the existing directory `dir`.
inline Status WriteExpertCheckpoint(const std::string& dir, const ExpertCheckpointOptions& o) {
  nlohmann::json config;
  config["architectures"] = {"Qwen3MoeForCausalLM"};
  config["model_type"] = "qwen3_moe";
  config["hidden_size"] = o.hidden;
  config["num_hidden_layers"] = o.n_layers;
  config["num_experts"] = o.n_experts;
  config["num_experts_per_tok"] = o.top_k;
  config["moe_intermediate_size"] = o.inter;
  config["intermediate_size"] = o.inter * 4;
  config["mlp_only_layers"] = nlohmann::json::array();
  config["decoder_sparse_step"] = 1;
  config["norm_topk_prob"] = true;
  config["hidden_act"] = "silu";
  config["dtype"] = o.dtype == DType::kF16 ? "float16" : "bfloat16";
  MOE_RETURN_IF_ERROR(WriteTextFile(store::JoinPath(dir, store::kConfigFile), config.dump(2)));

  struct Tensor {
    std::string name;
    std::vector<int64_t> shape;
  };
  std::vector<store::SafetensorsWriter> writers(static_cast<size_t>(std::max(1, o.n_shards)));
  nlohmann::json index;
  auto shard_name = [&](int s) {
    char buf[64];
    std::snprintf(buf, sizeof(buf), "model-%05d-of-%05d.safetensors", s + 1, o.n_shards);
    return std::string(buf);
  };
  for (int layer = 0; layer < o.n_layers; ++layer) {
    const std::string b = "model.layers." + std::to_string(layer) + ".mlp.";
    std::vector<Tensor> t;
    t.push_back({b + "gate.weight", {o.n_experts, o.hidden}});
    if (o.layout == ExpertFileLayout::kFused) {
      t.push_back({b + "experts.gate_up_proj", {o.n_experts, 2 * o.inter, o.hidden}});
      t.push_back({b + "experts.down_proj", {o.n_experts, o.hidden, o.inter}});
    } else {
      const char* proj[3] = {"gate_proj", "up_proj", "down_proj"};
      std::vector<Tensor> ex;
      for (int p = 0; p < 3; ++p) {  // scattered order: every gate, every up, every down
        for (int e = 0; e < o.n_experts; ++e) {
          const std::vector<int64_t> shape = p == 2 ? std::vector<int64_t>{o.hidden, o.inter}
                                                    : std::vector<int64_t>{o.inter, o.hidden};
          ex.push_back({b + "experts." + std::to_string(e) + "." + proj[p] + ".weight", shape});
        }
      }
      if (o.layout == ExpertFileLayout::kGateUpDown) {
        std::vector<Tensor> by_expert;
        for (int e = 0; e < o.n_experts; ++e) {
          for (int p = 0; p < 3; ++p)
            by_expert.push_back(ex[static_cast<size_t>(p * o.n_experts + e)]);
        }
        ex = std::move(by_expert);
      }
      t.insert(t.end(), ex.begin(), ex.end());
      if (o.layout == ExpertFileLayout::kSortedByName) {
        std::sort(t.begin(), t.end(),
                  [](const Tensor& a, const Tensor& c) { return a.name < c.name; });
      }
    }
    const int shard = layer % static_cast<int>(writers.size());
    for (const Tensor& x : t) {
      MOE_RETURN_IF_ERROR(writers[static_cast<size_t>(shard)].AddGenerated(
          x.name, o.dtype, x.shape, [&o, name = x.name](void* dst, size_t n) {
            FillExpertBytes(o.seed, name, static_cast<uint8_t*>(dst), n, o.fill_threads);
            if (o.weight_like_bf16 && o.dtype == DType::kBF16) {
              MakeWeightLikeBf16(static_cast<uint8_t*>(dst), n);
            }
          }));
      index["weight_map"][x.name] = shard_name(shard);
    }
  }
  if (writers.size() == 1) return writers[0].Write(store::JoinPath(dir, store::kSingleFile));
  for (size_t s = 0; s < writers.size(); ++s) {
    MOE_RETURN_IF_ERROR(writers[s].Write(store::JoinPath(dir, shard_name(static_cast<int>(s)))));
  }
  return WriteTextFile(store::JoinPath(dir, store::kIndexFile), index.dump(2));
}

// Writes the checkpoint into the existing directory `dir` and opens it.
inline StatusOr<std::shared_ptr<const Model>> WriteAndOpenExpertCheckpoint(
    const std::string& dir, const ExpertCheckpointOptions& o) {
  MOE_RETURN_IF_ERROR(WriteExpertCheckpoint(dir, o));
  MOE_ASSIGN_OR_RETURN(std::unique_ptr<Model> model, Model::Open(dir));
  return std::shared_ptr<const Model>(std::move(model));
}

}  // namespace moe::testing
