// What the gRPC front end needs from the layers below it: submit one validated layer forward and be
// called back exactly once when it is done. The daemon's implementation wraps the dynamic batching
// scheduler (src/server/scheduler_backend.cc); tests may wrap an engine directly.
//
// Ownership: every pointer in a LayerRequest is owned by the caller (the RPC's reactor) and stays
// valid until `done` has been called; the backend never frees or keeps them afterwards.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>

#include "moe/common/dtype.h"
#include "moe/common/status.h"

namespace moe::server {

using Clock = std::chrono::steady_clock;

struct LayerRequest {
  int layer = -1;                   // decoder layer index, a MoE layer of the served model
  DType dtype = DType::kBF16;       // F32, F16 or BF16
  int64_t n_tokens = 0;             // >= 1
  const void* input = nullptr;      // [n_tokens, hidden]
  void* output = nullptr;           // [n_tokens, hidden], same dtype
  int32_t* expert_ids = nullptr;    // optional out [n_tokens, top_k]
  float* expert_weights = nullptr;  // optional out [n_tokens, top_k]
  int priority = 0;                 // higher first
  Clock::time_point arrival;        // when the RPC arrived
  Clock::time_point deadline = Clock::time_point::max();  // fail with DEADLINE_EXCEEDED after it
  // Set by the front end when the client cancels; work not yet started is dropped (CANCELLED).
  const std::atomic<bool>* cancelled = nullptr;
};

// What happened to one request (zero where unknown).
struct LayerTiming {
  int64_t queue_ns = 0;    // arrival -> its batch started computing
  int64_t compute_ns = 0;  // its batch's compute
  int64_t batch_tokens = 0;
};

// Called exactly once per accepted request, from a backend thread. Must not block.
using LayerDone = std::function<void(const Status& status, const LayerTiming& timing)>;

// Thread safety: every method may be called from any thread concurrently.
class Backend {
 public:
  virtual ~Backend() = default;
  // Queues `request`. OK: `done` will be called exactly once. Any error (UNAVAILABLE for a full
  // queue or a stopped backend, INVALID_ARGUMENT, ...): refused now, `done` is never called.
  virtual Status Submit(const LayerRequest& request, LayerDone done) = 0;
  // The most tokens one request may carry.
  virtual int64_t max_request_tokens() const = 0;
  // Stops accepting, finishes everything already accepted (calling each `done`), then returns.
  // Waits at most until `deadline`; work still running then fails with UNAVAILABLE.
  virtual void Drain(Clock::time_point deadline) = 0;
};

}  // namespace moe::server
