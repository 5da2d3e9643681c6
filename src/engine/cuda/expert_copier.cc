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
  HostTierCopier(std::unique_ptr<experts::HostExpertSource> source,
                 std::unique_ptr<experts::CompressedHostTier> compressed)
      : source_(std::move(source)), compressed_(std::move(compressed)) {
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
  const experts::CompressedHostTier* compressed() const override { return compressed_.get(); }

 private:
  std::unique_ptr<experts::HostExpertSource> source_;
  // Destroyed first: its encoder reads the model through the source's plan copy.
  std::unique_ptr<experts::CompressedHostTier> compressed_;
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
                       experts::HostExpertSource::Create(model, ho));
  std::unique_ptr<experts::CompressedHostTier> compressed;
  if (options.compress) {
    experts::CompressedHostTier::Options co;
    co.device = options.device;
    co.threads = options.compress_threads;
    StatusOr<std::unique_ptr<experts::CompressedHostTier>> c =
        experts::CompressedHostTier::Start(std::move(model), source->plan(), co);
    if (c.ok()) {
      compressed = std::move(*c);
    } else if (c.status().code() != absl::StatusCode::kFailedPrecondition) {
      return c.status();
    }
    // FailedPrecondition: a model the codec cannot take runs with raw copies only.
  }
  return std::unique_ptr<ExpertCopier>(
      new HostTierCopier(std::move(source), std::move(compressed)));
}

}  // namespace moe::cuda
