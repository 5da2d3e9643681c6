// InstrumentedEngine: an Engine decorator that feeds the per-layer expert-load metrics
// (moe_expert_routed_tokens_total, moe_expert_load_imbalance_ratio) from every forward, for any
// engine (CPU or CUDA), without the engine knowing about metrics.
//
// It forwards every call to the wrapped engine unchanged, except that when the caller did not ask
// for the chosen experts (ForwardArgs::expert_ids == nullptr) it asks for them into a per-slot
// scratch buffer [max_batch_tokens, top_k]; after a successful forward it counts tokens per expert
// and calls Metrics::RecordExpertLoad(layer, counts). Failed forwards record nothing. The cost is
// the engine writing n_tokens * top_k int32 ids (on the CUDA engine a device-to-host copy of those)
// and one pass over them.
//
//   StatusOr<std::unique_ptr<Engine>> engine = CreateEngine(...);
//   engine = metrics::InstrumentedEngine::Create(std::move(*engine), metrics.get());
//
// Thread safety: as the Engine interface: Forward() may run concurrently on different slots; calls
// on one slot must not overlap (each slot owns its scratch buffers).
#pragma once

#include <cstdint>
#include <memory>
#include <string_view>
#include <vector>

#include "moe/common/status.h"
#include "moe/engine/engine.h"

namespace moe::metrics {

class Metrics;

class InstrumentedEngine final : public Engine {
 public:
  // `metrics` is not owned and must outlive the engine; it must have been given the model's shape
  // with Metrics::ConfigureExpertLoad (else every record is dropped and counted as such).
  // INVALID_ARGUMENT for a null engine or metrics.
  static StatusOr<std::unique_ptr<Engine>> Create(std::unique_ptr<Engine> inner, Metrics* metrics);

  std::string_view name() const override { return inner_->name(); }
  const MoeSpec& spec() const override { return inner_->spec(); }
  int num_slots() const override { return inner_->num_slots(); }
  int64_t max_batch_tokens() const override { return inner_->max_batch_tokens(); }
  Status Forward(const ForwardArgs& args) override;

 private:
  struct Slot {
    std::vector<int32_t> expert_ids;  // [max_batch_tokens, top_k]
    std::vector<uint32_t> counts;     // [n_experts]
  };
  InstrumentedEngine(std::unique_ptr<Engine> inner, Metrics* metrics);

  std::unique_ptr<Engine> inner_;
  Metrics* const metrics_;
  std::vector<Slot> slots_;  // [num_slots]
};

}  // namespace moe::metrics
