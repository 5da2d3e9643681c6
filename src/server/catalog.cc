#include "catalog.h"

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_join.h"

namespace moe::server {

namespace {

constexpr char kLayerSep[] = ".layer";
constexpr char kVersion[] = "1";

std::string ScoringName(ScoringFunc s) {
  return s == ScoringFunc::kSigmoid ? "sigmoid" : "softmax";
}

inference::DataType ConfigType(DType d) {
  switch (d) {
    case DType::kF16:
      return inference::TYPE_FP16;
    case DType::kF32:
      return inference::TYPE_FP32;
    default:
      return inference::TYPE_BF16;
  }
}

// The activation dtype the KServe config advertises: the model's weight dtype when it is one the
// engines compute in, else BF16. Requests may use any of BF16, FP16, FP32.
DType AdvertisedDType(const MoeSpec& spec) {
  return IsComputeDType(spec.weight_dtype) ? spec.weight_dtype : DType::kBF16;
}

}  // namespace

const char* KserveDatatype(DType dtype) {
  switch (dtype) {
    case DType::kF16:
      return "FP16";
    case DType::kF32:
      return "FP32";
    case DType::kBF16:
      return "BF16";
    case DType::kI32:
      return "INT32";
    default:
      return "BYTES";
  }
}

StatusOr<DType> ParseKserveDatatype(const std::string& name, const std::string& field) {
  if (name == "BF16") return DType::kBF16;
  if (name == "FP16") return DType::kF16;
  if (name == "FP32") return DType::kF32;
  return absl::InvalidArgumentError(
      absl::StrCat(field, ": expected BF16, FP16 or FP32, got \"", name, "\""));
}

Catalog::Catalog(ServedModel model, config::ServerOptions server,
                 config::SchedulerOptions scheduler, int64_t max_request_tokens)
    : model_(std::move(model)),
      server_(std::move(server)),
      scheduler_(std::move(scheduler)),
      max_request_tokens_(max_request_tokens) {}

std::string Catalog::LayerList() const { return absl::StrJoin(model_.spec.moe_layers, ","); }

Status Catalog::ResolveNative(const std::string& model, int layer) const {
  if (!model.empty() && model != model_.name) {
    return absl::NotFoundError(
        absl::StrCat("model: \"", model, "\" is not served; expected \"", model_.name, "\""));
  }
  if (!model_.spec.IsMoeLayer(layer)) {
    return absl::NotFoundError(absl::StrCat("layer: ", layer, " is not a MoE layer of model \"",
                                            model_.name, "\"; expected one of [", LayerList(),
                                            "]"));
  }
  return absl::OkStatus();
}

StatusOr<int> Catalog::ResolveKserve(const std::string& name, const std::string& version) const {
  std::string prefix = model_.name + kLayerSep;
  int layer = -1;
  if (!absl::StartsWith(name, prefix) || !absl::SimpleAtoi(name.substr(prefix.size()), &layer) ||
      !model_.spec.IsMoeLayer(layer) || name != KserveName(layer)) {
    return absl::NotFoundError(absl::StrCat("model_name: \"", name, "\" is not served; expected \"",
                                            prefix, "<L>\" with L in [", LayerList(), "]"));
  }
  if (!version.empty() && version != kVersion) {
    return absl::NotFoundError(absl::StrCat("model_version: \"", version, "\" of model \"", name,
                                            "\" is not served; expected \"", kVersion,
                                            "\" or empty"));
  }
  return layer;
}

std::string Catalog::KserveName(int layer) const {
  return absl::StrCat(model_.name, kLayerSep, layer);
}

std::vector<std::string> Catalog::KserveNames() const {
  std::vector<std::string> names;
  for (int layer : model_.spec.moe_layers) names.push_back(KserveName(layer));
  return names;
}

void Catalog::FillModelInfo(bool ready, moe::v1::ModelInfo* info) const {
  const MoeSpec& s = model_.spec;
  info->set_name(model_.name);
  info->set_family(std::string(FamilyName(s.family)));
  info->set_architecture(s.architecture);
  info->set_hidden(s.hidden);
  info->set_moe_intermediate(s.moe_intermediate);
  info->set_num_layers(s.n_layers);
  for (int l : s.moe_layers) info->add_moe_layers(l);
  info->set_num_experts(s.n_experts());
  info->set_top_k(s.top_k());
  info->set_shared_intermediate(s.shared_intermediate);
  info->set_scoring(ScoringName(s.routing.scoring));
  info->set_weight_dtype(std::string(DTypeName(s.weight_dtype)));
  info->add_activation_dtypes(moe::v1::DTYPE_BF16);
  info->add_activation_dtypes(moe::v1::DTYPE_F16);
  info->add_activation_dtypes(moe::v1::DTYPE_F32);
  info->set_engine(model_.engine);
  moe::v1::Limits* limits = info->mutable_limits();
  limits->set_max_batch_tokens(max_request_tokens_);
  limits->set_max_message_bytes(server_.max_message_bytes);
  limits->set_max_queue_tokens(scheduler_.max_queue_tokens);
  limits->set_default_timeout_us(static_cast<uint64_t>(scheduler_.default_timeout_us));
  info->set_ready(ready);
}

void Catalog::FillMetadata(int layer, inference::ModelMetadataResponse* out) const {
  const MoeSpec& s = model_.spec;
  out->set_name(KserveName(layer));
  out->add_versions()->assign(kVersion, sizeof(kVersion) - 1);
  out->set_platform("moe_swarm");
  auto add = [](auto* list, const char* name, const char* dtype, int64_t width) {
    auto* t = list->Add();
    t->set_name(name);
    t->set_datatype(dtype);
    t->add_shape(-1);
    t->add_shape(width);
  };
  const char* act = KserveDatatype(AdvertisedDType(s));
  add(out->mutable_inputs(), "input", act, s.hidden);
  add(out->mutable_outputs(), "output", act, s.hidden);
  add(out->mutable_outputs(), "expert_ids", "INT32", s.top_k());
  add(out->mutable_outputs(), "expert_weights", "FP32", s.top_k());
}

void Catalog::FillConfig(int layer, inference::ModelConfig* out) const {
  const MoeSpec& s = model_.spec;
  out->set_name(KserveName(layer));
  out->set_platform("moe_swarm");
  out->set_backend("moe_swarm");
  // Tokens are the batch dimension: the scheduler batches tokens of concurrent requests.
  out->set_max_batch_size(static_cast<int32_t>(max_request_tokens_));
  auto* in = out->add_input();
  in->set_name("input");
  in->set_data_type(ConfigType(AdvertisedDType(s)));
  in->add_dims(s.hidden);
  auto add_out = [&](const char* name, inference::DataType type, int64_t width) {
    auto* o = out->add_output();
    o->set_name(name);
    o->set_data_type(type);
    o->add_dims(width);
  };
  add_out("output", ConfigType(AdvertisedDType(s)), s.hidden);
  add_out("expert_ids", inference::TYPE_INT32, s.top_k());
  add_out("expert_weights", inference::TYPE_FP32, s.top_k());
  auto* group = out->add_instance_group();
  group->set_name(model_.engine);
  group->set_count(model_.engine_slots);
  group->set_kind(model_.engine == "cuda" ? inference::ModelInstanceGroup::KIND_GPU
                                          : inference::ModelInstanceGroup::KIND_CPU);
  auto* batching = out->mutable_dynamic_batching();
  for (int64_t p : scheduler_.preferred_batch_tokens) {
    batching->add_preferred_batch_size(static_cast<int32_t>(p));
  }
  batching->set_max_queue_delay_microseconds(static_cast<uint64_t>(scheduler_.max_queue_delay_us));
  auto& params = *out->mutable_parameters();
  params["family"].set_string_value(std::string(FamilyName(s.family)));
  params["architecture"].set_string_value(s.architecture);
  params["layer"].set_string_value(absl::StrCat(layer));
  params["hidden"].set_string_value(absl::StrCat(s.hidden));
  params["moe_intermediate"].set_string_value(absl::StrCat(s.moe_intermediate));
  params["num_experts"].set_string_value(absl::StrCat(s.n_experts()));
  params["top_k"].set_string_value(absl::StrCat(s.top_k()));
  params["shared_intermediate"].set_string_value(absl::StrCat(s.shared_intermediate));
  params["scoring"].set_string_value(ScoringName(s.routing.scoring));
  params["weight_dtype"].set_string_value(std::string(DTypeName(s.weight_dtype)));
  params["accepted_datatypes"].set_string_value("BF16,FP16,FP32");
  params["max_message_bytes"].set_string_value(absl::StrCat(server_.max_message_bytes));
}

}  // namespace moe::server
