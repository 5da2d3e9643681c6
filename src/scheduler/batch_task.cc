// One batch on a swarm worker:
//   1. gather: copy each segment's input rows into the worker's batch buffer (exact byte copies);
//   2. compute: Engine::Forward on the worker's slot;
//   3. scatter: copy output rows (and routing rows for requests that want them) back;
//   4. report to the scheduler, which completes requests whose last piece this was.
// A batch of a single segment skips 1 and 3: the engine reads and writes the request's own rows.
#include <algorithm>
#include <chrono>
#include <cstring>

#include "scheduler/dynamic_batcher.h"

namespace moe {
namespace sched_internal {
namespace {

// Grows `v` to `n` elements once; later batches reuse it (no allocation in steady state).
template <typename T>
T* Reserve(std::vector<T>& v, int64_t n) {
  if (static_cast<int64_t>(v.size()) < n) v.resize(static_cast<size_t>(n));
  return v.data();
}

}  // namespace

void BatchTask::Run(int worker) {
  const SteadyTime start = Now();
  const int64_t rb = owner_->row_bytes(dtype_);
  const int64_t k = owner_->top_k();
  const int64_t max_rows = owner_->options().max_batch_tokens;
  const bool any_routing = std::any_of(segments_.begin(), segments_.end(),
                                       [](const Segment& s) { return s.request->want_routing; });
  BatchRecord record;
  record.layer = layer_;
  record.dtype = dtype_;
  record.worker = worker;
  record.n_tokens = n_tokens_;
  record.n_segments = static_cast<int>(segments_.size());
  record.dispatch_us = MicrosBetween(formed_time, start);

  ForwardArgs args;
  args.layer = layer_;
  args.dtype = dtype_;
  args.n_tokens = n_tokens_;
  args.slot = worker;
  const bool direct = segments_.size() == 1;
  WorkerScratch& scratch = owner_->scratch(worker);
  if (direct) {
    const Segment& s = segments_[0];
    RequestState& r = *s.request;
    args.input = r.input + s.begin * rb;
    args.output = r.output + s.begin * rb;
    if (r.want_routing) {
      args.expert_ids = r.expert_ids + s.begin * k;
      args.expert_weights = r.expert_weights + s.begin * k;
    }
  } else {
    // Sized for the largest batch of the widest dtype (F32) on first use.
    std::byte* in = Reserve(scratch.input, max_rows * owner_->row_bytes(DType::kF32));
    std::byte* out = Reserve(scratch.output, max_rows * owner_->row_bytes(DType::kF32));
    for (const Segment& s : segments_) {
      std::memcpy(in + s.row * rb, s.request->input + s.begin * rb, static_cast<size_t>(s.n * rb));
    }
    args.input = in;
    args.output = out;
    if (any_routing) {
      args.expert_ids = Reserve(scratch.expert_ids, max_rows * k);
      args.expert_weights = Reserve(scratch.expert_weights, max_rows * k);
    }
  }
  const SteadyTime gathered = Now();
  Status status = owner_->engine().Forward(args);
  const SteadyTime computed = Now();
  if (status.ok() && !direct) {
    const auto* out = static_cast<const std::byte*>(args.output);
    for (const Segment& s : segments_) {
      RequestState& r = *s.request;
      std::memcpy(r.output + s.begin * rb, out + s.row * rb, static_cast<size_t>(s.n * rb));
      if (r.want_routing) {
        std::memcpy(r.expert_ids + s.begin * k, args.expert_ids + s.row * k,
                    static_cast<size_t>(s.n * k) * sizeof(int32_t));
        std::memcpy(r.expert_weights + s.begin * k, args.expert_weights + s.row * k,
                    static_cast<size_t>(s.n * k) * sizeof(float));
      }
    }
  }
  const SteadyTime scattered = Now();
  record.gather_us = MicrosBetween(start, gathered);
  record.compute_us = MicrosBetween(gathered, computed);
  record.scatter_us = MicrosBetween(computed, scattered);
  record.status = status;
  owner_->OnBatchDone(*this, worker, status, record);
}

void BatchTask::Abandon(const Status& why) {
  BatchRecord record;
  record.layer = layer_;
  record.dtype = dtype_;
  record.n_tokens = n_tokens_;
  record.n_segments = static_cast<int>(segments_.size());
  record.status = why;
  owner_->OnBatchDone(*this, -1, why, record);
}

}  // namespace sched_internal
}  // namespace moe
