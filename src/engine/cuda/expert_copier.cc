#include "engine/cuda/expert_copier.h"

#include <utility>

#include "kernels/cuda_status.h"
#include "moe/experts/host_tier.h"

namespace moe::cuda {
namespace {

// The host tier (experts::HostExpertSource) behind the engine's copier interface.
// Thread safety: HostExpertSource::CopyAsync is thread safe; the layout is immutable.
class HostTierCopier final : public ExpertCopier {
 public:
  explicit HostTierCopier(std::unique_ptr<experts::HostExpertSource> source)
      : source_(std::move(source)) {
    const experts::SlotLayout& l = source_->layout();
    layout_ = {l.gate_offset, l.up_offset, l.down_offset, l.slot_bytes};
  }
  const ExpertSlotLayout& layout() const override { return layout_; }
  std::string mode() const override {
    std::string m(experts::ModeName(source_->mode()));
    if (!source_->setup().fallback_reason.empty()) {
      m += " (" + source_->setup().fallback_reason + ")";
    }
    return m;
  }
  Status CopyAsync(const experts::ExpertKey& key, void* dst, cudaStream_t stream) override {
    return source_->CopyAsync(key, dst, stream);
  }

 private:
  std::unique_ptr<experts::HostExpertSource> source_;
  ExpertSlotLayout layout_;
};

}  // namespace

StatusOr<std::unique_ptr<ExpertCopier>> MakeExpertCopier(std::shared_ptr<const Model> model,
                                                         const ExpertCopierOptions& options) {
  if (model == nullptr) return absl::InvalidArgumentError("MakeExpertCopier: null model");
  experts::HostExpertSource::Options ho;
  ho.device = options.device;
  ho.mode = options.register_host_memory ? experts::HostExpertSource::Mode::kAuto
                                         : experts::HostExpertSource::Mode::kStagingRing;
  MOE_ASSIGN_OR_RETURN(std::unique_ptr<experts::HostExpertSource> source,
                       experts::HostExpertSource::Create(std::move(model), ho));
  return std::unique_ptr<ExpertCopier>(new HostTierCopier(std::move(source)));
}

}  // namespace moe::cuda
