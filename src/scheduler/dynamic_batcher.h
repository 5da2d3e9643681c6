// Internal: the dynamic batching implementation of moe::Scheduler (see the public header for the
// rules and the thread model).
#pragma once

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <queue>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/inlined_vector.h"
#include "moe/scheduler/scheduler.h"
#include "moe/swarm/swarm.h"
#include "scheduler/request_state.h"

namespace moe {
namespace sched_internal {

// One piece of a request inside a batch: request rows [begin, begin + n) go to batch rows
// [row, row + n).
struct Segment {
  RequestState* request = nullptr;
  int64_t begin = 0;
  int64_t n = 0;
  int64_t row = 0;
};

// Grow-only host buffers of one worker (engine slot): batch input, output and routing rows.
// Touched only by that worker's thread.
struct WorkerScratch {
  std::vector<std::byte> input;
  std::vector<std::byte> output;
  std::vector<int32_t> expert_ids;
  std::vector<float> expert_weights;
};

class DynamicBatcher;

// One formed batch, run by a swarm worker: gather -> Engine::Forward -> scatter -> report back.
class BatchTask : public SwarmTask {
 public:
  BatchTask(DynamicBatcher* owner, int layer, DType dtype)
      : owner_(owner), layer_(layer), dtype_(dtype) {}
  void Run(int worker) override;
  void Abandon(const Status& why) override;

  int layer() const { return layer_; }
  DType dtype() const { return dtype_; }
  int64_t n_tokens() const { return n_tokens_; }
  const std::vector<Segment>& segments() const { return segments_; }
  void AddSegment(const Segment& s) {
    segments_.push_back(s);
    n_tokens_ += s.n;
  }
  SteadyTime formed_time;

 private:
  DynamicBatcher* const owner_;
  const int layer_;
  const DType dtype_;
  int64_t n_tokens_ = 0;
  std::vector<Segment> segments_;
};

class DynamicBatcher final : public Scheduler {
 public:
  // `options` already validated and defaulted by Scheduler::Create.
  DynamicBatcher(const SchedulerOptions& options, std::unique_ptr<Swarm> swarm);
  ~DynamicBatcher() override;

  Status Start();  // starts the dispatcher thread

  StatusOr<RequestId> Submit(Request request) override;
  bool Cancel(RequestId id) override;
  Status Shutdown(SteadyTime deadline) override;
  SchedulerStats Stats() const override;
  const SchedulerOptions& options() const override { return options_; }

  // Called by BatchTask on its worker (or with worker = -1 from Abandon()).
  void OnBatchDone(BatchTask& batch, int worker, const Status& status, const BatchRecord& record);
  WorkerScratch& scratch(int worker) { return scratch_[static_cast<size_t>(worker)]; }
  Engine& engine() { return *options_.engine; }
  int64_t row_bytes(DType dtype) const { return hidden_ * static_cast<int64_t>(DTypeSize(dtype)); }
  int top_k() const { return top_k_; }

 private:
  using Completions = std::vector<std::unique_ptr<RequestState>>;
  using Batches = absl::InlinedVector<std::unique_ptr<BatchTask>, 2>;
  using DeadlineEntry = std::pair<SteadyTime, RequestId>;

  void DispatcherLoop();
  Status ValidateRequest(const Request& r) const;
  Status Refuse(RefusalReason reason, Status why, int64_t n_tokens);
  KeyQueue& GetKeyLocked(int layer, DType dtype) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Removes `r` from its key queue (releasing its unbatched tokens); ends its queue part.
  void UnqueueLocked(RequestState* r) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Drops the unbatched rest of `r` with `why`; completes it if no piece is running.
  void DropLocked(RequestState* r, const Status& why, RequestOutcome outcome, SteadyTime now,
                  Completions* out) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Ends one part of `r`; when it was the last, moves `r` out of live_ into `out`.
  void ReleasePartLocked(RequestState* r, Completions* out) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ExpireLocked(SteadyTime now, Completions* out) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void CompactDeadlinesLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool IsReadyLocked(const KeyQueue& k, SteadyTime now) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  KeyQueue* PickReadyKeyLocked(SteadyTime now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::unique_ptr<BatchTask> FormBatchLocked(KeyQueue& k, SteadyTime now)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Forms batches from ready keys while workers are free (the dispatch rule, shared by the
  // dispatcher and Submit()'s fast path).
  void FormReadyBatchesLocked(SteadyTime now, Batches* out) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Hands formed batches to the swarm; no lock held.
  void Dispatch(Batches& batches, Swarm::Producer* producer);
  SteadyTime NextWakeLocked(SteadyTime now) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void FailAllQueuedLocked(const Status& why, Completions* out) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool DrainedLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return live_.empty() && inflight_batches_ == 0 && completing_ == 0;
  }
  int64_t RetryHintMsLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Runs observer hooks and callbacks of completed requests; no lock held.
  void Complete(Completions& done);

  const SchedulerOptions options_;
  const int64_t hidden_;
  const int top_k_;
  std::unique_ptr<Swarm> swarm_;
  std::vector<WorkerScratch> scratch_;  // [num_slots]; scratch_[i] used only by worker i
  std::thread dispatcher_;

  // NOTES: std::mutex rather than absl::Mutex: Debian's abseil is not built with TSan, so TSan
  // cannot see absl::Mutex's ordering and reports false races; pthread mutexes it intercepts.
  mutable std::mutex mu_;
  std::condition_variable
      dispatcher_cv_;  // wakes the dispatcher: arrival, cancel, batch done, shutdown
  std::condition_variable drained_cv_;  // wakes Shutdown() waiters
  absl::flat_hash_map<RequestId, std::unique_ptr<RequestState>> live_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<int, std::unique_ptr<KeyQueue>> keys_ ABSL_GUARDED_BY(mu_);
  std::vector<KeyQueue*> active_ ABSL_GUARDED_BY(mu_);  // keys with queued tokens
  std::priority_queue<DeadlineEntry, std::vector<DeadlineEntry>, std::greater<DeadlineEntry>>
      deadlines_ ABSL_GUARDED_BY(mu_);        // lazy: entries of finished requests are skipped
  Completions orphans_ ABSL_GUARDED_BY(mu_);  // completed by Cancel()/Shutdown(); the dispatcher
                                              // runs their callbacks
  RequestId next_id_ ABSL_GUARDED_BY(mu_) = 1;
  SteadyTime next_wake_ ABSL_GUARDED_BY(mu_) = SteadyTime::max();
  bool shutting_down_ ABSL_GUARDED_BY(mu_) = false;  // refuse new work; flush queues
  bool stop_dispatcher_ ABSL_GUARDED_BY(mu_) = false;
  bool joined_ ABSL_GUARDED_BY(mu_) = false;
  Status shutdown_status_ ABSL_GUARDED_BY(mu_);
  int64_t queued_tokens_by_priority_[kNumPriorities] ABSL_GUARDED_BY(mu_) = {0, 0, 0};
  int64_t queued_tokens_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t queued_requests_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t completing_ ABSL_GUARDED_BY(mu_) = 0;  // out of live_, callback not yet returned
  int64_t inflight_batches_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t inflight_tokens_ ABSL_GUARDED_BY(mu_) = 0;
  double tokens_per_us_ ABSL_GUARDED_BY(mu_) = 0.0;  // EWMA of one worker's batch throughput
  SchedulerStats counters_ ABSL_GUARDED_BY(mu_);     // the counter fields only

  std::mutex shutdown_mu_;  // serialises Shutdown() callers (taken before mu_)
};

}  // namespace sched_internal
}  // namespace moe
