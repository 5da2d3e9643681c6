// ExpertSlotPool: the host-side bookkeeping of the GPU expert cache, device agnostic.
//
// Routed experts live in a fixed pool of equally sized slots, one pool per "shape class" (all MoE
// layers whose experts have the same byte size), carved once out of the byte budget
// (--expert-cache-bytes): no fragmentation and no allocation per miss. The device side (the CUDA
// engine) owns one buffer per class of SlotCount(c) * SlotBytes(c) bytes; slot {c, i} lives at
// byte offset i * SlotBytes(c) of buffer c. This class decides WHICH expert goes to WHICH slot and
// WHEN; it never touches memory, streams or events.
//
// Slot life cycle (per slot):
//   free --load--> loading --MarkLoaded--> ready --evict--> (reused by another load)
// and independently a pin count: a batch that Acquires an expert pins its slot until Release.
// A slot may be evicted only when it is ready and unpinned ("evictable"); a loading slot is never
// evicted (its copy is in flight), a pinned one never (a batch computes with it).
//
// One batch step (one MoE layer of one batch) with experts E:
//   round = Acquire(E)      // pins hits, assigns slots to misses (evicting evictable ones)
//   for entry in round.entries:   // order: ready hits, then in-flight ones, then loads
//     kLoad:     order the copy after the release fence entry.reuse_fence (0 = none), copy the
//                expert into entry.slot, record the slot's load event; make the compute wait on
//                it. Call MarkLoaded(entry.slot) once that event has COMPLETED (polled by the
//                slot-owner thread): until then other batches get the slot as kInFlight.
//     kInFlight: the load (a prefetch or another batch's) is not known complete: make the
//                compute wait on the slot's load event.
//     kResident: no wait.
//     compute with the expert in entry.slot.
//   Release(round, fence)   // fence: the engine's id of "the compute that read these slots";
//                           // a later load into one of them gets it back as reuse_fence.
//   if round.deferred is not empty: Acquire(round.deferred) again (the next round).
// Rounds: when a step needs more experts of a class than there are slots not pinned by others,
// Acquire returns what fits (hits first) and defers the rest; successive rounds cover every
// expert exactly once. If nothing at all fits (every slot of the class pinned or loading),
// Acquire fails with ResourceExhausted and pins nothing: retry after another batch Releases.
//
// Prefetch(predicted): loads predicted experts of an upcoming layer into free slots or evictable
// ones chosen by the policy, never evicting pinned, loading or predicted experts; those loads are
// not pinned and become evictable once MarkLoaded.
//
// Thread safety: all public methods are thread safe (one internal mutex, held only for table
// updates: no I/O, no device calls). The intended caller is the CUDA engine's slot-owner thread;
// metrics scrapers may call Counters() from any thread.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "moe/common/status.h"
#include "moe/experts/eviction_policy.h"

namespace moe {
struct MoeSpec;
}

namespace moe::experts {

// One routed expert of one MoE layer. `layer` is the decoder layer index (MoeSpec::moe_layers).
struct ExpertKey {
  int32_t layer = 0;
  int32_t expert = 0;

  friend bool operator==(const ExpertKey&, const ExpertKey&) = default;
  friend auto operator<=>(const ExpertKey&, const ExpertKey&) = default;
  template <typename H>
  friend H AbslHashValue(H h, const ExpertKey& k) {
    return H::combine(std::move(h), k.layer, k.expert);
  }
};
std::string ToString(const ExpertKey& key);

// A slot: index `index` of shape class `shape_class`.
struct SlotId {
  int32_t shape_class = 0;
  int32_t index = 0;
  friend bool operator==(const SlotId&, const SlotId&) = default;
  friend auto operator<=>(const SlotId&, const SlotId&) = default;
};

// All MoE layers whose experts have one byte size.
struct ShapeClass {
  int64_t expert_bytes = 0;     // bytes of one expert (gate, up and down matrices) = one slot
  int32_t n_experts = 0;        // routed experts per layer
  std::vector<int32_t> layers;  // decoder layer indices of this class, each in one class only
};

// The byte budget split into slots: each class gets a share proportional to the bytes of all its
// experts, at most one slot per expert; whole leftover slots go to the classes with room, largest
// remainder first. Fails (InvalidArgument) on a malformed class or when some class gets no slot.
StatusOr<std::vector<int32_t>> PlanSlotCounts(int64_t budget_bytes,
                                              std::span<const ShapeClass> classes);

// The single shape class of a model: every MoE layer, MoeSpec::BytesPerExpert() bytes each.
ShapeClass ShapeClassForSpec(const MoeSpec& spec);

enum class SlotState : uint8_t { kFree, kLoading, kReady };

// How an entry of a round got its slot.
enum class SlotSource : uint8_t {
  kResident,  // hit: ready in its slot
  kInFlight,  // hit: its load (a prefetch or another batch's miss) has not completed yet
  kLoad,      // miss: the caller must copy the expert into the slot
};

struct RoundEntry {
  ExpertKey key;
  SlotId slot;
  SlotSource source = SlotSource::kResident;
  // kLoad only: the release fence of the slot's previous users (0 = none); the copy must be
  // ordered after it. And the expert that was evicted to make room, if any.
  uint64_t reuse_fence = 0;
  std::optional<ExpertKey> evicted;
};

struct AcquireRound {
  // Pinned experts in compute order: kResident first, then kInFlight, then kLoad in issue order.
  std::vector<RoundEntry> entries;
  // Experts that did not fit in this round, for the next Acquire (empty when the step is done).
  std::vector<ExpertKey> deferred;
  // Their uses, when the Acquire had them (else empty).
  std::vector<int32_t> deferred_uses;
};

struct PrefetchLoad {
  ExpertKey key;
  SlotId slot;
  uint64_t reuse_fence = 0;
  std::optional<ExpertKey> evicted;
};

struct SlotInfo {
  SlotState state = SlotState::kFree;
  std::optional<ExpertKey> key;  // set unless kFree
  int32_t pins = 0;
  bool prefetched_unused = false;  // loaded by Prefetch and not demanded yet
};

// Cumulative counters. Every demanded expert counts once as a hit (ready or in flight) or a miss.
struct ExpertCacheCounters {
  uint64_t hits = 0;              // demanded experts ready in a slot
  uint64_t hits_in_flight = 0;    // demanded experts whose load was in flight (prefetch or other)
  uint64_t misses = 0;            // demanded experts that needed a load
  uint64_t evictions = 0;         // resident experts dropped for another one
  uint64_t prefetch_issued = 0;   // prefetch loads issued
  uint64_t prefetch_useful = 0;   // prefetched experts demanded before their eviction
  uint64_t prefetch_wasted = 0;   // prefetched experts evicted without being demanded
  uint64_t prefetch_skipped = 0;  // predicted experts already resident or loading
  uint64_t bytes_copied = 0;      // bytes of all issued loads (demand and prefetch)
  uint64_t copy_wait_ns = 0;      // time the engine waited on copies (RecordCopyWait)
  uint64_t deferred_rounds = 0;   // Acquire calls that deferred experts to a later round
  uint64_t exhausted = 0;         // Acquire calls refused with ResourceExhausted
  std::vector<int32_t> resident_per_layer;  // [n_layers] experts ready or loading, per layer

  uint64_t Demanded() const { return hits + hits_in_flight + misses; }
  // (hits + hits_in_flight) / demanded; 0 when nothing was demanded.
  double HitRate() const;
};

// What happened between two snapshots of one pool (`later` taken after `earlier`): every counter
// is the difference; resident_per_layer is `later`'s (a level, not a count). For exporters that
// feed increments to Prometheus counters.
ExpertCacheCounters CountersDelta(const ExpertCacheCounters& later,
                                  const ExpertCacheCounters& earlier);

class ExpertSlotPool {
 public:
  struct Options {
    int64_t budget_bytes = 0;               // --expert-cache-bytes
    std::vector<ShapeClass> shape_classes;  // at least one
    EvictionKind eviction = EvictionKind::kReuse;
    EvictionOptions eviction_options;
    // When set, replaces `eviction`: builds the policy of one class (e.g. Belady in a simulator).
    std::function<std::unique_ptr<EvictionPolicy>(int32_t shape_class, int32_t n_slots,
                                                  const KeySpace& keys)>
        policy_factory;
  };

  // Fails with InvalidArgument on bad classes (non-positive sizes, a layer in two classes) or a
  // budget too small for one slot per class.
  static StatusOr<std::unique_ptr<ExpertSlotPool>> Create(const Options& options);

  ExpertSlotPool(const ExpertSlotPool&) = delete;
  ExpertSlotPool& operator=(const ExpertSlotPool&) = delete;
  ~ExpertSlotPool();

  // Shape of the pool (immutable after Create).
  int32_t ShapeClassCount() const { return static_cast<int32_t>(shapes_.size()); }
  int32_t SlotCount(int32_t shape_class) const { return shapes_[shape_class].n_slots; }
  int64_t SlotBytes(int32_t shape_class) const { return shapes_[shape_class].expert_bytes; }
  // -1 when the layer is in no class.
  int32_t ShapeClassOfLayer(int32_t layer) const;
  // Dense id of a key in [0, KeyCount()): layer * max_experts + expert.
  int64_t KeyId(const ExpertKey& key) const {
    return int64_t{key.layer} * max_experts_ + key.expert;
  }
  int64_t KeyCount() const { return int64_t{n_layers_} * max_experts_; }
  KeySpace Keys() const { return {n_layers_, max_experts_}; }
  std::string_view PolicyName() const;

  // Pins the experts of one batch step. Duplicates in `experts` are ignored. `uses`, empty or one
  // per expert: how many tokens of the step use it, for the eviction policy
  // (EvictionPolicy::SetDemandUses); the round's `deferred_uses` then carries those of the
  // deferred experts. See the file comment for the round protocol. Errors: InvalidArgument
  // (unknown layer or expert, `uses` of another length or under 1; nothing pinned),
  // ResourceExhausted (no expert could be pinned; nothing pinned).
  StatusOr<AcquireRound> Acquire(std::span<const ExpertKey> experts,
                                 std::span<const int32_t> uses = {});

  // Unpins every entry of `round` (each exactly once). `release_fence` is an engine-defined
  // ordering token (e.g. the sequence number of an event recorded after the compute that read the
  // slots); the pool keeps the largest per slot and hands it back as reuse_fence to the next load.
  // FailedPrecondition when an entry is not pinned (nothing is changed then).
  Status Release(const AcquireRound& round, uint64_t release_fence);
  // Unpins one slot (per-expert release for pipelined rounds). For each entry of a round use
  // either this or Release(round), never both: pins are counts, not owned leases, so a double
  // release is caught only when no other batch holds a pin on the same slot.
  Status ReleaseSlot(SlotId slot, uint64_t release_fence);

  // The load into `slot` completed: loading -> ready. FailedPrecondition if it was not loading.
  Status MarkLoaded(SlotId slot);

  // Issues at most `max_loads` prefetch loads for `predicted` (most likely first). Skips experts
  // already resident or loading; uses free slots, then evictable ones picked by the policy, never
  // a slot holding one of `predicted`. Returns the loads to issue (maybe none).
  // InvalidArgument on an unknown key.
  StatusOr<std::vector<PrefetchLoad>> Prefetch(std::span<const ExpertKey> predicted,
                                               int32_t max_loads);

  // Adds time the engine spent waiting on copies.
  void RecordCopyWait(uint64_t wait_ns);

  // Where `key` is resident or loading, if anywhere.
  std::optional<SlotId> Find(const ExpertKey& key) const;
  SlotInfo Inspect(SlotId slot) const;
  ExpertCacheCounters Counters() const;
  // Experts of `layer` resident or loading (Counters().resident_per_layer's entry; 0 for a layer
  // the pool does not hold).
  int32_t ResidentExperts(int32_t layer) const;

 private:
  struct Slot {
    SlotState state = SlotState::kFree;
    ExpertKey key;
    int32_t pins = 0;
    bool prefetched_unused = false;
    uint64_t release_fence = 0;
  };
  struct ClassShape {
    int64_t expert_bytes = 0;
    int32_t n_experts = 0;
    int32_t n_slots = 0;
  };
  struct ClassState {
    std::vector<Slot> slots;          // [n_slots]
    std::vector<int32_t> free_slots;  // stack of kFree slot indices
    std::unique_ptr<EvictionPolicy> policy;
  };

  ExpertSlotPool() = default;

  Status ValidateKey(const ExpertKey& key) const;
  bool IsSlot(SlotId id) const;
  // A free slot, else the policy's evictable victim not holding a key of `protect` (which may be
  // null), evicted; -1 if none. Caller holds mu_.
  int32_t TakeSlot(ClassState& cls, const absl::flat_hash_set<ExpertKey>* protect,
                   std::optional<ExpertKey>* evicted) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void UnpinLocked(SlotId slot, uint64_t release_fence) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Immutable after Create.
  int32_t n_layers_ = 0;
  int32_t max_experts_ = 0;
  std::vector<int32_t> layer_class_;  // [n_layers] shape class or -1
  std::vector<ClassShape> shapes_;    // [n_classes]

  // std::mutex, not absl::Mutex: Debian's prebuilt abseil is not TSan-instrumented, so TSan
  // cannot see absl::Mutex synchronization; pthread mutexes are intercepted.
  mutable std::mutex mu_;
  std::vector<ClassState> classes_ ABSL_GUARDED_BY(mu_);  // [n_classes]
  absl::flat_hash_map<ExpertKey, SlotId> where_ ABSL_GUARDED_BY(mu_);
  ExpertCacheCounters counters_ ABSL_GUARDED_BY(mu_);
};

}  // namespace moe::experts
