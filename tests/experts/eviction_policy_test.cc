// Victim order of each eviction policy, driven directly (no pool).
#include "moe/experts/eviction_policy.h"

#include <gtest/gtest.h>

#include <limits>
#include <map>

namespace moe::experts {
namespace {

constexpr KeySpace kKeys{/*n_layers=*/4, /*experts_per_layer=*/8};

auto All() {
  return [](int) { return true; };
}

int64_t Key(int32_t layer, int32_t expert) {
  return int64_t{layer} * kKeys.experts_per_layer + expert;
}

TEST(EvictionKind, NamesRoundTrip) {
  for (EvictionKind kind : {EvictionKind::kLayerLru, EvictionKind::kLayerLrfu, EvictionKind::kLru,
                            EvictionKind::kLfu, EvictionKind::kLruK, EvictionKind::kReuse}) {
    auto parsed = ParseEvictionKind(EvictionKindName(kind));
    ASSERT_TRUE(parsed.ok()) << parsed.status();
    EXPECT_EQ(*parsed, kind);
  }
  EXPECT_EQ(ParseEvictionKind("fifo").status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(LruPolicy, EvictsLeastRecentlyUsedAndSkipsUnevictable) {
  auto lru = MakeEvictionPolicy(EvictionKind::kLru, 3, kKeys);
  lru->OnInsert(0, Key(0, 0), true);
  lru->OnInsert(1, Key(0, 1), true);
  lru->OnInsert(2, Key(0, 2), true);
  lru->OnHit(0);  // recency now: 1 (oldest), 2, 0
  EXPECT_EQ(lru->PickVictim(All()), 1);
  EXPECT_EQ(lru->PickVictim([](int s) { return s != 1; }), 2);
  EXPECT_EQ(lru->PickVictim([](int) { return false; }), -1);
  lru->OnEvict(1);
  EXPECT_EQ(lru->PickVictim(All()), 2);
  lru->OnInsert(1, Key(0, 3), false);
  lru->OnHit(2);  // order: 0, 1, 2
  EXPECT_EQ(lru->PickVictim(All()), 0);
}

TEST(LfuPolicy, EvictsLeastFrequentTiesToOlderAndKeepsCountsAfterEviction) {
  auto lfu = MakeEvictionPolicy(EvictionKind::kLfu, 3, kKeys);
  lfu->OnInsert(0, Key(0, 0), true);  // count 1
  lfu->OnInsert(1, Key(0, 1), true);  // count 1
  lfu->OnInsert(2, Key(0, 2), true);  // count 1
  lfu->OnHit(0);
  lfu->OnHit(0);  // key 0: 3
  lfu->OnHit(2);  // key 2: 2
  EXPECT_EQ(lfu->PickVictim(All()), 1);
  lfu->OnHit(1);
  lfu->OnHit(1);
  lfu->OnHit(1);  // key 1: 4 -> key 2 (2) is the least frequent
  EXPECT_EQ(lfu->PickVictim(All()), 2);
  // Evict key 0 (count 3), load a new key (count 1) in its slot, then bring key 0 back into slot 2:
  // its count (3 + 1) survived the eviction, so the new key is the victim.
  lfu->OnEvict(0);
  lfu->OnInsert(0, Key(1, 0), true);
  lfu->OnEvict(2);
  lfu->OnInsert(2, Key(0, 0), true);
  EXPECT_EQ(lfu->PickVictim(All()), 0);
  // A prefetch is not a use: a prefetched key with no history ranks lowest.
  lfu->OnEvict(0);
  lfu->OnInsert(0, Key(1, 1), false);
  EXPECT_EQ(lfu->PickVictim(All()), 0);
}

TEST(LfuPolicy, DecayLetsNewPopularityWin) {
  // Key 0: 10 uses, then key 1: 6 uses.
  auto run = [](int64_t decay_period) {
    EvictionOptions options;
    options.lfu_decay_period = decay_period;
    auto lfu = MakeEvictionPolicy(EvictionKind::kLfu, 2, kKeys, options);
    lfu->OnInsert(0, Key(0, 0), true);
    for (int i = 0; i < 9; ++i) lfu->OnHit(0);
    lfu->OnInsert(1, Key(0, 1), true);
    for (int i = 0; i < 5; ++i) lfu->OnHit(1);
    return lfu->PickVictim(All());
  };
  EXPECT_EQ(run(0), 1);  // 10 > 6: the old favourite stays
  EXPECT_EQ(run(4), 0);  // halving every 4 events: key 0 ends at 1, key 1 at 2
}

TEST(LruKPolicy, EvictsSingleUseFirstThenOldestSecondUse) {
  auto lru2 = MakeEvictionPolicy(EvictionKind::kLruK, 3, kKeys);
  lru2->OnInsert(0, Key(0, 0), true);
  lru2->OnHit(0);  // used twice
  lru2->OnInsert(1, Key(0, 1), true);
  lru2->OnHit(1);                         // used twice, later
  lru2->OnInsert(2, Key(0, 2), true);     // used once, most recent
  EXPECT_EQ(lru2->PickVictim(All()), 2);  // plain LRU would evict slot 0
  EXPECT_EQ(lru2->PickVictim([](int s) { return s != 2; }), 0);
}

TEST(LayerLruPolicy, CountsAgeInVisitsOfTheExpertsOwnLayer) {
  auto policy = MakeEvictionPolicy(EvictionKind::kLayerLru, 4, kKeys);
  // Pass 1: layer 0 uses a (slot 0), b (slot 1); layer 1 uses c (slot 2), d (slot 3).
  policy->BeginStep(0);
  policy->OnInsert(0, Key(0, 0), true);
  policy->OnInsert(1, Key(0, 1), true);
  policy->BeginStep(1);
  policy->OnInsert(2, Key(1, 0), true);
  policy->OnInsert(3, Key(1, 1), true);
  // Pass 2, layer 0 uses a only: b missed one visit of its layer (age 1); c and d have age 0
  // although their last use is older than b's. Global LRU would evict a, then b... here: b.
  policy->BeginStep(0);
  policy->OnHit(0);
  EXPECT_EQ(policy->PickVictim(All()), 1);
  // Without b all ages are 0 and the tie goes to the layer visited most recently: layer 0, a.
  // (In a pool, a would be pinned by the step that just used it.)
  EXPECT_EQ(policy->PickVictim([](int s) { return s != 1; }), 0);
  // A second round of the same step is the same visit: b stays at age 1 (checked below, where
  // an age of 2 would make b the victim instead of d).
  policy->BeginStep(0);
  // Layer 1 uses c only: d has age 1 too; the tie goes to the layer visited most recently
  // (layer 1: its next visit is farthest away).
  policy->BeginStep(1);
  policy->OnHit(2);
  EXPECT_EQ(policy->PickVictim(All()), 3);
  EXPECT_EQ(policy->PickVictim([](int s) { return s != 3; }), 1);
  // A prefetch into layer 0 counts as used in layer 0's latest visit: age 0 like a and c, so
  // (without d) all ages tie and the most recently visited layer, 1, gives up c.
  policy->OnEvict(1);
  policy->OnInsert(1, Key(0, 5), false);
  EXPECT_EQ(policy->PickVictim([](int s) { return s != 3; }), 2);
}

TEST(LayerLrfuPolicy, SmallLambdaPrefersFrequencyLargeLambdaRecency) {
  // Layer 0 visits 1..4 use a; visit 5 uses b. Layer 1 (x) is visited in between, every time.
  auto run = [](double lambda) {
    EvictionOptions options;
    options.lrfu_lambda = lambda;
    auto policy = MakeEvictionPolicy(EvictionKind::kLayerLrfu, 3, kKeys, options);
    policy->BeginStep(0);
    policy->OnInsert(0, Key(0, 0), true);  // a
    policy->BeginStep(1);
    policy->OnInsert(2, Key(1, 0), true);  // x
    for (int v = 0; v < 3; ++v) {
      policy->BeginStep(0);
      policy->OnHit(0);
      policy->BeginStep(1);
      policy->OnHit(2);
    }
    policy->BeginStep(0);
    policy->OnInsert(1, Key(0, 1), true);  // b
    policy->BeginStep(1);
    policy->OnHit(2);
    return policy->PickVictim([](int s) { return s != 2; });
  };
  EXPECT_EQ(run(0.25), 1);  // a: CRF ~2.6 beats b: 1 (frequency wins)
  EXPECT_EQ(run(4.0), 0);   // a: ~0.07 loses to b: 1 (recency wins)
}

TEST(ReusePolicy, BeforeLearningRanksByAgeInOwnLayerVisitsThenLayerOrder) {
  // Until its first table refresh (256 visits) the policy runs on its prior: a younger age at the
  // layer's next visit is likelier, and the expected next use is the layer's latest visit plus
  // one pass (4 layers here) divided by that likelihood.
  auto policy = MakeEvictionPolicy(EvictionKind::kReuse, 5, kKeys);
  policy->BeginStep(0);
  policy->OnInsert(0, Key(0, 0), true);  // a
  policy->OnInsert(1, Key(0, 1), true);  // b
  policy->BeginStep(1);
  policy->OnInsert(2, Key(1, 0), true);  // c
  policy->BeginStep(0);
  policy->OnHit(0);  // a used again: b has missed a visit of its layer
  EXPECT_EQ(policy->PickVictim(All()), 1);
  // a (used in layer 0's latest visit) and c (in layer 1's) are equally likely; layer 0 was
  // visited last, so a's next use is the farthest.
  EXPECT_EQ(policy->PickVictim([](int s) { return s != 1; }), 0);
  // A second round of the same step is the same visit: nothing changes.
  policy->BeginStep(0);
  EXPECT_EQ(policy->PickVictim(All()), 1);
  // A prefetch into layer 1 ranks as used in layer 1's latest visit: the same expected next use
  // as c; the tie goes to the older touch (equal), then the lower slot.
  policy->OnInsert(3, Key(1, 5), false);
  EXPECT_EQ(policy->PickVictim([](int s) { return s >= 2; }), 2);
  EXPECT_EQ(policy->PickVictim([](int s) { return s == 3; }), 3);
  EXPECT_EQ(policy->PickVictim([](int) { return false; }), -1);
  // Evicted slots leave the ranking; a refilled slot ranks by its new key.
  policy->OnEvict(1);
  EXPECT_EQ(policy->PickVictim([](int s) { return s <= 1; }), 0);
  policy->OnInsert(1, Key(2, 0), true);
  // Layer 1's visit ages c and the prefetched key (unused in it): they are now the least likely
  // (tie: the lower slot); then a, whose layer was visited after layer 2's (never visited).
  policy->BeginStep(1);
  EXPECT_EQ(policy->PickVictim(All()), 2);
  EXPECT_EQ(policy->PickVictim([](int s) { return s != 2; }), 3);
  EXPECT_EQ(policy->PickVictim([](int s) { return s <= 1; }), 0);
}

TEST(ReusePolicy, UseRateAgesWithTheHalfLife) {
  // a (slot 0) is used at layer 0's visits 1..10, then both a and b (slot 1, new) at visit 40;
  // layer 1 is visited in between. Same age, same layer: only the use rates differ.
  auto run = [](double half_life) {
    EvictionOptions options;
    options.reuse_half_life_visits = half_life;
    auto policy = MakeEvictionPolicy(EvictionKind::kReuse, 3, kKeys, options);
    for (int visit = 1; visit <= 40; ++visit) {
      policy->BeginStep(0);
      if (visit == 1) policy->OnInsert(0, Key(0, 0), true);
      if (visit > 1 && (visit <= 10 || visit == 40)) policy->OnHit(0);
      if (visit == 40) policy->OnInsert(1, Key(0, 1), true);
      policy->BeginStep(1);
    }
    return policy->PickVictim(All());
  };
  // Long memory: a's ten uses still count (rate ~0.27 against b's ~0.03), b goes.
  EXPECT_EQ(run(1000.0), 1);
  // A half-life of one visit forgets them: both rates are 1/2, an exact tie, the lower slot goes.
  EXPECT_EQ(run(1.0), 0);
}

TEST(ReusePolicy, LearnsThatAPeriodicExpertOutlivesAFreshOne) {
  // Layer 0: expert a (slot 0) is used every second visit; at the other visits one of experts
  // 1..6 is used in turn (slots 1..6), each again only 12 visits later. Layer 1 (slot 7) runs in
  // between. After 600 visits the table has learned that a, one visit after its use, comes back
  // at the next visit, while an expert of the rotation, just used, does not. LRU and layer-LRU
  // would both evict a (the older use); reuse evicts the fresh one.
  auto policy = MakeEvictionPolicy(EvictionKind::kReuse, 8, kKeys);
  policy->BeginStep(1);
  policy->OnInsert(7, Key(1, 0), true);
  int last_rotating_slot = -1;
  auto run = [&](int from, int to) {
    for (int visit = from; visit < to; ++visit) {
      policy->BeginStep(0);
      if (visit % 2 == 0) {
        if (visit == 0) {
          policy->OnInsert(0, Key(0, 0), true);
        } else {
          policy->OnHit(0);
        }
      } else {
        last_rotating_slot = 1 + (visit / 2) % 6;
        if (visit < 12) {
          policy->OnInsert(last_rotating_slot, Key(0, last_rotating_slot), true);
        } else {
          policy->OnHit(last_rotating_slot);
        }
      }
      policy->BeginStep(1);
      policy->OnHit(7);
    }
  };
  // 201 visits: before the first refresh the prior (younger is likelier) evicts a.
  run(0, 100);
  ASSERT_EQ(last_rotating_slot, 1 + (99 / 2) % 6);
  EXPECT_EQ(policy->PickVictim([&](int s) { return s == 0 || s == last_rotating_slot; }), 0);
  run(100, 300);
  ASSERT_EQ(last_rotating_slot, 1 + (299 / 2) % 6);
  EXPECT_EQ(policy->PickVictim([&](int s) { return s == 0 || s == last_rotating_slot; }),
            last_rotating_slot);
  // The next visit uses a and none of the rotation, not even the one used longest ago (it comes
  // back one visit later).
  const int oldest_rotating = 1 + (301 / 2) % 6;
  EXPECT_EQ(policy->PickVictim([&](int s) { return s == 0 || s == oldest_rotating; }),
            oldest_rotating);
}

TEST(BeladyPolicy, EvictsFarthestNextUseAndNeverUsedFirst) {
  std::map<int64_t, int64_t> next_use = {{Key(0, 0), 10}, {Key(0, 1), 30}, {Key(0, 2), 20}};
  auto belady = MakeBeladyPolicy(3, [&](int64_t key) {
    auto it = next_use.find(key);
    return it == next_use.end() ? std::numeric_limits<int64_t>::max() : it->second;
  });
  belady->OnInsert(0, Key(0, 0), true);
  belady->OnInsert(1, Key(0, 1), true);
  belady->OnInsert(2, Key(0, 2), true);
  EXPECT_EQ(belady->PickVictim(All()), 1);
  EXPECT_EQ(belady->PickVictim([](int s) { return s != 1; }), 2);
  next_use[Key(0, 0)] = 40;  // key 0 was used; its next use is now the farthest
  belady->OnHit(0);
  EXPECT_EQ(belady->PickVictim(All()), 0);
  belady->OnEvict(0);
  belady->OnInsert(0, Key(2, 2), true);  // never used again
  EXPECT_EQ(belady->PickVictim(All()), 0);
}

}  // namespace
}  // namespace moe::experts
