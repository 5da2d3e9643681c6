// Offline expert-cache simulator: replays a routing trace through an ExpertSlotPool.
//
// The replay drives the same ExpertSlotPool the engine uses (one shape class, one byte per expert,
// so the budget is a slot count) with the same round protocol: Acquire the step's experts, mark
// the loads complete, Release, repeat for deferred experts. Loads complete instantly: the result
// counts hits, misses and evictions, not time. Policies: the online ones (layer-LRU, layer-LRFU,
// LRU, LFU, LRU-2, reuse), Belady's MIN (evict the expert whose next use is farthest; it knows the
// whole trace) and static-lru, an offline-profiled hybrid: the experts most often used in the
// whole trace, as many as fit besides room for the largest step, are never evicted while any
// other expert can be; layer-LRU ranks the rest. And arc (ARC, Megiddo and Modha 2003, global
// recency), simulator-only. And oracle, a probability oracle (not an online policy): reuse's rank
// (the expert whose expected next use is farthest: its layer's next step + one pass x (1/p - 1))
// with p the true probability that that step uses the expert, given the trace generator's hidden
// state (SimOptions::use_probability); what reuse could reach if its estimates were exact.
//
// StaticOptimalHitRate: the hit rate of the best fixed set of n_slots experts in hindsight (the
// most used ones; other experts bypass the cache). On traces whose steps are independent draws
// (IRM) it bounds every online demand-paging policy (no prefetch) from above: an expert hit at
// its layer's step must have been resident since its layer's previous step (a layer's experts
// are loaded only at its own steps), so all the hits of one forward pass were resident together
// at its start, in a set chosen without knowledge of that pass; its expected hits are at most
// those of the n_slots experts most likely to be used, whose sum the hindsight optimum
// over-estimates.
//
// Optional prefetch model (gate lookahead): while a batch's step at one layer is pinned, the
// predictor names the experts of the batch's next step, each really used one with probability
// `recall`, plus unused ones so that the expected precision is `precision`; the pool prefetches
// them (instant loads). Hits then include prefetched experts; bytes_copied shows the extra cost.
#pragma once

#include <cstdint>
#include <functional>
#include <string_view>
#include <vector>

#include "moe/common/status.h"
#include "moe/experts/eviction_policy.h"
#include "moe/experts/slot_pool.h"
#include "moe/experts/trace.h"

namespace moe::experts {

enum class SimPolicy : uint8_t {
  kLayerLru,
  kLayerLrfu,
  kLru,
  kLfu,
  kLruK,
  kBelady,
  kReuse,
  kStaticLru,
  kArc,
  kOracle,
};
// layer-lru, layer-lrfu, lru, lfu, lru2, belady, reuse, static-lru, arc, oracle
std::string_view SimPolicyName(SimPolicy policy);
StatusOr<SimPolicy> ParseSimPolicy(std::string_view name);

struct SimPrefetch {
  double recall = 0.0;     // 0 disables prefetch; in [0, 1]
  double precision = 1.0;  // in (0, 1]
  uint64_t seed = 1;
};

struct SimOptions {
  SimPolicy policy = SimPolicy::kLayerLru;
  int32_t n_slots = 0;  // cache capacity in experts (all layers together)
  EvictionOptions eviction_options;
  SimPrefetch prefetch;
  // Give the pool the trace's per-expert token counts (TraceStep::uses, when it has them), as the
  // engine does; false replays the expert sets alone.
  bool step_uses = true;
  // Count only from this trace step on (0: all): the counters are those of steps
  // count_from_step.. after the earlier ones have warmed the cache (e.g. a benchmark's timed
  // steps after its warm-up). In [0, trace steps].
  int64_t count_from_step = 0;
  // kOracle (required there): P(the step of batch `batch` at the layer of `key_id` uses that
  // expert), given what is known before it (expert_cache_sim: the synthetic generator's state
  // before the batch); key_id = layer * n_experts + expert, batch as in TraceStep::batch. Asked
  // for the current batch and the next one.
  std::function<double(int64_t batch, int64_t key_id)> use_probability;
};

struct SimResult {
  SimPolicy policy = SimPolicy::kLayerLru;
  int32_t n_slots = 0;
  ExpertCacheCounters counters;
  // Of the prefetch predictor (zero without prefetch).
  double prediction_precision = 0.0;
  double prediction_recall = 0.0;
};

// One shape class of one-byte experts over every layer of `shape`: a budget in bytes is then a
// slot count. The simulator's pool.
ShapeClass UnitShapeClass(const TraceShape& shape);

// The step's experts as keys of its layer.
std::vector<ExpertKey> StepKeys(const TraceStep& step);

// Slots for `fraction` of all experts of the trace's shape, at least 1.
int32_t SlotsForFraction(const TraceShape& shape, double fraction);

// InvalidArgument on an invalid trace or options.
StatusOr<SimResult> SimulateTrace(const Trace& trace, const SimOptions& options);

// The hindsight-best static hit rate (see the file comment); 0 for an empty trace.
double StaticOptimalHitRate(const Trace& trace, int32_t n_slots);

// Uses of every expert over the trace, by dense id layer * n_experts + expert.
std::vector<int64_t> ExpertUseCounts(const Trace& trace);

}  // namespace moe::experts
