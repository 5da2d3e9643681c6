// Deterministic synthetic Qwen2-MoE checkpoints, and the cached embedded default model.
#include "moe/model/embedded.h"

#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <vector>

#include "moe/store/checkpoint.h"
#include "moe/store/safetensors_writer.h"
#include "nlohmann/json.hpp"

namespace moe {

namespace {

namespace fs = std::filesystem;
using store::SafetensorsWriter;

// splitmix64 (Steele, Lea, Flood 2014): a tiny PRNG whose output is fixed by its definition.
uint64_t SplitMix64(uint64_t* state) {
  uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

uint64_t Fnv1a64(const std::string& s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : s) {
    h ^= c;
    h *= 0x100000001b3ull;
  }
  return h;
}

// Fills a tensor with uniform values in [-bound, bound) from a stream keyed by its name.
SafetensorsWriter::FillFn UniformFill(uint64_t seed, const std::string& name, DType dtype,
                                      float bound) {
  return [state0 = seed ^ Fnv1a64(name), dtype, bound](void* dst, size_t nbytes) {
    uint64_t state = state0;
    const size_t n = nbytes / DTypeSize(dtype);
    constexpr float kInv24 = 1.0f / 16777216.0f;
    for (size_t i = 0; i < n; ++i) {
      // 24 random bits -> [0, 1) exactly representable in float; then [-bound, bound).
      const float u = static_cast<float>(SplitMix64(&state) >> 40) * kInv24;
      const float v = (2.0f * u - 1.0f) * bound;
      switch (dtype) {
        case DType::kBF16:
          static_cast<uint16_t*>(dst)[i] = F32ToBf16(v);
          break;
        case DType::kF16:
          static_cast<uint16_t*>(dst)[i] = F32ToF16(v);
          break;
        default:
          static_cast<float*>(dst)[i] = v;
          break;
      }
    }
  };
}

float Bound(int fan_in) { return std::sqrt(3.0f / static_cast<float>(fan_in)); }

std::string ShardName(int shard, int n_shards) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "model-%05d-of-%05d.safetensors", shard + 1, n_shards);
  return buf;
}

std::string ConfigJson(const SyntheticModelOptions& o) {
  nlohmann::ordered_json c;
  c["architectures"] = {"Qwen2MoeForCausalLM"};
  c["model_type"] = "qwen2_moe";
  c["hidden_size"] = o.hidden;
  c["num_hidden_layers"] = o.n_layers;
  c["num_attention_heads"] = 8;
  c["num_key_value_heads"] = 8;
  c["intermediate_size"] = 2 * o.hidden;
  c["moe_intermediate_size"] = o.moe_intermediate;
  c["shared_expert_intermediate_size"] = o.shared_intermediate;
  c["num_experts"] = o.n_experts;
  c["num_experts_per_tok"] = o.top_k;
  c["norm_topk_prob"] = o.norm_topk_prob;
  c["decoder_sparse_step"] = 1;
  c["mlp_only_layers"] = nlohmann::ordered_json::array();
  c["hidden_act"] = "silu";
  c["rms_norm_eps"] = 1e-6;
  c["vocab_size"] = 1024;
  c["max_position_embeddings"] = 4096;
  c["tie_word_embeddings"] = false;
  const char* dtype = o.dtype == DType::kF32   ? "float32"
                      : o.dtype == DType::kF16 ? "float16"
                                               : "bfloat16";
  c["dtype"] = dtype;
  c["torch_dtype"] = dtype;
  c["moe_swarm_synthetic"] = "MoE tensors only, uniform +-sqrt(3/fan_in) weights from splitmix64";
  return c.dump(2) + "\n";
}

// One writer per shard, layers split evenly in order.
Status BuildWriters(const SyntheticModelOptions& o, std::vector<SafetensorsWriter>* writers) {
  if (o.hidden <= 0 || o.n_layers <= 0 || o.n_experts <= 0 || o.top_k <= 0 ||
      o.top_k > o.n_experts || o.moe_intermediate <= 0 || o.shared_intermediate < 0 ||
      o.n_shards <= 0 || o.n_shards > o.n_layers || !IsComputeDType(o.dtype)) {
    return absl::InvalidArgumentError("invalid synthetic model options");
  }
  writers->assign(static_cast<size_t>(o.n_shards), SafetensorsWriter());
  const int64_t h = o.hidden, inter = o.moe_intermediate, shared = o.shared_intermediate;
  for (int layer = 0; layer < o.n_layers; ++layer) {
    SafetensorsWriter& w = (*writers)[static_cast<size_t>(layer * o.n_shards / o.n_layers)];
    const std::string block = absl::StrCat("model.layers.", layer, ".mlp.");
    auto add = [&](const std::string& name, std::vector<int64_t> shape, int fan_in) {
      return w.AddGenerated(name, o.dtype, std::move(shape),
                            UniformFill(o.seed, name, o.dtype, Bound(fan_in)));
    };
    MOE_RETURN_IF_ERROR(add(block + "gate.weight", {o.n_experts, h}, o.hidden));
    for (int e = 0; e < o.n_experts; ++e) {
      const std::string expert = absl::StrCat(block, "experts.", e, ".");
      MOE_RETURN_IF_ERROR(add(expert + "gate_proj.weight", {inter, h}, o.hidden));
      MOE_RETURN_IF_ERROR(add(expert + "up_proj.weight", {inter, h}, o.hidden));
      MOE_RETURN_IF_ERROR(add(expert + "down_proj.weight", {h, inter}, o.moe_intermediate));
    }
    if (shared > 0) {
      MOE_RETURN_IF_ERROR(add(block + "shared_expert.gate_proj.weight", {shared, h}, o.hidden));
      MOE_RETURN_IF_ERROR(add(block + "shared_expert.up_proj.weight", {shared, h}, o.hidden));
      MOE_RETURN_IF_ERROR(
          add(block + "shared_expert.down_proj.weight", {h, shared}, o.shared_intermediate));
      MOE_RETURN_IF_ERROR(add(block + "shared_expert_gate.weight", {1, h}, o.hidden));
    }
  }
  for (SafetensorsWriter& w : *writers) w.SetMetadata("format", "pt");
  return absl::OkStatus();
}

// File name -> expected contents (small files) or size (shards).
struct ExpectedFile {
  std::string name;
  std::string text;  // config/index: exact contents
  int64_t size = 0;  // shards: exact size
  const SafetensorsWriter* writer = nullptr;
};

Status Plan(const SyntheticModelOptions& o, std::vector<SafetensorsWriter>* writers,
            std::vector<ExpectedFile>* files) {
  MOE_RETURN_IF_ERROR(BuildWriters(o, writers));
  files->clear();
  files->push_back({store::kConfigFile, ConfigJson(o), 0, nullptr});
  if (o.n_shards == 1) {
    files->push_back({store::kSingleFile, "", (*writers)[0].FileSize(), &(*writers)[0]});
    return absl::OkStatus();
  }
  nlohmann::json index;
  int64_t total = 0;
  index["weight_map"] = nlohmann::json::object();
  for (int s = 0; s < o.n_shards; ++s) {
    const SafetensorsWriter& w = (*writers)[static_cast<size_t>(s)];
    const std::string name = ShardName(s, o.n_shards);
    for (const std::string& tensor : w.names()) index["weight_map"][tensor] = name;
    total += w.FileSize() - 8 - static_cast<int64_t>(w.Header().size());
    files->push_back({name, "", w.FileSize(), &w});
  }
  index["metadata"]["total_size"] = total;
  files->push_back({store::kIndexFile, index.dump(2) + "\n", 0, nullptr});
  return absl::OkStatus();
}

Status WriteText(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  out.close();
  if (!out) return absl::InternalError(absl::StrCat("cannot write ", path));
  return absl::OkStatus();
}

bool IsComplete(const std::string& dir, const std::vector<ExpectedFile>& files) {
  for (const ExpectedFile& f : files) {
    const std::string path = store::JoinPath(dir, f.name);
    std::error_code ec;
    const auto size = fs::file_size(path, ec);
    if (ec) return false;
    if (f.writer != nullptr) {
      if (static_cast<int64_t>(size) != f.size) return false;
    } else {
      auto text = store::ReadSmallFile(path);
      if (!text.ok() || *text != f.text) return false;
    }
  }
  return true;
}

std::string UniqueSuffix() {
  static std::atomic<uint64_t> counter{0};
  const auto now = std::chrono::steady_clock::now().time_since_epoch().count();
  return absl::StrCat(::getpid(), ".", static_cast<int64_t>(now), ".", counter.fetch_add(1));
}

}  // namespace

Status WriteSyntheticQwen2Moe(const SyntheticModelOptions& options, const std::string& dir) {
  std::vector<SafetensorsWriter> writers;
  std::vector<ExpectedFile> files;
  MOE_RETURN_IF_ERROR(Plan(options, &writers, &files));
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", dir, ": ", ec.message()));
  for (const ExpectedFile& f : files) {
    const std::string path = store::JoinPath(dir, f.name);
    MOE_RETURN_IF_ERROR(f.writer != nullptr ? f.writer->Write(path) : WriteText(path, f.text));
  }
  return absl::OkStatus();
}

std::string DefaultCacheDir() {
  if (const char* d = std::getenv("MOE_CACHE_DIR"); d != nullptr && *d != '\0') return d;
  if (const char* d = std::getenv("XDG_CACHE_HOME"); d != nullptr && *d != '\0') {
    return store::JoinPath(d, "moe-swarm");
  }
  if (const char* d = std::getenv("HOME"); d != nullptr && *d != '\0') {
    return store::JoinPath(d, ".cache/moe-swarm");
  }
  return "/tmp/moe-swarm-cache";
}

StatusOr<std::string> EnsureEmbeddedModel(const std::string& cache_dir_in) {
  const std::string cache_dir = cache_dir_in.empty() ? DefaultCacheDir() : cache_dir_in;
  const std::string final_dir = store::JoinPath(cache_dir, kEmbeddedModelName);
  const SyntheticModelOptions options;
  std::vector<SafetensorsWriter> writers;
  std::vector<ExpectedFile> files;
  MOE_RETURN_IF_ERROR(Plan(options, &writers, &files));
  if (IsComplete(final_dir, files)) return final_dir;

  std::error_code ec;
  fs::create_directories(cache_dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", cache_dir, ": ", ec.message()));
  const std::string tmp_dir =
      store::JoinPath(cache_dir, absl::StrCat(".", kEmbeddedModelName, ".tmp.", UniqueSuffix()));
  Status written = WriteSyntheticQwen2Moe(options, tmp_dir);
  if (!written.ok()) {
    fs::remove_all(tmp_dir, ec);
    return written;
  }
  // A stale, incomplete copy under the final name is moved aside first.
  if (fs::exists(final_dir, ec) && !IsComplete(final_dir, files)) {
    const std::string stale = store::JoinPath(
        cache_dir, absl::StrCat(".", kEmbeddedModelName, ".stale.", UniqueSuffix()));
    fs::rename(final_dir, stale, ec);
    fs::remove_all(stale, ec);
  }
  if (::rename(tmp_dir.c_str(), final_dir.c_str()) != 0) {
    const int err = errno;
    fs::remove_all(tmp_dir, ec);
    // Another process may have won the race; its copy is as good as ours.
    if (IsComplete(final_dir, files)) return final_dir;
    return absl::InternalError(
        absl::StrCat("cannot rename ", tmp_dir, " to ", final_dir, ": ", std::strerror(err)));
  }
  return final_dir;
}

}  // namespace moe
