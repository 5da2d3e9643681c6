// Built-in eviction policies of the expert cache (see include/moe/experts/eviction_policy.h).
#include "moe/experts/eviction_policy.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
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

// Time in visits of each layer, shared by the layer-aware policies. A visit is a run of demand uses
// of one layer (one batch step, all its rounds); visit_seq orders the layers' latest visits.
class LayerClock {
 public:
  explicit LayerClock(int32_t n_layers) : visits_(n_layers, 0), visit_seq_(n_layers, 0) {}

  // A demand use of `layer`: a new visit unless the previous demand use was of the same layer.
  // Returns true when it started a new visit.
  bool Use(int32_t layer) {
    if (layer == current_layer_) return false;
    current_layer_ = layer;
    ++visits_[layer];
    visit_seq_[layer] = ++seq_;
    return true;
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

// Reuse (kReuse): learned probability of use at the layer's next visit.
//
// 1. State of every expert (resident or not), kept across evictions: the visit of its layer at
//    its last demand use, and its use rate as of then (its use count decayed with a half-life of
//    `half_life` visits of its layer, over the count of an expert used at every visit).
// 2. A table learned online over all layers: cell (age bucket, rate bucket, uses bucket) -> uses /
//    exposures (the uses bucket: how many tokens used it at its last use, when the pool is told:
//    EvictionPolicy::SetDemandUses; without that every use counts one token),
//    where an expert of layer L is "exposed" once per visit of L in the cell of its state at that
//    visit (age = visits of L since its last use), and "used" when the visit demands it.
//    uses / exposures estimates p = P(demanded at the next visit of its layer | its state).
// 3. Victim: the evictable slot whose expected next use is farthest, in visits of any layer: its
//    layer's latest visit + pass length / p (the next visit comes one pass later, and uses it
//    after about 1/p passes). Among equal p that is the layer visited most recently; exact ties go
//    to the older touch, then the lower slot.
// NOTES: estimates and pass length are frozen between refreshes (every kRefreshVisits visits), so
// a slot's rank changes only when its layer is visited or the slot is used. Each layer caches its
// smallest ranks (kWorstCached, sorted), dropped at each visit of the layer and refilled by a scan
// when needed: a victim costs O(n_layers). Cells forget (counts halve) after kCellWindow
// exposures, so the table follows a drifting load.
constexpr int kExactAges = 8;                 // ages 1..8 have a bucket each
constexpr int kAgeBuckets = 26;               // then two per octave, the last one open-ended
constexpr int kNeverRow = kAgeBuckets;        // row of experts never used
constexpr int kFreqBuckets = 48;              // 0 = never used, then four per octave from rate 1
constexpr int kUseBuckets = 4;                // tokens at the last use: 1, 2, 3-4, 5+
constexpr int kRefreshVisits = 256;           // visits between table refreshes
constexpr double kCellWindow = 65536.0;       // exposures after which a cell's counts halve
constexpr double kPriorWeight = 1.0;          // pseudo-exposures of the prior
constexpr double kCycleAveraging = 1.0 / 64;  // weight of a new gap in the pass length
constexpr double kMinEstimate = 1e-6;

int AgeBucket(uint64_t age) {
  if (age <= kExactAges) return static_cast<int>(std::max<uint64_t>(age, 1)) - 1;
  const int octave = 63 - __builtin_clzll(age);  // >= 3
  const int half = static_cast<int>((age >> (octave - 1)) & 1);
  return std::min(kExactAges + 2 * (octave - 3) + half, kAgeBuckets - 1);
}

// Bucket of a use rate in (0, 1]: 1 for rates in (2^-0.25, 1], then four per octave down;
// 0 = never used.
int RateBucket(double rate) {
  if (rate <= 0) return 0;
  const int b = 1 + static_cast<int>(std::floor(-4.0 * std::log2(std::min(rate, 1.0))));
  return std::min(b, kFreqBuckets - 1);
}

int Cell(int age_bucket, int freq_bucket, int use_bucket) {
  return (age_bucket * kFreqBuckets + freq_bucket) * kUseBuckets + use_bucket;
}
constexpr int kCells = (kAgeBuckets + 1) * kFreqBuckets * kUseBuckets;

int UseBucket(int32_t uses) { return uses <= 1 ? 0 : uses == 2 ? 1 : uses <= 4 ? 2 : 3; }

// Before any data: LRU-like (younger first), frequency breaking ties.
double Prior(int age_bucket, int freq_bucket) {
  if (age_bucket == kNeverRow) return 0.0;
  return 1.0 / (2.0 + age_bucket) + 1e-3 * (kFreqBuckets - freq_bucket);
}

class ReusePolicy final : public EvictionPolicy {
 public:
  ReusePolicy(int n_slots, const KeySpace& keys, double half_life)
      : keys_(keys),
        cycle_(std::max(1, keys.n_layers)),
        cycle_estimate_(cycle_),
        decay_per_visit_(half_life > 0 ? 1.0 / half_life : 0.0),
        clock_(keys.n_layers),
        last_use_(keys.size(), 0),
        freq_(keys.size(), 0.0),
        key_rate_bucket_(keys.size(), 0),
        key_use_bucket_(keys.size(), 0),
        uses_(kCells, 0.0),
        exposures_(kCells, 0.0),
        estimate_(kCells, 0.0),
        slot_key_(n_slots, -1),
        slot_touch_(n_slots, 0),
        slot_freq_bucket_(n_slots, 0),
        slot_use_bucket_(n_slots, 0),
        slot_pos_(n_slots, -1),
        layer_slots_(keys.n_layers),
        worst_(keys.n_layers) {
    RefreshEstimates();
  }

  std::string_view Name() const override { return "reuse"; }

  void BeginStep(int32_t layer) override {
    const uint64_t previous_seq = clock_.visit_seq(layer);
    if (!clock_.Use(layer)) return;
    if (previous_seq > 0) {
      // The pass length, in visits of any layer, between two visits of one layer.
      const double gap = static_cast<double>(clock_.visit_seq(layer) - previous_seq);
      cycle_estimate_ += kCycleAveraging * (gap - cycle_estimate_);
    }
    // Exposures: every expert of the layer, in the cell of its state at this visit.
    const uint64_t now = clock_.visits(layer);
    const int64_t first = int64_t{layer} * keys_.experts_per_layer;
    for (int64_t key = first; key < first + keys_.experts_per_layer; ++key) {
      const int cell = StateCell(key, now);
      if ((exposures_[cell] += 1.0) >= kCellWindow) {
        exposures_[cell] *= 0.5;
        uses_[cell] *= 0.5;
      }
    }
    worst_[layer].clear();  // every rank of the layer moved
    if (++visits_since_refresh_ >= kRefreshVisits) {
      visits_since_refresh_ = 0;
      RefreshEstimates();
      cycle_ = cycle_estimate_;
      for (auto& worst : worst_) worst.clear();
    }
  }

  void OnInsert(int slot, int64_t key_id, bool demand) override {
    const int32_t layer = keys_.LayerOf(key_id);
    slot_key_[slot] = key_id;
    slot_pos_[slot] = static_cast<int>(layer_slots_[layer].size());
    layer_slots_[layer].push_back(slot);
    if (demand) {
      Use(key_id);
      slot_freq_bucket_[slot] = key_rate_bucket_[key_id];
      slot_use_bucket_[slot] = key_use_bucket_[key_id];
    } else {
      slot_use_bucket_[slot] = 0;
      // A prefetch is ranked as if used once now (its layer's next visit is expected to use it),
      // without entering the history.
      slot_freq_bucket_[slot] = freq_[key_id] > 0
                                    ? key_rate_bucket_[key_id]
                                    : RateBucket(1.0 / MaxDecayedUses(clock_.visits(layer)));
    }
    slot_touch_[slot] = clock_.visits(layer);
    Reranked(layer, slot);
  }

  void OnHit(int slot) override {
    const int64_t key = slot_key_[slot];
    const int32_t layer = keys_.LayerOf(key);
    Unlist(layer, slot);
    Use(key);
    slot_freq_bucket_[slot] = key_rate_bucket_[key];
    slot_use_bucket_[slot] = key_use_bucket_[key];
    slot_touch_[slot] = clock_.visits(layer);
    Reranked(layer, slot);
  }

  void OnEvict(int slot) override {
    if (slot_key_[slot] < 0) return;
    const int32_t layer = keys_.LayerOf(slot_key_[slot]);
    Unlist(layer, slot);
    std::vector<int>& list = layer_slots_[layer];
    const int pos = slot_pos_[slot];
    list[pos] = list.back();
    slot_pos_[list[pos]] = pos;
    list.pop_back();
    slot_pos_[slot] = -1;
    slot_key_[slot] = -1;
  }

  int PickVictim(absl::FunctionRef<bool(int)> evictable) override {
    bool found = false;
    Rank best{};
    for (int32_t layer = 0; layer < keys_.n_layers; ++layer) {
      if (layer_slots_[layer].empty()) continue;
      if (worst_[layer].empty()) FillWorst(layer);
      std::optional<Rank> candidate;
      for (const Rank& rank : worst_[layer]) {
        if (evictable(std::get<2>(rank))) {
          candidate = rank;
          break;
        }
      }
      if (!candidate) {  // all the cached ones are pinned: scan the layer
        for (int slot : layer_slots_[layer]) {
          if (!evictable(slot)) continue;
          const Rank rank = RankOf(layer, slot);
          if (!candidate || rank < *candidate) candidate = rank;
        }
      }
      if (candidate && (!found || *candidate < best)) {
        best = *candidate;
        found = true;
      }
    }
    return found ? std::get<2>(best) : -1;
  }

 private:
  // (-expected next use, touch visit, slot): smallest = first victim.
  using Rank = std::tuple<double, uint64_t, int>;
  // Per layer, the kWorstCached smallest ranks are kept sorted (fewer after removals; empty =
  // unknown, refilled by a scan of the layer's slots).
  static constexpr size_t kWorstCached = 16;

  void SetDemandUses(int32_t uses) override { pending_uses_ = uses; }

  // Table cell of `key`'s state at visit `now` of its layer.
  int StateCell(int64_t key, uint64_t now) const {
    if (freq_[key] <= 0) return Cell(kNeverRow, 0, 0);
    return Cell(AgeBucket(now - last_use_[key]), key_rate_bucket_[key], key_use_bucket_[key]);
  }

  // The decayed use count of an expert used at every one of `visits` visits.
  double MaxDecayedUses(uint64_t visits) const {
    if (visits == 0) return 1.0;
    if (decay_per_visit_ <= 0) return static_cast<double>(visits);
    return (1.0 - std::exp2(-decay_per_visit_ * static_cast<double>(visits))) /
           (1.0 - std::exp2(-decay_per_visit_));
  }

  // A demand use in the current visit of the key's layer (counted once per visit). The key's
  // rate bucket: its decayed count over the largest possible one (so that a key of a young layer
  // compares with an old one's).
  void Use(int64_t key) {
    const int use_bucket = UseBucket(pending_uses_);
    pending_uses_ = 1;
    const uint64_t now = clock_.visits(keys_.LayerOf(key));
    if (freq_[key] > 0 && last_use_[key] == now) return;
    uses_[StateCell(key, now)] += 1.0;
    key_use_bucket_[key] = static_cast<uint8_t>(use_bucket);
    const double elapsed = static_cast<double>(now - last_use_[key]);
    freq_[key] = 1.0 + freq_[key] * std::exp2(-decay_per_visit_ * elapsed);
    last_use_[key] = now;
    key_rate_bucket_[key] = static_cast<uint8_t>(RateBucket(freq_[key] / MaxDecayedUses(now)));
  }

  void RefreshEstimates() {
    for (int row = 0; row <= kAgeBuckets; ++row) {
      for (int fb = 0; fb < kFreqBuckets; ++fb) {
        for (int ub = 0; ub < kUseBuckets; ++ub) {
          const int cell = Cell(row, fb, ub);
          estimate_[cell] =
              (uses_[cell] + kPriorWeight * Prior(row, fb)) / (exposures_[cell] + kPriorWeight);
        }
      }
    }
  }

  Rank RankOf(int32_t layer, int slot) const {
    // Age at the layer's next visit: 1 for an expert used in its latest visit.
    const uint64_t age = clock_.visits(layer) + 1 - slot_touch_[slot];
    const double p =
        std::max(estimate_[Cell(AgeBucket(age), slot_freq_bucket_[slot], slot_use_bucket_[slot])],
                 kMinEstimate);
    // Expected next use, in visits of any layer: the layer's next visit comes one pass after its
    // latest, and with probability p per visit the expert is used about 1/p passes later.
    const double next_use = static_cast<double>(clock_.visit_seq(layer)) + cycle_ / p;
    return {-next_use, slot_touch_[slot], slot};
  }

  void FillWorst(int32_t layer) {
    std::vector<Rank>& worst = worst_[layer];
    worst.clear();
    for (int slot : layer_slots_[layer]) worst.push_back(RankOf(layer, slot));
    const size_t keep = std::min(worst.size(), kWorstCached);
    std::partial_sort(worst.begin(), worst.begin() + keep, worst.end());
    worst.resize(keep);
  }
  // Drops `slot` from its layer's cached ranks (the rest are still the smallest ones).
  void Unlist(int32_t layer, int slot) {
    std::vector<Rank>& worst = worst_[layer];
    for (auto it = worst.begin(); it != worst.end(); ++it) {
      if (std::get<2>(*it) == slot) {
        worst.erase(it);
        return;
      }
    }
  }
  // `slot` of `layer` (unlisted) has a new rank: it joins the cached ranks when below their
  // largest, so that they stay the smallest ones of the layer.
  void Reranked(int32_t layer, int slot) {
    std::vector<Rank>& worst = worst_[layer];
    if (worst.empty()) return;  // unknown: refilled when needed
    const Rank rank = RankOf(layer, slot);
    if (rank < worst.back()) {
      worst.insert(std::upper_bound(worst.begin(), worst.end(), rank), rank);
      if (worst.size() > kWorstCached) worst.pop_back();
    }
  }

  KeySpace keys_;
  double cycle_;            // pass length used for ranking (frozen between refreshes)
  double cycle_estimate_;   // running average of the pass length
  double decay_per_visit_;  // log2 decay of the frequency per visit of the layer
  LayerClock clock_;
  // Per expert (dense key id), kept after eviction.
  std::vector<uint64_t> last_use_;        // [n_keys] layer visit of the last demand use
  std::vector<double> freq_;              // [n_keys] decayed uses as of then; 0 = never used
  std::vector<uint8_t> key_rate_bucket_;  // [n_keys] RateBucket as of then
  std::vector<uint8_t> key_use_bucket_;   // [n_keys] UseBucket of its last demand use
  int32_t pending_uses_ = 1;              // SetDemandUses, for the next Use
  // The learned table, [kCells].
  std::vector<double> uses_, exposures_;
  std::vector<double> estimate_;  // frozen between refreshes
  int visits_since_refresh_ = 0;
  // Per slot.
  std::vector<int64_t> slot_key_;              // [n_slots] resident key or -1
  std::vector<uint64_t> slot_touch_;           // [n_slots] layer visit of its last use or prefetch
  std::vector<int> slot_freq_bucket_;          // [n_slots]
  std::vector<int> slot_use_bucket_;           // [n_slots]
  std::vector<int> slot_pos_;                  // [n_slots] index in layer_slots_ of its layer
  std::vector<std::vector<int>> layer_slots_;  // [n_layers] resident slots of each layer
  std::vector<std::vector<Rank>> worst_;       // [n_layers] see kWorstCached
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
    case EvictionKind::kReuse:
      return "reuse";
  }
  return "unknown";
}

StatusOr<EvictionKind> ParseEvictionKind(std::string_view name) {
  for (EvictionKind kind : {EvictionKind::kLayerLru, EvictionKind::kLayerLrfu, EvictionKind::kLru,
                            EvictionKind::kLfu, EvictionKind::kLruK, EvictionKind::kReuse}) {
    if (name == EvictionKindName(kind)) return kind;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown eviction policy '", std::string(name),
                   "' (want layer-lru, layer-lrfu, lru, lfu, lru2 or reuse)"));
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
    case EvictionKind::kReuse:
      return std::make_unique<ReusePolicy>(n_slots, keys, options.reuse_half_life_visits);
  }
  return nullptr;
}

std::unique_ptr<EvictionPolicy> MakeBeladyPolicy(int n_slots,
                                                 std::function<int64_t(int64_t)> next_use) {
  return std::make_unique<BeladyPolicy>(n_slots, std::move(next_use));
}

}  // namespace moe::experts
