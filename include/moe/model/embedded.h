// The embedded default model: a small synthetic Qwen2-MoE checkpoint generated on first use,
// bit for bit the same on every machine (splitmix64 streams seeded from each tensor's name; no
// std:: distributions), so `moe-swarm serve` works with no download.
//
// Default shape (kEmbeddedModelName): hidden 512, 4 decoder layers all MoE, 32 experts, top-4,
// moe_intermediate 256, shared expert 512 with its sigmoid gate, norm_topk_prob false, BF16;
// config.json + two shards + model.safetensors.index.json, ~107 MB. Only MoE tensors are
// written (no attention, norms or embeddings). Weights are uniform in +-sqrt(3 / fan_in), so
// each projection keeps unit variance and activations stay O(1).
#pragma once

#include <cstdint>
#include <string>

#include "moe/common/dtype.h"
#include "moe/common/status.h"

namespace moe {

inline constexpr char kEmbeddedModelName[] = "embedded-qwen2moe-v1";

// Shape of a generated Qwen2-MoE checkpoint. The defaults are the embedded model; changing
// anything here changes its bytes, which requires a new kEmbeddedModelName version.
struct SyntheticModelOptions {
  int hidden = 512;
  int n_layers = 4;
  int n_experts = 32;
  int top_k = 4;
  int moe_intermediate = 256;
  int shared_intermediate = 512;
  bool norm_topk_prob = false;
  DType dtype = DType::kBF16;             // F32, F16 or BF16
  int n_shards = 2;                       // 1: model.safetensors; >1: indexed shards split by layer
  uint64_t seed = 0x6d6f652d73776172ull;  // "moe-swar"
};

// Writes the checkpoint described by `options` into `dir` (created if missing; existing files
// of the same names are overwritten). Deterministic: same options, same bytes.
// INVALID_ARGUMENT for impossible options, INTERNAL for I/O errors.
Status WriteSyntheticQwen2Moe(const SyntheticModelOptions& options, const std::string& dir);

// $MOE_CACHE_DIR, else $XDG_CACHE_HOME/moe-swarm, else $HOME/.cache/moe-swarm, else
// /tmp/moe-swarm-cache.
std::string DefaultCacheDir();

// Returns `cache_dir`/kEmbeddedModelName, generating it first unless it is already there and
// complete (every file present with its expected size). Generation writes to a temporary
// directory beside it and renames it into place, so concurrent callers and crashes never leave
// a half-written model under the final name. An empty `cache_dir` means DefaultCacheDir().
StatusOr<std::string> EnsureEmbeddedModel(const std::string& cache_dir);

}  // namespace moe
