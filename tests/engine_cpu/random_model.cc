#include "engine_cpu/random_model.h"

#include <cmath>
#include <random>
#include <string>
#include <utility>

namespace moe::testing {
namespace {

// Fills `count` elements of `dtype` at `dst` with values uniform in [-scale, scale).
void FillUniform(std::mt19937_64& rng, DType dtype, float scale, int64_t count, uint8_t* dst) {
  std::uniform_real_distribution<float> dist(-scale, scale);
  std::vector<float> tmp(static_cast<size_t>(count));
  for (float& v : tmp) v = dist(rng);
  ConvertFromF32(tmp.data(), dtype, dst, tmp.size());
}

// Lays tensors out in one byte buffer; data pointers are fixed once the buffer is final.
class Arena {
 public:
  TensorView Add(const std::string& name, DType dtype, std::vector<int64_t> shape) {
    TensorView t;
    t.name = name;
    t.dtype = dtype;
    t.shape = std::move(shape);
    t.nbytes = t.numel() * static_cast<int64_t>(DTypeSize(dtype));
    offsets_.push_back(size_);
    size_ += (t.nbytes + 63) / 64 * 64;
    return t;
  }
  int64_t size() const { return size_; }
  int64_t offset(size_t i) const { return offsets_[i]; }

 private:
  int64_t size_ = 0;
  std::vector<int64_t> offsets_;
};

}  // namespace

RandomModelOptions ShapedModelOptions(Family family, int n_experts, int top_k, int hidden,
                                      int moe_intermediate, DType weight_dtype, uint64_t seed,
                                      std::vector<int> moe_layers) {
  RandomModelOptions o;
  o.family = family;
  o.n_experts = n_experts;
  o.top_k = top_k;
  o.hidden = hidden;
  o.moe_intermediate = moe_intermediate;
  o.weight_dtype = weight_dtype;
  o.seed = seed;
  o.moe_layers = std::move(moe_layers);
  return o;
}

MoeSpec RandomSpec(const RandomModelOptions& o) {
  MoeSpec spec;
  spec.family = o.family;
  spec.architecture = std::string(FamilyName(o.family));
  spec.model_type = spec.architecture;
  spec.hidden = o.hidden;
  spec.moe_intermediate = o.moe_intermediate;
  spec.moe_layers = o.moe_layers;
  spec.n_layers = o.moe_layers.empty() ? 1 : o.moe_layers.back() + 1;
  spec.weight_dtype = o.weight_dtype;
  spec.torch_dtype = std::string(DTypeName(o.weight_dtype));
  RoutingSpec& r = spec.routing;
  r.n_experts = o.n_experts;
  r.top_k = o.top_k;
  r.norm_topk_prob = o.norm_topk_prob;
  const int shared = o.shared_intermediate > 0 ? o.shared_intermediate : 2 * o.moe_intermediate;
  switch (o.family) {
    case Family::kMixtral:
      r.norm_topk_prob = true;
      break;
    case Family::kQwen2Moe:
      spec.shared_intermediate = shared;
      spec.shared_expert_gate = true;
      break;
    case Family::kQwen3Moe:
    case Family::kOlmoe:
      break;
    case Family::kDeepseekV2:
      r.norm_topk_prob = false;
      r.routed_scaling_factor = o.routed_scaling_factor;
      if (o.n_group > 1) {
        r.topk_method = TopkMethod::kGroupLimitedGreedy;
        r.n_group = o.n_group;
        r.topk_group = o.topk_group;
      }
      spec.shared_intermediate = shared;
      break;
    case Family::kDeepseekV3:
      r.scoring = ScoringFunc::kSigmoid;
      r.topk_method = TopkMethod::kNoAuxTc;
      r.n_group = o.n_group;
      r.topk_group = o.topk_group;
      r.has_correction_bias = true;
      r.routed_scaling_factor = o.routed_scaling_factor;
      spec.shared_intermediate = shared;
      break;
  }
  return spec;
}

std::shared_ptr<const Model> RandomModel(const RandomModelOptions& o) {
  MoeSpec spec = RandomSpec(o);
  const DType wd = o.weight_dtype;
  const int64_t h = spec.hidden;
  const int64_t inter = spec.moe_intermediate;
  const int64_t shared = spec.shared_intermediate;
  // Pass 1: shapes and offsets.
  Arena arena;
  std::vector<MoeLayerWeights> layers;
  for (int layer : spec.moe_layers) {
    MoeLayerWeights w;
    w.layer = layer;
    const std::string p = "model.layers." + std::to_string(layer) + ".mlp.";
    w.router = arena.Add(p + "gate.weight", wd, {spec.n_experts(), h});
    auto ffn = [&](const std::string& name, int64_t width) {
      ExpertWeights e;
      e.gate = arena.Add(name + "gate_proj.weight", wd, {width, h});
      e.up = arena.Add(name + "up_proj.weight", wd, {width, h});
      e.down = arena.Add(name + "down_proj.weight", wd, {h, width});
      return e;
    };
    for (int e = 0; e < spec.n_experts(); ++e) {
      w.experts.push_back(ffn(p + "experts." + std::to_string(e) + ".", inter));
    }
    if (shared > 0) w.shared = ffn(p + "shared_experts.", shared);
    if (spec.shared_expert_gate)
      w.shared_gate = arena.Add(p + "shared_expert_gate.weight", wd, {1, h});
    if (spec.routing.has_correction_bias) {
      w.correction_bias =
          arena.Add(p + "gate.e_score_correction_bias", DType::kF32, {spec.n_experts()});
    }
    layers.push_back(std::move(w));
  }
  // Pass 2: the buffer, pointers (in Add() order) and values.
  auto buffer = std::make_shared<std::vector<uint8_t>>(static_cast<size_t>(arena.size()));
  std::mt19937_64 rng(o.seed);
  size_t index = 0;
  auto place = [&](TensorView& t, float scale) {
    uint8_t* dst = buffer->data() + arena.offset(index++);
    t.data = dst;
    FillUniform(rng, t.dtype, scale, t.numel(), dst);
  };
  const float in_scale = std::sqrt(3.0f / static_cast<float>(h));
  for (MoeLayerWeights& w : layers) {
    place(w.router, in_scale);
    auto ffn = [&](ExpertWeights& e) {
      place(e.gate, in_scale);
      place(e.up, in_scale);
      place(e.down, std::sqrt(3.0f / static_cast<float>(e.gate.dim(0))));
    };
    for (ExpertWeights& e : w.experts) ffn(e);
    if (w.shared) ffn(*w.shared);
    if (w.shared_gate) place(*w.shared_gate, in_scale);
    if (w.correction_bias) place(*w.correction_bias, 0.1f);
  }
  return std::shared_ptr<const Model>(
      Model::FromWeights(std::move(spec), std::move(layers), std::shared_ptr<const void>(buffer)));
}

RandomActivations MakeActivations(DType dtype, int64_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  RandomActivations a;
  a.values.resize(static_cast<size_t>(n));
  for (float& v : a.values) v = dist(rng);
  a.bytes.resize(static_cast<size_t>(n) * DTypeSize(dtype));
  ConvertFromF32(a.values.data(), dtype, a.bytes.data(), a.values.size());
  ConvertToF32(dtype, a.bytes.data(), a.values.data(), a.values.size());
  return a;
}

}  // namespace moe::testing
