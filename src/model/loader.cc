// Model::Open: a checkpoint directory -> spec + per-expert TensorViews into the mapped shards.
#include "moe/model/loader.h"

#include <algorithm>

#include "model/tensor_names.h"
#include "moe/model/config.h"

namespace moe {

namespace {

using model_internal::MoeBlockNames;
using store::Checkpoint;
using store::TensorLocation;

std::string ShapeString(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) absl::StrAppend(&s, i ? ", " : "", shape[i]);
  return s + "]";
}

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Builds the MoeLayerWeights of one checkpoint, layer by layer.
class LayerBuilder {
 public:
  LayerBuilder(const Checkpoint& ckpt, MoeSpec* spec, LoadReport* report)
      : ckpt_(ckpt), spec_(*spec), report_(report) {}

  Status Build(int layer, MoeLayerWeights* out);

 private:
  // The tensor `name` with exactly `shape`; `what` says what it is for messages.
  StatusOr<TensorView> Get(const std::string& name, const std::vector<int64_t>& shape,
                           const std::string& what) const;
  // An expert weight: Get() plus the shared weight dtype and, for F8, its scale tensor.
  Status GetWeight(const std::string& name, const std::vector<int64_t>& shape,
                   const std::string& what, TensorView* weight, std::optional<TensorView>* scale);
  Status CheckWeightDType(const TensorView& view, const std::string& file);
  Status CheckFloat(const TensorView& view, const std::string& what) const;
  Status BuildPerExpert(const MoeBlockNames& n, int layer, MoeLayerWeights* out);
  Status BuildFused(const MoeBlockNames& n, int layer, MoeLayerWeights* out);
  std::string FileOf(const std::string& name) const {
    const TensorLocation* where = ckpt_.Find(name);
    return where ? where->file->path() : ckpt_.dir();
  }

  const Checkpoint& ckpt_;
  MoeSpec& spec_;
  LoadReport* report_;
  bool weight_dtype_known_ = false;
};

StatusOr<TensorView> LayerBuilder::Get(const std::string& name, const std::vector<int64_t>& shape,
                                       const std::string& what) const {
  const TensorLocation* where = ckpt_.Find(name);
  if (where == nullptr) {
    return absl::NotFoundError(absl::StrCat(ckpt_.dir(), ": tensor '", name, "' (", what,
                                            ") required by ", std::string(FamilyName(spec_.family)),
                                            " is missing from the checkpoint"));
  }
  if (where->entry->shape != shape) {
    return absl::InvalidArgumentError(absl::StrCat(
        where->file->path(), ": tensor '", name, "' (", what, ") has shape ",
        ShapeString(where->entry->shape), " but config.json implies ", ShapeString(shape),
        " (hidden_size ", spec_.hidden, ", expert width ", spec_.moe_intermediate, ", experts ",
        spec_.n_experts(), ", shared width ", spec_.shared_intermediate, ")"));
  }
  TensorView v;
  v.name = name;
  v.dtype = where->entry->dtype;
  v.shape = where->entry->shape;
  v.data = where->data();
  v.nbytes = where->entry->nbytes();
  return v;
}

Status LayerBuilder::CheckFloat(const TensorView& view, const std::string& what) const {
  if (!IsComputeDType(view.dtype)) {
    return absl::InvalidArgumentError(
        absl::StrCat(FileOf(view.name), ": tensor '", view.name, "' (", what, ") has dtype ",
                     std::string(DTypeName(view.dtype)), "; expected F32, F16 or BF16"));
  }
  return absl::OkStatus();
}

Status LayerBuilder::CheckWeightDType(const TensorView& view, const std::string& file) {
  if (!weight_dtype_known_) {
    if (!IsComputeDType(view.dtype) && view.dtype != DType::kF8E4M3) {
      return absl::InvalidArgumentError(absl::StrCat(file, ": tensor '", view.name, "' has dtype ",
                                                     std::string(DTypeName(view.dtype)),
                                                     "; expert weights must be F32, F16, BF16 "
                                                     "or F8_E4M3"));
    }
    if (view.dtype == DType::kF8E4M3 && spec_.quant_block_out == 0) {
      spec_.quant_block_out = spec_.quant_block_in = 128;
      if (report_) {
        report_->notes.push_back(
            "F8_E4M3 weights without quantization_config: assuming 128x128 scale blocks");
      }
    }
    if (view.dtype != DType::kF8E4M3 && spec_.quant_block_out != 0) {
      if (report_) {
        report_->notes.push_back(absl::StrCat("quantization_config says fp8 but the weights are ",
                                              std::string(DTypeName(view.dtype))));
      }
      spec_.quant_block_out = spec_.quant_block_in = 0;
    }
    spec_.weight_dtype = view.dtype;
    weight_dtype_known_ = true;
    return absl::OkStatus();
  }
  if (view.dtype != spec_.weight_dtype) {
    return absl::InvalidArgumentError(absl::StrCat(
        file, ": tensor '", view.name, "' has dtype ", std::string(DTypeName(view.dtype)),
        " but the other expert weights are ", std::string(DTypeName(spec_.weight_dtype))));
  }
  return absl::OkStatus();
}

Status LayerBuilder::GetWeight(const std::string& name, const std::vector<int64_t>& shape,
                               const std::string& what, TensorView* weight,
                               std::optional<TensorView>* scale) {
  MOE_ASSIGN_OR_RETURN(*weight, Get(name, shape, what));
  MOE_RETURN_IF_ERROR(CheckWeightDType(*weight, FileOf(name)));
  if (spec_.weight_dtype == DType::kF8E4M3) {
    const std::vector<int64_t> scale_shape = {CeilDiv(shape[0], spec_.quant_block_out),
                                              CeilDiv(shape[1], spec_.quant_block_in)};
    MOE_ASSIGN_OR_RETURN(TensorView s, Get(model_internal::ScaleName(name), scale_shape,
                                           absl::StrCat("F8 scale of ", what)));
    MOE_RETURN_IF_ERROR(CheckFloat(s, "F8 scale"));
    *scale = std::move(s);
  }
  return absl::OkStatus();
}

Status LayerBuilder::BuildPerExpert(const MoeBlockNames& n, int layer, MoeLayerWeights* out) {
  const int64_t h = spec_.hidden, inter = spec_.moe_intermediate;
  out->experts.resize(static_cast<size_t>(spec_.n_experts()));
  for (int e = 0; e < spec_.n_experts(); ++e) {
    ExpertWeights& w = out->experts[static_cast<size_t>(e)];
    const std::string what = absl::StrCat("layer ", layer, " expert ", e);
    MOE_RETURN_IF_ERROR(
        GetWeight(n.Expert(e, n.routed.gate), {inter, h}, what + " gate", &w.gate, &w.gate_scale));
    MOE_RETURN_IF_ERROR(
        GetWeight(n.Expert(e, n.routed.up), {inter, h}, what + " up", &w.up, &w.up_scale));
    MOE_RETURN_IF_ERROR(
        GetWeight(n.Expert(e, n.routed.down), {h, inter}, what + " down", &w.down, &w.down_scale));
  }
  const std::string extra = n.Expert(spec_.n_experts(), n.routed.gate);
  if (ckpt_.Find(extra) != nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(FileOf(extra), ": tensor '", extra,
                                                   "' exists but config.json has only ",
                                                   spec_.n_experts(), " experts"));
  }
  if (report_) {
    report_->layouts.push_back(absl::StrCat("layer ", layer, ": ", n.block, ".experts.<e>.{",
                                            n.routed.gate, ",", n.routed.up, ",", n.routed.down,
                                            "} (per-expert)"));
  }
  return absl::OkStatus();
}

Status LayerBuilder::BuildFused(const MoeBlockNames& n, int layer, MoeLayerWeights* out) {
  const int64_t h = spec_.hidden, inter = spec_.moe_intermediate, ne = spec_.n_experts();
  const std::string what = absl::StrCat("layer ", layer, " fused experts");
  MOE_ASSIGN_OR_RETURN(TensorView gate_up,
                       Get(n.fused_gate_up, {ne, 2 * inter, h}, what + " gate_up"));
  MOE_ASSIGN_OR_RETURN(TensorView down, Get(n.fused_down, {ne, h, inter}, what + " down"));
  MOE_RETURN_IF_ERROR(CheckWeightDType(gate_up, FileOf(n.fused_gate_up)));
  MOE_RETURN_IF_ERROR(CheckWeightDType(down, FileOf(n.fused_down)));
  if (spec_.weight_dtype == DType::kF8E4M3) {
    return absl::UnimplementedError(
        absl::StrCat(FileOf(n.fused_gate_up), ": F8_E4M3 weights in the fused layout ('",
                     n.fused_gate_up, "') are not supported; use the per-expert layout"));
  }
  const int64_t es = static_cast<int64_t>(DTypeSize(spec_.weight_dtype));
  const auto* gu = static_cast<const uint8_t*>(gate_up.data);
  const auto* dn = static_cast<const uint8_t*>(down.data);
  out->experts.resize(static_cast<size_t>(ne));
  for (int64_t e = 0; e < ne; ++e) {
    auto slice = [&](const TensorView& whole, const std::string& suffix, const uint8_t* base,
                     int64_t rows, int64_t cols) {
      TensorView v;
      v.name = absl::StrCat(whole.name, suffix);
      v.dtype = whole.dtype;
      v.shape = {rows, cols};
      v.data = base;
      v.nbytes = rows * cols * es;
      return v;
    };
    ExpertWeights& w = out->experts[static_cast<size_t>(e)];
    // gate_up_proj[e] is [2 * inter, hidden]: gate rows first, then up rows.
    w.gate = slice(gate_up, absl::StrCat("[", e, ", :", inter, "]"), gu + e * 2 * inter * h * es,
                   inter, h);
    w.up = slice(gate_up, absl::StrCat("[", e, ", ", inter, ":]"),
                 gu + (e * 2 * inter + inter) * h * es, inter, h);
    w.down = slice(down, absl::StrCat("[", e, "]"), dn + e * h * inter * es, h, inter);
  }
  if (report_) {
    report_->layouts.push_back(
        absl::StrCat("layer ", layer, ": ", n.block, ".experts.{gate_up_proj,down_proj} (fused)"));
  }
  return absl::OkStatus();
}

Status LayerBuilder::Build(int layer, MoeLayerWeights* out) {
  out->layer = layer;
  // Pick the block prefix whose router exists (Mixtral: block_sparse_moe as published, mlp in v5).
  const std::vector<std::string> prefixes = model_internal::MoeBlockPrefixes(spec_.family, layer);
  std::optional<MoeBlockNames> names;
  for (const std::string& prefix : prefixes) {
    MoeBlockNames n = model_internal::BlockNames(spec_.family, prefix);
    if (ckpt_.Find(n.router) != nullptr) {
      names = std::move(n);
      break;
    }
  }
  if (!names.has_value()) {
    std::string tried;
    for (const std::string& p : prefixes)
      absl::StrAppend(&tried, tried.empty() ? "" : "' or '", p, ".gate.weight");
    return absl::NotFoundError(
        absl::StrCat(ckpt_.dir(), ": router of MoE layer ", layer, " ('", tried, "') required by ",
                     std::string(FamilyName(spec_.family)), " is missing from the checkpoint"));
  }
  const MoeBlockNames& n = *names;
  const int64_t h = spec_.hidden, ne = spec_.n_experts();
  const std::string lw = absl::StrCat("layer ", layer, " ");
  MOE_ASSIGN_OR_RETURN(out->router, Get(n.router, {ne, h}, lw + "router"));
  MOE_RETURN_IF_ERROR(CheckFloat(out->router, lw + "router"));
  if (spec_.routing.has_correction_bias) {
    MOE_ASSIGN_OR_RETURN(TensorView bias, Get(n.correction_bias, {ne}, lw + "correction bias"));
    MOE_RETURN_IF_ERROR(CheckFloat(bias, lw + "correction bias"));
    out->correction_bias = std::move(bias);
  }

  const bool fused = ckpt_.Find(n.fused_gate_up) != nullptr;
  const bool per_expert = ckpt_.Find(n.Expert(0, n.routed.gate)) != nullptr;
  if (fused && per_expert) {
    return absl::InvalidArgumentError(absl::StrCat(
        FileOf(n.fused_gate_up), ": layer ", layer, " has both fused ('", n.fused_gate_up,
        "') and per-expert ('", n.Expert(0, n.routed.gate), "') expert tensors"));
  }
  MOE_RETURN_IF_ERROR(fused ? BuildFused(n, layer, out) : BuildPerExpert(n, layer, out));

  if (spec_.shared_intermediate > 0) {
    const int64_t s = spec_.shared_intermediate;
    ExpertWeights shared;
    MOE_RETURN_IF_ERROR(GetWeight(n.Shared("gate_proj"), {s, h}, lw + "shared expert gate_proj",
                                  &shared.gate, &shared.gate_scale));
    MOE_RETURN_IF_ERROR(GetWeight(n.Shared("up_proj"), {s, h}, lw + "shared expert up_proj",
                                  &shared.up, &shared.up_scale));
    MOE_RETURN_IF_ERROR(GetWeight(n.Shared("down_proj"), {h, s}, lw + "shared expert down_proj",
                                  &shared.down, &shared.down_scale));
    out->shared = std::move(shared);
    if (spec_.shared_expert_gate) {
      MOE_ASSIGN_OR_RETURN(TensorView gate, Get(n.shared_gate, {1, h}, lw + "shared_expert_gate"));
      MOE_RETURN_IF_ERROR(CheckFloat(gate, lw + "shared_expert_gate"));
      out->shared_gate = std::move(gate);
    }
  }
  return absl::OkStatus();
}

// MoE tensors must sit in layers config.json says are MoE.
Status CheckNoStrayMoeTensors(const Checkpoint& ckpt, const MoeSpec& spec) {
  using model_internal::TensorKind;
  for (const auto& [name, where] : ckpt.tensors()) {
    int layer = -1;
    const TensorKind kind = model_internal::ClassifyTensor(name, &layer);
    const bool moe = kind == TensorKind::kRouter || kind == TensorKind::kCorrectionBias ||
                     kind == TensorKind::kRoutedExpert || kind == TensorKind::kSharedExpert ||
                     kind == TensorKind::kSharedGate;
    if (!moe || layer < 0) continue;
    // DeepSeek-V3's multi-token-prediction layers follow the decoder layers; like transformers,
    // we ignore them.
    if (layer >= spec.n_layers && layer < spec.n_layers + spec.n_mtp_layers) continue;
    if (layer >= spec.n_layers) {
      return absl::InvalidArgumentError(
          absl::StrCat(where.file->path(), ": tensor '", name, "' is in layer ", layer,
                       " but config.json has num_hidden_layers ", spec.n_layers));
    }
    if (!spec.IsMoeLayer(layer)) {
      return absl::InvalidArgumentError(absl::StrCat(
          where.file->path(), ": tensor '", name, "' is a MoE tensor but config.json makes layer ",
          layer, " dense (first_k_dense_replace / mlp_only_layers / decoder_sparse_step)"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

StatusOr<std::unique_ptr<Model>> ModelLoader::Load(std::shared_ptr<const Checkpoint> checkpoint,
                                                   LoadReport* report) {
  const Checkpoint& ckpt = *checkpoint;
  std::vector<std::string> config_notes;
  MOE_ASSIGN_OR_RETURN(
      MoeSpec spec, ParseMoeConfig(ckpt.config_json(),
                                   store::JoinPath(ckpt.dir(), store::kConfigFile), &config_notes));
  if (report) {
    report->notes.insert(report->notes.end(), ckpt.warnings().begin(), ckpt.warnings().end());
    report->notes.insert(report->notes.end(), config_notes.begin(), config_notes.end());
  }
  MOE_RETURN_IF_ERROR(CheckNoStrayMoeTensors(ckpt, spec));

  std::vector<MoeLayerWeights> layers(spec.moe_layers.size());
  LayerBuilder builder(ckpt, &spec, report);
  for (size_t i = 0; i < spec.moe_layers.size(); ++i) {
    MOE_RETURN_IF_ERROR(builder.Build(spec.moe_layers[i], &layers[i]));
  }

  std::unique_ptr<Model> model(new Model());
  model->spec_ = std::move(spec);
  model->dir_ = ckpt.dir();
  model->layers_ = std::move(layers);
  for (size_t i = 0; i < model->layers_.size(); ++i) model->index_[model->layers_[i].layer] = i;
  model->mapped_bytes_ = ckpt.mapped_bytes();
  model->keepalive_ = std::move(checkpoint);
  return model;
}

StatusOr<std::unique_ptr<Model>> Model::Open(const std::string& dir) {
  MOE_ASSIGN_OR_RETURN(std::unique_ptr<store::Checkpoint> ckpt, store::Checkpoint::Open(dir));
  return ModelLoader::Load(std::shared_ptr<const store::Checkpoint>(std::move(ckpt)));
}

}  // namespace moe
