// The offline simulator: Belady against hand-made traces and an exhaustive optimum, online
// policies against Belady, rounds and the prefetch model.
#include "moe/experts/cache_sim.h"

#include <gtest/gtest.h>

#include <bit>
#include <climits>
#include <functional>
#include <random>

#include "moe/experts/synthetic_trace.h"

namespace moe::experts {
namespace {

// A single-batch-per-step trace from a list of steps (each a layer and its experts).
Trace MakeTrace(TraceShape shape, std::vector<std::pair<int32_t, std::vector<int32_t>>> steps) {
  Trace t;
  t.shape = shape;
  int64_t batch = 0;
  for (auto& [layer, experts] : steps) {
    // A new batch starts whenever the layer does not increase.
    if (!t.steps.empty() && layer <= t.steps.back().layer) ++batch;
    t.steps.push_back({batch, layer, std::move(experts)});
  }
  return t;
}

SimResult Simulate(const Trace& trace, SimPolicy policy, int32_t slots) {
  SimOptions options;
  options.policy = policy;
  options.n_slots = slots;
  auto result = SimulateTrace(trace, options);
  EXPECT_TRUE(result.ok()) << result.status();
  return result.ok() ? *result : SimResult{};
}

// Fewest misses any demand-paging cache of `slots` entries can achieve: exhaustive search over
// which resident keys to keep after each step (memoized on (step, resident set)).
int OptimalMisses(const Trace& t, int slots) {
  const int n_keys = t.shape.n_layers * t.shape.n_experts;
  std::vector<std::vector<int>> memo(t.steps.size(), std::vector<int>(1u << n_keys, -1));
  std::function<int(size_t, uint32_t)> f = [&](size_t i, uint32_t resident) -> int {
    if (i == t.steps.size()) return 0;
    int& m = memo[i][resident];
    if (m >= 0) return m;
    uint32_t need = 0;
    for (int32_t e : t.steps[i].experts) need |= 1u << (t.steps[i].layer * t.shape.n_experts + e);
    const int cost = std::popcount(need & ~resident);
    const uint32_t keep_candidates = resident & ~need;
    int best = INT_MAX;
    for (uint32_t keep = keep_candidates;; keep = (keep - 1) & keep_candidates) {
      if (std::popcount(need | keep) <= slots) best = std::min(best, f(i + 1, need | keep));
      if (keep == 0) break;
    }
    return m = cost + best;
  };
  return f(0, 0);
}

TEST(CacheSim, BeladyOnAHandMadeTrace) {
  // One layer, 2 slots, accesses 0 1 2 0 1 3 0 1. Belady: misses 0 1 2 (evict 1, next use
  // farther than 0's), hit 0, miss 1 (evict 2: never used again), miss 3 (evict 1), hit 0, miss 1.
  const Trace t = MakeTrace(
      {1, 4, 1}, {{0, {0}}, {0, {1}}, {0, {2}}, {0, {0}}, {0, {1}}, {0, {3}}, {0, {0}}, {0, {1}}});
  const SimResult belady = Simulate(t, SimPolicy::kBelady, 2);
  EXPECT_EQ(belady.counters.hits, 2u);
  EXPECT_EQ(belady.counters.misses, 6u);
  EXPECT_EQ(belady.counters.evictions, 4u);
  // LRU evicts exactly the key needed next each time.
  EXPECT_EQ(Simulate(t, SimPolicy::kLru, 2).counters.hits, 0u);
  EXPECT_EQ(OptimalMisses(t, 2), 6);
}

TEST(CacheSim, BeladyMatchesTheExhaustiveOptimumOnRandomTinyTraces) {
  std::mt19937 rng(7);
  for (int trial = 0; trial < 60; ++trial) {
    const int32_t slots = 2 + trial % 3;  // 2..4
    std::vector<std::pair<int32_t, std::vector<int32_t>>> steps;
    for (int i = 0; i < 12; ++i) {
      const int32_t layer = static_cast<int32_t>(rng() % 2);
      std::vector<int32_t> experts = {static_cast<int32_t>(rng() % 4)};
      const int32_t second = static_cast<int32_t>(rng() % 4);
      if (rng() % 2 && second != experts[0]) experts.push_back(second);
      steps.push_back({layer, experts});
    }
    const Trace t = MakeTrace({2, 4, 1}, steps);
    const SimResult belady = Simulate(t, SimPolicy::kBelady, slots);
    EXPECT_EQ(static_cast<int>(belady.counters.misses), OptimalMisses(t, slots))
        << "trial " << trial;
    for (SimPolicy p :
         {SimPolicy::kLayerLru, SimPolicy::kLayerLrfu, SimPolicy::kLru, SimPolicy::kLfu,
          SimPolicy::kLruK, SimPolicy::kReuse, SimPolicy::kStaticLru, SimPolicy::kArc}) {
      EXPECT_GE(Simulate(t, p, slots).counters.misses, belady.counters.misses)
          << SimPolicyName(p) << " trial " << trial;
    }
  }
}

TEST(CacheSim, LayerLruEscapesTheCyclicScanThatDefeatsLru) {
  // A forward pass over 4 layers, one expert each, 10 times; the cache holds 3 experts.
  std::vector<std::pair<int32_t, std::vector<int32_t>>> steps;
  for (int pass = 0; pass < 10; ++pass) {
    for (int32_t layer = 0; layer < 4; ++layer) steps.push_back({layer, {0}});
  }
  const Trace t = MakeTrace({4, 1, 1}, steps);
  // LRU always evicts the expert of the next layer.
  EXPECT_EQ(Simulate(t, SimPolicy::kLru, 3).counters.hits, 0u);
  // Layer-LRU: every expert was used in its layer's latest visit (age 0), so the tie rule evicts
  // the layer visited most recently, whose next use is farthest: Belady's choice here.
  const SimResult layer_lru = Simulate(t, SimPolicy::kLayerLru, 3);
  const SimResult belady = Simulate(t, SimPolicy::kBelady, 3);
  EXPECT_EQ(static_cast<int>(belady.counters.misses), OptimalMisses(t, 3));
  EXPECT_EQ(layer_lru.counters.hits, belady.counters.hits);
  EXPECT_GT(layer_lru.counters.hits, 20u);
  // Reuse: equal estimates, so the expert whose layer was visited last is expected farthest.
  EXPECT_EQ(Simulate(t, SimPolicy::kReuse, 3).counters.hits, belady.counters.hits);
}

TEST(CacheSim, LayerPoliciesCountAVisitBeforeItsFirstEviction) {
  // Layer 0 uses a, layer 1 uses b, layer 0 then needs c only (a step of misses), layer 1 b again.
  // When c needs a slot, a has missed the visit of layer 0 in progress (age 1) while b is fresh
  // (age 0): a goes, and b hits.
  const Trace t = MakeTrace({2, 4, 1}, {{0, {0}}, {1, {1}}, {0, {2}}, {1, {1}}});
  for (SimPolicy p : {SimPolicy::kLayerLru, SimPolicy::kLayerLrfu, SimPolicy::kReuse}) {
    EXPECT_EQ(Simulate(t, p, 2).counters.hits, 1u) << SimPolicyName(p);
  }
}

TEST(CacheSim, OnlinePoliciesNeverBeatBeladyOnASyntheticTrace) {
  SyntheticTraceOptions o = SyntheticTraceOptions::Qwen3_30B_A3B();
  o.shape = {6, 32, 4};
  o.n_batches = 60;
  o.tokens_per_batch = 4;
  auto trace = GenerateSyntheticTrace(o);
  ASSERT_TRUE(trace.ok());
  for (double fraction : {0.25, 0.5, 0.75}) {
    const int32_t slots = SlotsForFraction(trace->shape, fraction);
    const SimResult belady = Simulate(*trace, SimPolicy::kBelady, slots);
    EXPECT_EQ(belady.counters.Demanded(), static_cast<uint64_t>(trace->Accesses()));
    for (SimPolicy p :
         {SimPolicy::kLayerLru, SimPolicy::kLayerLrfu, SimPolicy::kLru, SimPolicy::kLfu,
          SimPolicy::kLruK, SimPolicy::kReuse, SimPolicy::kStaticLru, SimPolicy::kArc}) {
      const SimResult r = Simulate(*trace, p, slots);
      EXPECT_EQ(r.counters.Demanded(), static_cast<uint64_t>(trace->Accesses()));
      EXPECT_LE(r.counters.HitRate(), belady.counters.HitRate()) << SimPolicyName(p);
    }
  }
}

// On sticky multi-token batches an expert used by more tokens is likelier to come back at its
// layer's next visit (each token repeats each pick with probability `stickiness`): reuse, given
// the tokens per expert (TraceStep::uses, as the engine gives them), keeps those and hits more
// than from the expert sets alone.
TEST(CacheSim, ReuseLearnsFromTokensPerExpertOnStickyBatches) {
  SyntheticTraceOptions o = SyntheticTraceOptions::Qwen3_30B_A3B();
  o.shape = {6, 64, 8};
  o.n_batches = 600;
  o.tokens_per_batch = 16;
  o.zipf_exponent = 0.8;
  o.stickiness = 0.5;
  auto trace = GenerateSyntheticTrace(o);
  ASSERT_TRUE(trace.ok());
  SimOptions options;
  options.policy = SimPolicy::kReuse;
  options.n_slots = SlotsForFraction(trace->shape, 0.25);
  auto with_uses = SimulateTrace(*trace, options);
  options.step_uses = false;
  auto sets_only = SimulateTrace(*trace, options);
  ASSERT_TRUE(with_uses.ok() && sets_only.ok());
  EXPECT_EQ(with_uses->counters.Demanded(), sets_only->counters.Demanded());
  EXPECT_GT(with_uses->counters.HitRate(), sets_only->counters.HitRate() + 0.005)
      << with_uses->counters.HitRate() << " vs " << sets_only->counters.HitRate();
}

TEST(CacheSim, StepsLargerThanTheCacheRunInRounds) {
  const Trace t = MakeTrace(
      {2, 8, 4}, {{0, {0, 1, 2, 3, 4, 5}}, {1, {0, 1, 2, 3, 4}}, {0, {0, 1, 2, 3, 4, 5}}});
  for (SimPolicy p : {SimPolicy::kLayerLru, SimPolicy::kBelady}) {
    const SimResult r = Simulate(t, p, 4);
    EXPECT_EQ(r.counters.Demanded(), 17u) << SimPolicyName(p);
    EXPECT_EQ(r.counters.deferred_rounds, 3u) << SimPolicyName(p);
  }
}

TEST(CacheSim, PerfectLookaheadTurnsMissesIntoHits) {
  SyntheticTraceOptions o;
  o.shape = {8, 16, 2};
  o.n_batches = 50;
  o.tokens_per_batch = 2;
  auto trace = GenerateSyntheticTrace(o);
  ASSERT_TRUE(trace.ok());
  SimOptions options;
  options.n_slots = SlotsForFraction(trace->shape, 0.25);
  auto without = SimulateTrace(*trace, options);
  options.prefetch = {/*recall=*/1.0, /*precision=*/1.0, /*seed=*/3};
  auto with = SimulateTrace(*trace, options);
  ASSERT_TRUE(without.ok() && with.ok());
  EXPECT_DOUBLE_EQ(with->prediction_precision, 1.0);
  EXPECT_DOUBLE_EQ(with->prediction_recall, 1.0);
  EXPECT_GT(with->counters.HitRate(), without->counters.HitRate());
  // Only each batch's first layer can miss.
  EXPECT_LE(with->counters.misses, static_cast<uint64_t>(o.n_batches * 2 * o.tokens_per_batch));
  EXPECT_GT(with->counters.prefetch_useful, 0u);

  options.prefetch = {0.5, 0.5, 3};
  auto noisy = SimulateTrace(*trace, options);
  ASSERT_TRUE(noisy.ok());
  EXPECT_NEAR(noisy->prediction_recall, 0.5, 0.1);
  EXPECT_NEAR(noisy->prediction_precision, 0.5, 0.1);
  options.prefetch = {1.5, 1.0, 3};
  EXPECT_EQ(SimulateTrace(*trace, options).status().code(), absl::StatusCode::kInvalidArgument);
}

// count_from_step counts a suffix of the trace: for a policy that does not look ahead, the
// counters of the whole trace minus those of its prefix alone; for Belady, at most the misses of
// a cold cache on the suffix alone; out-of-range values are refused.
TEST(CacheSim, CountFromStepCountsTheSuffixOnAWarmCache) {
  SyntheticTraceOptions o = SyntheticTraceOptions::Qwen3_30B_A3B();
  o.shape = {4, 32, 4};
  o.n_batches = 120;
  o.tokens_per_batch = 1;
  auto trace = GenerateSyntheticTrace(o);
  ASSERT_TRUE(trace.ok());
  const int64_t from = 60 * 4;  // batch 60's first step
  Trace prefix = *trace;
  prefix.steps.resize(static_cast<size_t>(from));
  Trace suffix = *trace;
  suffix.steps.erase(suffix.steps.begin(), suffix.steps.begin() + from);
  for (SimPolicy policy : {SimPolicy::kLayerLru, SimPolicy::kReuse, SimPolicy::kBelady}) {
    SimOptions options;
    options.policy = policy;
    options.n_slots = SlotsForFraction(trace->shape, 0.5);
    auto all = SimulateTrace(*trace, options);
    options.count_from_step = from;
    auto tail = SimulateTrace(*trace, options);
    ASSERT_TRUE(all.ok() && tail.ok()) << SimPolicyName(policy);
    EXPECT_EQ(tail->counters.Demanded(),
              static_cast<uint64_t>(trace->Accesses() - prefix.Accesses()));
    if (policy != SimPolicy::kBelady) {
      options.count_from_step = 0;
      auto head = SimulateTrace(prefix, options);
      ASSERT_TRUE(head.ok());
      EXPECT_EQ(tail->counters.misses, all->counters.misses - head->counters.misses)
          << SimPolicyName(policy);
      EXPECT_EQ(tail->counters.hits, all->counters.hits - head->counters.hits);
    } else {
      options.count_from_step = 0;
      auto cold = SimulateTrace(suffix, options);
      ASSERT_TRUE(cold.ok());
      EXPECT_GT(tail->counters.misses, 0u);
      EXPECT_LT(tail->counters.misses, cold->counters.misses);
    }
    options.count_from_step = static_cast<int64_t>(trace->steps.size());
    auto none = SimulateTrace(*trace, options);
    ASSERT_TRUE(none.ok());
    EXPECT_EQ(none->counters.Demanded(), 0u);
    options.count_from_step = static_cast<int64_t>(trace->steps.size()) + 1;
    EXPECT_EQ(SimulateTrace(*trace, options).status().code(), absl::StatusCode::kInvalidArgument);
    options.count_from_step = -1;
    EXPECT_EQ(SimulateTrace(*trace, options).status().code(), absl::StatusCode::kInvalidArgument);
  }
}

TEST(CacheSim, StaticOptimumIsTheMostUsedSetInHindsight) {
  // Uses: L0/E0 x3, L0/E1 x1, L1/E0 x2, L1/E1 x2 (8 accesses).
  const Trace t = MakeTrace({2, 2, 1}, {{0, {0}}, {1, {0, 1}}, {0, {0, 1}}, {1, {0, 1}}, {0, {0}}});
  EXPECT_EQ(ExpertUseCounts(t), (std::vector<int64_t>{3, 1, 2, 2}));
  EXPECT_DOUBLE_EQ(StaticOptimalHitRate(t, 1), 3.0 / 8);
  EXPECT_DOUBLE_EQ(StaticOptimalHitRate(t, 2), 5.0 / 8);
  EXPECT_DOUBLE_EQ(StaticOptimalHitRate(t, 4), 1.0);
  EXPECT_DOUBLE_EQ(StaticOptimalHitRate(t, 9), 1.0);
  EXPECT_DOUBLE_EQ(StaticOptimalHitRate(Trace{{2, 2, 1}, {}}, 1), 0.0);
}

TEST(CacheSim, StaticLruKeepsTheMostUsedExpertsThroughAScan) {
  // One layer, 3 slots; the largest step has 1 expert, so the 2 most used experts (0: x6,
  // 1: x5) are static. Between their uses, 2..5 are scanned once each: layer-LRU lets the scan
  // evict 0 and 1; static-lru evicts only scanned experts and hits every reuse of 0 and 1.
  std::vector<std::pair<int32_t, std::vector<int32_t>>> steps;
  for (int32_t e : {0, 1, 2, 3, 0, 1, 4, 5, 0, 1, 2, 3, 0, 1, 4, 5, 0, 1, 0}) {
    steps.push_back({0, {e}});
  }
  const Trace t = MakeTrace({1, 6, 1}, steps);
  const SimResult stat = Simulate(t, SimPolicy::kStaticLru, 3);
  EXPECT_EQ(stat.counters.misses, 2u + 8u);  // first uses of 0 and 1, every scanned expert
  EXPECT_EQ(stat.counters.hits, 9u);
  EXPECT_LT(Simulate(t, SimPolicy::kLayerLru, 3).counters.hits, stat.counters.hits);
}

TEST(CacheSim, ArcAdaptsItsRecencyTargetOnGhostHits) {
  // One layer, 2 slots: a b a c b c b a. a: T1; b: T1; a hits -> T2; c evicts b (T1 holds
  // >= max(1, p = 0)) -> ghost B1; b evicts c (T1) -> B1, and b's ghost hit raises p to 1 and
  // puts b in T2; c: T1 is empty (< p) so T2's LRU a goes -> B2, c's B1 ghost raises p to 2 -> T2;
  // b hits; a evicts T2's LRU c. Hits: a, b.
  const Trace t = MakeTrace(
      {1, 4, 1}, {{0, {0}}, {0, {1}}, {0, {0}}, {0, {2}}, {0, {1}}, {0, {2}}, {0, {1}}, {0, {0}}});
  const SimResult arc = Simulate(t, SimPolicy::kArc, 2);
  EXPECT_EQ(arc.counters.hits, 2u);
  EXPECT_EQ(arc.counters.misses, 6u);
  EXPECT_EQ(arc.counters.evictions, 4u);
  EXPECT_EQ(Simulate(t, SimPolicy::kLru, 2).counters.hits, 3u);  // a, c, b
}

TEST(CacheSim, OracleEvictsTheExpertWhoseNextUseIsFarthestByItsProbability) {
  // Two layers of two experts, two slots. Batch 1's step at layer 0 loads expert 1 there and
  // must evict layer 0's expert 0 (its next step is in batch 2) or layer 1's expert 0 (key 2,
  // next step later in batch 1, which uses it).
  const Trace t = MakeTrace({2, 2, 1}, {{0, {0}}, {1, {0}}, {0, {1}}, {1, {0}}});
  for (const double p_layer1 : {0.9, 0.01}) {
    std::vector<std::pair<int64_t, int64_t>> asked;
    SimOptions options;
    options.policy = SimPolicy::kOracle;
    options.n_slots = 2;
    options.use_probability = [&](int64_t batch, int64_t key) {
      asked.emplace_back(batch, key);
      return key == 2 ? p_layer1 : 0.9;
    };
    auto r = SimulateTrace(t, options);
    ASSERT_TRUE(r.ok()) << r.status();
    // Expected next uses, in steps: key 2 at step 3 + 2 x (1/p - 1), key 0 at 4 + 2 x (1/0.9 - 1).
    EXPECT_EQ(r->counters.hits, p_layer1 > 0.5 ? 1u : 0u) << p_layer1;
    // Then, when key 2 went, batch 1's step at layer 1 loads it back and evicts one of layer 0's
    // two experts, whose next step is in batch 2.
    std::vector<std::pair<int64_t, int64_t>> want = {{2, 0}, {1, 2}};
    if (p_layer1 < 0.5) want.insert(want.end(), {{2, 0}, {2, 1}});
    EXPECT_EQ(asked, want);
  }
  SimOptions no_probabilities;
  no_probabilities.policy = SimPolicy::kOracle;
  no_probabilities.n_slots = 2;
  EXPECT_EQ(SimulateTrace(t, no_probabilities).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(CacheSim, PolicyNamesRoundTrip) {
  for (SimPolicy p : {SimPolicy::kLayerLru, SimPolicy::kLayerLrfu, SimPolicy::kLru, SimPolicy::kLfu,
                      SimPolicy::kLruK, SimPolicy::kBelady, SimPolicy::kReuse,
                      SimPolicy::kStaticLru, SimPolicy::kArc, SimPolicy::kOracle}) {
    EXPECT_EQ(*ParseSimPolicy(SimPolicyName(p)), p);
  }
  EXPECT_FALSE(ParseSimPolicy("opt").ok());
  EXPECT_EQ(SlotsForFraction({48, 128, 8}, 0.25), 1536);
  EXPECT_EQ(SlotsForFraction({1, 2, 1}, 0.01), 1);
}

}  // namespace
}  // namespace moe::experts
