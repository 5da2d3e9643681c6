// Built-in eviction policies of the expert cache (see include/moe/experts/eviction_policy.h).
#include "moe/experts/eviction_policy.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <set>
#include <tuple>
#include <utility>
#include <vector>

namespace moe::experts {
namespace {

// Least recently used: an intrusive doubly linked list over slot indices, most recent at the head.
class LruPolicy final : public EvictionPolicy {
 public:
  explicit LruPolicy(int n_slots) : prev_(n_slots, -1), next_(n_slots, -1), linked_(n_slots, 0) {}

  std::string_view Name() const override { return "lru"; }
  void OnInsert(int slot, int64_t /*key_id*/, bool /*demand*/) override { MoveToFront(slot); }
  void OnHit(int slot) override { MoveToFront(slot); }
  void OnEvict(int slot) override { Unlink(slot); }

  int PickVictim(absl::FunctionRef<bool(int)> evictable) override {
    for (int slot = tail_; slot != -1; slot = prev_[slot]) {
      if (evictable(slot)) return slot;
    }
    return -1;
  }

 private:
  void Unlink(int slot) {
    if (!linked_[slot]) return;
    if (prev_[slot] != -1)
      next_[prev_[slot]] = next_[slot];
    else
      head_ = next_[slot];
    if (next_[slot] != -1)
      prev_[next_[slot]] = prev_[slot];
    else
      tail_ = prev_[slot];
    prev_[slot] = next_[slot] = -1;
    linked_[slot] = 0;
  }
  void MoveToFront(int slot) {
    Unlink(slot);
    next_[slot] = head_;
    if (head_ != -1) prev_[head_] = slot;
    head_ = slot;
    if (tail_ == -1) tail_ = slot;
    linked_[slot] = 1;
  }

  std::vector<int> prev_, next_;  // [n_slots] neighbours toward the head (prev) and the tail (next)
  std::vector<uint8_t> linked_;   // [n_slots] 1 when the slot is in the list
  int head_ = -1;                 // most recently used
  int tail_ = -1;                 // least recently used
};

// Time in visits of each layer, shared by the layer-aware policies. A visit is a run of demand
// uses of one layer (one batch step, all its rounds); visit_seq orders the layers' latest visits.
class LayerClock {
 public:
  explicit LayerClock(int32_t n_layers) : visits_(n_layers, 0), visit_seq_(n_layers, 0) {}

  // A demand use of `layer`: a new visit unless the previous demand use was of the same layer.
  void Use(int32_t layer) {
    if (layer == current_layer_) return;
    current_layer_ = layer;
    ++visits_[layer];
    visit_seq_[layer] = ++seq_;
  }
  uint64_t visits(int32_t layer) const { return visits_[layer]; }
  uint64_t visit_seq(int32_t layer) const { return visit_seq_[layer]; }

 private:
  std::vector<uint64_t> visits_;     // [n_layers] visits so far
  std::vector<uint64_t> visit_seq_;  // [n_layers] global order of the layer's latest visit
  uint64_t seq_ = 0;
  int32_t current_layer_ = -1;
};

// LRU in visits of each expert's own layer (see kLayerLru in the header). One LRU list per layer;
// the victim is the best of the layers' coldest evictable slots.
class LayerLruPolicy final : public EvictionPolicy {
 public:
  LayerLruPolicy(int n_slots, const KeySpace& keys)
      : keys_(keys),
        prev_(n_slots, -1),
        next_(n_slots, -1),
        slot_layer_(n_slots, -1),
        slot_visit_(n_slots, 0),
        head_(keys.n_layers, -1),
        tail_(keys.n_layers, -1),
        clock_(keys.n_layers) {}

  std::string_view Name() const override { return "layer-lru"; }

  // Visits are counted here only (not per use), so they start before the step's first victim is
  // picked, and a call spanning several layers counts each once.
  void BeginStep(int32_t layer) override { clock_.Use(layer); }

  void OnInsert(int slot, int64_t key_id, bool demand) override {
    const int32_t layer = keys_.LayerOf(key_id);
    // A prefetch counts as used in its layer's latest visit: it is protected until that layer's
    // next visit passes it by.
    slot_layer_[slot] = layer;
    Touch(slot);
  }
  void OnHit(int slot) override { Touch(slot); }
  void OnEvict(int slot) override {
    Unlink(slot);
    slot_layer_[slot] = -1;
  }

  int PickVictim(absl::FunctionRef<bool(int)> evictable) override {
    int best = -1;
    uint64_t best_age = 0, best_seq = 0;
    for (int32_t layer = 0; layer < keys_.n_layers; ++layer) {
      int slot = tail_[layer];
      while (slot != -1 && !evictable(slot)) slot = prev_[slot];
      if (slot == -1) continue;
      const uint64_t age = clock_.visits(layer) - slot_visit_[slot];
      const uint64_t seq = clock_.visit_seq(layer);
      if (best == -1 || age > best_age || (age == best_age && seq > best_seq)) {
        best = slot;
        best_age = age;
        best_seq = seq;
      }
    }
    return best;
  }

 private:
  void Touch(int slot) {
    const int32_t layer = slot_layer_[slot];
    slot_visit_[slot] = clock_.visits(layer);
    Unlink(slot);
    next_[slot] = head_[layer];
    if (head_[layer] != -1) prev_[head_[layer]] = slot;
    head_[layer] = slot;
    if (tail_[layer] == -1) tail_[layer] = slot;
  }
  void Unlink(int slot) {
    const int32_t layer = slot_layer_[slot];
    if (layer < 0) return;
    if (prev_[slot] != -1)
      next_[prev_[slot]] = next_[slot];
    else if (head_[layer] == slot)
      head_[layer] = next_[slot];
    if (next_[slot] != -1)
      prev_[next_[slot]] = prev_[slot];
    else if (tail_[layer] == slot)
      tail_[layer] = prev_[slot];
    prev_[slot] = next_[slot] = -1;
  }

  KeySpace keys_;
  std::vector<int> prev_, next_;      // [n_slots] per-layer list links (-1 = none)
  std::vector<int32_t> slot_layer_;   // [n_slots] layer of the resident key, -1 when empty
  std::vector<uint64_t> slot_visit_;  // [n_slots] visits_[layer] at the slot's last use
  std::vector<int> head_, tail_;      // [n_layers] most and least recently used slot
  LayerClock clock_;
};

// LRFU (Lee et al., IEEE ToC 2001) in visits of each expert's own layer: every demand use adds 1
// to the expert's combined recency-frequency value CRF, which halves every 1/lambda visits of its
// layer. Victim: the evictable slot with the lowest current CRF; ties go to the layer visited most
// recently. Within a layer the order by CRF never changes between uses, so each layer keeps an
// ordered set by log2(CRF at last use) + lambda * (visit of last use).
class LayerLrfuPolicy final : public EvictionPolicy {
 public:
  LayerLrfuPolicy(int n_slots, const KeySpace& keys, double lambda)
      : keys_(keys),
        lambda_(lambda),
        crf_(keys.size(), 0.0),
        crf_visit_(keys.size(), 0),
        slot_key_(n_slots, -1),
        slot_value_(n_slots, 0.0),
        by_value_(keys.n_layers),
        clock_(keys.n_layers) {}

  std::string_view Name() const override { return "layer-lrfu"; }

  void BeginStep(int32_t layer) override { clock_.Use(layer); }

  void OnInsert(int slot, int64_t key_id, bool demand) override {
    slot_key_[slot] = key_id;
    if (demand) {
      Use(key_id);
      Rank(slot, Log2CrfNow(key_id));
    } else {
      // A prefetch is ranked as if used once now, without entering the history.
      Rank(slot, std::log2(1.0 + std::exp2(Log2CrfNow(key_id))));
    }
  }
  void OnHit(int slot) override {
    const int64_t key = slot_key_[slot];
    Use(key);
    Rank(slot, Log2CrfNow(key));
  }
  void OnEvict(int slot) override {
    const int32_t layer = keys_.LayerOf(slot_key_[slot]);
    by_value_[layer].erase({slot_value_[slot], slot});
    slot_key_[slot] = -1;
  }

  int PickVictim(absl::FunctionRef<bool(int)> evictable) override {
    int best = -1;
    double best_score = 0;
    uint64_t best_seq = 0;
    for (int32_t layer = 0; layer < keys_.n_layers; ++layer) {
      for (const auto& [value, slot] : by_value_[layer]) {
        if (!evictable(slot)) continue;
        const double score = value - lambda_ * static_cast<double>(clock_.visits(layer));
        const uint64_t seq = clock_.visit_seq(layer);
        if (best == -1 || score < best_score || (score == best_score && seq > best_seq)) {
          best = slot;
          best_score = score;
          best_seq = seq;
        }
        break;
      }
    }
    return best;
  }

 private:
  // log2 of the key's CRF decayed to its layer's current visit (-inf when never used).
  double Log2CrfNow(int64_t key) const {
    const uint64_t now = clock_.visits(keys_.LayerOf(key));
    return std::log2(crf_[key]) - lambda_ * static_cast<double>(now - crf_visit_[key]);
  }
  void Use(int64_t key) {
    const uint64_t now = clock_.visits(keys_.LayerOf(key));
    crf_[key] = 1.0 + crf_[key] * std::exp2(-lambda_ * static_cast<double>(now - crf_visit_[key]));
    crf_visit_[key] = now;
  }
  // Ranks `slot` by its log2 CRF as of now, stored time-independently.
  void Rank(int slot, double log2_crf_now) {
    const int32_t layer = keys_.LayerOf(slot_key_[slot]);
    by_value_[layer].erase({slot_value_[slot], slot});
    slot_value_[slot] = log2_crf_now + lambda_ * static_cast<double>(clock_.visits(layer));
    by_value_[layer].insert({slot_value_[slot], slot});
  }

  KeySpace keys_;
  double lambda_;
  std::vector<double> crf_;          // [n_keys] CRF at its last use
  std::vector<uint64_t> crf_visit_;  // [n_keys] layer visit of that use
  std::vector<int64_t> slot_key_;    // [n_slots]
  std::vector<double> slot_value_;   // [n_slots] rank value (see class comment)
  std::vector<std::set<std::pair<double, int>>> by_value_;  // [n_layers]
  LayerClock clock_;
};

// Shared bookkeeping of the ordered-set policies: each resident slot has a rank tuple; the victim
// is the evictable slot with the smallest rank.
template <typename Rank>
class RankedSlots {
 public:
  explicit RankedSlots(int n_slots) : rank_(n_slots), present_(n_slots, 0) {}

  void Set(int slot, const Rank& rank) {
    Erase(slot);
    rank_[slot] = rank;
    present_[slot] = 1;
    order_.emplace(rank, slot);
  }
  void Erase(int slot) {
    if (!present_[slot]) return;
    order_.erase({rank_[slot], slot});
    present_[slot] = 0;
  }
  bool Present(int slot) const { return present_[slot] != 0; }
  const Rank& Get(int slot) const { return rank_[slot]; }
  int PickSmallest(absl::FunctionRef<bool(int)> evictable) const {
    for (const auto& [rank, slot] : order_) {
      if (evictable(slot)) return slot;
    }
    return -1;
  }

 private:
  std::vector<Rank> rank_;
  std::vector<uint8_t> present_;
  std::set<std::pair<Rank, int>> order_;
};

// Least frequently used over demand counts per expert that survive eviction; ties -> older use.
class LfuPolicy final : public EvictionPolicy {
 public:
  LfuPolicy(int n_slots, int64_t n_keys, int64_t decay_period)
      : counts_(n_keys, 0), slot_key_(n_slots, -1), ranks_(n_slots), decay_period_(decay_period) {}

  std::string_view Name() const override { return "lfu"; }

  void OnInsert(int slot, int64_t key_id, bool demand) override {
    slot_key_[slot] = key_id;
    if (demand) ++counts_[key_id];
    ranks_.Set(slot, {counts_[key_id], Tick()});
    MaybeDecay();
  }
  void OnHit(int slot) override {
    const int64_t key = slot_key_[slot];
    ++counts_[key];
    ranks_.Set(slot, {counts_[key], Tick()});
    MaybeDecay();
  }
  void OnEvict(int slot) override {
    ranks_.Erase(slot);
    slot_key_[slot] = -1;
  }
  int PickVictim(absl::FunctionRef<bool(int)> evictable) override {
    return ranks_.PickSmallest(evictable);
  }

 private:
  using Rank = std::pair<uint64_t, uint64_t>;  // (demand count, tick of the last event)

  uint64_t Tick() { return ++clock_; }
  // Aging: halve every count, then re-rank the resident slots (O(n_keys + n_slots log n_slots)
  // once per decay period).
  void MaybeDecay() {
    if (decay_period_ <= 0 || clock_ % static_cast<uint64_t>(decay_period_) != 0) return;
    for (uint64_t& count : counts_) count /= 2;
    for (int slot = 0; slot < static_cast<int>(slot_key_.size()); ++slot) {
      if (!ranks_.Present(slot)) continue;
      ranks_.Set(slot, {counts_[slot_key_[slot]], ranks_.Get(slot).second});
    }
  }

  std::vector<uint64_t> counts_;   // [n_keys] demand uses, kept after eviction
  std::vector<int64_t> slot_key_;  // [n_slots] resident key or -1
  RankedSlots<Rank> ranks_;
  int64_t decay_period_;
  uint64_t clock_ = 0;
};

// LRU-2: rank by the tick of the second most recent demand use (0 = used fewer than twice, evicted
// first), then by the most recent event. Histories survive eviction.
class LruKPolicy final : public EvictionPolicy {
 public:
  LruKPolicy(int n_slots, int64_t n_keys)
      : last_(n_keys, 0), second_last_(n_keys, 0), slot_key_(n_slots, -1), ranks_(n_slots) {}

  std::string_view Name() const override { return "lru2"; }

  void OnInsert(int slot, int64_t key_id, bool demand) override {
    slot_key_[slot] = key_id;
    const uint64_t now = ++clock_;
    if (demand) Use(key_id, now);
    // A prefetched key keeps its history; its insertion time only breaks ties.
    ranks_.Set(slot, {second_last_[key_id], now});
  }
  void OnHit(int slot) override {
    const int64_t key = slot_key_[slot];
    const uint64_t now = ++clock_;
    Use(key, now);
    ranks_.Set(slot, {second_last_[key], now});
  }
  void OnEvict(int slot) override {
    ranks_.Erase(slot);
    slot_key_[slot] = -1;
  }
  int PickVictim(absl::FunctionRef<bool(int)> evictable) override {
    return ranks_.PickSmallest(evictable);
  }

 private:
  void Use(int64_t key, uint64_t now) {
    second_last_[key] = last_[key];
    last_[key] = now;
  }

  std::vector<uint64_t> last_, second_last_;  // [n_keys] ticks of the last two demand uses
  std::vector<int64_t> slot_key_;             // [n_slots] resident key or -1
  RankedSlots<std::pair<uint64_t, uint64_t>> ranks_;
  uint64_t clock_ = 0;
};

// Belady's MIN: rank = -(next use), so the farthest next use is the smallest rank.
class BeladyPolicy final : public EvictionPolicy {
 public:
  BeladyPolicy(int n_slots, std::function<int64_t(int64_t)> next_use)
      : next_use_(std::move(next_use)), slot_key_(n_slots, -1), ranks_(n_slots) {}

  std::string_view Name() const override { return "belady"; }

  void OnInsert(int slot, int64_t key_id, bool /*demand*/) override {
    slot_key_[slot] = key_id;
    Rerank(slot);
  }
  void OnHit(int slot) override { Rerank(slot); }
  void OnEvict(int slot) override {
    ranks_.Erase(slot);
    slot_key_[slot] = -1;
  }
  int PickVictim(absl::FunctionRef<bool(int)> evictable) override {
    return ranks_.PickSmallest(evictable);
  }

 private:
  void Rerank(int slot) {
    const int64_t next = next_use_(slot_key_[slot]);
    // Negate so that "never used again" (INT64_MAX) sorts first; ties -> lower slot index.
    ranks_.Set(slot, next == std::numeric_limits<int64_t>::max()
                         ? std::numeric_limits<int64_t>::min()
                         : -next);
  }

  std::function<int64_t(int64_t)> next_use_;
  std::vector<int64_t> slot_key_;
  RankedSlots<int64_t> ranks_;
};

}  // namespace

std::string_view EvictionKindName(EvictionKind kind) {
  switch (kind) {
    case EvictionKind::kLayerLru:
      return "layer-lru";
    case EvictionKind::kLayerLrfu:
      return "layer-lrfu";
    case EvictionKind::kLru:
      return "lru";
    case EvictionKind::kLfu:
      return "lfu";
    case EvictionKind::kLruK:
      return "lru2";
  }
  return "unknown";
}

StatusOr<EvictionKind> ParseEvictionKind(std::string_view name) {
  for (EvictionKind kind : {EvictionKind::kLayerLru, EvictionKind::kLayerLrfu, EvictionKind::kLru,
                            EvictionKind::kLfu, EvictionKind::kLruK}) {
    if (name == EvictionKindName(kind)) return kind;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown eviction policy '", std::string(name),
                   "' (want layer-lru, layer-lrfu, lru, lfu or lru2)"));
}

std::unique_ptr<EvictionPolicy> MakeEvictionPolicy(EvictionKind kind, int n_slots,
                                                   const KeySpace& keys,
                                                   const EvictionOptions& options) {
  const int64_t n_keys = keys.size();
  switch (kind) {
    case EvictionKind::kLayerLru:
      return std::make_unique<LayerLruPolicy>(n_slots, keys);
    case EvictionKind::kLayerLrfu:
      return std::make_unique<LayerLrfuPolicy>(n_slots, keys, options.lrfu_lambda);
    case EvictionKind::kLru:
      return std::make_unique<LruPolicy>(n_slots);
    case EvictionKind::kLfu:
      return std::make_unique<LfuPolicy>(n_slots, n_keys, options.lfu_decay_period);
    case EvictionKind::kLruK:
      return std::make_unique<LruKPolicy>(n_slots, n_keys);
  }
  return nullptr;
}

std::unique_ptr<EvictionPolicy> MakeBeladyPolicy(int n_slots,
                                                 std::function<int64_t(int64_t)> next_use) {
  return std::make_unique<BeladyPolicy>(n_slots, std::move(next_use));
}

}  // namespace moe::experts
