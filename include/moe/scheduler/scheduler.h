// The dynamic batching scheduler: requests for one model, keyed by (layer, dtype), are merged
// into batches by token count and executed on the worker swarm (one worker per engine slot).
//
//   request threads --Submit()--> [per-key queues, 3 priorities] --dispatcher thread--> batches
//   --lock-free swarm queue--> workers: gather inputs -> Engine::Forward(slot) -> scatter outputs
//   --> completion callback (exactly once per accepted request)
//
// Batching rules (per key = (layer, dtype)):
//   - A key is READY when its queued tokens reach max_batch_tokens, or its oldest queued request
//     has waited max_queue_delay_us, or Shutdown() has begun (then everything is flushed).
//   - A batch is formed only when a worker can take it (at most max_inflight_batches formed and
//     unfinished), so while all workers are busy requests keep accumulating into larger batches.
//   - Among ready keys the one whose best queued request has the highest priority goes first;
//     ties go to the key whose oldest request is oldest.
//   - A batch takes up to max_batch_tokens tokens, kHigh requests first, then kNormal, then kLow,
//     each level in arrival order. Requests are packed token-exactly: the last request may be
//     split, its remaining tokens staying at the head of the queue for the next batch. A request
//     larger than max_batch_tokens is thereby split over several batches; outputs land at their
//     row offsets, so the reassembled output is in the request's token order.
//   - preferred_batch_tokens (e.g. sizes with captured CUDA graphs): the batch size is cut down to
//     the largest preferred size <= the tokens available (capped at max_batch_tokens); when fewer
//     tokens than the smallest preferred size are available, they leave as they are.
//
// The core promise: each token's output equals what the engine computes for that request alone
// (bitwise on the CPU engine, which is batch-invariant): gather and scatter are exact byte copies,
// batches never mix dtypes or layers, and each row's routing is its own.
//
// Thread model (owner threads):
//   - request threads: Submit() / Cancel() / Stats() take the scheduler mutex briefly; they never
//     wait for compute and never run a completion callback. Fast path: when a worker is free and
//     the request's key is ready (full, or max_queue_delay_us = 0), Submit() forms the batch and
//     hands it to the swarm itself, saving the hand-off to the dispatcher (same rules, same lock).
//   - the dispatcher thread (one per scheduler, "<name>-disp"): wakes on arrival, cancel, batch
//     completion, the oldest request's delay timer or the earliest deadline; expires and drops
//     requests, forms batches, hands them to the swarm. It runs the callbacks of requests that
//     end without compute (expired, cancelled, failed at shutdown).
//   - swarm workers ("<name>-<slot>"): gather, Engine::Forward(slot = worker), scatter, form the
//     next ready batch (if any; same rules, same lock), and run the callbacks of requests whose
//     last piece they computed. Under load batches are thus formed by the finishing worker and the
//     dispatcher only handles timers, expiries and cancellations.
//   - Shutdown() callers wait on the scheduler mutex's condition; the destructor joins everything.
//
// Thread safety: every public method is safe to call concurrently from any thread, except that
// the destructor must not race with other calls. No method may be called from inside a
// completion callback or an observer hook (they run on scheduler threads; see CompletionCallback).
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "moe/common/dtype.h"
#include "moe/common/status.h"
#include "moe/engine/engine.h"
#include "moe/scheduler/observer.h"

namespace moe {

using SteadyTime = std::chrono::steady_clock::time_point;

// What a completion callback receives.
struct Response {
  // OK, or why the request was not (fully) computed:
  //   DEADLINE_EXCEEDED: its deadline passed while (part of) it was still queued; not computed.
  //   CANCELLED: Cancel() was called while (part of) it was still queued; not computed.
  //   UNAVAILABLE: Shutdown()'s deadline passed (or the scheduler was destroyed) while it was
  //     still queued; safe to retry on another replica.
  //   anything Engine::Forward returns (INVALID_ARGUMENT, RESOURCE_EXHAUSTED, INTERNAL...).
  // When not OK, `output` and the routing vectors hold no meaningful data (some rows may have been
  // computed if the request was split; they are not to be used).
  Status status;
  // [n_tokens, hidden] in the request's dtype, row-major; empty if the request gave
  // `borrowed_output` (the result was written there instead).
  std::string output;
  // Only when want_routing: [n_tokens, top_k] chosen experts (best first) and their weights.
  std::vector<int32_t> expert_ids;
  std::vector<float> expert_weights;
  int64_t queue_us = 0;  // Submit() -> first tokens put in a batch
  int64_t total_us = 0;  // Submit() -> this callback
  int batches = 0;       // how many batches its tokens were spread over
};

// Called exactly once for every request Submit() accepted, never for a refused one.
// Runs on a scheduler thread (a swarm worker, or the dispatcher for requests ended without
// compute), never inside Submit() or Cancel(). It MUST NOT BLOCK (it delays other requests'
// batches) and must not call into the scheduler; hand the response to your own completion
// mechanism (e.g. grpc ServerUnaryReactor::Finish) and return.
using CompletionCallback = absl::AnyInvocable<void(Response&&)>;

inline constexpr SteadyTime kNoDeadline = SteadyTime::max();

struct Request {
  int layer = -1;              // decoder layer index; must be a MoE layer of the engine's model
  DType dtype = DType::kBF16;  // F32, F16 or BF16: dtype of input and output
  int64_t n_tokens = 0;        // > 0 and <= max_queue_tokens
  // Input activations [n_tokens, hidden] of `dtype`, row-major. Exactly one of:
  //   `input`: owned; the scheduler takes the bytes (move them in) and frees them after the
  //     callback returned. Its size must be n_tokens * hidden * DTypeSize(dtype).
  //   `borrowed_input`: not owned; the caller keeps these bytes alive and unchanged until the
  //     callback has been called (or Submit() refused the request).
  std::string input;
  const void* borrowed_input = nullptr;
  // Optional: where to write the output [n_tokens, hidden] instead of Response::output (e.g. a
  // pre-sized response message field). Not owned; must stay valid until the callback is called,
  // and must not be read before it. Rows are written by workers in any order.
  void* borrowed_output = nullptr;
  bool want_routing = false;  // fill Response::expert_ids / expert_weights
  Priority priority = Priority::kNormal;
  // Steady-clock deadline; requests not fully dispatched by then end with DEADLINE_EXCEEDED
  // (tokens already computing finish first; none of the rest is computed).
  SteadyTime deadline = kNoDeadline;
  CompletionCallback done;  // required
};

// Identifies an accepted request for Cancel(). Never 0.
using RequestId = uint64_t;

struct SchedulerOptions {
  // Required; not owned; must outlive the scheduler. One scheduler per engine (and model): the
  // scheduler's workers use every slot of it.
  Engine* engine = nullptr;
  // The largest batch; 0 = engine->max_batch_tokens(). Must be <= engine->max_batch_tokens().
  int64_t max_batch_tokens = 0;
  // A key's batch leaves when it is full or its oldest request has waited this long; 0 = as soon
  // as a worker is free (no waiting to accumulate).
  int64_t max_queue_delay_us = 500;
  // Batch sizes to cut at when possible (ascending or not; each in [1, max_batch_tokens]).
  std::vector<int64_t> preferred_batch_tokens;
  // Bound on queued (not yet batched) tokens over all keys; a request that would exceed it is
  // refused at once with RESOURCE_EXHAUSTED (see Scheduler::Submit). 0 = 64 * max_batch_tokens.
  int64_t max_queue_tokens = 0;
  // Batches formed and not finished at most; 0 = engine->num_slots() (one per worker, so the
  // swarm queue stays empty and priorities are decided here). More pipelines batch formation
  // with compute at the price of less priority control.
  int max_inflight_batches = 0;
  // Not owned; may be null; must outlive the scheduler. See SchedulerObserver.
  SchedulerObserver* observer = nullptr;
  // Thread names ("<name>-disp", "<name>-<slot>").
  std::string name = "sched";
};

class Scheduler {
 public:
  // Validates `options` (INVALID_ARGUMENT naming the bad field), starts the swarm (one worker per
  // engine slot) and the dispatcher thread. Memory: each worker sizes its batch buffers
  // (max_batch_tokens rows of F32 input and output, plus routing) on its first multi-request
  // batch and reuses them; per request, Submit() allocates the output (unless borrowed_output) and
  // routing vectors once; per batch, one small task object. Nothing is allocated per token.
  static StatusOr<std::unique_ptr<Scheduler>> Create(const SchedulerOptions& options);

  // If Shutdown() was not called: refuses new work, fails queued requests with UNAVAILABLE, waits
  // for running batches (their requests complete normally). Joins every thread.
  virtual ~Scheduler() = default;

  // Queues `request` for batching; never blocks on compute (only on the scheduler mutex).
  // On success returns its RequestId and takes ownership of `request` (its `done` will be called
  // exactly once). On failure nothing was queued, `done` will never be called, and the request
  // (with its owned input) is destroyed before returning:
  //   INVALID_ARGUMENT: dtype not F32/F16/BF16; n_tokens <= 0 or > max_queue_tokens (could never
  //     be accepted); no input or both kinds; owned input of the wrong size; null `done`.
  //   NOT_FOUND: `layer` is not a MoE layer of the model.
  //   DEADLINE_EXCEEDED: `deadline` has already passed.
  //   RESOURCE_EXHAUSTED: queued tokens + n_tokens would exceed max_queue_tokens. Transient
  //     overload: the message ends with "retry after ~N ms", an estimate of the time to drain the
  //     current queue at the recent throughput; clients should back off at least that long.
  //   UNAVAILABLE: Shutdown() has begun (or the scheduler is being destroyed); retry elsewhere.
  virtual StatusOr<RequestId> Submit(Request request) = 0;

  // Asks to drop request `id`. Its tokens not yet in a batch are released from the queue at once
  // and never computed; the callback is called with CANCELLED (from the dispatcher thread, or
  // from the worker finishing its last already-running piece). Returns true if the request was
  // still queued (at least partly); false if unknown, already completed, or fully dispatched (it
  // then completes normally).
  virtual bool Cancel(RequestId id) = 0;

  // Graceful drain: refuses new requests (UNAVAILABLE) from now on, dispatches every queued
  // request without waiting for batching delays, and waits until every accepted request has
  // completed. If `deadline` passes first, requests still queued are completed with UNAVAILABLE
  // (running batches are always waited for) and DEADLINE_EXCEEDED is returned; otherwise OK.
  // Either way every accepted request's callback has been called exactly once when this
  // returns. Idempotent; concurrent callers all wait. Must not be called from a callback.
  virtual Status Shutdown(SteadyTime deadline) = 0;

  virtual SchedulerStats Stats() const = 0;

  // The options in effect (zeros replaced by their defaults).
  virtual const SchedulerOptions& options() const = 0;
};

}  // namespace moe
