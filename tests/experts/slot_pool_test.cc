// ExpertSlotPool: budget planning, pins, rounds, prefetch, fences and counters.
#include "moe/experts/slot_pool.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>

#include "absl/container/flat_hash_map.h"
#include "moe/model/spec.h"

namespace moe::experts {
namespace {

constexpr int32_t kLayers = 2;
constexpr int32_t kExperts = 8;

// A pool of `slots` one-byte slots over kLayers x kExperts.
std::unique_ptr<ExpertSlotPool> MakePool(int32_t slots,
                                         EvictionKind eviction = EvictionKind::kLru) {
  ShapeClass cls{/*expert_bytes=*/1, kExperts, {0, 1}};
  ExpertSlotPool::Options options;
  options.budget_bytes = slots;
  options.shape_classes = {cls};
  options.eviction = eviction;
  auto pool = ExpertSlotPool::Create(options);
  EXPECT_TRUE(pool.ok()) << pool.status();
  return std::move(pool).value();
}

// Completes every load of the round.
void MarkAllLoaded(ExpertSlotPool& pool, const AcquireRound& round) {
  for (const RoundEntry& e : round.entries) {
    if (e.source == SlotSource::kLoad) {
      ASSERT_TRUE(pool.MarkLoaded(e.slot).ok());
    }
  }
}

// Acquire + load + release of one step that fits.
void Use(ExpertSlotPool& pool, std::vector<ExpertKey> keys, uint64_t fence = 0) {
  auto round = pool.Acquire(keys);
  ASSERT_TRUE(round.ok()) << round.status();
  ASSERT_TRUE(round->deferred.empty());
  MarkAllLoaded(pool, *round);
  ASSERT_TRUE(pool.Release(*round, fence).ok());
}

std::vector<SlotSource> Sources(const AcquireRound& round) {
  std::vector<SlotSource> s;
  for (const RoundEntry& e : round.entries) s.push_back(e.source);
  return s;
}

TEST(PlanSlotCounts, OneClassFloorsAndCaps) {
  const std::vector<ShapeClass> one = {{/*expert_bytes=*/100, /*n_experts=*/8, {0, 1, 2}}};
  EXPECT_EQ(*PlanSlotCounts(1050, one), std::vector<int32_t>{10});
  EXPECT_EQ(*PlanSlotCounts(100, one), std::vector<int32_t>{1});
  EXPECT_EQ(*PlanSlotCounts(int64_t{1} << 40, one), std::vector<int32_t>{24});  // one per expert
  EXPECT_EQ(PlanSlotCounts(99, one).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(PlanSlotCounts(0, one).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(PlanSlotCounts, SplitsProportionallyAndSpendsLeftovers) {
  // A: 10 experts x 2 layers x 1000 B = 20000 B; B: 10 x 2 x 500 B = 10000 B.
  const std::vector<ShapeClass> two = {{1000, 10, {0, 1}}, {500, 10, {2, 3}}};
  EXPECT_EQ(*PlanSlotCounts(15000, two), (std::vector<int32_t>{10, 10}));
  // Shares 10466 B and 5233 B -> 10 + 10 slots and 700 B left: room for one more B slot only.
  EXPECT_EQ(*PlanSlotCounts(15700, two), (std::vector<int32_t>{10, 11}));
  // Shares 19333 B and 9667 B -> 19 + 19 slots, 500 B left -> one more B slot: all spent.
  EXPECT_EQ(*PlanSlotCounts(29000, two), (std::vector<int32_t>{19, 20}));
  EXPECT_EQ(*PlanSlotCounts(1000000, two), (std::vector<int32_t>{20, 20}));
  // 1000 B: A's share (666 B) holds no slot.
  EXPECT_EQ(PlanSlotCounts(1000, two).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(PlanSlotCounts, RejectsMalformedClasses) {
  const std::vector<ShapeClass> dup = {{10, 4, {0, 1}}, {10, 4, {1}}};
  EXPECT_EQ(PlanSlotCounts(1000, dup).status().code(), absl::StatusCode::kInvalidArgument);
  const std::vector<ShapeClass> empty_layers = {{10, 4, {}}};
  EXPECT_EQ(PlanSlotCounts(1000, empty_layers).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(PlanSlotCounts(1000, {}).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ShapeClassForSpec, UsesMoeLayersAndBytesPerExpert) {
  MoeSpec spec;
  spec.hidden = 64;
  spec.moe_intermediate = 32;
  spec.n_layers = 4;
  spec.moe_layers = {1, 2, 3};
  spec.routing.n_experts = 16;
  spec.routing.top_k = 2;
  spec.weight_dtype = DType::kBF16;
  const ShapeClass cls = ShapeClassForSpec(spec);
  EXPECT_EQ(cls.expert_bytes, spec.BytesPerExpert());
  EXPECT_GT(cls.expert_bytes, 0);
  EXPECT_EQ(cls.n_experts, 16);
  EXPECT_EQ(cls.layers, (std::vector<int32_t>{1, 2, 3}));
}

TEST(ExpertSlotPool, MissesThenHitsWithResidentFirstOrder) {
  auto pool = MakePool(4);
  EXPECT_EQ(pool->SlotCount(0), 4);
  EXPECT_EQ(pool->ShapeClassOfLayer(1), 0);
  EXPECT_EQ(pool->ShapeClassOfLayer(2), -1);
  auto first = pool->Acquire(std::vector<ExpertKey>{{0, 1}, {0, 2}});
  ASSERT_TRUE(first.ok());
  EXPECT_EQ(Sources(*first), (std::vector<SlotSource>{SlotSource::kLoad, SlotSource::kLoad}));
  EXPECT_FALSE(first->entries[0].evicted.has_value());
  EXPECT_EQ(pool->Inspect(first->entries[0].slot).state, SlotState::kLoading);
  MarkAllLoaded(*pool, *first);
  EXPECT_EQ(pool->Inspect(first->entries[0].slot).state, SlotState::kReady);
  ASSERT_TRUE(pool->Release(*first, 1).ok());

  // Misses listed first by the caller still come after the hits.
  auto second = pool->Acquire(std::vector<ExpertKey>{{1, 5}, {0, 2}, {0, 1}, {0, 2}});
  ASSERT_TRUE(second.ok());
  ASSERT_EQ(second->entries.size(), 3u);  // the repeated {0, 2} is ignored
  EXPECT_EQ(Sources(*second), (std::vector<SlotSource>{SlotSource::kResident, SlotSource::kResident,
                                                       SlotSource::kLoad}));
  EXPECT_EQ(second->entries[0].key, (ExpertKey{0, 2}));
  EXPECT_EQ(second->entries[2].key, (ExpertKey{1, 5}));
  MarkAllLoaded(*pool, *second);
  ASSERT_TRUE(pool->Release(*second, 2).ok());

  const ExpertCacheCounters c = pool->Counters();
  EXPECT_EQ(c.misses, 3u);
  EXPECT_EQ(c.hits, 2u);
  EXPECT_EQ(c.evictions, 0u);
  EXPECT_EQ(c.bytes_copied, 3u);
  EXPECT_DOUBLE_EQ(c.HitRate(), 2.0 / 5.0);
  EXPECT_EQ(c.resident_per_layer, (std::vector<int32_t>{2, 1}));
  EXPECT_EQ(pool->ResidentExperts(0), 2);
  EXPECT_EQ(pool->ResidentExperts(1), 1);
  EXPECT_EQ(pool->ResidentExperts(2), 0);  // not a layer of the pool
  EXPECT_EQ(pool->ResidentExperts(-1), 0);
}

TEST(ExpertSlotPool, EvictsByPolicyAndReturnsTheReuseFence) {
  auto pool = MakePool(2);
  Use(*pool, {{0, 0}}, /*fence=*/7);
  Use(*pool, {{0, 1}}, /*fence=*/8);
  Use(*pool, {{0, 0}}, /*fence=*/9);  // LRU order now: {0,1} then {0,0}
  auto round = pool->Acquire(std::vector<ExpertKey>{{1, 3}});
  ASSERT_TRUE(round.ok());
  ASSERT_EQ(round->entries.size(), 1u);
  const RoundEntry& load = round->entries[0];
  EXPECT_EQ(load.source, SlotSource::kLoad);
  ASSERT_TRUE(load.evicted.has_value());
  EXPECT_EQ(*load.evicted, (ExpertKey{0, 1}));
  EXPECT_EQ(load.reuse_fence, 8u);  // the copy must wait for the last compute that read {0,1}
  EXPECT_FALSE(pool->Find({0, 1}).has_value());
  EXPECT_EQ(pool->Find({1, 3}), load.slot);
  const ExpertCacheCounters c = pool->Counters();
  EXPECT_EQ(c.evictions, 1u);
  EXPECT_EQ(c.resident_per_layer, (std::vector<int32_t>{1, 1}));
  EXPECT_EQ(pool->ResidentExperts(0), 1);  // loading counts
  EXPECT_EQ(pool->ResidentExperts(1), 1);
}

TEST(ExpertSlotPool, NeverEvictsPinnedSlotsAndRefusesWhenAllArePinned) {
  auto pool = MakePool(2);
  auto batch_a = pool->Acquire(std::vector<ExpertKey>{{0, 0}, {0, 1}});
  ASSERT_TRUE(batch_a.ok());
  MarkAllLoaded(*pool, *batch_a);
  // A second batch shares {0,0}: two pins.
  auto batch_b = pool->Acquire(std::vector<ExpertKey>{{0, 0}});
  ASSERT_TRUE(batch_b.ok());
  EXPECT_EQ(pool->Inspect(batch_b->entries[0].slot).pins, 2);

  auto refused = pool->Acquire(std::vector<ExpertKey>{{1, 0}, {1, 1}});
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(pool->Find({0, 0}).has_value());
  EXPECT_TRUE(pool->Find({0, 1}).has_value());
  EXPECT_FALSE(pool->Find({1, 0}).has_value());
  EXPECT_EQ(pool->Counters().exhausted, 1u);
  EXPECT_EQ(pool->Counters().misses, 2u);  // the refused call counted nothing

  // A releases: {0,1} becomes evictable, {0,0} stays pinned by B.
  ASSERT_TRUE(pool->Release(*batch_a, 1).ok());
  auto round = pool->Acquire(std::vector<ExpertKey>{{1, 0}, {1, 1}});
  ASSERT_TRUE(round.ok());
  ASSERT_EQ(round->entries.size(), 1u);
  EXPECT_EQ(*round->entries[0].evicted, (ExpertKey{0, 1}));
  EXPECT_EQ(round->deferred, (std::vector<ExpertKey>{{1, 1}}));
  EXPECT_TRUE(pool->Find({0, 0}).has_value());
}

TEST(ExpertSlotPool, NeverEvictsALoadingSlot) {
  auto pool = MakePool(1);
  auto round = pool->Acquire(std::vector<ExpertKey>{{0, 0}});
  ASSERT_TRUE(round.ok());
  ASSERT_TRUE(pool->Release(*round, 1).ok());  // unpinned but its copy is still in flight
  EXPECT_EQ(pool->Acquire(std::vector<ExpertKey>{{0, 1}}).status().code(),
            absl::StatusCode::kResourceExhausted);
  ASSERT_TRUE(pool->MarkLoaded(round->entries[0].slot).ok());
  EXPECT_TRUE(pool->Acquire(std::vector<ExpertKey>{{0, 1}}).ok());
}

TEST(ExpertSlotPool, RoundsCoverAnOversizeBatchExactlyOnce) {
  for (int32_t others_pinned : {0, 2}) {
    auto pool = MakePool(5);
    Use(*pool, {{0, 3}});  // one expert of the batch is resident
    std::unique_ptr<AcquireRound> other;
    if (others_pinned > 0) {  // another batch holds two slots for the whole time
      auto r = pool->Acquire(std::vector<ExpertKey>{{1, 6}, {1, 7}});
      ASSERT_TRUE(r.ok());
      MarkAllLoaded(*pool, *r);
      other = std::make_unique<AcquireRound>(*std::move(r));
    }
    std::vector<ExpertKey> batch;
    for (int32_t e = 0; e < kExperts; ++e) batch.push_back({0, e});
    for (int32_t e = 0; e < 4; ++e) batch.push_back({1, e});  // 12 experts, 5 slots

    absl::flat_hash_map<ExpertKey, int> seen;
    std::vector<ExpertKey> pending = batch;
    int rounds = 0;
    while (!pending.empty()) {
      auto round = pool->Acquire(pending);
      ASSERT_TRUE(round.ok()) << round.status();
      ++rounds;
      EXPECT_LE(round->entries.size(), static_cast<size_t>(5 - others_pinned));
      EXPECT_FALSE(round->entries.empty());
      if (rounds == 1) {
        EXPECT_EQ(round->entries[0].key, (ExpertKey{0, 3}));  // the hit first
      }
      for (const RoundEntry& e : round->entries) ++seen[e.key];
      EXPECT_EQ(round->entries.size() + round->deferred.size(), pending.size());
      MarkAllLoaded(*pool, *round);
      ASSERT_TRUE(pool->Release(*round, rounds).ok());
      pending = round->deferred;
    }
    EXPECT_EQ(rounds, others_pinned == 0 ? 3 : 4);
    ASSERT_EQ(seen.size(), batch.size());
    for (const ExpertKey& key : batch) EXPECT_EQ(seen[key], 1) << ToString(key);
    const ExpertCacheCounters c = pool->Counters();
    EXPECT_EQ(c.deferred_rounds, static_cast<uint64_t>(rounds - 1));
    EXPECT_EQ(c.hits + c.misses, 1u + batch.size() + others_pinned);
    if (other) {
      EXPECT_EQ(pool->Inspect(*pool->Find({1, 6})).pins, 1);  // never evicted
      ASSERT_TRUE(pool->Release(*other, 0).ok());
    }
  }
}

// Token counts per expert (Acquire's `uses`): one per expert and at least 1, else nothing is
// pinned; the round hands back those of the deferred experts in their order.
TEST(ExpertSlotPool, UsesGoWithTheirExpertsIntoDeferredRounds) {
  auto pool = MakePool(2, EvictionKind::kReuse);
  const std::vector<ExpertKey> keys = {{0, 1}, {0, 2}, {0, 3}, {0, 4}};
  EXPECT_EQ(pool->Acquire(keys, std::vector<int32_t>{1, 2}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(pool->Acquire(keys, std::vector<int32_t>{1, 0, 3, 4}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(pool->Counters().misses, 0u);  // nothing pinned or loaded
  auto round = pool->Acquire(keys, std::vector<int32_t>{5, 1, 3, 2});
  ASSERT_TRUE(round.ok()) << round.status();
  EXPECT_EQ(round->entries.size(), 2u);
  EXPECT_EQ(round->deferred, (std::vector<ExpertKey>{{0, 3}, {0, 4}}));
  EXPECT_EQ(round->deferred_uses, (std::vector<int32_t>{3, 2}));
  MarkAllLoaded(*pool, *round);
  ASSERT_TRUE(pool->Release(*round, 1).ok());
  auto next = pool->Acquire(round->deferred, round->deferred_uses);
  ASSERT_TRUE(next.ok()) << next.status();
  EXPECT_TRUE(next->deferred.empty());
  EXPECT_TRUE(next->deferred_uses.empty());
  // Without uses, deferred_uses stays empty.
  MarkAllLoaded(*pool, *next);
  ASSERT_TRUE(pool->Release(*next, 2).ok());
  auto plain = pool->Acquire(keys);
  ASSERT_TRUE(plain.ok());
  EXPECT_EQ(plain->deferred.size(), 2u);
  EXPECT_TRUE(plain->deferred_uses.empty());
}

TEST(ExpertSlotPool, PrefetchUsesColdSlotsOnlyAndCountsUsefulAndWasted) {
  auto pool = MakePool(4);
  Use(*pool, {{1, 0}});  // ready, evictable, and predicted below
  Use(*pool, {{1, 1}});  // ready, evictable: the only legal victim
  auto batch = pool->Acquire(std::vector<ExpertKey>{{0, 0}, {0, 1}});  // pinned (computing)
  ASSERT_TRUE(batch.ok());
  MarkAllLoaded(*pool, *batch);

  const std::vector<ExpertKey> predicted = {{1, 0}, {1, 2}, {1, 3}, {0, 0}};
  auto loads = pool->Prefetch(predicted, /*max_loads=*/8);
  ASSERT_TRUE(loads.ok());
  ASSERT_EQ(loads->size(), 1u);  // {1,2} takes {1,1}'s slot; no slot is left for {1,3}
  EXPECT_EQ((*loads)[0].key, (ExpertKey{1, 2}));
  EXPECT_EQ(*(*loads)[0].evicted, (ExpertKey{1, 1}));
  EXPECT_TRUE(pool->Find({1, 0}).has_value());
  EXPECT_EQ(pool->Inspect(*pool->Find({0, 0})).pins, 1);
  const SlotInfo info = pool->Inspect((*loads)[0].slot);
  EXPECT_EQ(info.state, SlotState::kLoading);
  EXPECT_EQ(info.pins, 0);
  EXPECT_TRUE(info.prefetched_unused);
  ExpertCacheCounters c = pool->Counters();
  EXPECT_EQ(c.prefetch_issued, 1u);
  EXPECT_EQ(c.prefetch_skipped, 2u);  // {1,0} and {0,0} were resident

  // The next layer arrives before the copy finished: an in-flight hit, and a useful prefetch.
  ASSERT_TRUE(pool->Release(*batch, 3).ok());
  auto next = pool->Acquire(std::vector<ExpertKey>{{1, 2}});
  ASSERT_TRUE(next.ok());
  EXPECT_EQ(Sources(*next), std::vector<SlotSource>{SlotSource::kInFlight});
  ASSERT_TRUE(pool->MarkLoaded(next->entries[0].slot).ok());
  ASSERT_TRUE(pool->Release(*next, 4).ok());
  c = pool->Counters();
  EXPECT_EQ(c.hits_in_flight, 1u);
  EXPECT_EQ(c.prefetch_useful, 1u);

  // A wrong prediction is evicted unused: wasted. max_loads caps the loads.
  loads = pool->Prefetch(std::vector<ExpertKey>{{0, 5}, {0, 6}}, /*max_loads=*/1);
  ASSERT_TRUE(loads.ok());
  ASSERT_EQ(loads->size(), 1u);
  ASSERT_TRUE(pool->MarkLoaded((*loads)[0].slot).ok());
  for (int32_t e = 2; e < 6; ++e) Use(*pool, {{1, e}});
  c = pool->Counters();
  EXPECT_EQ(c.prefetch_wasted, 1u);
  EXPECT_EQ(c.prefetch_issued, 2u);
  EXPECT_EQ(c.bytes_copied, c.misses + c.prefetch_issued);
}

TEST(ExpertSlotPool, RejectsBadKeysAndBadReleases) {
  auto pool = MakePool(2);
  EXPECT_EQ(pool->Acquire(std::vector<ExpertKey>{{0, 0}, {2, 0}}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(pool->Acquire(std::vector<ExpertKey>{{0, kExperts}}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(pool->Find({0, 0}).has_value());  // nothing was pinned by the failed call
  EXPECT_EQ(pool->Prefetch(std::vector<ExpertKey>{{-1, 0}}, 1).status().code(),
            absl::StatusCode::kInvalidArgument);

  auto round = pool->Acquire(std::vector<ExpertKey>{{0, 0}});
  ASSERT_TRUE(round.ok());
  ASSERT_TRUE(pool->MarkLoaded(round->entries[0].slot).ok());
  EXPECT_EQ(pool->MarkLoaded(round->entries[0].slot).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(pool->MarkLoaded({0, 99}).code(), absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(pool->Release(*round, 1).ok());
  EXPECT_EQ(pool->Release(*round, 1).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(pool->ReleaseSlot(round->entries[0].slot, 1).code(),
            absl::StatusCode::kFailedPrecondition);
  // A round listing one pinned slot twice is refused whole.
  auto again = pool->Acquire(std::vector<ExpertKey>{{0, 0}});
  ASSERT_TRUE(again.ok());
  AcquireRound doubled = *again;
  doubled.entries.push_back(doubled.entries[0]);
  EXPECT_EQ(pool->Release(doubled, 1).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(pool->Inspect(again->entries[0].slot).pins, 1);
  ASSERT_TRUE(pool->Release(*again, 1).ok());
  EXPECT_EQ(pool->Inspect(round->entries[0].slot).pins, 0);
}

TEST(ExpertSlotPool, ReleaseSlotUnpinsOneExpertAtATime) {
  auto pool = MakePool(2);
  auto round = pool->Acquire(std::vector<ExpertKey>{{0, 0}, {0, 1}});
  ASSERT_TRUE(round.ok());
  MarkAllLoaded(*pool, *round);
  ASSERT_TRUE(pool->ReleaseSlot(round->entries[0].slot, 5).ok());
  auto next = pool->Acquire(std::vector<ExpertKey>{{1, 0}});
  ASSERT_TRUE(next.ok());
  ASSERT_EQ(next->entries.size(), 1u);
  EXPECT_EQ(*next->entries[0].evicted, round->entries[0].key);
  EXPECT_EQ(next->entries[0].reuse_fence, 5u);
}

TEST(ExpertSlotPool, CountersDeltaSubtractsCountsAndKeepsLevels) {
  auto pool = MakePool(2);
  Use(*pool, {{0, 0}, {0, 1}});
  const ExpertCacheCounters before = pool->Counters();
  Use(*pool, {{0, 0}, {1, 1}});
  pool->RecordCopyWait(30);
  const ExpertCacheCounters d = CountersDelta(pool->Counters(), before);
  EXPECT_EQ(d.hits, 1u);
  EXPECT_EQ(d.misses, 1u);
  EXPECT_EQ(d.evictions, 1u);
  EXPECT_EQ(d.bytes_copied, 1u);
  EXPECT_EQ(d.copy_wait_ns, 30u);
  EXPECT_EQ(d.resident_per_layer, (std::vector<int32_t>{1, 1}));
}

TEST(ExpertSlotPool, CopyWaitAndPolicyName) {
  auto pool = MakePool(2, EvictionKind::kLfu);
  EXPECT_EQ(pool->PolicyName(), "lfu");
  pool->RecordCopyWait(1500);
  pool->RecordCopyWait(500);
  EXPECT_EQ(pool->Counters().copy_wait_ns, 2000u);
  EXPECT_EQ(MakePool(2, EvictionKind::kLayerLru)->PolicyName(), "layer-lru");
}

}  // namespace
}  // namespace moe::experts
