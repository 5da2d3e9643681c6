#include "moe/metrics/instrumented_engine.h"

#include <algorithm>
#include <utility>

#include "moe/metrics/metrics.h"

namespace moe::metrics {

StatusOr<std::unique_ptr<Engine>> InstrumentedEngine::Create(std::unique_ptr<Engine> inner,
                                                             Metrics* metrics) {
  if (inner == nullptr || metrics == nullptr) {
    return absl::InvalidArgumentError("InstrumentedEngine: engine and metrics must not be null");
  }
  return std::unique_ptr<Engine>(new InstrumentedEngine(std::move(inner), metrics));
}

InstrumentedEngine::InstrumentedEngine(std::unique_ptr<Engine> inner, Metrics* metrics)
    : inner_(std::move(inner)), metrics_(metrics) {
  const MoeSpec& spec = inner_->spec();
  slots_.resize(static_cast<size_t>(std::max(inner_->num_slots(), 0)));
  for (Slot& slot : slots_) {
    slot.expert_ids.resize(static_cast<size_t>(inner_->max_batch_tokens()) *
                           static_cast<size_t>(spec.top_k()));
    slot.counts.resize(static_cast<size_t>(spec.n_experts()));
  }
}

Status InstrumentedEngine::Forward(const ForwardArgs& args) {
  // Out-of-range slots and sizes are the wrapped engine's to reject; pass them through untouched.
  if (args.slot < 0 || args.slot >= static_cast<int>(slots_.size()) || args.n_tokens <= 0 ||
      args.n_tokens > inner_->max_batch_tokens()) {
    return inner_->Forward(args);
  }
  Slot& slot = slots_[static_cast<size_t>(args.slot)];
  ForwardArgs routed = args;
  if (routed.expert_ids == nullptr) routed.expert_ids = slot.expert_ids.data();
  double routing_seconds = -1.0;  // stays negative when the engine does not time its routing
  if (routed.routing_seconds == nullptr) routed.routing_seconds = &routing_seconds;
  MOE_RETURN_IF_ERROR(inner_->Forward(routed));
  if (*routed.routing_seconds >= 0.0) metrics_->RecordRouting(*routed.routing_seconds);

  // Tokens per expert: each token counts once for each of its top_k experts.
  std::fill(slot.counts.begin(), slot.counts.end(), 0u);
  const int64_t n_ids = args.n_tokens * inner_->spec().top_k();
  const int n_experts = static_cast<int>(slot.counts.size());
  for (int64_t i = 0; i < n_ids; ++i) {
    const int32_t e = routed.expert_ids[i];
    if (e >= 0 && e < n_experts) ++slot.counts[static_cast<size_t>(e)];
  }
  metrics_->RecordExpertLoad(args.layer, slot.counts);
  return absl::OkStatus();
}

}  // namespace moe::metrics
