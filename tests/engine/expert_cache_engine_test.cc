// The CUDA engine with an expert cache budget against the same engine with every expert resident:
// outputs and routing must be BITWISE identical (the cached forward runs the same kernels on the
// same tiles at the same launch capacity; only where the weights come from differs). Budgets of a
// few slots force eviction churn and multi-round batches; layers run in random order; two engine
// slots share one cache concurrently. A hook checks at every round that each pinned expert sits
// in its slot (no expert is evicted while in use). Layers whose experts are all resident run their
// routed kernels straight after the device residency check (no host round trip before them);
// with the check off, or deeper lookahead (2-3 layers), outputs stay identical. Skips without a
// GPU.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "common/forward_run.h"
#include "common/gpu_test_util.h"
#include "engine_cpu/random_model.h"
#include "engine_cuda/engine_compare.h"
#include "moe/engine/cuda_engine.h"
#include "moe/experts/slot_pool.h"
#include "moe/experts/trace.h"

namespace moe {
namespace {

using testing::MakeActivations;
using testing::RandomModel;
using testing::RandomModelOptions;

using testing::ExpectForward;
using Output = testing::RunResult;  // out: output bytes; ids; weights (poisoned before the run)

// Checks, at every round, that each pinned expert is where the round says (pinned, not free) and
// that a resident entry is ready. Counts rounds and the entries that had to load.
struct RoundChecker {
  std::atomic<int64_t> rounds{0}, loads{0}, violations{0};
  void operator()(const experts::AcquireRound& round, const experts::ExpertSlotPool& pool) {
    ++rounds;
    for (const experts::RoundEntry& e : round.entries) {
      const experts::SlotInfo info = pool.Inspect(e.slot);
      const bool ok =
          info.key.has_value() && *info.key == e.key && info.pins >= 1 &&
          info.state != experts::SlotState::kFree &&
          (e.source != experts::SlotSource::kResident || info.state == experts::SlotState::kReady);
      if (!ok) ++violations;
      if (e.source == experts::SlotSource::kLoad) ++loads;
    }
  }
};

struct Budget {
  std::string name;
  int64_t slots = 0;  // expert slots in the budget (0 = every expert)
  bool prefetch = true;
  int depth = 1;              // lookahead depth
  bool device_check = true;   // device residency check
  bool graphs = true;         // the device phase from CUDA graphs (ExpertCacheOptions::graphs)
  bool meta_in_graph = true;  // CudaEngineOptions::meta_in_graph (off: the meta is copied)
  // ExpertCacheOptions::front_skips_scan (at one token the residency kernel counts the offsets)
  bool front_skips_scan = true;
  bool residency_pdl = true;  // ExpertCacheOptions::residency_pdl
  bool pack_slots = false;    // ExpertCacheOptions::pack_slots
  bool compress = false;      // ExpertCacheOptions::compress_host_tier (runs once it is encoded)
};

RandomModelOptions ModelOptions(Family f, int experts, int top_k, int hidden, int inter,
                                uint64_t seed) {
  return testing::ShapedModelOptions(f, experts, top_k, hidden, inter, DType::kBF16, seed,
                                     {0, 1, 2, 3});
}

int64_t SlotBytes(const MoeSpec& spec) {
  const int64_t proj = int64_t{spec.moe_intermediate} * spec.hidden * 2;
  return 3 * ((proj + 255) / 256 * 256);
}

// Runs the same random sequence of (layer, tokens) through an all-resident engine and engines
// with each budget; requires identical bytes.
// expect_packed: the all-resident engine packs its routed experts on Hopper devices (the cached
// engines' slots stay row-major).
void CheckBudgets(const RandomModelOptions& mo, DType act, const std::vector<Budget>& budgets,
                  const std::vector<int64_t>& token_counts, int steps, bool expect_packed = false) {
  const auto model = RandomModel(mo);
  const MoeSpec& spec = model->spec();
  CudaEngineOptions base;
  base.max_batch_tokens = 640;
  auto resident = CudaEngine::Create(model, base);
  ASSERT_TRUE(resident.ok()) << resident.status();
  if (expect_packed && (*resident)->uses_wgmma()) {
    ASSERT_TRUE((*resident)->packed_expert_weights());
  }

  // The step sequence: random layer order (repeats allowed), random token counts.
  std::mt19937 rng(static_cast<uint32_t>(mo.seed));
  struct Step {
    int layer;
    int64_t n;
    std::vector<uint8_t> input;
    Output expected;
  };
  std::vector<Step> seq;
  for (int i = 0; i < steps; ++i) {
    Step st;
    st.layer = spec.moe_layers[rng() % spec.moe_layers.size()];
    st.n = token_counts[rng() % token_counts.size()];
    st.input = MakeActivations(act, st.n * spec.hidden, 1000 + i).bytes;
    st.expected = ExpectForward(**resident, st.layer, act, st.input, st.n);
    seq.push_back(std::move(st));
  }
  const int64_t all_experts =
      int64_t{spec.n_experts()} * static_cast<int64_t>(spec.moe_layers.size());
  for (const Budget& b : budgets) {
    SCOPED_TRACE(b.name);
    RoundChecker checker;
    CudaEngineOptions o = base;
    o.expert_cache.budget_bytes = (b.slots > 0 ? b.slots : all_experts) * SlotBytes(spec);
    o.expert_cache.prefetch = b.prefetch;
    o.expert_cache.prefetch_depth = b.depth;
    o.expert_cache.device_residency_check = b.device_check;
    o.expert_cache.graphs = b.graphs;
    o.meta_in_graph = b.meta_in_graph;
    o.expert_cache.front_skips_scan = b.front_skips_scan;
    o.expert_cache.residency_pdl = b.residency_pdl;
    o.expert_cache.pack_slots = b.pack_slots;
    o.expert_cache.compress_host_tier = b.compress;
    o.expert_cache.compress_threads = 2;
    // A full budget soon holds every layer, and the lookahead is then skipped (covered by
    // WarmCacheSkipsTheLookahead): these cases keep it running to check the predicting forwards.
    o.expert_cache.lookahead_skips_resident = b.slots > 0;
    o.expert_cache.on_round = [&checker](const experts::AcquireRound& r,
                                         const experts::ExpertSlotPool& p) { checker(r, p); };
    auto cached = CudaEngine::Create(model, o);
    ASSERT_TRUE(cached.ok()) << cached.status();
    ASSERT_NE((*cached)->expert_cache_pool(), nullptr);
    EXPECT_EQ((*cached)->expert_cache_pool()->SlotCount(0), b.slots > 0 ? b.slots : all_experts);
    // Packed slots exactly where the all-resident engine packs (and the budget asks for them).
    const auto cache_stats = (*cached)->expert_cache_stats();
    ASSERT_TRUE(cache_stats.ok()) << cache_stats.status();
    EXPECT_EQ(cache_stats->packed_slots, b.pack_slots && (*resident)->packed_expert_weights());
    if (b.compress) {
      // Every miss below then moves a compressed blob (the random weights are normal values).
      for (;;) {
        auto s = (*cached)->expert_cache_stats();
        ASSERT_TRUE(s.ok()) << s.status();
        if (s->compression_done) {
          EXPECT_EQ(s->compression_error, "");
          EXPECT_EQ(s->compressed_experts, all_experts);
          EXPECT_EQ(s->compressible_experts, all_experts);
          EXPECT_GT(s->compression_ratio, 0.6);  // ~0.66 for the uniform test weights
          EXPECT_LT(s->compression_ratio, 0.72);
          break;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      }
    }
    for (size_t i = 0; i < seq.size(); ++i) {
      const Step& st = seq[i];
      SCOPED_TRACE(::testing::Message() << "step " << i << " layer " << st.layer << " n " << st.n);
      const Output got = ExpectForward(**cached, st.layer, act, st.input, st.n);
      ASSERT_EQ(got.ids, st.expected.ids);
      ASSERT_EQ(std::memcmp(got.weights.data(), st.expected.weights.data(),
                            got.weights.size() * sizeof(float)),
                0);
      ASSERT_EQ(got.out, st.expected.out) << "outputs differ from the all-resident engine";
    }
    ASSERT_TRUE((*cached)->QuiesceExpertCache().ok());
    auto stats = (*cached)->expert_cache_stats();
    ASSERT_TRUE(stats.ok()) << stats.status();
    EXPECT_EQ(checker.violations.load(), 0) << "an expert in use was not in its slot";
    if (b.compress) {
      const uint64_t loads = stats->counters.misses + stats->counters.prefetch_issued;
      EXPECT_EQ(stats->compressed_loads, loads) << "every load should move a blob";
      EXPECT_LT(stats->wire_bytes, stats->counters.bytes_copied);
    } else {
      EXPECT_EQ(stats->compressed_loads, 0u);
      EXPECT_EQ(stats->wire_bytes, stats->counters.bytes_copied);
    }
    EXPECT_GT(stats->counters.misses, 0u);
    EXPECT_EQ(stats->host_round_trips, static_cast<uint64_t>(seq.size()));
    EXPECT_GE(stats->rounds, stats->host_round_trips);
    if (b.slots > 0 && b.slots < all_experts) {
      EXPECT_GT(stats->counters.evictions, 0u) << "the budget should force evictions";
    } else {
      EXPECT_EQ(stats->counters.evictions, 0u);
    }
    if (b.slots > 0 && b.slots < spec.n_experts()) {
      EXPECT_GT(stats->rounds, stats->host_round_trips) << "small budgets need several rounds";
      EXPECT_GT(stats->counters.deferred_rounds, 0u);
    }
    if (b.prefetch) {
      EXPECT_GT(stats->predicted, 0u);
      ASSERT_EQ(stats->by_depth.size(), static_cast<size_t>(b.depth));
      for (const auto& d : stats->by_depth) EXPECT_GT(d.predicted, 0u);
    } else {
      EXPECT_EQ(stats->counters.prefetch_issued, 0u);
    }
    if (!b.device_check) {
      EXPECT_EQ(stats->device_hits, 0u);
    } else if (b.slots == 0) {
      EXPECT_GT(stats->device_hits, 0u) << "a full budget should skip round trips once warm";
    }
  }
}

TEST(ExpertCacheEngine, MixtralBf16BitwiseUnderBudgets) {
  MOE_REQUIRE_GPU();
  const auto mo = ModelOptions(Family::kMixtral, 16, 2, 256, 128, 31);
  CheckBudgets(
      mo, DType::kBF16,
      {{"3 slots (churn, multi-round)", 3, true},
       {"3 slots, no prefetch", 3, false},
       {"50%", 32, true},
       {"50%, depth 3", 32, true, 3},
       {"50%, check off", 32, true, 1, false},
       {"50%, direct launches", 32, true, 1, true, false},
       {"50%, check off, direct launches", 32, true, 1, false, false},
       {"50%, meta copied", 32, true, 1, true, true, false},
       {"50%, meta copied, direct launches", 32, true, 1, true, false, false},
       {"50%, the front scans at 1 token", 32, true, 1, true, true, true, false},
       {"50%, residency kernel without PDL", 32, true, 1, true, true, true, true, false},
       {"50%, residency kernel without PDL, direct launches", 32, true, 1, true, false, true, true,
        false},
       {"3 slots (churn, multi-round), packed slots", 3, true, 1, true, true, true, true, true,
        true},
       {"50%, packed slots", 32, true, 1, true, true, true, true, true, true},
       {"3 slots (churn, multi-round), compressed host tier", 3, true, 1, true, true, true, true,
        true, false, true},
       {"50%, compressed host tier", 32, true, 1, true, true, true, true, true, false, true},
       {"50%, compressed host tier, direct launches", 32, true, 1, true, false, true, true, true,
        false, true},
       {"full", 0, true},
       {"full, depth 2", 0, true, 2},
       {"full, direct launches", 0, true, 1, true, false}},
      {1, 2, 5, 33, 130, 600}, 40);
}

TEST(ExpertCacheEngine, Qwen2MoeSharedExpertBitwiseUnderBudgets) {
  MOE_REQUIRE_GPU();
  auto mo = ModelOptions(Family::kQwen2Moe, 31, 4, 128, 64, 32);
  mo.norm_topk_prob = false;
  CheckBudgets(mo, DType::kBF16,
               {{"5 slots (churn, multi-round)", 5, true},
                {"50%", 62, false},
                {"50%, depth 2", 62, true, 2},
                {"full", 0, true}},
               {1, 3, 17, 200}, 40);
}

TEST(ExpertCacheEngine, F32ActivationsQwen3) {
  MOE_REQUIRE_GPU();
  const auto mo = ModelOptions(Family::kQwen3Moe, 64, 8, 128, 64, 33);
  CheckBudgets(
      mo, DType::kF32,
      {{"9 slots", 9, true},
       {"8 slots (one token's experts)", 8, true},
       {"8 slots, the front scans at 1 token", 8, true, 1, true, true, true, false},
       {"8 slots, residency kernel without PDL", 8, true, 1, true, true, true, true, false},
       {"50%", 128, true},
       {"50%, depth 3", 128, true, 3},
       {"9 slots, compressed host tier", 9, true, 1, true, true, true, true, true, false, true}},
      {1, 4, 40}, 24);
}

// A shape whose all-resident engine packs its experts on Hopper (hidden and inter multiples of
// 128) and runs the decode experts path and, row-major, would take the weight-streaming gate/up
// at a few rows per expert (experts of >= 512 Ki elements): the cached engines must plan and sum
// as the packed one does.
TEST(ExpertCacheEngine, PackedResidentExpertsBitwiseAtFewTokens) {
  MOE_REQUIRE_GPU();
  const auto mo = ModelOptions(Family::kQwen3Moe, 32, 4, 1024, 512, 35);
  CheckBudgets(
      mo, DType::kBF16,
      {{"40 slots (churn; a step's experts fit, as the decode experts path needs)", 40, true},
       {"50%", 64, true},
       {"full", 0, true},
       {"full, direct launches", 0, false, 1, true, false},
       {"40 slots, packed slots", 40, true, 1, true, true, true, true, true, true},
       {"full, packed slots", 0, true, 1, true, true, true, true, true, true},
       {"40 slots, compressed host tier", 40, true, 1, true, true, true, true, true, false, true}},
      {1, 2, 3, 8, 16, 24}, 30, /*expect_packed=*/true);
}

TEST(ExpertCacheEngine, TwoSlotsShareOneCacheConcurrently) {
  MOE_REQUIRE_GPU();
  const auto mo = ModelOptions(Family::kMixtral, 16, 2, 256, 128, 34);
  const auto model = RandomModel(mo);
  const MoeSpec& spec = model->spec();
  CudaEngineOptions base;
  base.max_batch_tokens = 256;
  base.num_slots = 2;
  auto resident = CudaEngine::Create(model, base);
  ASSERT_TRUE(resident.ok()) << resident.status();
  CudaEngineOptions o = base;
  o.expert_cache.budget_bytes = 6 * SlotBytes(spec);
  RoundChecker checker;
  o.expert_cache.on_round = [&checker](const experts::AcquireRound& r,
                                       const experts::ExpertSlotPool& p) { checker(r, p); };
  auto cached = CudaEngine::Create(model, o);
  ASSERT_TRUE(cached.ok()) << cached.status();
  constexpr int kSteps = 30;
  std::vector<int64_t> mismatches(2, 0);
  auto worker = [&](int slot) {
    std::mt19937 rng(100 + slot);
    for (int i = 0; i < kSteps; ++i) {
      const int layer = spec.moe_layers[rng() % spec.moe_layers.size()];
      const int64_t n = 1 + rng() % 100;
      const auto in = MakeActivations(DType::kBF16, n * spec.hidden, 5000 + 100 * slot + i).bytes;
      const Output want = ExpectForward(**resident, layer, DType::kBF16, in, n, slot);
      const Output got = ExpectForward(**cached, layer, DType::kBF16, in, n, slot);
      if (got.out != want.out || got.ids != want.ids) ++mismatches[slot];
    }
  };
  std::thread t0(worker, 0), t1(worker, 1);
  t0.join();
  t1.join();
  EXPECT_EQ(mismatches[0], 0);
  EXPECT_EQ(mismatches[1], 0);
  EXPECT_EQ(checker.violations.load(), 0);
  auto stats = (*cached)->expert_cache_stats();
  ASSERT_TRUE(stats.ok());
  EXPECT_GT(stats->counters.evictions, 0u);
}

// Decode steps of a few experts on two engine slots: most layers pass the device check while
// the other slot's misses and prefetches evict experts of the same layers, so speculative reads
// race withdrawals (the fences of the residency table must order them).
TEST(ExpertCacheEngine, TwoSlotsSpeculateWhileTheOtherEvicts) {
  MOE_REQUIRE_GPU();
  const auto mo = ModelOptions(Family::kQwen3Moe, 32, 4, 128, 64, 38);
  const auto model = RandomModel(mo);
  const MoeSpec& spec = model->spec();
  CudaEngineOptions base;
  base.max_batch_tokens = 16;
  base.num_slots = 2;
  auto resident = CudaEngine::Create(model, base);
  ASSERT_TRUE(resident.ok()) << resident.status();
  CudaEngineOptions o = base;
  // 40 of the 128 experts: less than both slots' working sets (2 inputs x 4 layers x 4 experts
  // each, ~55 distinct), so misses evict; the lookahead's loads evict too.
  o.expert_cache.budget_bytes = 40 * SlotBytes(spec);
  o.expert_cache.prefetch_depth = 2;
  o.expert_cache.prefetch_max_loads = 2;
  RoundChecker checker;
  o.expert_cache.on_round = [&checker](const experts::AcquireRound& r,
                                       const experts::ExpertSlotPool& p) { checker(r, p); };
  auto cached = CudaEngine::Create(model, o);
  ASSERT_TRUE(cached.ok()) << cached.status();
  constexpr int kPasses = 25;
  std::vector<int64_t> mismatches(2, 0);
  auto worker = [&](int slot) {
    std::mt19937 rng(200 + slot);
    // A few recurring inputs per slot, so that experts repeat and hit.
    std::vector<std::vector<uint8_t>> pool;
    for (int i = 0; i < 2; ++i) {
      pool.push_back(MakeActivations(DType::kBF16, spec.hidden, 7000 + 10 * slot + i).bytes);
    }
    for (int pass = 0; pass < kPasses; ++pass) {
      const auto& in = pool[rng() % pool.size()];
      for (const int layer : spec.moe_layers) {
        const Output want = ExpectForward(**resident, layer, DType::kBF16, in, 1, slot);
        const Output got = ExpectForward(**cached, layer, DType::kBF16, in, 1, slot);
        if (got.out != want.out || got.ids != want.ids) ++mismatches[slot];
      }
    }
  };
  std::thread t0(worker, 0), t1(worker, 1);
  t0.join();
  t1.join();
  EXPECT_EQ(mismatches[0], 0);
  EXPECT_EQ(mismatches[1], 0);
  EXPECT_EQ(checker.violations.load(), 0);
  ASSERT_TRUE((*cached)->QuiesceExpertCache().ok());
  auto stats = (*cached)->expert_cache_stats();
  ASSERT_TRUE(stats.ok());
  EXPECT_GT(stats->counters.evictions, 0u);
  EXPECT_GT(stats->device_hits, 0u);
  EXPECT_LT(stats->device_hits, stats->host_round_trips);
}

// A one-token step whose round comes back partial and that may not retry (decode_round_retries
// 0; the test hook max_round_experts caps every round at half the step, as slots pinned by other
// engine slots would) runs in several rounds of tile kernels, after the front again with the scan
// it skipped: the same routing, outputs within bf16 rounding of the all-resident ones (the decode
// experts kernels sum differently), no expert in use evicted; on packed slots (where the
// all-resident engine packs) the same bits as on row-major ones (the tile GEMV reads the same
// chunks in the same order).
TEST(ExpertCacheEngine, DecodeStepInRoundsWhenItsSlotsStayBusy) {
  MOE_REQUIRE_GPU();
  const auto mo = ModelOptions(Family::kQwen3Moe, 16, 4, 256, 128, 41);
  const auto model = RandomModel(mo);
  const MoeSpec& spec = model->spec();
  CudaEngineOptions base;
  base.max_batch_tokens = 16;
  auto resident = CudaEngine::Create(model, base);
  ASSERT_TRUE(resident.ok()) << resident.status();
  std::mt19937 rng(7);
  std::vector<int> layers;
  std::vector<std::vector<uint8_t>> inputs;
  std::vector<Output> wants;
  for (int i = 0; i < 24; ++i) {
    layers.push_back(spec.moe_layers[rng() % spec.moe_layers.size()]);
    inputs.push_back(MakeActivations(DType::kBF16, spec.hidden, 500 + i).bytes);
    wants.push_back(ExpectForward(**resident, layers.back(), DType::kBF16, inputs.back(), 1));
  }
  for (const bool skips_scan : {true, false}) {
    std::vector<std::vector<uint8_t>> row_major_outs;
    for (const bool pack_slots : {false, true}) {
      SCOPED_TRACE(skips_scan ? "the front skips the scan" : "the front scans");
      SCOPED_TRACE(pack_slots ? "packed slots" : "row-major slots");
      CudaEngineOptions o = base;
      o.expert_cache.budget_bytes = spec.top_k() * SlotBytes(spec);  // the least allowed
      o.expert_cache.decode_round_retries = 0;
      o.expert_cache.max_round_experts = spec.top_k() / 2;
      o.expert_cache.front_skips_scan = skips_scan;
      o.expert_cache.pack_slots = pack_slots;
      RoundChecker checker;
      o.expert_cache.on_round = [&checker](const experts::AcquireRound& r,
                                           const experts::ExpertSlotPool& p) { checker(r, p); };
      auto cached = CudaEngine::Create(model, o);
      ASSERT_TRUE(cached.ok()) << cached.status();
      const size_t h = static_cast<size_t>(spec.hidden);
      for (size_t i = 0; i < layers.size(); ++i) {
        const Output got = ExpectForward(**cached, layers[i], DType::kBF16, inputs[i], 1);
        const Output& want = wants[i];
        ASSERT_EQ(got.ids, want.ids) << "step " << i;
        ASSERT_EQ(got.weights, want.weights) << "step " << i;
        // A NaN or inf output (the poison left unwritten) makes the error NaN or inf: a failure.
        ASSERT_LT(
            testing::RelErr(testing::ToFloats(DType::kBF16, got.out, h),
                            testing::ToFloats(DType::kBF16, want.out, h), spec.hidden, {true}),
            1e-2)
            << "step " << i;
        if (!pack_slots) {
          row_major_outs.push_back(got.out);
        } else {
          ASSERT_EQ(got.out, row_major_outs[i]) << "step " << i << ": packed against row-major";
        }
      }
      ASSERT_TRUE((*cached)->QuiesceExpertCache().ok());
      auto stats = (*cached)->expert_cache_stats();
      ASSERT_TRUE(stats.ok()) << stats.status();
      EXPECT_EQ(stats->packed_slots, pack_slots && (*resident)->packed_expert_weights());
      EXPECT_EQ(checker.violations.load(), 0) << "an expert in use was not in its slot";
      EXPECT_GE(stats->rounds, 2 * stats->host_round_trips)
          << "every step takes two rounds or more";
    }
  }
}

// A step with some of its experts ready and the others loading computes the ready experts before
// it waits for the loads, then the rest: bitwise the all-resident outputs. At one token (the
// decode experts path) that is the ready experts' gate/up (the other pairs skipped by null table
// entries); at 3 tokens (tile GEMVs) their tiles. Step A loads its experts; after the copies
// finish, step B (same layer) routes to some of A's experts and to others: one such round.
TEST(ExpertCacheEngine, StepComputesReadyExpertsBeforeItsLoads) {
  MOE_REQUIRE_GPU();
  const auto mo = ModelOptions(Family::kQwen3Moe, 32, 4, 256, 128, 43);
  const auto model = RandomModel(mo);
  const MoeSpec& spec = model->spec();
  CudaEngineOptions base;
  base.max_batch_tokens = 16;
  auto resident = CudaEngine::Create(model, base);
  ASSERT_TRUE(resident.ok()) << resident.status();
  const int layer = spec.moe_layers[1];
  for (const int64_t n : {1, 3}) {
    // B: the first input whose experts overlap A's without being all of them.
    const auto a_in = MakeActivations(DType::kBF16, n * spec.hidden, 700).bytes;
    const Output a_want = ExpectForward(**resident, layer, DType::kBF16, a_in, n);
    const std::set<int32_t> a_experts(a_want.ids.begin(), a_want.ids.end());
    std::vector<uint8_t> b_in;
    Output b_want;
    for (int seed = 701; seed < 1700 && b_in.empty(); ++seed) {
      auto in = MakeActivations(DType::kBF16, n * spec.hidden, seed).bytes;
      Output want = ExpectForward(**resident, layer, DType::kBF16, in, n);
      const std::set<int32_t> b_experts(want.ids.begin(), want.ids.end());
      int shared = 0;
      for (const int32_t x : b_experts) shared += a_experts.count(x) > 0 ? 1 : 0;
      if (shared > 0 && shared < static_cast<int>(b_experts.size())) {
        b_in = std::move(in);
        b_want = std::move(want);
      }
    }
    ASSERT_FALSE(b_in.empty()) << "no input routes partly to A's experts";
    for (const bool pack_slots : {false, true}) {
      SCOPED_TRACE(::testing::Message() << "n " << n << (pack_slots ? ", packed" : ", row-major"));
      CudaEngineOptions o = base;
      o.expert_cache.budget_bytes = 2 * spec.n_experts() * SlotBytes(spec);  // half of 4 layers
      o.expert_cache.prefetch = false;  // only the demand loads move experts
      o.expert_cache.pack_slots = pack_slots;
      auto cached = CudaEngine::Create(model, o);
      ASSERT_TRUE(cached.ok()) << cached.status();
      const Output a_got = ExpectForward(**cached, layer, DType::kBF16, a_in, n);
      ASSERT_EQ(a_got.ids, a_want.ids);
      ASSERT_EQ(a_got.out, a_want.out) << "step A differs from the all-resident engine";
      ASSERT_TRUE((*cached)->QuiesceExpertCache().ok());
      const Output b_got = ExpectForward(**cached, layer, DType::kBF16, b_in, n);
      ASSERT_EQ(b_got.ids, b_want.ids);
      ASSERT_EQ(b_got.out, b_want.out) << "step B differs from the all-resident engine";
      auto stats = (*cached)->expert_cache_stats();
      ASSERT_TRUE(stats.ok()) << stats.status();
      EXPECT_EQ(stats->ready_first_rounds, 1u) << "step B should compute its ready experts first";
      EXPECT_EQ(stats->device_hits, 0u);
    }
  }
}

// With every expert loaded, every layer forward passes the device check: no host round trip
// stands before its routed kernels.
TEST(ExpertCacheEngine, WarmedCacheRunsEveryLayerWithoutARoundTrip) {
  MOE_REQUIRE_GPU();
  const auto mo = ModelOptions(Family::kQwen2Moe, 12, 2, 128, 64, 39);
  const auto model = RandomModel(mo);
  const MoeSpec& spec = model->spec();
  CudaEngineOptions base;
  base.max_batch_tokens = 64;
  auto resident = CudaEngine::Create(model, base);
  ASSERT_TRUE(resident.ok()) << resident.status();
  CudaEngineOptions o = base;
  const int64_t all = int64_t{spec.n_experts()} * static_cast<int64_t>(spec.moe_layers.size());
  o.expert_cache.budget_bytes = all * SlotBytes(spec);
  auto cached = CudaEngine::Create(model, o);
  ASSERT_TRUE(cached.ok()) << cached.status();
  std::vector<experts::ExpertKey> keys;
  for (const int layer : spec.moe_layers) {
    for (int e = 0; e < spec.n_experts(); ++e) keys.push_back({layer, e});
  }
  auto warmed = (*cached)->WarmExpertCache(keys);
  ASSERT_TRUE(warmed.ok()) << warmed.status();
  ASSERT_EQ(*warmed, all);
  int forwards = 0;
  for (const int64_t n : {1, 3, 20, 64}) {
    for (const int layer : spec.moe_layers) {
      const auto in = MakeActivations(DType::kBF16, n * spec.hidden, 300 + 10 * n + layer).bytes;
      const Output want = ExpectForward(**resident, layer, DType::kBF16, in, n);
      const Output got = ExpectForward(**cached, layer, DType::kBF16, in, n);
      EXPECT_EQ(got.out, want.out) << "layer " << layer << " n " << n;
      EXPECT_EQ(got.ids, want.ids);
      ++forwards;
    }
  }
  auto stats = (*cached)->expert_cache_stats();
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->device_hits, static_cast<uint64_t>(forwards));
  EXPECT_EQ(stats->counters.misses, 0u);
}

// The lookahead applies the next layers' routers and routing function (plain scores) to this
// layer's input; fed that same input, those layers must route as predicted (families without a
// selection bias). Where the layer runs the decode front (<= 32 tokens) the lookahead is one more
// front kernel per depth (ExpertCacheOptions::lookahead_front) with the same sums as the next
// layers' own fronts: exactly, from graphs and from direct launches. The router GEMM's logits
// (more tokens, or the option off) are summed in another order, so they may differ at near-ties:
// at least 95% there.
TEST(ExpertCacheEngine, LookaheadPredictsTheNextLayersRouting) {
  MOE_REQUIRE_GPU();
  struct Case {
    const char* name;
    RandomModelOptions mo;
  };
  auto v2 = ModelOptions(Family::kDeepseekV2, 64, 6, 128, 64, 41);
  v2.n_group = 8;
  v2.topk_group = 3;  // group-limited greedy
  const std::vector<Case> cases = {
      {"qwen3 64/8", ModelOptions(Family::kQwen3Moe, 64, 8, 256, 64, 42)},
      {"mixtral 8/2", ModelOptions(Family::kMixtral, 8, 2, 256, 64, 43)},
      {"qwen2-moe 31/4 (shared gate row)", ModelOptions(Family::kQwen2Moe, 31, 4, 128, 64, 44)},
      {"deepseek-v2 64/6, groups", v2}};
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const auto model = RandomModel(c.mo);
    const MoeSpec& spec = model->spec();
    const int64_t all = int64_t{spec.n_experts()} * static_cast<int64_t>(spec.moe_layers.size());
    struct Variant {
      bool by_front, graphs;
      int depth;
    };
    for (const Variant v : {Variant{true, true, 1}, Variant{true, true, 2}, Variant{true, false, 1},
                            Variant{false, true, 1}}) {
      for (const int64_t n : {1, 3, 32, 40}) {
        SCOPED_TRACE(::testing::Message() << "lookahead_front " << v.by_front << " graphs "
                                          << v.graphs << " depth " << v.depth << " n " << n);
        CudaEngineOptions o;
        o.max_batch_tokens = 64;
        o.expert_cache.budget_bytes = all * SlotBytes(spec);
        o.expert_cache.prefetch_depth = v.depth;
        o.expert_cache.lookahead_front = v.by_front;
        o.expert_cache.graphs = v.graphs;
        o.expert_cache.lookahead_skips_resident = false;  // predict every layer, also when warm
        auto cached = CudaEngine::Create(model, o);
        ASSERT_TRUE(cached.ok()) << cached.status();
        for (int pass = 0; pass < 4; ++pass) {
          const auto in = MakeActivations(DType::kBF16, n * spec.hidden, 500 + pass).bytes;
          for (const int layer : spec.moe_layers) {
            ExpectForward(**cached, layer, DType::kBF16, in, n);
          }
        }
        auto stats = (*cached)->expert_cache_stats();
        ASSERT_TRUE(stats.ok()) << stats.status();
        ASSERT_EQ(stats->by_depth.size(), static_cast<size_t>(v.depth));
        for (const auto& d : stats->by_depth) {
          ASSERT_GT(d.predicted, 0u);
          if (v.by_front && n <= 32) {
            EXPECT_EQ(d.correct, d.predicted);
            EXPECT_EQ(d.actual, d.predicted);
          } else {
            EXPECT_GE(d.precision, 0.95);
            EXPECT_GE(d.recall, 0.95);
          }
        }
      }
    }
  }
}

// A budget that holds the whole model: once every expert of the layers a lookahead would predict
// is resident, the forwards skip it (ExpertCacheOptions::lookahead_skips_resident) and still
// match the all-resident engine bit for bit; with the option off, or while a predicted layer is
// missing experts, they predict.
TEST(ExpertCacheEngine, WarmCacheSkipsTheLookahead) {
  MOE_REQUIRE_GPU();
  const auto model = RandomModel(ModelOptions(Family::kQwen3Moe, 32, 4, 256, 64, 45));
  const MoeSpec& spec = model->spec();
  CudaEngineOptions base;
  base.max_batch_tokens = 64;
  auto resident = CudaEngine::Create(model, base);
  ASSERT_TRUE(resident.ok()) << resident.status();
  const int64_t all = int64_t{spec.n_experts()} * static_cast<int64_t>(spec.moe_layers.size());
  std::vector<experts::ExpertKey> keys;
  for (const int layer : spec.moe_layers) {
    for (int e = 0; e < spec.n_experts(); ++e) keys.push_back({layer, e});
  }
  for (const bool skip : {true, false}) {
    for (const bool warm : {true, false}) {
      SCOPED_TRACE(::testing::Message() << "skip " << skip << " warm " << warm);
      CudaEngineOptions o = base;
      o.expert_cache.budget_bytes = all * SlotBytes(spec);
      o.expert_cache.prefetch_depth = 2;
      o.expert_cache.lookahead_skips_resident = skip;
      auto cached = CudaEngine::Create(model, o);
      ASSERT_TRUE(cached.ok()) << cached.status();
      if (warm) {
        ASSERT_TRUE((*cached)->WarmExpertCache(keys).ok());
      }
      for (const int64_t n : {1, 3, 20}) {
        for (const int layer : spec.moe_layers) {
          const auto in =
              MakeActivations(DType::kBF16, n * spec.hidden, 700 + 10 * n + layer).bytes;
          const Output want = ExpectForward(**resident, layer, DType::kBF16, in, n);
          const Output got = ExpectForward(**cached, layer, DType::kBF16, in, n);
          EXPECT_EQ(got.out, want.out) << "layer " << layer << " n " << n;
          EXPECT_EQ(got.ids, want.ids);
        }
      }
      auto stats = (*cached)->expert_cache_stats();
      ASSERT_TRUE(stats.ok()) << stats.status();
      if (skip && warm) {
        EXPECT_EQ(stats->predicted, 0u) << "every predicted layer was resident";
      } else {
        EXPECT_GT(stats->predicted, 0u);  // the cold cache's first layers miss experts
      }
    }
  }
}

TEST(ExpertCacheEngine, RejectsBadBudgets) {
  MOE_REQUIRE_GPU();
  const auto model = RandomModel(ModelOptions(Family::kMixtral, 8, 2, 64, 32, 35));
  CudaEngineOptions o;
  o.max_batch_tokens = 16;
  o.expert_cache.budget_bytes = 100;  // smaller than one expert
  EXPECT_FALSE(CudaEngine::Create(model, o).ok());
  // One slot: a token's two experts would not be resident together for the decode kernels.
  const int64_t slot = SlotBytes(model->spec());
  o.expert_cache.budget_bytes = slot;
  const auto one_slot = CudaEngine::Create(model, o);
  ASSERT_FALSE(one_slot.ok());
  EXPECT_EQ(one_slot.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(one_slot.status().message())
                .find("the budget must be at least " + std::to_string(2 * slot) + " bytes"),
            std::string::npos)
      << one_slot.status();
  o.expert_cache.budget_bytes = 2 * slot;
  EXPECT_TRUE(CudaEngine::Create(model, o).ok());
  // Without the decode experts path a slot is enough (large batches run in rounds).
  o.expert_cache.budget_bytes = slot;
  o.decode_gemv = CudaEngineOptions::DecodeGemv::kNever;
  EXPECT_TRUE(CudaEngine::Create(model, o).ok());
  o.decode_gemv = CudaEngineOptions::DecodeGemv::kAuto;
  o.expert_cache.budget_bytes = -1;
  EXPECT_FALSE(CudaEngine::Create(model, o).ok());
  o.expert_cache.budget_bytes = 1 << 20;
  EXPECT_FALSE(CudaEngine::CreateRandom(model->spec(), 1, o).ok());
  for (const int depth : {0, ExpertCacheOptions::kMaxPrefetchDepth + 1}) {
    o.expert_cache.prefetch_depth = depth;
    EXPECT_FALSE(CudaEngine::Create(model, o).ok()) << "depth " << depth;
  }
  o.expert_cache.prefetch_depth = 2;
  o.expert_cache.prefetch_min_precision = 1.5;
  EXPECT_FALSE(CudaEngine::Create(model, o).ok());
}

TEST(ExpertCacheEngine, WarmsFromARankingWithoutEvictingIt) {
  MOE_REQUIRE_GPU();
  const auto model = RandomModel(ModelOptions(Family::kMixtral, 8, 2, 64, 32, 37));
  CudaEngineOptions base;
  base.max_batch_tokens = 16;
  CudaEngineOptions o = base;
  o.expert_cache.budget_bytes = 5 * SlotBytes(model->spec());
  o.expert_cache.prefetch = false;
  auto cached = CudaEngine::Create(model, o);
  ASSERT_TRUE(cached.ok()) << cached.status();
  const std::vector<experts::ExpertKey> ranked = {{1, 3}, {0, 2}, {3, 7}, {1, 3},
                                                  {2, 0}, {0, 5}, {3, 1}, {2, 6}};
  auto warmed = (*cached)->WarmExpertCache(ranked);
  ASSERT_TRUE(warmed.ok()) << warmed.status();
  EXPECT_EQ(*warmed, 5);  // the budget; the duplicate (1, 3) is loaded once
  const experts::ExpertSlotPool& pool = *(*cached)->expert_cache_pool();
  for (const experts::ExpertKey k : {experts::ExpertKey{1, 3}, {0, 2}, {3, 7}, {2, 0}, {0, 5}}) {
    const auto slot = pool.Find(k);
    ASSERT_TRUE(slot.has_value()) << experts::ToString(k);
    EXPECT_EQ(pool.Inspect(*slot).state, experts::SlotState::kReady);
  }
  EXPECT_FALSE(pool.Find({3, 1}).has_value());
  // Forwards over warmed experts still match the all-resident engine bit for bit.
  auto resident = CudaEngine::Create(model, base);
  ASSERT_TRUE(resident.ok()) << resident.status();
  for (int layer : model->spec().moe_layers) {
    const auto in = MakeActivations(DType::kBF16, 3 * model->spec().hidden, 40 + layer).bytes;
    const Output want = ExpectForward(**resident, layer, DType::kBF16, in, 3);
    const Output got = ExpectForward(**cached, layer, DType::kBF16, in, 3);
    EXPECT_EQ(got.out, want.out) << "layer " << layer;
  }
  auto bad = (*cached)->WarmExpertCache(std::vector<experts::ExpertKey>{{9, 0}});
  EXPECT_FALSE(bad.ok());
}

TEST(ExpertCacheEngine, WritesARoutingTrace) {
  MOE_REQUIRE_GPU();
  const auto model = RandomModel(ModelOptions(Family::kMixtral, 8, 2, 64, 32, 36));
  const std::string path = ::testing::TempDir() + "/expert_cache_engine_trace.txt";
  CudaEngineOptions o;
  o.max_batch_tokens = 16;
  o.expert_cache.budget_bytes = 4 * SlotBytes(model->spec());
  o.expert_cache.trace_path = path;
  auto cached = CudaEngine::Create(model, o);
  ASSERT_TRUE(cached.ok()) << cached.status();
  for (int pass = 0; pass < 3; ++pass) {
    for (int layer : model->spec().moe_layers) {
      const auto in = MakeActivations(DType::kBF16, 4 * model->spec().hidden, pass * 10 + layer);
      ExpectForward(**cached, layer, DType::kBF16, in.bytes, 4);
    }
  }
  ASSERT_TRUE((*cached)->FlushExpertTrace().ok());
  auto trace = experts::ReadTraceFile(path);
  ASSERT_TRUE(trace.ok()) << trace.status();
  EXPECT_EQ(trace->steps.size(), 3 * model->spec().moe_layers.size());
  EXPECT_EQ(trace->steps.back().batch, 2);
}

}  // namespace
}  // namespace moe
