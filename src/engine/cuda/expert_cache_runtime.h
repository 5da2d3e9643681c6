// ExpertCacheRuntime: the device side of the GPU expert cache of one CudaEngine.
//
// experts::ExpertSlotPool decides which expert sits in which slot and when; this class owns what
// the pool never touches:
//   1. the slot memory: one device buffer per shape class of SlotCount * SlotBytes bytes (slot i
//      at i * SlotBytes; inside it the layout of ExpertSlotLayout),
//   2. one copy stream per device, fed by the host tier (ExpertCopier), with one load event per
//      slot; loads are marked loaded in the pool once their event has completed (polled with
//      cudaEventQuery at each layer forward, never waited on in the common case),
//   3. release fences: an id per cache round, backed by a CUDA event recorded on the compute
//      stream after the round's GEMMs (a ring per engine slot); a load into a slot whose previous
//      users released it with fence f waits, on the copy stream, for every fence <= f of every
//      engine slot that may still be pending,
//   4. per engine slot: pinned and device staging for the routing result (per-expert row offsets,
//      lookahead prediction) and a ring of per-round pointer tables + tile lists,
//   5. measurement: time the compute stream waited on copies (timing events around the waits,
//      fed to the pool's RecordCopyWait), copy-stream busy time, host round trips, prediction
//      precision/recall, and the routing trace (--expert-trace).
//
// Thread safety: one runtime serves every engine slot. Public methods may be called concurrently
// from different engine slots' threads (each slot's own state only by its thread). AcquireAndLoad
// and PrefetchAndLoad hold `mu_` across the pool call and the enqueueing of the copies and load
// events, so a batch that finds an expert in flight always waits on that load's event. Fences
// have their own mutex (lock order: mu_, then fence_mu_).
#pragma once

#include <cuda_runtime_api.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "engine/cuda/cache_rounds.h"
#include "engine/cuda/cuda_raii.h"
#include "engine/cuda/expert_copier.h"
#include "moe/engine/cuda_engine.h"
#include "moe/experts/prefetch.h"
#include "moe/experts/slot_pool.h"
#include "moe/experts/trace.h"

namespace moe::cuda {

class ExpertCacheRuntime {
 public:
  struct Options {
    int device = 0;
    int num_engine_slots = 1;
    int64_t max_batch_tokens = 1;
    ExpertCacheOptions cache;
  };

  // Staging of one engine slot (touched only by that slot's thread).
  struct EngineSlot {
    PinnedBuffer offsets;     // int32 [n_experts + 1]: the scan's group_offsets
    PinnedBuffer la_ids;      // int32 [max_tokens * top_k]: lookahead routing
    PinnedBuffer la_weights;  // f32 [max_tokens * top_k]
    DeviceBuffer la_logits, la_ids_dev, la_weights_dev, la_ranks, la_counts;
    Event routed;  // recorded after the D2H copies of the routing result
    // Round tables ring: pinned + device entries, an event after each entry's upload.
    struct RoundEntry {
      PinnedBuffer host;
      DeviceBuffer dev;
      Event uploaded;
    };
    std::vector<RoundEntry> rounds;
    int next_round = 0;
    // Copy-wait timing pairs (start, end): a ring; wait_pending[i] != 0 while pair i is unread.
    std::vector<std::pair<Event, Event>> wait_events;
    std::vector<int> wait_pending;
    int wait_next = 0;
    // Gate-lookahead prediction waiting for its layer to route.
    int32_t predicted_layer = -1;
    std::vector<int32_t> predicted;
    int32_t last_layer = -1;
    int64_t batch = -1;
  };

  // `model` must outlive the runtime; `spec` is the engine's. Allocates everything up front.
  static StatusOr<std::unique_ptr<ExpertCacheRuntime>> Create(std::shared_ptr<const Model> model,
                                                              const Options& options);
  ~ExpertCacheRuntime();
  ExpertCacheRuntime(const ExpertCacheRuntime&) = delete;
  ExpertCacheRuntime& operator=(const ExpertCacheRuntime&) = delete;

  const experts::ExpertSlotPool& pool() const { return *pool_; }
  const ExpertSlotLayout& layout() const { return copier_->layout(); }
  EngineSlot& engine_slot(int i) { return *slots_[static_cast<size_t>(i)]; }
  const ExpertCacheOptions& options() const { return options_.cache; }
  // Bytes of one round-table entry: 3 pointer tables [n_experts], 4 int32 (tile counts of the
  // resident and the waiting part, a zero layer index, padding), the tile list.
  int64_t round_entry_bytes() const { return round_entry_bytes_; }
  int64_t max_round_tiles() const { return max_tiles_; }
  int64_t device_bytes() const { return device_bytes_; }
  // Device address of a slot's first byte.
  char* SlotAddress(experts::SlotId slot) const;

  // Called once per layer forward after its routing reached the host: marks completed loads,
  // reads finished timings, scores the pending prediction for `layer`, appends the trace.
  Status OnRouted(int engine_slot, int32_t layer, std::span<const int32_t> active,
                  int64_t host_wait_ns);
  // Pins `keys` (one round) and enqueues the copies of its misses. Retries while every slot is
  // pinned or loading (waiting for copies, then for other slots' releases); fails after a deadline.
  StatusOr<experts::AcquireRound> AcquireAndLoad(std::span<const experts::ExpertKey> keys);
  // Makes `stream` wait for the loads of the kInFlight / kLoad entries of `round`, timing the
  // wait. No-op when all are resident.
  Status WaitLoads(int engine_slot, const experts::AcquireRound& round, cudaStream_t stream);
  // Records a release fence on `stream` (after the round's GEMMs) and releases the round.
  Status ReleaseRound(int engine_slot, const experts::AcquireRound& round, cudaStream_t stream);
  // Loads `keys` (most wanted first) into free slots, at most one slot each, never evicting one of
  // them, and waits for the copies (start-up warming). Returns how many were loaded. The loads
  // count as prefetches in the counters.
  StatusOr<int64_t> Warm(std::span<const experts::ExpertKey> keys);
  // Releases a round none of whose slots was read (no fence), then waits for the copy stream so
  // that the next Acquire finds the loads done; sleeps a little after the first tries (other
  // engine slots' pins).
  Status ReleaseUnused(const experts::AcquireRound& round);
  // Stores the prediction for `layer` (scored when it routes) and prefetches it.
  Status Predict(int engine_slot, int32_t layer, std::span<const int32_t> ranked);

  // Counters so far; timings count once their events were read (at later forwards or Quiesce).
  ExpertCacheStats Stats() const;
  // Waits for every copy and reads every pending timing. Only while no forward runs.
  Status Quiesce();
  Status FlushTrace();

 private:
  struct Fence {
    uint64_t id = 0;
    Event event;
  };
  struct FenceRing {
    std::vector<Fence> fences;
    int next = 0;
  };

  ExpertCacheRuntime() = default;
  // Issues the copies of `loads` (slot, key, reuse fence) on the copy stream. Caller holds mu_.
  Status IssueLoadsLocked(std::span<const experts::PrefetchLoad> loads)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // MarkLoaded for completed loads; adds finished copy timings. Caller holds mu_.
  Status PollLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Makes the copy stream wait for every fence <= `fence` that may be pending.
  Status WaitFenceOnCopyStream(uint64_t fence);
  Status PollWaitTimings(EngineSlot& es, bool drain_one);
  int64_t SlotIndexFlat(experts::SlotId slot) const {
    return class_first_slot_[static_cast<size_t>(slot.shape_class)] + slot.index;
  }

  Options options_;
  MoeSpec spec_;
  std::unique_ptr<ExpertCopier> copier_;
  std::unique_ptr<experts::ExpertSlotPool> pool_;
  std::unique_ptr<experts::TraceRecorder> trace_;
  std::vector<DeviceBuffer> class_buffers_;  // [shape classes]
  std::vector<int64_t> class_first_slot_;    // flat index of each class's slot 0
  std::vector<Event> load_events_;           // [all slots], recorded on the copy stream
  Stream copy_stream_;
  std::vector<std::unique_ptr<EngineSlot>> slots_;
  int64_t round_entry_bytes_ = 0;
  int64_t max_tiles_ = 0;
  int64_t device_bytes_ = 0;

  mutable std::mutex mu_;  // std::mutex: see ExpertSlotPool::mu_ (TSan)
  std::vector<experts::SlotId> pending_loads_ ABSL_GUARDED_BY(mu_);
  std::vector<std::pair<Event, Event>> copy_timers_ ABSL_GUARDED_BY(mu_);
  std::vector<int> copy_timer_pending_ ABSL_GUARDED_BY(mu_);
  int copy_timer_next_ ABSL_GUARDED_BY(mu_) = 0;
  experts::PredictionAccuracy accuracy_ ABSL_GUARDED_BY(mu_);
  int64_t trace_last_batch_ ABSL_GUARDED_BY(mu_) = 0;
  Status broken_ ABSL_GUARDED_BY(mu_);  // sticky: a failed copy leaves slots unusable

  std::mutex fence_mu_;
  std::vector<FenceRing> fence_rings_ ABSL_GUARDED_BY(fence_mu_);  // [engine slots]
  uint64_t next_fence_ ABSL_GUARDED_BY(fence_mu_) = 1;

  std::atomic<int64_t> next_batch_{0};
  std::atomic<uint64_t> copy_busy_ns_{0}, copy_batches_{0}, host_round_trips_{0}, host_wait_ns_{0},
      rounds_{0};
};

}  // namespace moe::cuda
