// The daemon's Backend: the dynamic batching scheduler (moe/scheduler/scheduler.h).
//
// Requests are submitted zero-copy (borrowed input and output buffers, which the front end keeps
// alive until `done`); routing comes back in the scheduler's Response and is copied out (n_tokens *
// top_k ids and weights). Priorities: +1 -> kHigh, 0 -> kNormal, -1 -> kLow. A queue-full refusal
// (the scheduler's RESOURCE_EXHAUSTED with its "retry after ~N ms" hint) reaches clients as
// UNAVAILABLE, as Triton reports overload, so gRPC retry policies treat it as transient.
//
// Thread safety: every method may be called from any thread.
#pragma once

#include <cstdint>

#include "moe/scheduler/scheduler.h"
#include "moe/server/backend.h"

namespace moe::server {

class SchedulerBackend final : public Backend {
 public:
  // `scheduler` is not owned and must outlive this; `top_k` sizes the routing copies;
  // `max_request_tokens` is the per-request limit the front end enforces.
  SchedulerBackend(Scheduler* scheduler, int top_k, int64_t max_request_tokens);

  StatusOr<uint64_t> Submit(const LayerRequest& request, LayerDone done) override;
  void Cancel(uint64_t ticket) override;
  int64_t max_request_tokens() const override { return max_request_tokens_; }
  void Drain(Clock::time_point deadline) override;

 private:
  Scheduler* const scheduler_;
  const int top_k_;
  const int64_t max_request_tokens_;
};

}  // namespace moe::server
