// Eviction policies of the GPU expert cache: which resident expert to drop when a slot is needed.
//
// A policy ranks the slots of ONE shape class of an ExpertSlotPool (slot indices 0..n_slots-1).
// The pool tells it what happens to each slot (a load put a key there, a batch used it, the key was
// evicted) and asks it for a victim, passing a predicate that says which slots may be evicted right
// now (resident, ready and not pinned by a batch). Policies never see pins or loading states.
//
// Implementations:
//   kLayerLru - LRU with recency measured per layer, in visits of the expert's own
//           layer (a visit = a run of BeginStep calls for one layer, i.e. one batch step). Victim:
//           the resident expert with the most visits of its layer since its last use; ties go to
//           the layer visited most recently (whose next visit is farthest in a layer-by-layer
//           forward pass). Plain LRU, by contrast, sees the forward pass as a cyclic scan over all
//           layers: once one pass's experts exceed the cache it evicts exactly the experts the next
//           layer needs (hit rate near 0; see benches/expert_cache). O(n_layers) per victim.
//   kLayerLrfu - frequency-aware: LRFU (Lee et al. 2001) with time in visits of the expert's own
//           layer: each use adds 1 to a value that halves every 1/lambda visits; lowest value
//           evicted, ties to the layer visited most recently. O(n_layers + log n) per victim.
//   kLru  - plain least recently used over one global clock. O(1) per event; victim search walks
//           from the cold end past the few pinned slots.
//   kLfu  - least frequently used, with per-expert demand counts that survive eviction ("perfect"
//           LFU) and optional periodic halving (aging); ties go to the least recently used.
//   kLruK - LRU-2 (O'Neil et al., SIGMOD'93): evict the slot whose second most recent demand use is
//           oldest; experts used only once are evicted first. Frequency-aware, scan-resistant.
//   kReuse - the default: learned reuse probability. Estimates, for every expert, the
//           probability that its layer's next visit uses it, from its state (visits of its layer
//           since its last use, and its use rate: a use count decayed with a half-life in visits
//           of its layer, over the largest possible one) through a table learned online over all
//           layers (state -> uses / exposures); evicts the expert whose expected next use is
//           farthest: its layer's latest visit + one pass / probability (so among equally likely
//           experts, the one of the layer visited last). Recency-like on traces with temporal
//           locality, frequency-like on independent (Zipf) routing; at least as good as kLayerLru
//           on every trace of benches/RESULTS.md "Expert cache policies". O(experts per layer)
//           per visit, O(n_layers) per victim (plus a scan of one layer's slots now and then).
//   Belady (offline only, MakeBeladyPolicy): evict the key whose next use is farthest in the
//           future, given an oracle over a recorded trace. The simulator's optimum.
//
// Thread safety: policies are not thread safe. ExpertSlotPool calls them under its own mutex.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "absl/functional/function_ref.h"
#include "moe/common/status.h"

namespace moe::experts {

enum class EvictionKind : uint8_t { kLayerLru, kLayerLrfu, kLru, kLfu, kLruK, kReuse };

// "layer-lru", "layer-lrfu", "lru", "lfu", "lru2", "reuse" (the names accepted on the command
// line, e.g. --expert-eviction).
std::string_view EvictionKindName(EvictionKind kind);
StatusOr<EvictionKind> ParseEvictionKind(std::string_view name);

// The dense expert ids a policy sees: key_id = layer * experts_per_layer + expert.
struct KeySpace {
  int32_t n_layers = 0;
  int32_t experts_per_layer = 0;
  int64_t size() const { return int64_t{n_layers} * experts_per_layer; }
  int32_t LayerOf(int64_t key_id) const { return static_cast<int32_t>(key_id / experts_per_layer); }
};

// Knobs of the built-in policies (ignored by the ones they do not apply to).
struct EvictionOptions {
  // kLfu: every `lfu_decay_period` policy events, all demand counts are halved so that old
  // popularity fades. 0 disables aging.
  int64_t lfu_decay_period = 0;
  // kLayerLrfu: a use's weight halves every 1 / lrfu_lambda visits of its layer (large -> LRU,
  // small -> LFU).
  double lrfu_lambda = 1.0;
  // kReuse: half-life of an expert's use count, in visits of its layer (0 = no decay).
  // NOTES: 256 reaches >= 0.90 of Belady at 49 of the simulator suite's 72 points against 48 for
  // 128, with seeds 1-3 alike (benches/RESULTS.md "Expert cache policies", session 31).
  double reuse_half_life_visits = 256.0;
};

class EvictionPolicy {
 public:
  virtual ~EvictionPolicy() = default;

  virtual std::string_view Name() const = 0;

  // A batch step of `layer` begins (each Acquire call, once per layer it names, before its hits,
  // victims and inserts). Layer-aware policies count visits here; consecutive calls for one layer
  // (the rounds of a step) are one visit.
  virtual void BeginStep(int32_t layer) {}

  // `slot` now holds the expert `key_id` (dense id, see ExpertSlotPool::KeyId). `demand` is true
  // when a batch needs the expert now, false for a prefetch (which must not count as a use).
  virtual void OnInsert(int slot, int64_t key_id, bool demand) = 0;

  // A batch used the expert resident in `slot` (a hit).
  virtual void OnHit(int slot) = 0;
  // How many tokens of the step use the expert of the next OnHit or demand OnInsert, when the
  // caller knows (ExpertSlotPool::Acquire with `uses`): called right before it. Without a call
  // the policy takes 1.
  virtual void SetDemandUses(int32_t uses) {}

  // `slot` no longer holds an expert.
  virtual void OnEvict(int slot) = 0;

  // The slot to evict: the policy's worst resident slot for which `evictable(slot)` is true, or -1
  // when there is none. Does not change the policy's state (the pool calls OnEvict next).
  virtual int PickVictim(absl::FunctionRef<bool(int)> evictable) = 0;
};

// A built-in online policy for a class of `n_slots` slots.
std::unique_ptr<EvictionPolicy> MakeEvictionPolicy(EvictionKind kind, int n_slots,
                                                   const KeySpace& keys,
                                                   const EvictionOptions& options = {});

// Belady's MIN: `next_use(key_id)` returns the position of the key's next use strictly after the
// current position of the replay (any monotone clock), or INT64_MAX if it is never used again.
// The oracle is queried when a key is inserted or hit; the caller must advance its clock so that
// these answers stay right until the key's next hit (true when the clock is the replay position).
std::unique_ptr<EvictionPolicy> MakeBeladyPolicy(int n_slots,
                                                 std::function<int64_t(int64_t key_id)> next_use);

}  // namespace moe::experts
