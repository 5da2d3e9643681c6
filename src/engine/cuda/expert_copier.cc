#include "engine/cuda/expert_copier.h"

#include <utility>

#include "kernels/cuda_status.h"

namespace moe::cuda {
namespace {

int64_t AlignUp256(int64_t v) { return (v + 255) / 256 * 256; }

// Three plain copies per expert from the model's tensors (no registration, no staging).
// Thread safety: immutable; CUDA's copy calls are thread safe.
class DirectCopier final : public ExpertCopier {
 public:
  explicit DirectCopier(std::shared_ptr<const Model> model)
      : model_(std::move(model)), layout_(MakeExpertSlotLayout(model_->spec())) {}

  const ExpertSlotLayout& layout() const override { return layout_; }
  std::string mode() const override { return "pageable"; }

  Status CopyAsync(const experts::ExpertKey& key, void* dst, cudaStream_t stream) override {
    const MoeLayerWeights* layer = model_->layer(key.layer);
    if (layer == nullptr || key.expert < 0 ||
        key.expert >= static_cast<int32_t>(layer->experts.size())) {
      return absl::InvalidArgumentError(
          absl::StrCat("no routed expert ", experts::ToString(key), " in the model"));
    }
    const ExpertWeights& ex = layer->experts[static_cast<size_t>(key.expert)];
    char* base = static_cast<char*>(dst);
    const std::pair<const TensorView*, int64_t> parts[] = {{&ex.gate, layout_.gate_offset},
                                                           {&ex.up, layout_.up_offset},
                                                           {&ex.down, layout_.down_offset}};
    for (const auto& [t, off] : parts) {
      CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(base + off, t->data, static_cast<size_t>(t->nbytes),
                                           cudaMemcpyHostToDevice, stream));
    }
    return absl::OkStatus();
  }

 private:
  std::shared_ptr<const Model> model_;
  ExpertSlotLayout layout_;
};

}  // namespace

ExpertSlotLayout MakeExpertSlotLayout(const MoeSpec& spec) {
  const int64_t proj = int64_t{spec.moe_intermediate} * spec.hidden * DTypeSize(spec.weight_dtype);
  ExpertSlotLayout l;
  l.gate_offset = 0;
  l.up_offset = AlignUp256(proj);
  l.down_offset = l.up_offset + AlignUp256(proj);
  l.slot_bytes = l.down_offset + AlignUp256(proj);
  return l;
}

StatusOr<std::unique_ptr<ExpertCopier>> MakeExpertCopier(std::shared_ptr<const Model> model,
                                                         const ExpertCopierOptions& options) {
  if (model == nullptr) return absl::InvalidArgumentError("MakeExpertCopier: null model");
  (void)options;
  return std::unique_ptr<ExpertCopier>(new DirectCopier(std::move(model)));
}

}  // namespace moe::cuda
