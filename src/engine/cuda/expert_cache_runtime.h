// ExpertCacheRuntime: the device side of the GPU expert cache of one CudaEngine.
//
// experts::ExpertSlotPool decides which expert sits in which slot and when; this class owns what
// the pool never touches:
//   1. the slot memory: one device buffer per shape class of SlotCount * SlotBytes bytes (slot i
//      at i * SlotBytes; inside it the layout of ExpertSlotLayout, each matrix row-major or, with
//      Options::pack_slots, packed through two staging buffers of one slot on a pack stream),
//   1b. with ExpertCacheOptions::compress_host_tier, the misses of experts the host tier has
//      encoded (experts::CompressedHostTier) copy the compressed blob into one of two staging
//      buffers on the copy stream and a decode kernel (kernels/weight_codec.h) expands it into
//      the slot on a high-priority decode stream, while the copy engine moves the next blob,
//   2. one copy stream per device, fed by the host tier (ExpertCopier), with one load event per
//      slot; loads are marked loaded in the pool once their event has completed (polled with
//      cudaEventQuery at each layer forward, never waited on in the common case),
//   3. release fences: an id per cache round, backed by a CUDA event recorded on the compute
//      stream after the round's GEMMs (a ring per engine slot); a load into a slot whose previous
//      users released it with fence f waits, on the copy stream, for every fence <= f of every
//      engine slot that may still be pending,
//   4. per engine slot: mapped pinned memory for the residency kernel's report (per-expert row
//      offsets, lookahead predictions, misses, a sequence number the host spins on), the
//      speculative pointer tables / meta / tile count on the device, and a ring of per-round
//      pointer tables + tile lists for layers that miss,
//   5. measurement: time the compute stream waited on copies (timing events around the waits,
//      fed to the pool's RecordCopyWait), copy-stream busy time, host round trips, prediction
//      precision/recall per lookahead depth, and the routing trace (--expert-trace),
//   6. the residency table the device reads (kernels/cache_residency.h): mapped pinned memory,
//      [moe layer position][expert] -> slot index or -1. An expert is published (its slot
//      written) once its load is known complete (PollLocked), and withdrawn (-1) before a load
//      evicts it. Speculative reads are fenced: an engine slot launches the residency kernel and
//      the routed kernels that follow it while holding `spec_mu_` and records a per-(engine slot,
//      layer) event after them; an eviction withdraws the entry under `spec_mu_` and makes the
//      copy stream wait for the evicted expert's layer's events. So a kernel that read a slot
//      before it was withdrawn finishes before the slot is overwritten, and one launched after
//      sees -1 (a miss: the host computes that layer through pinned rounds). Where the driver
//      offers stream memory operations, the copy stream also publishes each expert itself right
//      after its copy (cuStreamWriteValue32 on the mapped entry, before the load event), so a
//      residency kernel sees a finished copy before the host has polled its event; an expert
//      is still withdrawn only after MarkLoaded, i.e. after that write.
//
// Thread safety: one runtime serves every engine slot. Public methods may be called concurrently
// from different engine slots' threads (each slot's own state only by its thread). AcquireAndLoad
// and PrefetchAndLoad hold `mu_` across the pool call and the enqueueing of the copies and load
// events, so a batch that finds an expert in flight always waits on that load's event. Fences
// have their own mutex; speculation another (lock order: mu_, then spec_mu_, then fence_mu_).
#pragma once

#include <cuda_runtime_api.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "engine/cuda/cache_rounds.h"
#include "engine/cuda/cuda_raii.h"
#include "engine/cuda/expert_copier.h"
#include "kernels/cache_residency.h"
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
    // Slots the budget must hold at least: the most experts of one forward on the decode experts
    // path, whose kernels run every routed expert of the step in one launch (in rounds they would
    // sum differently from the all-resident engine). Budgets below it are rejected.
    int64_t min_slots = 1;
    // Slots hold the routed experts packed (kernels/weight_layout.h), as the all-resident engine
    // of the same options holds its own, so a budgeted engine runs the all-resident engine's
    // kernels on the same layout. Each load is copied into one of two staging buffers of a slot
    // on the copy stream and packed from there into its slot on the pack stream, so the copy
    // engine moves the next expert while the last one is packed. Needs packable shapes (hidden
    // and inter multiples of 128).
    bool pack_slots = false;
  };

  // A gate-lookahead prediction of one upcoming layer, made `depth` MoE layers ahead.
  struct LayerPrediction {
    int32_t depth = 1;
    int32_t layer = 0;
    std::vector<int32_t> ranked;  // most likely first
  };

  // Staging of one engine slot (touched only by that slot's thread).
  struct EngineSlot {
    // Mapped pinned memory written by the residency kernel: ResidencyReport, then the offsets
    // [n_experts + 1], then the lookahead ids and weights [depth][max_tokens * top_k] each.
    PinnedBuffer report;
    int64_t report_offsets_at = 0, report_la_ids_at = 0, report_la_weights_at = 0;
    uint64_t seq = 0;  // of the last residency kernel launched
    // Mapped pinned word the residency kernel reports as its sequence number (ArmReport sets it
    // before each launch; the kernel's argument is its address, so graphs replay unchanged).
    PinnedBuffer seq_in;
    // Lookahead: logits of one upcoming layer at a time, routing per depth on the device.
    DeviceBuffer la_logits, la_ids_dev, la_weights_dev, la_ranks, la_counts;
    // The lookahead by the decode front (ExpertCacheOptions::lookahead_front): the input copy its
    // convert phase writes, which nothing reads ([front tokens, 2 * hidden] 2-byte elements; the
    // forward's own copy stays untouched).
    DeviceBuffer la_x;
    // Speculative routed phase: [3 * n_experts] pointer tables, a meta, a tile count, a zero
    // layer index (the tables hold one layer).
    DeviceBuffer spec_tables, spec_meta, spec_n_tiles, zero_layer;
    Event resolved;  // recorded after the device phase (error detection while spinning)
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
    // Gate-lookahead predictions waiting for their layers to route (this pass over the layers).
    std::vector<LayerPrediction> predicted;
    int32_t last_layer = -1;
    int64_t batch = -1;

    const ResidencyReport& report_header() const { return *report.as<ResidencyReport>(); }
    const int32_t* report_offsets() const {
      return reinterpret_cast<const int32_t*>(report.as<char>() + report_offsets_at);
    }
    const int32_t* report_la_ids() const {
      return reinterpret_cast<const int32_t*>(report.as<char>() + report_la_ids_at);
    }
    const float* report_la_weights() const {
      return reinterpret_cast<const float*>(report.as<char>() + report_la_weights_at);
    }
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
  // Lookahead entries per depth in la_ids_dev / la_weights_dev (max tokens * top_k).
  int64_t lookahead_stride() const { return la_stride_; }
  // Upcoming MoE layers predicted after the layer at position `layer_pos` (0 without prefetch,
  // and, with ExpertCacheOptions::lookahead_skips_resident, while every one of those layers has
  // all its experts resident or loading).
  int LookaheadDepth(int layer_pos) const;
  int64_t max_round_tiles() const { return max_tiles_; }
  int64_t device_bytes() const { return device_bytes_; }
  bool slots_packed() const { return options_.pack_slots; }
  // Device address of a slot's first byte.
  char* SlotAddress(experts::SlotId slot) const;

  // The residency kernel's arguments for engine slot `engine_slot` at MoE layer position
  // `layer_pos` (tables, slots, report, the sequence word). The caller sets the forward's meta,
  // offsets, tile count, top_k and lookahead depth. The same for every forward of that engine
  // slot and layer (a captured graph keeps them).
  ResolveArgs ResolveArgsFor(int engine_slot, int layer_pos) const;
  // A new sequence number for the engine slot's next residency kernel, in its sequence word
  // (WaitReport waits for it). Call before launching that kernel, after the WaitReport of the
  // slot's previous one (which has then read the word).
  void ArmReport(int engine_slot);
  // Runs `enqueue` (the residency kernel and the speculative kernels after it, on `stream`)
  // under the speculation lock and records the (engine slot, layer) event after them; with
  // `speculative` false only runs it.
  Status Speculate(int engine_slot, int layer_pos, cudaStream_t stream, bool speculative,
                   const std::function<Status()>& enqueue);
  // Spins until the residency kernel of the engine slot's last ArmReport has reported;
  // returns the host time waited (ns). Fails if the kernel failed.
  StatusOr<int64_t> WaitReport(int engine_slot);
  // Marks completed loads loaded and publishes them in the residency table (call right before
  // launching a residency kernel, so that it sees the copies finished so far).
  Status PublishCompletedLoads();
  // One more layer forward whose routed experts all hit at the device check (no round trip
  // before its expert kernels).
  void CountDeviceHit() { device_hits_ += 1; }
  // A round with a miss whose ready experts ran (decode experts path: their gate/up) before its
  // wait for the loads.
  void CountReadyFirst() { ready_first_rounds_ += 1; }

  // Called once per layer forward after its routing reached the host (`active`: its experts,
  // ascending): marks completed loads,
  // reads finished timings, scores the pending prediction for `layer`, appends the trace.
  Status OnRouted(int engine_slot, int32_t layer, std::span<const int32_t> active,
                  int64_t host_wait_ns);
  // Pins `keys` (one round) and enqueues the copies of its misses. Retries while every slot is
  // pinned or loading (waiting for copies, then for other slots' releases); fails after a deadline.
  // `uses`: the tokens of the step per key, for the eviction policy (ExpertSlotPool::Acquire).
  StatusOr<experts::AcquireRound> AcquireAndLoad(std::span<const experts::ExpertKey> keys,
                                                 std::span<const int32_t> uses = {});
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
  // Stores the predictions (scored when their layers route, per depth) and prefetches them,
  // nearest layer first, in one pool call (so no prediction evicts another).
  Status Predict(int engine_slot, std::vector<LayerPrediction> predictions);

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
  struct PendingLoad {
    experts::SlotId slot;
    experts::ExpertKey key;
  };

  // Issues the copies of `loads` (slot, key, reuse fence) on the copy stream, after withdrawing
  // evicted experts from the residency table (see 6. in the file comment). Caller holds mu_.
  Status IssueLoadsLocked(std::span<const experts::PrefetchLoad> loads)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The staging step of packed slots and compressed loads: `copy` fills the next staging buffer
  // on the copy stream (after the transform that last read that buffer, hence after every fence
  // the copy stream waited for), then `transform` writes the slot from it on the transform
  // stream. Returns the transform stream: the one that wrote the slot last, to publish and record
  // the load event on. Caller holds mu_ (the staging buffers' owner).
  StatusOr<cudaStream_t> CopyThroughStaging(
      const std::function<Status(char* staging, cudaStream_t cs)>& copy,
      const std::function<Status(const char* staging, cudaStream_t ts)>& transform)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Options::pack_slots: copies `key` raw into a staging buffer and packs its three matrices from
  // there into `slot` (CopyThroughStaging).
  StatusOr<cudaStream_t> CopyPackedAsync(const experts::ExpertKey& key, char* slot)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The compressed host tier's blob of an expert: copied into a staging buffer, then decoded into
  // `slot` (CopyThroughStaging).
  StatusOr<cudaStream_t> CopyCompressedAsync(const experts::CompressedHostTier::Blob& blob,
                                             char* slot) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Waits for every copy (and pack or decode) issued so far.
  Status SyncCopies();
  // Withdraws `key` from the residency table and orders the copy stream after every speculative
  // read of its layer that may have seen it.
  Status WithdrawLocked(const experts::ExpertKey& key) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Residency table entry of a key (host pointer).
  int32_t* ResidencyEntry(const experts::ExpertKey& key) const;
  // MarkLoaded (and publish) for completed loads; adds finished copy timings. Caller holds mu_.
  Status PollLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Makes the copy stream wait for every fence <= `fence` that may be pending.
  Status WaitFenceOnCopyStream(uint64_t fence);
  Status PollWaitTimings(EngineSlot& es, bool drain_one);
  int64_t SlotIndexFlat(experts::SlotId slot) const {
    return class_first_slot_[static_cast<size_t>(slot.shape_class)] + slot.index;
  }

  Options options_;
  MoeSpec spec_;
  std::vector<int32_t> layer_pos_;  // [n_layers] MoE layer position or -1
  int n_pos_ = 0;                   // MoE layers
  PinnedBuffer residency_;          // int32 [n_pos_ * n_experts]: slot index or -1 (mapped)
  const int32_t* residency_dev_ = nullptr;
  // cuStreamWriteValue32 (driver entry point), or null where unavailable.
  using WriteValue32Fn = int (*)(cudaStream_t, uint64_t, uint32_t, unsigned int);
  WriteValue32Fn write_value32_ = nullptr;
  int64_t la_stride_ = 0;
  std::unique_ptr<ExpertCopier> copier_;
  std::unique_ptr<experts::ExpertSlotPool> pool_;
  std::unique_ptr<experts::TraceRecorder> trace_;
  std::vector<DeviceBuffer> class_buffers_;  // [shape classes]
  std::vector<int64_t> class_first_slot_;    // flat index of each class's slot 0
  // [all slots], recorded on the stream that writes the slot last: the copy stream, or the
  // transform stream (Options::pack_slots, compressed loads).
  std::vector<Event> load_events_;
  // Options::pack_slots or a compressed host tier (never both): two staging buffers (a slot, or
  // the codec's largest blob), the stream that packs or decodes out of them, and per buffer the
  // events "copied into it" (copy stream) and "read out of it" (transform stream).
  DeviceBuffer staging_[2];
  Stream transform_stream_;
  Event staged_[2], unstaged_[2];
  int staging_next_ ABSL_GUARDED_BY(mu_) = 0;
  const experts::CompressedHostTier* compressed_ = nullptr;  // owned by copier_, or null
  std::atomic<uint64_t> compressed_loads_{0}, wire_bytes_{0};
  Stream copy_stream_;
  std::vector<std::unique_ptr<EngineSlot>> slots_;
  int64_t round_entry_bytes_ = 0;
  int64_t max_tiles_ = 0;
  int64_t device_bytes_ = 0;

  mutable std::mutex mu_;  // std::mutex: see ExpertSlotPool::mu_ (TSan)
  std::vector<PendingLoad> pending_loads_ ABSL_GUARDED_BY(mu_);
  std::vector<std::pair<Event, Event>> copy_timers_ ABSL_GUARDED_BY(mu_);
  std::vector<int> copy_timer_pending_ ABSL_GUARDED_BY(mu_);
  int copy_timer_next_ ABSL_GUARDED_BY(mu_) = 0;
  experts::PredictionAccuracy accuracy_ ABSL_GUARDED_BY(mu_);  // nearest prediction per layer
  std::vector<experts::PredictionAccuracy> depth_accuracy_ ABSL_GUARDED_BY(mu_);  // [depth - 1]
  // Prefetch gates of depths >= 2 ([depth - 1]; every depth is scored).
  std::vector<LookaheadGate> depth_gates_ ABSL_GUARDED_BY(mu_);
  uint64_t gated_predictions_ ABSL_GUARDED_BY(mu_) = 0;  // layer predictions not loaded
  int64_t trace_last_batch_ ABSL_GUARDED_BY(mu_) = 0;
  Status broken_ ABSL_GUARDED_BY(mu_);  // sticky: a failed copy leaves slots unusable

  std::mutex fence_mu_;
  std::vector<FenceRing> fence_rings_ ABSL_GUARDED_BY(fence_mu_);  // [engine slots]
  uint64_t next_fence_ ABSL_GUARDED_BY(fence_mu_) = 1;

  // Speculative reads (6. in the file comment): events [engine slot * n_pos_ + layer position].
  std::mutex spec_mu_;
  std::vector<Event> spec_events_ ABSL_GUARDED_BY(spec_mu_);
  std::vector<char> spec_recorded_ ABSL_GUARDED_BY(spec_mu_);

  std::atomic<int64_t> next_batch_{0};
  std::atomic<uint64_t> copy_busy_ns_{0}, copy_batches_{0}, host_round_trips_{0}, host_wait_ns_{0},
      rounds_{0}, device_hits_{0}, ready_first_rounds_{0};
};

}  // namespace moe::cuda
