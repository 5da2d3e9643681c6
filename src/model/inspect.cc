#include "moe/model/inspect.h"

#include <iomanip>
#include <map>
#include <memory>
#include <set>

#include "model/tensor_names.h"
#include "moe/model/config.h"
#include "moe/model/loader.h"
#include "moe/store/checkpoint.h"

namespace moe {

namespace {

using model_internal::TensorKind;

std::string HumanBytes(int64_t bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(bytes);
  int u = 0;
  while (v >= 1024.0 && u < 4) {
    v /= 1024.0;
    ++u;
  }
  char buf[64];
  if (u == 0) {
    std::snprintf(buf, sizeof(buf), "%lld B", static_cast<long long>(bytes));
  } else {
    std::snprintf(buf, sizeof(buf), "%.1f %s", v, units[u]);
  }
  return buf;
}

// "0-3, 5, 7-9"
std::string Ranges(const std::vector<int>& v) {
  std::string out;
  for (size_t i = 0; i < v.size();) {
    size_t j = i;
    while (j + 1 < v.size() && v[j + 1] == v[j] + 1) ++j;
    absl::StrAppend(&out, out.empty() ? "" : ", ", v[i]);
    if (j > i) absl::StrAppend(&out, "-", v[j]);
    i = j + 1;
  }
  return out.empty() ? "none" : out;
}

const char* TopkMethodName(TopkMethod m) {
  switch (m) {
    case TopkMethod::kGreedy:
      return "greedy top-k";
    case TopkMethod::kGroupLimitedGreedy:
      return "group_limited_greedy";
    case TopkMethod::kNoAuxTc:
      return "noaux_tc";
  }
  return "?";
}

void PrintSpec(const MoeSpec& s, std::ostream& out) {
  const RoutingSpec& g = s.routing;
  out << "family        " << FamilyName(s.family) << " (architecture "
      << (s.architecture.empty() ? "?" : s.architecture) << ", model_type " << s.model_type
      << ")\n";
  out << "hidden        " << s.hidden << "\n";
  out << "layers        " << s.n_layers
      << " decoder layers; MoE layers served: " << Ranges(s.moe_layers) << " ("
      << s.moe_layers.size() << ")\n";
  out << "experts       " << g.n_experts << " routed, top-" << g.top_k << ", width "
      << s.moe_intermediate << "\n";
  out << "routing       " << (g.scoring == ScoringFunc::kSoftmax ? "softmax" : "sigmoid") << ", "
      << TopkMethodName(g.topk_method);
  if (g.topk_method != TopkMethod::kGreedy) {
    out << " (n_group " << g.n_group << ", topk_group " << g.topk_group << ")";
  }
  out << ", norm_topk_prob " << (g.norm_topk_prob ? "true" : "false") << ", routed_scaling_factor "
      << g.routed_scaling_factor;
  if (g.has_correction_bias) out << ", e_score_correction_bias for selection";
  out << "\n";
  out << "shared expert ";
  if (s.shared_intermediate > 0) {
    out << "width " << s.shared_intermediate
        << (s.shared_expert_gate ? ", scaled by sigmoid(shared_expert_gate . x)" : "") << "\n";
  } else {
    out << "none\n";
  }
  out << "weight dtype  " << DTypeName(s.weight_dtype) << " (config dtype "
      << (s.torch_dtype.empty() ? "?" : s.torch_dtype) << ")";
  if (s.weight_dtype == DType::kF8E4M3) {
    out << ", block " << s.quant_block_out << "x" << s.quant_block_in
        << " weight_scale_inv; NOT runnable: the engines compute in F32/F16/BF16 only";
  }
  out << "\n";
  out << "bytes/expert  " << s.BytesPerExpert() << " (" << HumanBytes(s.BytesPerExpert())
      << "; gate + up + down)\n";
}

void PrintInventory(const store::Checkpoint& ckpt, std::ostream& out) {
  out << "shards        " << ckpt.shards().size() << " file(s), " << HumanBytes(ckpt.mapped_bytes())
      << " mapped" << (ckpt.sharded() ? " (via model.safetensors.index.json)" : "") << "\n";
  for (const auto& shard : ckpt.shards()) {
    out << "  " << shard->path() << "  " << HumanBytes(shard->file_size()) << ", "
        << shard->tensors().size() << " tensors\n";
  }
  struct Row {
    int64_t count = 0;
    int64_t bytes = 0;
    std::set<std::string> dtypes;
  };
  std::map<TensorKind, Row> rows;
  for (const auto& [name, where] : ckpt.tensors()) {
    int layer = -1;
    Row& row = rows[model_internal::ClassifyTensor(name, &layer)];
    ++row.count;
    row.bytes += where.entry->nbytes();
    row.dtypes.insert(std::string(DTypeName(where.entry->dtype)));
  }
  out << "tensors       " << ckpt.tensors().size() << "\n";
  for (const auto& [kind, row] : rows) {
    std::string dtypes;
    for (const std::string& d : row.dtypes) absl::StrAppend(&dtypes, dtypes.empty() ? "" : ",", d);
    out << "  " << std::left << std::setw(20) << model_internal::TensorKindName(kind) << std::right
        << std::setw(7) << row.count << "  " << std::setw(10) << HumanBytes(row.bytes) << "  "
        << dtypes << "\n";
  }
}

}  // namespace

Status Inspect(const std::string& dir, std::ostream& out) {
  out << "checkpoint    " << dir << "\n";
  auto ckpt_or = store::Checkpoint::Open(dir);
  if (!ckpt_or.ok()) {
    out << "problem: " << ckpt_or.status().message() << "\n";
    return ckpt_or.status();
  }
  std::shared_ptr<const store::Checkpoint> ckpt(std::move(*ckpt_or));
  LoadReport report;
  auto model = ModelLoader::Load(ckpt, &report);
  if (model.ok()) {
    PrintSpec((*model)->spec(), out);
  } else {
    // Show the spec as config.json states it when only the tensors are at fault.
    auto spec = ParseMoeConfig(ckpt->config_json(), store::JoinPath(dir, store::kConfigFile));
    if (spec.ok()) PrintSpec(*spec, out);
  }
  if (!report.layouts.empty()) {
    out << "layouts\n";
    for (const std::string& line : report.layouts) out << "  " << line << "\n";
  }
  PrintInventory(*ckpt, out);
  if (!report.notes.empty()) {
    out << "notes\n";
    for (const std::string& note : report.notes) out << "  - " << note << "\n";
  }
  if (!model.ok()) {
    out << "problem: " << model.status().message() << "\n";
    return model.status();
  }
  return absl::OkStatus();
}

}  // namespace moe
