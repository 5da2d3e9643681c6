// ExpertSlotPool: slot table, rounds and prefetch of the GPU expert cache (host side).
#include "moe/experts/slot_pool.h"

#include <algorithm>
#include <numeric>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "moe/model/spec.h"

namespace moe::experts {

std::string ToString(const ExpertKey& key) {
  return absl::StrCat("L", key.layer, "/E", key.expert);
}

double ExpertCacheCounters::HitRate() const {
  const uint64_t demanded = Demanded();
  return demanded == 0 ? 0.0 : static_cast<double>(hits + hits_in_flight) / demanded;
}

ExpertCacheCounters CountersDelta(const ExpertCacheCounters& later,
                                  const ExpertCacheCounters& earlier) {
  ExpertCacheCounters d;
  d.hits = later.hits - earlier.hits;
  d.hits_in_flight = later.hits_in_flight - earlier.hits_in_flight;
  d.misses = later.misses - earlier.misses;
  d.evictions = later.evictions - earlier.evictions;
  d.prefetch_issued = later.prefetch_issued - earlier.prefetch_issued;
  d.prefetch_useful = later.prefetch_useful - earlier.prefetch_useful;
  d.prefetch_wasted = later.prefetch_wasted - earlier.prefetch_wasted;
  d.prefetch_skipped = later.prefetch_skipped - earlier.prefetch_skipped;
  d.bytes_copied = later.bytes_copied - earlier.bytes_copied;
  d.copy_wait_ns = later.copy_wait_ns - earlier.copy_wait_ns;
  d.deferred_rounds = later.deferred_rounds - earlier.deferred_rounds;
  d.exhausted = later.exhausted - earlier.exhausted;
  d.resident_per_layer = later.resident_per_layer;
  return d;
}

StatusOr<std::vector<int32_t>> PlanSlotCounts(int64_t budget_bytes,
                                              std::span<const ShapeClass> classes) {
  if (classes.empty()) return absl::InvalidArgumentError("expert cache: no shape class");
  if (budget_bytes <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("expert cache: budget must be positive, got ", budget_bytes, " bytes"));
  }
  const size_t n = classes.size();
  std::vector<int64_t> max_slots(n);
  long double total_bytes = 0;
  absl::flat_hash_set<int32_t> seen_layers;
  for (size_t c = 0; c < n; ++c) {
    const ShapeClass& cls = classes[c];
    if (cls.expert_bytes <= 0 || cls.n_experts <= 0 || cls.layers.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "expert cache: shape class ", c, " needs expert_bytes > 0, n_experts > 0 and layers"));
    }
    for (int32_t layer : cls.layers) {
      if (layer < 0 || !seen_layers.insert(layer).second) {
        return absl::InvalidArgumentError(absl::StrCat(
            "expert cache: layer ", layer, " is negative or in more than one shape class"));
      }
    }
    max_slots[c] = int64_t{cls.n_experts} * static_cast<int64_t>(cls.layers.size());
    total_bytes += static_cast<long double>(max_slots[c]) * cls.expert_bytes;
  }

  // Proportional shares, rounded down, at most one slot per expert.
  std::vector<int64_t> slots(n);
  std::vector<long double> remainder(n);
  int64_t used = 0;
  for (size_t c = 0; c < n; ++c) {
    const long double class_bytes =
        static_cast<long double>(max_slots[c]) * classes[c].expert_bytes;
    const long double share = budget_bytes * (class_bytes / total_bytes) / classes[c].expert_bytes;
    slots[c] = std::min<int64_t>(static_cast<int64_t>(share), max_slots[c]);
    remainder[c] = share - static_cast<long double>(slots[c]);
    used += slots[c] * classes[c].expert_bytes;
  }
  // Leftover bytes: whole slots to classes with room, largest remainder first, until none fits.
  std::vector<size_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return remainder[a] > remainder[b]; });
  for (bool progress = true; progress;) {
    progress = false;
    for (size_t c : order) {
      if (slots[c] < max_slots[c] && used + classes[c].expert_bytes <= budget_bytes) {
        ++slots[c];
        used += classes[c].expert_bytes;
        progress = true;
      }
    }
  }
  std::vector<int32_t> result(n);
  for (size_t c = 0; c < n; ++c) {
    if (slots[c] == 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "expert cache: budget of ", budget_bytes, " bytes leaves no slot for shape class ", c,
          " (one expert is ", classes[c].expert_bytes, " bytes)"));
    }
    result[c] = static_cast<int32_t>(slots[c]);
  }
  return result;
}

ShapeClass ShapeClassForSpec(const MoeSpec& spec) {
  ShapeClass cls;
  cls.expert_bytes = spec.BytesPerExpert();
  cls.n_experts = spec.n_experts();
  cls.layers.assign(spec.moe_layers.begin(), spec.moe_layers.end());
  return cls;
}

StatusOr<std::unique_ptr<ExpertSlotPool>> ExpertSlotPool::Create(const Options& options) {
  MOE_ASSIGN_OR_RETURN(std::vector<int32_t> slot_counts,
                       PlanSlotCounts(options.budget_bytes, options.shape_classes));
  auto pool = std::unique_ptr<ExpertSlotPool>(new ExpertSlotPool());
  for (const ShapeClass& cls : options.shape_classes) {
    for (int32_t layer : cls.layers) pool->n_layers_ = std::max(pool->n_layers_, layer + 1);
    pool->max_experts_ = std::max(pool->max_experts_, cls.n_experts);
  }
  pool->layer_class_.assign(pool->n_layers_, -1);
  std::lock_guard<std::mutex> lock(pool->mu_);
  for (size_t c = 0; c < options.shape_classes.size(); ++c) {
    const ShapeClass& cls = options.shape_classes[c];
    for (int32_t layer : cls.layers) pool->layer_class_[layer] = static_cast<int32_t>(c);
    pool->shapes_.push_back({cls.expert_bytes, cls.n_experts, slot_counts[c]});
    ClassState state;
    state.slots.resize(slot_counts[c]);
    // Stack of free slots, popped from the back: slot 0 is used first.
    for (int32_t i = slot_counts[c] - 1; i >= 0; --i) state.free_slots.push_back(i);
    state.policy =
        options.policy_factory
            ? options.policy_factory(static_cast<int32_t>(c), slot_counts[c], pool->Keys())
            : MakeEvictionPolicy(options.eviction, slot_counts[c], pool->Keys(),
                                 options.eviction_options);
    if (state.policy == nullptr) {
      return absl::InvalidArgumentError("expert cache: the policy factory returned no policy");
    }
    pool->classes_.push_back(std::move(state));
  }
  pool->counters_.resident_per_layer.assign(pool->n_layers_, 0);
  return pool;
}

ExpertSlotPool::~ExpertSlotPool() = default;

int32_t ExpertSlotPool::ShapeClassOfLayer(int32_t layer) const {
  return layer >= 0 && layer < n_layers_ ? layer_class_[layer] : -1;
}

std::string_view ExpertSlotPool::PolicyName() const {
  std::lock_guard<std::mutex> lock(mu_);
  return classes_.front().policy->Name();
}

bool ExpertSlotPool::IsSlot(SlotId id) const {
  return id.shape_class >= 0 && id.shape_class < ShapeClassCount() && id.index >= 0 &&
         id.index < shapes_[id.shape_class].n_slots;
}

Status ExpertSlotPool::ValidateKey(const ExpertKey& key) const {
  const int32_t c = ShapeClassOfLayer(key.layer);
  if (c < 0 || key.expert < 0 || key.expert >= shapes_[c].n_experts) {
    return absl::InvalidArgumentError(absl::StrCat("expert cache: unknown expert ", ToString(key)));
  }
  return absl::OkStatus();
}

int32_t ExpertSlotPool::TakeSlot(ClassState& cls, const absl::flat_hash_set<ExpertKey>* protect,
                                 std::optional<ExpertKey>* evicted) {
  evicted->reset();
  if (!cls.free_slots.empty()) {
    const int32_t index = cls.free_slots.back();
    cls.free_slots.pop_back();
    return index;
  }
  const int victim = cls.policy->PickVictim([&](int i) {
    const Slot& s = cls.slots[i];
    return s.state == SlotState::kReady && s.pins == 0 &&
           (protect == nullptr || !protect->contains(s.key));
  });
  if (victim < 0) return -1;
  Slot& slot = cls.slots[victim];
  where_.erase(slot.key);
  ++counters_.evictions;
  --counters_.resident_per_layer[slot.key.layer];
  if (slot.prefetched_unused) ++counters_.prefetch_wasted;
  cls.policy->OnEvict(victim);
  *evicted = slot.key;
  slot.state = SlotState::kFree;
  slot.prefetched_unused = false;
  return victim;
}

StatusOr<AcquireRound> ExpertSlotPool::Acquire(std::span<const ExpertKey> experts,
                                               std::span<const int32_t> uses) {
  for (const ExpertKey& key : experts) MOE_RETURN_IF_ERROR(ValidateKey(key));
  if (!uses.empty() &&
      (uses.size() != experts.size() || *std::min_element(uses.begin(), uses.end()) < 1)) {
    return absl::InvalidArgumentError(
        "expert cache: uses must be empty or one count >= 1 per expert");
  }
  std::lock_guard<std::mutex> lock(mu_);
  absl::flat_hash_set<ExpertKey> seen;
  std::vector<RoundEntry> resident, in_flight, loads;
  std::vector<ExpertKey> misses;
  std::vector<int32_t> miss_uses;
  // Tell each class's policy which layers this step visits (once per layer, in order).
  absl::flat_hash_set<int32_t> layers_begun;
  for (const ExpertKey& key : experts) {
    if (layers_begun.insert(key.layer).second) {
      classes_[layer_class_[key.layer]].policy->BeginStep(key.layer);
    }
  }
  // Hits first: pinning them keeps the misses of this call from evicting them.
  for (size_t i = 0; i < experts.size(); ++i) {
    const ExpertKey& key = experts[i];
    if (!seen.insert(key).second) continue;
    auto it = where_.find(key);
    if (it == where_.end()) {
      misses.push_back(key);
      if (!uses.empty()) miss_uses.push_back(uses[i]);
      continue;
    }
    const SlotId id = it->second;
    Slot& slot = classes_[id.shape_class].slots[id.index];
    ++slot.pins;
    EvictionPolicy& policy = *classes_[id.shape_class].policy;
    if (!uses.empty()) policy.SetDemandUses(uses[i]);
    policy.OnHit(id.index);
    if (slot.prefetched_unused) {
      ++counters_.prefetch_useful;
      slot.prefetched_unused = false;
    }
    if (slot.state == SlotState::kReady) {
      ++counters_.hits;
      resident.push_back({key, id, SlotSource::kResident, 0, std::nullopt});
    } else {
      ++counters_.hits_in_flight;
      in_flight.push_back({key, id, SlotSource::kInFlight, 0, std::nullopt});
    }
  }
  // Misses in the caller's order; once a class has no slot left, the rest of it is deferred.
  AcquireRound round;
  std::vector<uint8_t> class_full(classes_.size(), 0);
  for (size_t i = 0; i < misses.size(); ++i) {
    const ExpertKey& key = misses[i];
    const int32_t c = layer_class_[key.layer];
    ClassState& cls = classes_[c];
    std::optional<ExpertKey> evicted;
    const int32_t index = class_full[c] ? -1 : TakeSlot(cls, nullptr, &evicted);
    if (index < 0) {
      class_full[c] = 1;
      round.deferred.push_back(key);
      if (!uses.empty()) round.deferred_uses.push_back(miss_uses[i]);
      continue;
    }
    Slot& slot = cls.slots[index];
    slot.state = SlotState::kLoading;
    slot.key = key;
    slot.pins = 1;
    const SlotId id{c, index};
    where_[key] = id;
    if (!uses.empty()) cls.policy->SetDemandUses(miss_uses[i]);
    cls.policy->OnInsert(index, KeyId(key), /*demand=*/true);
    ++counters_.misses;
    counters_.bytes_copied += shapes_[c].expert_bytes;
    ++counters_.resident_per_layer[key.layer];
    loads.push_back({key, id, SlotSource::kLoad, slot.release_fence, evicted});
  }
  if (resident.empty() && in_flight.empty() && loads.empty() && !round.deferred.empty()) {
    ++counters_.exhausted;
    return absl::ResourceExhaustedError(
        absl::StrCat("expert cache: all slots needed by ", ToString(round.deferred.front()),
                     " are pinned by batches in flight or loading; retry after a Release"));
  }
  if (!round.deferred.empty()) ++counters_.deferred_rounds;
  round.entries = std::move(resident);
  round.entries.insert(round.entries.end(), in_flight.begin(), in_flight.end());
  round.entries.insert(round.entries.end(), loads.begin(), loads.end());
  return round;
}

void ExpertSlotPool::UnpinLocked(SlotId id, uint64_t release_fence) {
  Slot& slot = classes_[id.shape_class].slots[id.index];
  --slot.pins;
  slot.release_fence = std::max(slot.release_fence, release_fence);
}

Status ExpertSlotPool::Release(const AcquireRound& round, uint64_t release_fence) {
  std::lock_guard<std::mutex> lock(mu_);
  // Validate everything first so that a bad round changes nothing (a slot listed n times must
  // hold n pins).
  absl::flat_hash_map<int64_t, int32_t> listed;  // slot -> times listed
  for (const RoundEntry& entry : round.entries) {
    const SlotId id = entry.slot;
    if (!IsSlot(id)) return absl::InvalidArgumentError("expert cache: Release of an unknown slot");
    const Slot& slot = classes_[id.shape_class].slots[id.index];
    const int32_t times = ++listed[(int64_t{id.shape_class} << 32) | id.index];
    if (slot.pins < times || slot.state == SlotState::kFree || slot.key != entry.key) {
      return absl::FailedPreconditionError(absl::StrCat(
          "expert cache: Release of ", ToString(entry.key), " which is not pinned in its slot"));
    }
  }
  for (const RoundEntry& entry : round.entries) UnpinLocked(entry.slot, release_fence);
  return absl::OkStatus();
}

Status ExpertSlotPool::ReleaseSlot(SlotId id, uint64_t release_fence) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!IsSlot(id)) {
    return absl::InvalidArgumentError("expert cache: ReleaseSlot of an unknown slot");
  }
  if (classes_[id.shape_class].slots[id.index].pins <= 0) {
    return absl::FailedPreconditionError("expert cache: ReleaseSlot of a slot that is not pinned");
  }
  UnpinLocked(id, release_fence);
  return absl::OkStatus();
}

Status ExpertSlotPool::MarkLoaded(SlotId id) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!IsSlot(id)) {
    return absl::InvalidArgumentError("expert cache: MarkLoaded of an unknown slot");
  }
  Slot& slot = classes_[id.shape_class].slots[id.index];
  if (slot.state != SlotState::kLoading) {
    return absl::FailedPreconditionError(absl::StrCat("expert cache: MarkLoaded of slot ",
                                                      id.shape_class, "/", id.index,
                                                      " which is not loading"));
  }
  slot.state = SlotState::kReady;
  return absl::OkStatus();
}

StatusOr<std::vector<PrefetchLoad>> ExpertSlotPool::Prefetch(std::span<const ExpertKey> predicted,
                                                             int32_t max_loads) {
  for (const ExpertKey& key : predicted) MOE_RETURN_IF_ERROR(ValidateKey(key));
  std::lock_guard<std::mutex> lock(mu_);
  const absl::flat_hash_set<ExpertKey> protect(predicted.begin(), predicted.end());
  absl::flat_hash_set<ExpertKey> seen;
  std::vector<uint8_t> class_full(classes_.size(), 0);
  std::vector<PrefetchLoad> loads;
  for (const ExpertKey& key : predicted) {
    if (static_cast<int32_t>(loads.size()) >= max_loads) break;
    if (!seen.insert(key).second) continue;
    if (where_.contains(key)) {
      ++counters_.prefetch_skipped;
      continue;
    }
    const int32_t c = layer_class_[key.layer];
    if (class_full[c]) continue;
    ClassState& cls = classes_[c];
    std::optional<ExpertKey> evicted;
    const int32_t index = TakeSlot(cls, &protect, &evicted);
    if (index < 0) {
      class_full[c] = 1;
      continue;
    }
    Slot& slot = cls.slots[index];
    slot.state = SlotState::kLoading;
    slot.key = key;
    slot.pins = 0;
    slot.prefetched_unused = true;
    const SlotId id{c, index};
    where_[key] = id;
    cls.policy->OnInsert(index, KeyId(key), /*demand=*/false);
    ++counters_.prefetch_issued;
    counters_.bytes_copied += shapes_[c].expert_bytes;
    ++counters_.resident_per_layer[key.layer];
    loads.push_back({key, id, slot.release_fence, evicted});
  }
  return loads;
}

void ExpertSlotPool::RecordCopyWait(uint64_t wait_ns) {
  std::lock_guard<std::mutex> lock(mu_);
  counters_.copy_wait_ns += wait_ns;
}

std::optional<SlotId> ExpertSlotPool::Find(const ExpertKey& key) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = where_.find(key);
  if (it == where_.end()) return std::nullopt;
  return it->second;
}

SlotInfo ExpertSlotPool::Inspect(SlotId id) const {
  std::lock_guard<std::mutex> lock(mu_);
  SlotInfo info;
  if (!IsSlot(id)) {
    return info;
  }
  const Slot& slot = classes_[id.shape_class].slots[id.index];
  info.state = slot.state;
  if (slot.state != SlotState::kFree) info.key = slot.key;
  info.pins = slot.pins;
  info.prefetched_unused = slot.prefetched_unused;
  return info;
}

ExpertCacheCounters ExpertSlotPool::Counters() const {
  std::lock_guard<std::mutex> lock(mu_);
  return counters_;
}

int32_t ExpertSlotPool::ResidentExperts(int32_t layer) const {
  if (layer < 0 || layer >= n_layers_) return 0;
  std::lock_guard<std::mutex> lock(mu_);
  return counters_.resident_per_layer[static_cast<size_t>(layer)];
}

}  // namespace moe::experts
