// Offline expert-cache simulator (include/moe/experts/cache_sim.h).
#include "moe/experts/cache_sim.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <list>
#include <memory>
#include <numeric>
#include <random>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "moe/experts/prefetch.h"

namespace moe::experts {
namespace {

// Next-use oracle over the trace for Belady: occurrences of each key by step index, with a cursor
// that only moves forward because the replay position only moves forward.
class NextUseOracle {
 public:
  NextUseOracle(const Trace& trace, const ExpertSlotPool& pool)
      : occurrences_(pool.KeyCount()), cursor_(pool.KeyCount(), 0) {
    for (size_t i = 0; i < trace.steps.size(); ++i) {
      const TraceStep& step = trace.steps[i];
      for (int32_t e : step.experts) {
        occurrences_[pool.KeyId({step.layer, e})].push_back(static_cast<int64_t>(i));
      }
    }
  }
  void set_position(int64_t step) { position_ = step; }
  // First use strictly after the current position.
  int64_t NextUse(int64_t key_id) {
    const std::vector<int64_t>& occ = occurrences_[key_id];
    size_t& c = cursor_[key_id];
    while (c < occ.size() && occ[c] <= position_) ++c;
    return c < occ.size() ? occ[c] : std::numeric_limits<int64_t>::max();
  }

 private:
  std::vector<std::vector<int64_t>> occurrences_;  // [n_keys] ascending step indices
  std::vector<size_t> cursor_;                     // [n_keys]
  int64_t position_ = 0;
};

// The noisy-oracle stand-in for gate lookahead (see SimPrefetch).
class LookaheadModel {
 public:
  LookaheadModel(const SimPrefetch& options, int32_t n_experts)
      : options_(options), n_experts_(n_experts), engine_(options.seed) {}

  std::vector<int32_t> Predict(std::span<const int32_t> actual) {
    std::vector<int32_t> predicted;
    for (int32_t e : actual) {
      if (Uniform() < options_.recall) predicted.push_back(e);
    }
    // Expected false positives for the target precision: TP * (1 - p) / p, rounded at random.
    const double want = predicted.size() * (1.0 - options_.precision) / options_.precision;
    int32_t wrong = static_cast<int32_t>(want) + (Uniform() < want - std::floor(want) ? 1 : 0);
    const absl::flat_hash_set<int32_t> used(actual.begin(), actual.end());
    wrong = std::min<int32_t>(wrong, n_experts_ - static_cast<int32_t>(used.size()));
    absl::flat_hash_set<int32_t> chosen(predicted.begin(), predicted.end());
    while (wrong > 0) {
      const int32_t e = static_cast<int32_t>(engine_() % static_cast<uint64_t>(n_experts_));
      if (used.contains(e) || !chosen.insert(e).second) continue;
      predicted.push_back(e);
      --wrong;
    }
    return predicted;
  }

 private:
  double Uniform() { return static_cast<double>(engine_() >> 11) * 0x1.0p-53; }

  SimPrefetch options_;
  int32_t n_experts_;
  std::mt19937_64 engine_;
};

// static-lru (see the header): slots holding a static expert are victims only when no other
// slot is evictable; layer-LRU orders both groups.
class StaticPlusLruPolicy final : public EvictionPolicy {
 public:
  StaticPlusLruPolicy(int n_slots, const KeySpace& keys, std::vector<uint8_t> is_static)
      : inner_(MakeEvictionPolicy(EvictionKind::kLayerLru, n_slots, keys)),
        is_static_(std::move(is_static)),
        slot_static_(n_slots, 0) {}

  std::string_view Name() const override { return "static-lru"; }
  void BeginStep(int32_t layer) override { inner_->BeginStep(layer); }
  void OnInsert(int slot, int64_t key_id, bool demand) override {
    slot_static_[slot] = is_static_[key_id];
    inner_->OnInsert(slot, key_id, demand);
  }
  void OnHit(int slot) override { inner_->OnHit(slot); }
  void OnEvict(int slot) override {
    slot_static_[slot] = 0;
    inner_->OnEvict(slot);
  }
  int PickVictim(absl::FunctionRef<bool(int)> evictable) override {
    const int dynamic =
        inner_->PickVictim([&](int slot) { return !slot_static_[slot] && evictable(slot); });
    return dynamic >= 0 ? dynamic : inner_->PickVictim(evictable);
  }

 private:
  std::unique_ptr<EvictionPolicy> inner_;
  std::vector<uint8_t> is_static_;    // [n_keys]
  std::vector<uint8_t> slot_static_;  // [n_slots]
};

// ARC (Megiddo and Modha, FAST'03) over the pool's slots: T1 holds experts used once since they
// entered the cache, T2 those used again; ghost lists B1 and B2 remember keys recently evicted
// from each; a miss on a ghost moves the target size p of T1 toward the list that would have
// kept it. Victim: the least recently used evictable slot of T1 when |T1| >= max(1, p), else of
// T2 (the other list when the chosen one has no evictable slot). A prefetch enters T1 and adapts
// nothing. Global recency, like LRU (no notion of layers).
class ArcPolicy final : public EvictionPolicy {
 public:
  explicit ArcPolicy(int n_slots) : capacity_(n_slots), slot_key_(n_slots, -1), where_(n_slots) {}

  std::string_view Name() const override { return "arc"; }

  void OnInsert(int slot, int64_t key_id, bool demand) override {
    slot_key_[slot] = key_id;
    const double b1 = static_cast<double>(ghost_[0].size());
    const double b2 = static_cast<double>(ghost_[1].size());
    int list = 0;
    if (auto it = ghost_where_.find(key_id); it != ghost_where_.end()) {
      const int ghost = it->second.first;
      if (demand) {
        p_ = ghost == 0 ? std::min<double>(capacity_, p_ + std::max(b2 / b1, 1.0))
                        : std::max(0.0, p_ - std::max(b1 / b2, 1.0));
        list = 1;
      }
      ghost_[ghost].erase(it->second.second);
      ghost_where_.erase(it);
    }
    resident_[list].push_front(slot);
    where_[slot] = {list, resident_[list].begin()};
  }
  void OnHit(int slot) override {
    resident_[where_[slot].first].erase(where_[slot].second);
    resident_[1].push_front(slot);
    where_[slot] = {1, resident_[1].begin()};
  }
  void OnEvict(int slot) override {
    const int list = where_[slot].first;
    resident_[list].erase(where_[slot].second);
    ghost_[list].push_front(slot_key_[slot]);
    ghost_where_[slot_key_[slot]] = {list, ghost_[list].begin()};
    slot_key_[slot] = -1;
    // |T1| + |B1| <= c and |T1| + |T2| + |B1| + |B2| <= 2c.
    if (resident_[0].size() + ghost_[0].size() > static_cast<size_t>(capacity_)) DropGhost(0);
    if (resident_[0].size() + resident_[1].size() + ghost_[0].size() + ghost_[1].size() >
        2 * static_cast<size_t>(capacity_)) {
      DropGhost(ghost_[1].empty() ? 0 : 1);
    }
  }
  int PickVictim(absl::FunctionRef<bool(int)> evictable) override {
    const int first = static_cast<double>(resident_[0].size()) >= std::max(1.0, p_) ? 0 : 1;
    for (int list : {first, 1 - first}) {
      for (auto it = resident_[list].rbegin(); it != resident_[list].rend(); ++it) {
        if (evictable(*it)) return *it;
      }
    }
    return -1;
  }

 private:
  void DropGhost(int list) {
    if (ghost_[list].empty()) return;
    ghost_where_.erase(ghost_[list].back());
    ghost_[list].pop_back();
  }

  int capacity_;
  double p_ = 0;                                                 // target size of T1
  std::vector<int64_t> slot_key_;                                // [n_slots]
  std::list<int> resident_[2];                                   // T1, T2: slots, most recent first
  std::vector<std::pair<int, std::list<int>::iterator>> where_;  // [n_slots] list and position
  std::list<int64_t> ghost_[2];                                  // B1, B2: keys, most recent first
  absl::flat_hash_map<int64_t, std::pair<int, std::list<int64_t>::iterator>> ghost_where_;
};

// Dense ids (layer * n_experts + expert) of the `n` most used experts, ties to the lower id.
std::vector<int64_t> MostUsed(const std::vector<int64_t>& counts, int64_t n) {
  std::vector<int64_t> ids(counts.size());
  std::iota(ids.begin(), ids.end(), 0);
  n = std::clamp<int64_t>(n, 0, static_cast<int64_t>(ids.size()));
  std::partial_sort(ids.begin(), ids.begin() + n, ids.end(), [&](int64_t a, int64_t b) {
    return counts[a] != counts[b] ? counts[a] > counts[b] : a < b;
  });
  ids.resize(n);
  return ids;
}

// kOracle: reuse's rank with the true probability of use at the layer's next step. `now` is the
// replay position (the current step's batch and layer), set by SimulateTrace before each step.
struct ReplayPosition {
  int64_t batch = 0;
  int32_t layer = 0;
};

class ProbabilityOraclePolicy final : public EvictionPolicy {
 public:
  ProbabilityOraclePolicy(int n_slots, const KeySpace& keys, const ReplayPosition* now,
                          std::function<double(int64_t, int64_t)> use_probability)
      : keys_(keys),
        now_(now),
        use_probability_(std::move(use_probability)),
        slot_key_(n_slots, -1) {}

  std::string_view Name() const override { return "oracle"; }
  void OnInsert(int slot, int64_t key_id, bool /*demand*/) override { slot_key_[slot] = key_id; }
  void OnHit(int /*slot*/) override {}
  void OnEvict(int slot) override { slot_key_[slot] = -1; }

  // O(n_slots) per victim: a diagnostic, not the engine's policy.
  int PickVictim(absl::FunctionRef<bool(int)> evictable) override {
    const double pass = keys_.n_layers;
    int victim = -1;
    double farthest = 0.0;
    for (int slot = 0; slot < static_cast<int>(slot_key_.size()); ++slot) {
      const int64_t key = slot_key_[slot];
      if (key < 0 || !evictable(slot)) continue;
      const int32_t layer = keys_.LayerOf(key);
      // The layer's next step: later in this batch, else in the next one.
      const int64_t batch = layer > now_->layer ? now_->batch : now_->batch + 1;
      const double p = std::max(use_probability_(batch, key), 1e-9);
      const double next_use = static_cast<double>(batch) * pass + layer + pass * (1.0 / p - 1.0);
      if (victim < 0 || next_use > farthest) {
        victim = slot;
        farthest = next_use;
      }
    }
    return victim;
  }

 private:
  KeySpace keys_;
  const ReplayPosition* now_;
  std::function<double(int64_t, int64_t)> use_probability_;
  std::vector<int64_t> slot_key_;  // [n_slots] resident key or -1
};

}  // namespace

std::vector<int64_t> ExpertUseCounts(const Trace& trace) {
  std::vector<int64_t> counts(static_cast<size_t>(trace.shape.n_layers) * trace.shape.n_experts, 0);
  for (const TraceStep& step : trace.steps) {
    for (int32_t e : step.experts) ++counts[int64_t{step.layer} * trace.shape.n_experts + e];
  }
  return counts;
}

double StaticOptimalHitRate(const Trace& trace, int32_t n_slots) {
  const int64_t accesses = trace.Accesses();
  if (accesses == 0) return 0.0;
  const std::vector<int64_t> counts = ExpertUseCounts(trace);
  int64_t hits = 0;
  for (int64_t id : MostUsed(counts, n_slots)) hits += counts[id];
  return static_cast<double>(hits) / static_cast<double>(accesses);
}

ShapeClass UnitShapeClass(const TraceShape& shape) {
  ShapeClass cls;
  cls.expert_bytes = 1;
  cls.n_experts = shape.n_experts;
  cls.layers.resize(shape.n_layers);
  std::iota(cls.layers.begin(), cls.layers.end(), 0);
  return cls;
}

std::vector<ExpertKey> StepKeys(const TraceStep& step) {
  std::vector<ExpertKey> keys;
  keys.reserve(step.experts.size());
  for (int32_t e : step.experts) keys.push_back({step.layer, e});
  return keys;
}

std::string_view SimPolicyName(SimPolicy policy) {
  switch (policy) {
    case SimPolicy::kLayerLru:
      return "layer-lru";
    case SimPolicy::kLayerLrfu:
      return "layer-lrfu";
    case SimPolicy::kLru:
      return "lru";
    case SimPolicy::kLfu:
      return "lfu";
    case SimPolicy::kLruK:
      return "lru2";
    case SimPolicy::kBelady:
      return "belady";
    case SimPolicy::kReuse:
      return "reuse";
    case SimPolicy::kStaticLru:
      return "static-lru";
    case SimPolicy::kArc:
      return "arc";
    case SimPolicy::kOracle:
      return "oracle";
  }
  return "unknown";
}

StatusOr<SimPolicy> ParseSimPolicy(std::string_view name) {
  for (SimPolicy p : {SimPolicy::kLayerLru, SimPolicy::kLayerLrfu, SimPolicy::kLru, SimPolicy::kLfu,
                      SimPolicy::kLruK, SimPolicy::kBelady, SimPolicy::kReuse,
                      SimPolicy::kStaticLru, SimPolicy::kArc, SimPolicy::kOracle}) {
    if (name == SimPolicyName(p)) return p;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown simulator policy '", std::string(name),
      "' (want layer-lru, layer-lrfu, lru, lfu, lru2, reuse, static-lru, arc, belady or oracle)"));
}

int32_t SlotsForFraction(const TraceShape& shape, double fraction) {
  const double total = static_cast<double>(shape.n_layers) * shape.n_experts;
  return std::max<int32_t>(1, static_cast<int32_t>(std::llround(total * fraction)));
}

StatusOr<SimResult> SimulateTrace(const Trace& trace, const SimOptions& options) {
  MOE_RETURN_IF_ERROR(trace.Validate());
  const SimPrefetch& pf = options.prefetch;
  if (options.n_slots <= 0 || pf.recall < 0 || pf.recall > 1 || pf.precision <= 0 ||
      pf.precision > 1 || options.count_from_step < 0 ||
      options.count_from_step > static_cast<int64_t>(trace.steps.size())) {
    return absl::InvalidArgumentError(
        "simulator: n_slots must be positive, recall in [0, 1], "
        "precision in (0, 1], count_from_step in [0, trace steps]");
  }
  if (options.policy == SimPolicy::kOracle && !options.use_probability) {
    return absl::InvalidArgumentError("simulator: the oracle policy needs use_probability");
  }
  ExpertSlotPool::Options pool_options;
  pool_options.budget_bytes = options.n_slots;
  pool_options.shape_classes = {UnitShapeClass(trace.shape)};
  pool_options.eviction_options = options.eviction_options;
  // Belady's oracle needs the pool's key ids, so it is built after the pool, which builds its
  // policy through this factory: the factory captures a pointer filled in just after.
  NextUseOracle* oracle_ptr = nullptr;
  std::unique_ptr<NextUseOracle> oracle;
  ReplayPosition now;
  switch (options.policy) {
    case SimPolicy::kLayerLru:
      pool_options.eviction = EvictionKind::kLayerLru;
      break;
    case SimPolicy::kLayerLrfu:
      pool_options.eviction = EvictionKind::kLayerLrfu;
      break;
    case SimPolicy::kLru:
      pool_options.eviction = EvictionKind::kLru;
      break;
    case SimPolicy::kLfu:
      pool_options.eviction = EvictionKind::kLfu;
      break;
    case SimPolicy::kLruK:
      pool_options.eviction = EvictionKind::kLruK;
      break;
    case SimPolicy::kReuse:
      pool_options.eviction = EvictionKind::kReuse;
      break;
    case SimPolicy::kArc:
      pool_options.policy_factory = [](int32_t, int32_t n_slots, const KeySpace&) {
        return std::make_unique<ArcPolicy>(n_slots);
      };
      break;
    case SimPolicy::kStaticLru: {
      // The static set: the most used experts, leaving room for the largest step's misses.
      int64_t largest_step = 0;
      for (const TraceStep& step : trace.steps) {
        largest_step = std::max<int64_t>(largest_step, static_cast<int64_t>(step.experts.size()));
      }
      // Dense ids here and in the pool are both layer * n_experts + expert (one unit class).
      const std::vector<int64_t> counts = ExpertUseCounts(trace);
      std::vector<uint8_t> is_static(counts.size(), 0);
      for (int64_t id : MostUsed(counts, options.n_slots - largest_step)) {
        is_static[id] = 1;
      }
      pool_options.policy_factory = [is_static](int32_t, int32_t n_slots, const KeySpace& keys) {
        return std::make_unique<StaticPlusLruPolicy>(n_slots, keys, is_static);
      };
      break;
    }
    case SimPolicy::kOracle:
      pool_options.policy_factory = [&now, &options](int32_t, int32_t n_slots,
                                                     const KeySpace& keys) {
        return std::make_unique<ProbabilityOraclePolicy>(n_slots, keys, &now,
                                                         options.use_probability);
      };
      break;
    case SimPolicy::kBelady:
      pool_options.policy_factory = [&oracle_ptr](int32_t, int32_t n_slots, const KeySpace&) {
        return MakeBeladyPolicy(n_slots,
                                [&oracle_ptr](int64_t key) { return oracle_ptr->NextUse(key); });
      };
      break;
  }
  MOE_ASSIGN_OR_RETURN(std::unique_ptr<ExpertSlotPool> pool, ExpertSlotPool::Create(pool_options));
  if (options.policy == SimPolicy::kBelady) {
    oracle = std::make_unique<NextUseOracle>(trace, *pool);
    oracle_ptr = oracle.get();
  }

  LookaheadModel lookahead(pf, trace.shape.n_experts);
  PredictionAccuracy accuracy;
  ExpertCacheCounters uncounted;  // the counters before step count_from_step
  for (size_t i = 0; i < trace.steps.size(); ++i) {
    if (oracle_ptr != nullptr) oracle_ptr->set_position(static_cast<int64_t>(i));
    const TraceStep& step = trace.steps[i];
    now = {step.batch, step.layer};
    std::vector<ExpertKey> pending = StepKeys(step);
    std::vector<int32_t> pending_uses = options.step_uses ? step.uses : std::vector<int32_t>{};
    while (!pending.empty()) {
      MOE_ASSIGN_OR_RETURN(AcquireRound round, pool->Acquire(pending, pending_uses));
      for (const RoundEntry& entry : round.entries) {
        if (entry.source == SlotSource::kLoad) MOE_RETURN_IF_ERROR(pool->MarkLoaded(entry.slot));
      }
      // Gate lookahead for the same batch's next layer, while this step's experts are pinned.
      const bool last_round = round.deferred.empty();
      if (pf.recall > 0 && last_round && i + 1 < trace.steps.size() &&
          trace.steps[i + 1].batch == step.batch) {
        const TraceStep& next = trace.steps[i + 1];
        const std::vector<int32_t> predicted = lookahead.Predict(next.experts);
        accuracy.Record(predicted, next.experts);
        std::vector<ExpertKey> keys;
        for (int32_t e : predicted) keys.push_back({next.layer, e});
        MOE_ASSIGN_OR_RETURN(std::vector<PrefetchLoad> loads,
                             pool->Prefetch(keys, static_cast<int32_t>(keys.size())));
        for (const PrefetchLoad& load : loads) MOE_RETURN_IF_ERROR(pool->MarkLoaded(load.slot));
      }
      MOE_RETURN_IF_ERROR(pool->Release(round, /*release_fence=*/i + 1));
      pending = std::move(round.deferred);
      pending_uses = std::move(round.deferred_uses);
    }
    if (static_cast<int64_t>(i) + 1 == options.count_from_step) {
      uncounted = pool->Counters();
      accuracy = PredictionAccuracy();
    }
  }
  SimResult result;
  result.policy = options.policy;
  result.n_slots = options.n_slots;
  result.counters = pool->Counters();
  if (options.count_from_step > 0) result.counters = CountersDelta(result.counters, uncounted);
  result.prediction_precision = accuracy.Precision();
  result.prediction_recall = accuracy.Recall();
  return result;
}

}  // namespace moe::experts
