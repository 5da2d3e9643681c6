// What the gRPC front end needs from the layers below it: submit one validated layer forward, be
// called back exactly once when it is done, and cancel it. The daemon's implementation wraps the
// dynamic batching scheduler (moe/server/scheduler_backend.h).
//
// Ownership: every pointer in a LayerRequest is owned by the caller (the RPC's reactor) and stays
// valid until `done` has been called; the backend never touches them afterwards.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>

#include "absl/base/thread_annotations.h"
#include "moe/common/dtype.h"
#include "moe/common/status.h"

namespace moe::server {

using Clock = std::chrono::steady_clock;
class CancelScope;

struct LayerRequest {
  int layer = -1;                   // decoder layer index, a MoE layer of the served model
  DType dtype = DType::kBF16;       // F32, F16 or BF16
  int64_t n_tokens = 0;             // >= 1
  const void* input = nullptr;      // [n_tokens, hidden]
  void* output = nullptr;           // [n_tokens, hidden], same dtype
  int32_t* expert_ids = nullptr;    // optional out [n_tokens, top_k]
  float* expert_weights = nullptr;  // optional out [n_tokens, top_k] (both or neither)
  int priority = 0;                 // +1 high, 0 normal, -1 low
  Clock::time_point arrival;        // when the RPC (or stream message) arrived
  Clock::time_point deadline = Clock::time_point::max();  // DEADLINE_EXCEEDED after it
  std::shared_ptr<CancelScope> cancel;                    // the RPC's cancellation (optional)
};

// What happened to one request (zero where unknown).
struct LayerTiming {
  int64_t queue_ns = 0;    // arrival -> its first tokens were put in a batch
  int64_t compute_ns = 0;  // first batch -> done (compute, gather and scatter)
  int batches = 0;         // batches its tokens were spread over
};

// Called exactly once per accepted request, from a backend thread. Must not block and must not
// call into the backend.
using LayerDone = std::function<void(const Status& status, const LayerTiming& timing)>;

// Thread safety: every method may be called from any thread concurrently.
class Backend {
 public:
  virtual ~Backend() = default;
  // Queues `request`. OK: `done` will be called exactly once; the value is a ticket for Cancel().
  // Any error (UNAVAILABLE stopped, RESOURCE_EXHAUSTED queue full, INVALID_ARGUMENT, ...): refused
  // now, `done` is never called.
  virtual StatusOr<uint64_t> Submit(const LayerRequest& request, LayerDone done) = 0;
  // Drops the work of `ticket` not yet started; its `done` gets CANCELLED. Unknown or finished
  // tickets are ignored.
  virtual void Cancel(uint64_t ticket) = 0;
  // The most tokens one request may carry.
  virtual int64_t max_request_tokens() const = 0;
  // Stops accepting, finishes everything already accepted (calling each `done`), then returns.
  // Work still queued at `deadline` fails with UNAVAILABLE.
  virtual void Drain(Clock::time_point deadline) = 0;
};

// The cancellation of one RPC (a unary call or a whole stream), shared (std::shared_ptr) by the
// reactor and its in-flight requests, so it outlives whichever finishes last.
// Core registers each submitted request's ticket; Cancel() (the reactor's OnCancel) cancels every
// registered ticket and every later one at once.
//
// Thread safety: every method may be called from any thread. NOTES: std::mutex rather than
// absl::Mutex here and in src/server: Debian's abseil is not TSan-instrumented, pthread mutexes
// are.
class CancelScope {
 public:
  explicit CancelScope(Backend* backend) : backend_(backend) {}
  bool cancelled() const;
  // Reserves a slot before Submit(); Arm() it with the ticket after; Release() it when done.
  // Arm() after Release() is a no-op; Arm() after Cancel() cancels the ticket at once.
  uint64_t Reserve();
  void Arm(uint64_t key, uint64_t ticket);
  void Release(uint64_t key);
  void Cancel();

 private:
  Backend* const backend_;
  mutable std::mutex mu_;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t next_key_ ABSL_GUARDED_BY(mu_) = 1;
  std::map<uint64_t, uint64_t> tickets_ ABSL_GUARDED_BY(mu_);  // key -> ticket (0 = not armed)
};

}  // namespace moe::server
