// Internal to the scheduler: the state of one accepted request, the per-key queues, and the pure
// batch-size heuristic.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "moe/scheduler/scheduler.h"

namespace moe {
namespace sched_internal {

struct KeyQueue;

inline SteadyTime Now() { return std::chrono::steady_clock::now(); }

inline int64_t MicrosBetween(SteadyTime from, SteadyTime to) {
  return std::chrono::duration_cast<std::chrono::microseconds>(to - from).count();
}

// One accepted request, from Submit() until its callback returned. Owned by
// DynamicBatcher::live_ while live, then by the thread that completes it.
//
// Thread safety: fields under "immutable" are written in Submit() before the request is
// published under the scheduler mutex and never change afterwards. Fields under "scheduler
// mutex" are only touched with it held. Output rows are written by workers without the mutex,
// each worker its own disjoint rows [begin, begin + n); the completing thread reads them after
// taking the mutex, which orders those writes before its reads.
struct RequestState {
  // ---- immutable ----
  RequestId id = 0;
  int layer = -1;
  DType dtype = DType::kBF16;
  Priority priority = Priority::kNormal;
  int64_t n_tokens = 0;
  int64_t row_bytes = 0;  // hidden * DTypeSize(dtype)
  int top_k = 0;
  bool want_routing = false;
  SteadyTime submit_time;
  SteadyTime deadline = kNoDeadline;
  KeyQueue* key = nullptr;           // the queue of its (layer, dtype); outlives it
  std::string owned_input;           // the request's `input`, if owned
  const std::byte* input = nullptr;  // [n_tokens, hidden]: owned_input or borrowed
  std::byte* output = nullptr;       // [n_tokens, hidden]: response.output or borrowed
  int32_t* expert_ids = nullptr;     // [n_tokens, top_k] into response.expert_ids, if wanted
  float* expert_weights = nullptr;   // [n_tokens, top_k] into response.expert_weights
  CompletionCallback done;
  Response response;  // buffers filled by workers; status etc. at completion

  // ---- scheduler mutex ----
  int64_t next_token = 0;  // tokens [0, next_token) have been put in batches
  int parts = 1;           // 1 while queued + one per unfinished batch segment; 0 = complete
  bool queued = true;      // still in its key's list (some tokens not yet batched)
  Status status;           // first failure (or OK)
  RequestOutcome outcome = RequestOutcome::kOk;
  int batches = 0;
  int64_t queue_us = -1;  // set when its first tokens are batched (or it is dropped)
  // Intrusive links of the RequestList it is queued in.
  RequestState* prev = nullptr;
  RequestState* next = nullptr;

  int64_t remaining_tokens() const { return n_tokens - next_token; }
};

// A FIFO of requests with O(1) removal from the middle (cancel, expiry). Not thread-safe; used
// under the scheduler mutex. Does not own its elements.
class RequestList {
 public:
  bool empty() const { return head_ == nullptr; }
  RequestState* front() const { return head_; }
  void PushBack(RequestState* r) {
    r->prev = tail_;
    r->next = nullptr;
    if (tail_ != nullptr) {
      tail_->next = r;
    } else {
      head_ = r;
    }
    tail_ = r;
  }
  void Remove(RequestState* r) {
    (r->prev != nullptr ? r->prev->next : head_) = r->next;
    (r->next != nullptr ? r->next->prev : tail_) = r->prev;
    r->prev = r->next = nullptr;
  }

 private:
  RequestState* head_ = nullptr;
  RequestState* tail_ = nullptr;
};

// The queue of one (layer, dtype) key: one FIFO per priority level.
struct KeyQueue {
  int layer = -1;
  DType dtype = DType::kBF16;
  RequestList lists[kNumPriorities];
  int64_t tokens = 0;     // queued (not yet batched) tokens over all levels
  int64_t requests = 0;   // requests in the lists
  int active_index = -1;  // position in DynamicBatcher::active_, -1 when empty

  // Submit time of the oldest queued request (the heads are the oldest of each level).
  SteadyTime Oldest() const {
    SteadyTime t = SteadyTime::max();
    for (const RequestList& l : lists) {
      if (!l.empty() && l.front()->submit_time < t) t = l.front()->submit_time;
    }
    return t;
  }
  // The best (lowest) non-empty priority level; kNumPriorities when empty.
  int BestLevel() const {
    for (int p = 0; p < kNumPriorities; ++p) {
      if (!lists[p].empty()) return p;
    }
    return kNumPriorities;
  }
};

// The batch size for `available` queued tokens (already capped at max_batch_tokens): the largest
// preferred size <= available, or `available` itself when there is none (or no preferred sizes).
// `preferred` must be sorted ascending. Pure; unit-tested.
int64_t ChooseBatchTokens(int64_t available, const std::vector<int64_t>& preferred);

}  // namespace sched_internal
}  // namespace moe
