#include "moe/server/scheduler_backend.h"

#include <algorithm>
#include <cstring>

namespace moe::server {

SchedulerBackend::SchedulerBackend(Scheduler* scheduler, int top_k, int64_t max_request_tokens)
    : scheduler_(scheduler), top_k_(top_k), max_request_tokens_(max_request_tokens) {}

StatusOr<uint64_t> SchedulerBackend::Submit(const LayerRequest& request, LayerDone done) {
  Request r;
  r.layer = request.layer;
  r.dtype = request.dtype;
  r.n_tokens = request.n_tokens;
  r.borrowed_input = request.input;
  r.borrowed_output = request.output;
  r.want_routing = request.expert_ids != nullptr || request.expert_weights != nullptr;
  r.priority = request.priority > 0   ? Priority::kHigh
               : request.priority < 0 ? Priority::kLow
                                      : Priority::kNormal;
  r.deadline = request.deadline;
  size_t routing = static_cast<size_t>(request.n_tokens) * static_cast<size_t>(top_k_);
  int32_t* ids = request.expert_ids;
  float* weights = request.expert_weights;
  r.done = [done = std::move(done), ids, weights, routing](Response&& response) {
    LayerTiming timing;
    timing.queue_ns = response.queue_us * 1000;
    timing.compute_ns = std::max<int64_t>(0, response.total_us - response.queue_us) * 1000;
    timing.batches = response.batches;
    if (response.status.ok()) {
      if (ids != nullptr && response.expert_ids.size() == routing) {
        std::memcpy(ids, response.expert_ids.data(), routing * sizeof(int32_t));
      }
      if (weights != nullptr && response.expert_weights.size() == routing) {
        std::memcpy(weights, response.expert_weights.data(), routing * sizeof(float));
      }
    }
    done(response.status, timing);
  };
  StatusOr<RequestId> id = scheduler_->Submit(std::move(r));
  if (!id.ok() && id.status().code() == absl::StatusCode::kResourceExhausted) {
    return absl::UnavailableError(
        absl::StrCat("server overloaded: ", std::string(id.status().message())));
  }
  return id;
}

void SchedulerBackend::Cancel(uint64_t ticket) { scheduler_->Cancel(ticket); }

void SchedulerBackend::Drain(Clock::time_point deadline) {
  // Shutdown() completes every accepted request (UNAVAILABLE for those still queued at the
  // deadline); its status only says whether the deadline was hit, which the server logs itself.
  Status s = scheduler_->Shutdown(deadline);
  (void)s;
}

}  // namespace moe::server
