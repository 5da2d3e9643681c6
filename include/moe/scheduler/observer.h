// What the dynamic batching scheduler reports for metrics: a snapshot struct (SchedulerStats,
// pulled) and an observer interface (SchedulerObserver, pushed with per-event timings). The
// metrics component implements SchedulerObserver with Prometheus families; the scheduler itself
// depends on no metrics library.
#pragma once

#include <cstdint>
#include <vector>

#include "moe/common/dtype.h"
#include "moe/common/status.h"
#include "moe/swarm/swarm.h"

namespace moe {

// Priority of a request. Strictly ordered: a batch is formed from kHigh requests before any
// kNormal one, and kNormal before kLow (within a level: arrival order). Strict priority can starve
// lower levels under sustained overload; their deadlines bound how long they wait.
enum class Priority : uint8_t { kHigh = 0, kNormal = 1, kLow = 2 };
inline constexpr int kNumPriorities = 3;

// How a request ended (one per accepted request).
enum class RequestOutcome : uint8_t {
  kOk,         // computed; output delivered
  kFailed,     // the engine returned an error for one of its batches
  kExpired,    // its deadline passed before all of it was dispatched (DEADLINE_EXCEEDED)
  kCancelled,  // Cancel() before all of it was dispatched (CANCELLED)
  kShutdown,   // Shutdown()'s deadline passed while it was still queued (UNAVAILABLE)
};

// Why Submit() refused a request (it then never reaches the queue or the callback).
enum class RefusalReason : uint8_t {
  kInvalid,       // INVALID_ARGUMENT / NOT_FOUND: bad layer, dtype, size, deadline in the past...
  kQueueFull,     // RESOURCE_EXHAUSTED: max_queue_tokens would be exceeded
  kShuttingDown,  // UNAVAILABLE: Shutdown() has begun
};

// One finished request. Times in microseconds on the steady clock.
struct RequestRecord {
  int layer = -1;
  DType dtype = DType::kBF16;
  Priority priority = Priority::kNormal;
  int64_t n_tokens = 0;
  RequestOutcome outcome = RequestOutcome::kOk;
  int64_t queue_us = 0;  // Submit() -> its first tokens were put into a batch (or -> dropped)
  int64_t total_us = 0;  // Submit() -> completion callback about to be called
  int batches = 0;       // batches its tokens were spread over (> 1: split)
};

// One executed batch. Times in microseconds on the steady clock.
struct BatchRecord {
  int layer = -1;
  DType dtype = DType::kBF16;
  int worker = -1;          // swarm worker = engine slot
  int64_t n_tokens = 0;     // rows given to Engine::Forward
  int n_segments = 0;       // request pieces gathered into it
  int64_t dispatch_us = 0;  // batch formed -> a worker started it (swarm queue wait)
  int64_t gather_us = 0;    // copying request inputs into the batch buffer
  int64_t compute_us = 0;   // Engine::Forward
  int64_t scatter_us = 0;   // copying outputs (and routing) back to the requests
  Status status;            // Engine::Forward's status
};

// Hooks called by the scheduler as things happen. Default implementations do nothing.
//
// Thread safety: hooks are called concurrently from the dispatcher thread, swarm workers and
// Submit() callers, never with a scheduler lock held. Implementations must be thread-safe, fast
// and non-blocking (they sit on the serving path); they must not call back into the scheduler.
class SchedulerObserver {
 public:
  virtual ~SchedulerObserver() = default;
  // Submit() refused a request (on the caller's thread).
  virtual void OnRefused(RefusalReason reason, int64_t n_tokens) {}
  // A request is done, right before its completion callback is called.
  virtual void OnRequestDone(const RequestRecord& record) {}
  // A batch was formed by the dispatcher (n_tokens: its size, for the batch-size histogram).
  virtual void OnBatchFormed(int layer, DType dtype, int64_t n_tokens, int n_segments) {}
  // A batch finished on a worker (after its requests' outputs were scattered).
  virtual void OnBatchDone(const BatchRecord& record) {}
};

// A point-in-time snapshot, taken under the scheduler lock (counters consistent with each other;
// the swarm part is read just after).
struct SchedulerStats {
  // Gauges.
  int64_t queued_requests = 0;  // accepted, with tokens not yet put in a batch
  int64_t queued_tokens = 0;    // tokens not yet put in a batch (what max_queue_tokens bounds)
  int64_t queued_tokens_by_priority[kNumPriorities] = {0, 0, 0};
  int64_t inflight_batches = 0;  // formed and not finished
  int64_t inflight_tokens = 0;
  int64_t live_requests = 0;  // accepted and not completed (queued or computing)
  // Counters since Create().
  int64_t submitted = 0;  // Submit() calls
  int64_t accepted = 0;
  int64_t refused_invalid = 0;
  int64_t refused_queue_full = 0;
  int64_t refused_shutting_down = 0;
  int64_t completed_ok = 0;
  int64_t failed = 0;
  int64_t expired = 0;
  int64_t cancelled = 0;
  int64_t shutdown_failed = 0;
  int64_t batches_formed = 0;
  int64_t batched_tokens = 0;  // sum of batch sizes (mean batch size = batched_tokens / batches)
  int64_t split_requests = 0;  // requests whose tokens went to more than one batch
  bool shutting_down = false;
  SwarmStats swarm;  // queue length and per-worker counters of the worker swarm
};

}  // namespace moe
