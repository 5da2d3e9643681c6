// The CUDA engine against the CPU engine (the reference) and the double-precision reference
// routing, for every family, dtype, tile path, graphs and deterministic mode. Skips without a GPU.
#include "moe/engine/cuda_engine.h"

#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "common/forward_run.h"
#include "common/gpu_test_util.h"
#include "engine_cpu/random_model.h"
#include "engine_cpu/reference.h"
#include "engine_cuda/engine_compare.h"
#include "moe/engine/cpu_engine.h"

namespace moe {
namespace {

using testing::MakeActivations;
using testing::RandomActivations;
using testing::RandomModel;
using testing::RandomModelOptions;

using Case = testing::EngineCase;
using testing::kMinMargin;
constexpr auto Opts = testing::CaseModel;

// A forward with poisoned outputs (out: the output bytes, ids, weights) and its output as floats.
struct RunResult : testing::RunResult {
  std::vector<float> values;  // [n, hidden] as floats
};

RunResult RunForward(Engine& engine, int layer, DType dtype, const std::vector<uint8_t>& input,
                     int64_t n, int slot = 0) {
  RunResult r{testing::ExpectForward(engine, layer, dtype, input, n, slot), {}};
  r.values.resize(static_cast<size_t>(n) * engine.spec().hidden);
  ConvertToF32(dtype, r.out.data(), r.values.data(), r.values.size());
  return r;
}

// Runs sub-batches [begin, begin + len) of `x` ([n, hidden] of `act`) and requires each token's
// output bytes to equal its bytes in `full`, the forward of all of `x`.
void ExpectSubBatchesMatchFull(Engine& engine, DType act, const std::vector<uint8_t>& x,
                               const RunResult& full,
                               const std::vector<std::pair<int64_t, int64_t>>& sub_batches) {
  const size_t row_bytes = engine.spec().hidden * DTypeSize(act);
  for (auto [begin, len] : sub_batches) {
    std::vector<uint8_t> sub(x.begin() + begin * row_bytes, x.begin() + (begin + len) * row_bytes);
    const RunResult part = RunForward(engine, 0, act, sub, len);
    ASSERT_EQ(0, std::memcmp(part.out.data(), full.out.data() + begin * row_bytes, len * row_bytes))
        << "tokens [" << begin << ", " << begin + len << ") differ from the full batch";
  }
}

struct Compare {
  double rel_err = 0;
  int64_t skipped = 0;      // near-tie tokens
  int64_t id_mismatch = 0;  // tokens (not near ties) whose experts differ from the reference
  int64_t non_finite = 0;
};

// Compares `gpu` with `cpu` over tokens whose reference routing is unambiguous.
Compare CompareRuns(const Model& model, int layer, const std::vector<float>& x, int64_t n,
                    const RunResult& gpu, const RunResult& cpu) {
  const MoeSpec& spec = model.spec();
  const testing::ReferenceOutput ref = testing::ReferenceForward(model, layer, x, n);
  Compare c;
  const int k = spec.top_k(), h = spec.hidden;
  for (int64_t t = 0; t < n; ++t) {
    for (int j = 0; j < h; ++j) {
      if (!std::isfinite(gpu.values[t * h + j])) ++c.non_finite;
    }
    if (ref.routing.margin[t] < kMinMargin) {
      ++c.skipped;
      continue;
    }
    for (int j = 0; j < k; ++j) {
      if (gpu.ids[t * k + j] != ref.routing.ids[t * k + j]) {
        ++c.id_mismatch;
        break;
      }
    }
  }
  c.rel_err = testing::RelErr(gpu.values, cpu.values, h, testing::UnambiguousTokens(ref, n));
  return c;
}

void CheckCase(const Case& tc, const CudaEngineOptions& gpu_options) {
  SCOPED_TRACE(tc.name);
  const auto model = RandomModel(tc.model);
  auto cpu = testing::ReferenceCpuEngine(model, gpu_options.max_batch_tokens);
  ASSERT_TRUE(cpu.ok()) << cpu.status();
  auto gpu = CudaEngine::Create(model, gpu_options);
  ASSERT_TRUE(gpu.ok()) << gpu.status();
  uint64_t seed = tc.model.seed * 7919;
  for (int layer : tc.model.moe_layers) {
    for (int64_t n : tc.tokens) {
      SCOPED_TRACE(::testing::Message() << "layer " << layer << " n_tokens " << n);
      const auto act = MakeActivations(tc.act, n * model->spec().hidden, ++seed);
      const RunResult g = RunForward(**gpu, layer, tc.act, act.bytes, n);
      const RunResult c = RunForward(**cpu, layer, tc.act, act.bytes, n);
      const Compare cmp = CompareRuns(*model, layer, act.values, n, g, c);
      EXPECT_EQ(cmp.non_finite, 0);
      EXPECT_EQ(cmp.id_mismatch, 0);
      EXPECT_LE(cmp.skipped, std::max<int64_t>(1, n / 20)) << "too many near ties";
      EXPECT_LT(cmp.rel_err, 1e-2);
      // Weights of the chosen experts match the CPU's wherever the ids match.
      const int k = model->spec().top_k();
      for (int64_t i = 0; i < n * k; ++i) {
        if (g.ids[i] == c.ids[i]) {
          ASSERT_NEAR(g.weights[i], c.weights[i], 1e-4 * std::max(1.0f, std::fabs(c.weights[i])))
              << "pair " << i;
        }
      }
    }
  }
}

void CheckCases(const std::vector<Case>& cases, const CudaEngineOptions& gpu_options) {
  for (const Case& c : cases) CheckCase(c, gpu_options);
}

// Runs each case's token counts (layer 0) on two engines of the same model: the same experts,
// and outputs within `tol` of each other (relative error; 0: the same bits).
void CheckEnginesAgree(const std::vector<Case>& cases, const CudaEngineOptions& a_options,
                       const CudaEngineOptions& b_options, uint64_t seed, double tol) {
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const auto model = RandomModel(c.model);
    auto a_engine = CudaEngine::Create(model, a_options);
    auto b_engine = CudaEngine::Create(model, b_options);
    ASSERT_TRUE(a_engine.ok()) << a_engine.status();
    ASSERT_TRUE(b_engine.ok()) << b_engine.status();
    for (int64_t n : c.tokens) {
      const auto x = MakeActivations(c.act, n * model->spec().hidden, seed + n);
      const RunResult a = RunForward(**a_engine, 0, c.act, x.bytes, n);
      const RunResult b = RunForward(**b_engine, 0, c.act, x.bytes, n);
      EXPECT_EQ(a.ids, b.ids) << n << " tokens";
      if (tol == 0) {
        EXPECT_EQ(a.values, b.values) << n << " tokens";
      } else {
        EXPECT_LT(testing::RelErr(a.values, b.values, model->spec().hidden,
                                  std::vector<bool>(static_cast<size_t>(n), true)),
                  tol)
            << n << " tokens";
      }
    }
  }
}

// CheckEnginesAgree (the same bits) of `a` against `b`, each changed the same way by every one of
// `variants` in turn (engines of the same options apart from what the test compares).
using Vary = void (*)(CudaEngineOptions&);
void CheckEnginesAgreeVaried(const std::vector<Case>& cases, const CudaEngineOptions& a,
                             const CudaEngineOptions& b, const std::vector<Vary>& variants,
                             uint64_t& seed) {
  for (Vary vary : variants) {
    CudaEngineOptions va = a, vb = b;
    vary(va);
    vary(vb);
    CheckEnginesAgree(cases, va, vb, seed++, /*tol=*/0);
  }
}

// Token counts that hit the decode (<= 16 rows per expert), medium and large tiles, with counts
// that are no multiple of any tile.
const std::vector<int64_t> kTokenCounts = {1, 5, 33, 130, 600};

CudaEngineOptions DefaultOptions() {
  CudaEngineOptions o;
  o.max_batch_tokens = 640;
  return o;
}

// DefaultOptions() with `tile` forced on Hopper.
CudaEngineOptions WithHopperTile(CudaEngineOptions::HopperTile tile) {
  CudaEngineOptions o = DefaultOptions();
  o.hopper_tile = tile;
  return o;
}

TEST(CudaEngine, EveryFamilyBf16) {
  MOE_REQUIRE_GPU();
  std::vector<Case> cases = {
      {"mixtral", Opts(Family::kMixtral, 8, 2, 200, 72, DType::kBF16, 11), DType::kBF16,
       kTokenCounts},
      {"qwen2_moe", Opts(Family::kQwen2Moe, 31, 4, 128, 64, DType::kBF16, 12), DType::kBF16,
       kTokenCounts},
      {"qwen3_moe", Opts(Family::kQwen3Moe, 129, 8, 136, 48, DType::kBF16, 13), DType::kBF16,
       kTokenCounts},
      {"deepseek_v2", Opts(Family::kDeepseekV2, 32, 6, 128, 88, DType::kBF16, 14), DType::kBF16,
       kTokenCounts},
      {"deepseek_v3", Opts(Family::kDeepseekV3, 64, 8, 256, 64, DType::kBF16, 15), DType::kBF16,
       kTokenCounts},
      {"olmoe", Opts(Family::kOlmoe, 64, 8, 64, 128, DType::kBF16, 16), DType::kBF16, kTokenCounts},
  };
  cases[1].model.norm_topk_prob = false;
  cases[5].model.norm_topk_prob = false;
  CheckCases(cases, DefaultOptions());
}

TEST(CudaEngine, DtypesAndDeepseekV2Greedy) {
  MOE_REQUIRE_GPU();
  std::vector<Case> cases = {
      {"f16 weights, f16 act",
       Opts(Family::kQwen3Moe, 16, 4, 128, 96, DType::kF16, 21),
       DType::kF16,
       {1, 40, 300}},
      {"f16 weights, f32 act",
       Opts(Family::kMixtral, 8, 2, 128, 96, DType::kF16, 22),
       DType::kF32,
       {1, 40, 300}},
      {"f16 weights, bf16 act",
       Opts(Family::kDeepseekV3, 32, 4, 128, 64, DType::kF16, 23),
       DType::kBF16,
       {3, 300}},
      {"bf16 weights, f32 act",
       Opts(Family::kQwen2Moe, 16, 4, 192, 64, DType::kBF16, 24),
       DType::kF32,
       {1, 40, 300}},
      {"bf16 weights, f16 act",
       Opts(Family::kOlmoe, 16, 2, 128, 64, DType::kBF16, 25),
       DType::kF16,
       {2, 300}},
      {"deepseek_v2 greedy",
       Opts(Family::kDeepseekV2, 16, 4, 128, 64, DType::kBF16, 26),
       DType::kF32,
       {1, 300}},
  };
  cases[5].model.n_group = 1;
  CheckCases(cases, DefaultOptions());
}

TEST(CudaEngine, WithoutGraphsAndDeterministic) {
  MOE_REQUIRE_GPU();
  CudaEngineOptions eager = DefaultOptions();
  eager.graph_batch_sizes.clear();
  CheckCase({"eager",
             Opts(Family::kDeepseekV3, 32, 4, 128, 64, DType::kBF16, 31),
             DType::kBF16,
             {1, 9, 200}},
            eager);
  // The sm_80 (mma.sync) medium and large tiles, also on Hopper.
  CudaEngineOptions mma = DefaultOptions();
  mma.use_wgmma = false;
  CheckCases({{"mma.sync tiles",
               Opts(Family::kQwen3Moe, 16, 4, 192, 80, DType::kBF16, 33),
               DType::kBF16,
               {40, 600}},
              {"mma.sync tiles f16",
               Opts(Family::kMixtral, 8, 2, 128, 64, DType::kF16, 34),
               DType::kF32,
               {40, 600}}},
             mma);
  // The other Hopper tiles (the cluster tile, kWideCluster, is the default above).
  using Tile = CudaEngineOptions::HopperTile;
  CheckCase({"wgmma 128x256 cp.async tile",
             Opts(Family::kDeepseekV2, 16, 4, 200, 88, DType::kBF16, 39),
             DType::kBF16,
             {600}},
            WithHopperTile(Tile::kWide));
  CheckCase({"wgmma 128x128 tile",
             Opts(Family::kDeepseekV2, 32, 6, 192, 80, DType::kBF16, 35),
             DType::kBF16,
             {600}},
            WithHopperTile(Tile::kTwoPerSm));
  CheckCase({"wgmma 256x128 tile",
             Opts(Family::kMixtral, 8, 2, 192, 80, DType::kF16, 36),
             DType::kBF16,
             {600}},
            WithHopperTile(Tile::kTall));
  // Warp-specialised persistent 128x256 tile: K tails (hidden 200, inter 88), and a down GEMM of
  // 16 column blocks x 16 row tiles (more work items than SMs: each block loops, the ring wraps).
  CheckCases({{"wgmma warp-specialised tile bf16",
               Opts(Family::kDeepseekV2, 16, 4, 200, 88, DType::kBF16, 37),
               DType::kBF16,
               {130, 600}},
              {"wgmma warp-specialised tile f16, many work items",
               Opts(Family::kMixtral, 8, 2, 4096, 128, DType::kF16, 38),
               DType::kF32,
               {600}}},
             WithHopperTile(Tile::kWideWarpSpecialized));
  CudaEngineOptions det = DefaultOptions();
  det.deterministic = true;
  CheckCase({"deterministic",
             Opts(Family::kQwen2Moe, 31, 4, 128, 64, DType::kBF16, 32),
             DType::kBF16,
             {1, 9, 200, 600}},
            det);
}

// The TMA-multicast cluster tile (kWideCluster) against the CPU, and bit for bit against the
// cp.async warp-specialised tile it must equal: K tails (hidden 200 or 136: the last TMA box and
// cp.async chunk read past K as zeros), N tails (inter 88 or 48: gated boxes past the expert's
// rows), experts of 150 rows (the pair's second block gets 22 rows, one consumer none), 31
// experts, f16 with f32 partials (down split-K at 130 tokens), a down GEMM of 16 column blocks
// (hidden 4096: more work items than clusters, the rings wrap) and one of 3 (hidden 520: the 2 x 2
// cluster's last column pair has one block past N); the down GEMM on 2 x 2 clusters (forced here)
// equals it on 2-block clusters bit for bit, with A by cp.async or by TMA, and so does the gate/up
// GEMM reading a permuted copy of x by TMA (also checked against the CPU, with graphs), and so do
// both GEMMs in ping-pong mode (64-row tiles, the consumer warpgroups alternating items: experts
// of 150 rows take 3 tiles, the last of 22 rows; 31 experts leave a cluster's last pair one tile;
// against the CPU too; in the kernel of 64-row stages, the default, and of 128-row ones); the
// static schedule of work items gives the bits of the dynamic one (the default; CheckCases runs
// several forwards on one engine, so each launch must leave the counter at zero for the next).
TEST(CudaEngine, ClusterTile) {
  MOE_REQUIRE_GPU();
  using Tile = CudaEngineOptions::HopperTile;
  const std::vector<Case> cases = {
      {"cluster tile, tails",
       Opts(Family::kDeepseekV2, 16, 4, 200, 88, DType::kBF16, 71),
       DType::kBF16,
       {130, 600}},
      {"cluster tile, 31 experts",
       Opts(Family::kQwen3Moe, 31, 4, 136, 48, DType::kBF16, 72),
       DType::kBF16,
       {600}},
      {"cluster tile f16, many work items",
       Opts(Family::kMixtral, 8, 2, 4096, 128, DType::kF16, 73),
       DType::kF32,
       {600}},
      {"cluster tile, 3 column blocks",
       Opts(Family::kQwen3Moe, 16, 4, 520, 136, DType::kBF16, 79),
       DType::kBF16,
       {600}},
  };
  CudaEngineOptions quad = WithHopperTile(Tile::kWideCluster);
  quad.cluster_quad_down = CudaEngineOptions::Use::kAlways;
  quad.cluster_pingpong = CudaEngineOptions::Use::kNever;
  CheckCases(cases, quad);
  CudaEngineOptions solo = quad;
  solo.cluster_multicast = false;  // every tile solo: each block loads its own weights by TMA
  CheckCases(cases, solo);
  CudaEngineOptions permuted = DefaultOptions();
  permuted.hopper_tile = Tile::kWideCluster;
  permuted.cluster_permute_x = CudaEngineOptions::Use::kAlways;
  CheckCases(cases, permuted);
  // Variants of the cluster kernels that must give the same bits as the 2 x 2 down GEMM:
  CudaEngineOptions pair_down = quad;  // the down GEMM on 2-block clusters, A by cp.async
  pair_down.cluster_quad_down = CudaEngineOptions::Use::kNever;
  pair_down.cluster_tma_a_down = CudaEngineOptions::Use::kNever;
  CudaEngineOptions tma_a = pair_down;  // ... A by TMA
  tma_a.cluster_tma_a_down = CudaEngineOptions::Use::kAlways;
  CudaEngineOptions permuted_tma_a = tma_a;  // ... and gate/up from the permuted copy of x by TMA
  permuted_tma_a.cluster_permute_x = CudaEngineOptions::Use::kAlways;
  CudaEngineOptions pingpong = tma_a;  // both GEMMs in ping-pong mode
  pingpong.cluster_pingpong = CudaEngineOptions::Use::kAlways;
  CheckCases(cases, pingpong);
  CudaEngineOptions pingpong_cp_async = pingpong;  // ... the down GEMM's A by cp.async
  pingpong_cp_async.cluster_tma_a_down = CudaEngineOptions::Use::kNever;
  CudaEngineOptions pingpong_long = pingpong;  // ... in the kernel of 128-row stages
  pingpong_long.cluster_pingpong_short_stages = false;
  CudaEngineOptions pingpong_long_cp_async = pingpong_cp_async;
  pingpong_long_cp_async.cluster_pingpong_short_stages = false;
  CudaEngineOptions quad_static = quad;  // every ClusterCount()-th item, not the dynamic schedule
  quad_static.cluster_dynamic_schedule = false;
  CudaEngineOptions pair_down_static = pair_down;
  pair_down_static.cluster_dynamic_schedule = false;
  const std::vector<std::pair<const char*, CudaEngineOptions>> variants = {
      {"the static schedule", quad_static},
      {"the down GEMM on 2-block clusters, static schedule", pair_down_static},
      {"the cp.async warp-specialised tile", WithHopperTile(Tile::kWideWarpSpecialized)},
      {"the down GEMM on 2-block clusters", pair_down},
      {"the TMA-A down GEMM", tma_a},
      {"the permuted-x gate/up GEMM", permuted_tma_a},
      {"the ping-pong GEMMs", pingpong},
      {"the ping-pong GEMMs, A by cp.async", pingpong_cp_async},
      {"the ping-pong GEMMs, 128-row stages", pingpong_long},
      {"the ping-pong GEMMs, 128-row stages, A by cp.async", pingpong_long_cp_async},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const auto model = RandomModel(c.model);
    const int64_t n = c.tokens.back();
    const auto x = MakeActivations(c.act, n * model->spec().hidden, 74);
    auto run = [&](const CudaEngineOptions& o) {
      auto engine = CudaEngine::Create(model, o);
      if (engine.ok()) return RunForward(**engine, 0, c.act, x.bytes, n);
      RunResult failed;
      failed.status = engine.status();
      return failed;
    };
    const RunResult ref = run(quad);
    ASSERT_TRUE(ref.status.ok()) << ref.status;
    for (const auto& [name, o] : variants) {
      const RunResult v = run(o);
      ASSERT_TRUE(v.status.ok()) << name << ": " << v.status;
      EXPECT_EQ(v.ids, ref.ids) << name;
      EXPECT_TRUE(v.out == ref.out) << name << " gives other bits than the 2 x 2 down GEMM";
    }
  }
}

// The router fused with the input copy (kernels/router_gemm.cu; batches past the decode front,
// activations in the weights' dtype): router rows that fill no 8-row tile (257 = 33 tiles: one a
// block at 40 tokens, 4 at 600), 8 rows, a shared-expert gate row, f16, token counts no multiple
// of its 32-token blocks, K split over 8 warps unevenly (192 = 6 steps of 32), K split over blocks
// (hidden 2304: 2 splits of 36 steps; 4352: 4 splits of 34, both uneven over the warps); against
// the CPU engine with it on (K splits allowed and not) and off.
TEST(CudaEngine, RouterWithConversion) {
  MOE_REQUIRE_GPU();
  std::vector<Case> cases = {
      {"257 experts",
       Opts(Family::kQwen3Moe, 257, 8, 192, 32, DType::kBF16, 81),
       DType::kBF16,
       {33, 40, 95, 600}},
      {"mixtral, hidden 1024",
       Opts(Family::kMixtral, 8, 2, 1024, 64, DType::kBF16, 82),
       DType::kBF16,
       {40, 130}},
      {"qwen2 shared gate, f16",
       Opts(Family::kQwen2Moe, 60, 4, 256, 64, DType::kF16, 83),
       DType::kF16,
       {64, 300}},
      {"qwen3, hidden 2304: 2 K splits",
       Opts(Family::kQwen3Moe, 64, 8, 2304, 32, DType::kBF16, 84),
       DType::kBF16,
       {1, 33, 300}},
      {"mixtral, hidden 4352: 4 K splits",
       Opts(Family::kMixtral, 8, 2, 4352, 32, DType::kBF16, 85),
       DType::kBF16,
       {31, 257}},
  };
  CudaEngineOptions on = DefaultOptions();
  on.fused_router_convert = CudaEngineOptions::Use::kAlways;
  CheckCases(cases, on);
  CudaEngineOptions unsplit = on;
  unsplit.max_router_convert_splits = 1;
  CheckCases(cases, unsplit);
  CudaEngineOptions eager = on;
  eager.graph_batch_sizes.clear();
  CheckCases(cases, eager);
  CudaEngineOptions off = on;
  off.fused_router_convert = CudaEngineOptions::Use::kNever;
  CheckCases(cases, off);
}

// Routing and scan in one grid (LaunchRouteScanTail, option route_scan_tail): against
// the CPU engine with it on (graphs and eager) and off, over token counts that scatter in the last
// block (up to 8192 pairs) and past it (1100 x 8 pairs: ScatterKernel), 256 experts (its largest
// shared memory), group-limited routing, a shared-expert gate, the permuted copy of x on Hopper
// (ScatterRows after it), and 257 experts (not eligible: the separate kernels). One engine runs
// every count of a case in turn, layers alternating, so counters or a ticket left non-zero by
// one forward would break the next; on and off agree to rounding and choose the same experts.
TEST(CudaEngine, RouteScanTail) {
  MOE_REQUIRE_GPU();
  const std::vector<Case> cases = {
      {"qwen3 129 experts",
       Opts(Family::kQwen3Moe, 129, 8, 136, 48, DType::kBF16, 101),
       DType::kBF16,
       {33, 600, 1100, 40}},
      {"mixtral",
       Opts(Family::kMixtral, 8, 2, 256, 64, DType::kBF16, 102),
       DType::kBF16,
       {40, 300, 1200}},
      {"deepseek_v2 group-limited",
       Opts(Family::kDeepseekV2, 64, 6, 128, 64, DType::kBF16, 103),
       DType::kBF16,
       {257, 64}},
      {"qwen2 shared gate, 256 experts",
       Opts(Family::kQwen2Moe, 256, 8, 128, 32, DType::kBF16, 104),
       DType::kBF16,
       {100, 513}},
      {"257 experts",
       Opts(Family::kQwen3Moe, 257, 8, 128, 32, DType::kBF16, 105),
       DType::kBF16,
       {64}},
  };
  CudaEngineOptions on = DefaultOptions();
  on.max_batch_tokens = 1280;
  on.route_scan_tail = true;
  CheckCases(cases, on);
  CudaEngineOptions eager = on;
  eager.graph_batch_sizes.clear();
  CheckCases(cases, eager);
  CudaEngineOptions permuted = on;
  permuted.cluster_permute_x = CudaEngineOptions::Use::kAlways;
  CheckCases(cases, permuted);
  CudaEngineOptions off = on;
  off.route_scan_tail = false;
  CheckCases(cases, off);
  CheckEnginesAgree(cases, on, off, 106, 1e-5);
}

// The route's counters zeroed by the first kernel instead of a memset node (zero_counts_in_kernel),
// through the input copy + router GEMM and through the fused router: every count of a case runs on
// one engine, so a counter left non-zero would break the next forward.
TEST(CudaEngine, ZeroCountsInKernel) {
  MOE_REQUIRE_GPU();
  const std::vector<Case> cases = {
      {"qwen3",
       Opts(Family::kQwen3Moe, 129, 8, 136, 48, DType::kBF16, 111),
       DType::kBF16,
       {33, 130, 600, 40}},
      {"mixtral f32 act",
       Opts(Family::kMixtral, 8, 2, 256, 64, DType::kBF16, 112),
       DType::kF32,
       {40, 300}},
  };
  CudaEngineOptions o = DefaultOptions();
  o.zero_counts_in_kernel = true;
  CheckCases(cases, o);
  o.fused_router_convert = CudaEngineOptions::Use::kAlways;
  CheckCases(cases, o);
  o.fused_router_convert = CudaEngineOptions::Use::kNever;
  CheckCases(cases, o);
}

// LaunchRouteScanTail alone (both scatters), small enough for compute-sanitizer.
TEST(CudaEngine, RouteScanTailSmall) {
  MOE_REQUIRE_GPU();
  const std::vector<Case> cases = {
      {"qwen3 129 experts",
       Opts(Family::kQwen3Moe, 129, 8, 136, 48, DType::kBF16, 107),
       DType::kBF16,
       {600, 1100}},
  };
  CudaEngineOptions o = DefaultOptions();
  o.max_batch_tokens = 1100;
  o.route_scan_tail = true;
  o.graph_batch_sizes.clear();
  CheckCases(cases, o);
}

// The fused router's K splits alone, small enough for compute-sanitizer racecheck: 4 splits
// (hidden 4352) over one 32-token block and a partial one, against the CPU engine.
TEST(CudaEngine, RouterKSplits) {
  MOE_REQUIRE_GPU();
  const std::vector<Case> cases = {
      {"mixtral, hidden 4352: 4 K splits",
       Opts(Family::kMixtral, 8, 2, 4352, 32, DType::kBF16, 86),
       DType::kBF16,
       {40}},
  };
  CudaEngineOptions o = DefaultOptions();
  o.fused_router_convert = CudaEngineOptions::Use::kAlways;
  o.graph_batch_sizes.clear();
  CheckCases(cases, o);
}

// The cluster GEMMs' dynamic schedule over more work items a cluster than its item ring holds
// (gate/up: 64 experts of ~187 rows x 12 column blocks, ~12 items a cluster), bit for bit against
// the static schedule over several forwards of one engine (each launch must leave its counter at
// zero for the next), graphs and eager, the down GEMM on 2-block and 2 x 2 clusters; and against
// the CPU engine.
TEST(CudaEngine, ClusterDynamicSchedule) {
  MOE_REQUIRE_GPU();
  const auto model = Opts(Family::kQwen3Moe, 64, 4, 512, 1536, DType::kBF16, 125);
  const std::vector<Case> many = {
      {"64 experts, inter 1536", model, DType::kBF16, {3000, 2500, 3000}}};
  CudaEngineOptions dynamic = WithHopperTile(CudaEngineOptions::HopperTile::kWideCluster);
  dynamic.max_batch_tokens = 3000;
  dynamic.graph_batch_sizes = {3000};
  dynamic.cluster_dynamic_schedule = true;
  CudaEngineOptions fixed = dynamic;
  fixed.cluster_dynamic_schedule = false;
  CheckEnginesAgree(many, dynamic, fixed, 126, /*tol=*/0);
  dynamic.graph_batch_sizes.clear();
  fixed.graph_batch_sizes.clear();
  CheckEnginesAgree(many, dynamic, fixed, 127, /*tol=*/0);
  CudaEngineOptions quad = dynamic;
  quad.cluster_quad_down = CudaEngineOptions::Use::kAlways;
  CheckEnginesAgree(many, quad, fixed, 128, /*tol=*/0);
  CheckCases({{"64 experts, inter 1536", model, DType::kBF16, {700}}}, dynamic);
}

// The raster groups of the cluster GEMMs' work items (cluster_raster_units: 1, 3 and 5 units a
// group against kWsGroupRows' 16) move outputs between clusters, never change them: experts of ~3
// multicast pairs (Mixtral-like, 24 units, so groups cut across experts), the dynamic and the
// static schedule, a cap of one down split (the plans of these cases split none), the down GEMM
// on 2 x 2 clusters, ping-pong mode, graphs and eager: the same bits, and against the CPU engine.
// The 64-expert top-8 case has 1000 tiles of combine chunks, so the combine's grid
// (CombineArgs::sm_count) walks several a block.
TEST(CudaEngine, ClusterRasterUnits) {
  MOE_REQUIRE_GPU();
  using Use = CudaEngineOptions::Use;
  const std::vector<Case> cases = {
      {"8 experts top-2, ~3 pairs an expert",
       Opts(Family::kMixtral, 8, 2, 512, 640, DType::kBF16, 161),
       DType::kBF16,
       {3000, 1100}},
      {"64 experts top-8",
       Opts(Family::kQwen3Moe, 64, 8, 1024, 256, DType::kBF16, 162),
       DType::kBF16,
       {2000}},
  };
  CudaEngineOptions ref = WithHopperTile(CudaEngineOptions::HopperTile::kWideCluster);
  ref.max_batch_tokens = 3000;
  ref.graph_batch_sizes = {1100, 2000, 3000};
  ref.cluster_raster_units = 16;
  uint64_t seed = 163;
  for (const int units : {1, 3, 5}) {
    SCOPED_TRACE(units);
    CudaEngineOptions grouped = ref;
    grouped.cluster_raster_units = units;
    CheckEnginesAgreeVaried(cases, grouped, ref,
                            {[](CudaEngineOptions&) {},
                             [](CudaEngineOptions& o) { o.cluster_dynamic_schedule = false; },
                             [](CudaEngineOptions& o) { o.max_down_splits = 1; },
                             [](CudaEngineOptions& o) { o.cluster_quad_down = Use::kAlways; },
                             [](CudaEngineOptions& o) { o.cluster_pingpong = Use::kAlways; },
                             [](CudaEngineOptions& o) { o.graph_batch_sizes.clear(); }},
                            seed);
  }
  CudaEngineOptions plan_rule = ref;
  plan_rule.cluster_raster_units = 0;
  CheckCases(cases, plan_rule);
}

// The down GEMM on the SMs that gate/up leaves idle (cluster_down_overlap: per-expert h-ready
// counters instead of a PDL wait for gate/up's end) gives the bits of the default, over several
// forwards of one engine (the last down cluster must leave the counters at zero: a count past its
// target traps), graphs and eager, in ping-pong mode (the down GEMM's A by TMA and by cp.async),
// on 2-block clusters (multicast pairs, TMA stores of full tiles), with the down GEMM on 2 x 2
// clusters or split along K, 129 experts of which some get no row; and matches the CPU engine.
TEST(CudaEngine, ClusterDownOverlap) {
  MOE_REQUIRE_GPU();
  using Use = CudaEngineOptions::Use;
  const std::vector<Case> cases = {
      {"64 experts, inter 1536",
       Opts(Family::kQwen3Moe, 64, 4, 256, 1536, DType::kBF16, 131),
       DType::kBF16,
       {1500, 700, 1500}},
      {"129 experts, tails",
       Opts(Family::kQwen3Moe, 129, 6, 200, 88, DType::kBF16, 132),
       DType::kBF16,
       {600, 40, 600}},
      {"mixtral f16",
       Opts(Family::kMixtral, 8, 2, 1024, 512, DType::kF16, 133),
       DType::kF32,
       {600, 130}},
  };
  CudaEngineOptions overlap = WithHopperTile(CudaEngineOptions::HopperTile::kWideCluster);
  overlap.max_batch_tokens = 1500;
  overlap.graph_batch_sizes = {40, 130, 600, 700, 1500};
  overlap.cluster_down_overlap = Use::kAlways;
  CudaEngineOptions pingpong = overlap;  // ping-pong GEMMs, the down GEMM's A by TMA
  pingpong.cluster_pingpong = Use::kAlways;
  pingpong.cluster_tma_a_down = Use::kAlways;
  CudaEngineOptions pingpong_cp_async = pingpong;
  pingpong_cp_async.cluster_tma_a_down = Use::kNever;
  CudaEngineOptions pairs = overlap;  // 2-block clusters, the dynamic schedule
  pairs.cluster_pingpong = Use::kNever;
  CudaEngineOptions quad = pairs;
  quad.cluster_quad_down = Use::kAlways;
  CudaEngineOptions unsplit = pairs;
  unsplit.max_down_splits = 1;
  CudaEngineOptions eager = overlap;
  eager.graph_batch_sizes.clear();
  uint64_t seed = 134;
  for (const CudaEngineOptions& o :
       {overlap, pingpong, pingpong_cp_async, pairs, quad, unsplit, eager}) {
    CudaEngineOptions reference = o;
    reference.cluster_down_overlap = Use::kNever;
    CheckEnginesAgree(cases, o, reference, seed++, /*tol=*/0);
  }
  CheckCases(cases, overlap);
}

// An expert's last rows in its last multicast pair (cluster_pair_extra_rows): experts of ~256-280
// rows (1-16 past their pairs: extra rows; more: a solo tile) and of ~384-410 (a solo tile of 128
// and 1-16 extra rows, or a second pair), bf16 and f16, column blocks cut by n (136, 328, 320
// columns) and a K of 4.25 steps, the GEMMs' A by cp.async and by TMA (the down GEMM's h, gate/up's
// permuted x: the extra rows in 8-row boxes), split down GEMMs (f32 partials) and unsplit, the
// h-ready counters (down overlap: extra rows count a quarter each), the static schedule, graphs and
// eager: the same bits as without them, and against the CPU engine.
TEST(CudaEngine, ClusterPairExtraRows) {
  MOE_REQUIRE_GPU();
  using Use = CudaEngineOptions::Use;
  const std::vector<Case> cases = {
      {"16 experts, ~256-280 rows",
       Opts(Family::kQwen3Moe, 16, 4, 256, 136, DType::kBF16, 141),
       DType::kBF16,
       {1040, 1100}},
      {"deepseek_v2 shared experts, ~384-410 rows",
       Opts(Family::kDeepseekV2, 16, 4, 192, 272, DType::kBF16, 142),
       DType::kBF16,
       {1560, 1620}},
      {"mixtral f16, ~262 rows",
       Opts(Family::kMixtral, 8, 2, 320, 328, DType::kF16, 143),
       DType::kF32,
       {1050}},
  };
  CudaEngineOptions ref = WithHopperTile(CudaEngineOptions::HopperTile::kWideCluster);
  ref.max_batch_tokens = 1620;
  ref.graph_batch_sizes = {1040, 1050, 1100, 1560, 1620};
  ref.cluster_pingpong = Use::kNever;
  ref.cluster_tma_a_down = Use::kNever;  // the down GEMM gathers A by cp.async: extra rows too
  ref.cluster_pair_extra_rows = Use::kNever;
  CudaEngineOptions extra = ref;
  extra.cluster_pair_extra_rows = Use::kAlways;
  uint64_t seed = 144;
  CheckEnginesAgreeVaried(
      cases, extra, ref,
      {[](CudaEngineOptions&) {},
       [](CudaEngineOptions& o) { o.cluster_tma_a_down = Use::kAlways; },  // down A by TMA
       [](CudaEngineOptions& o) { o.cluster_down_overlap = Use::kAlways; },
       [](CudaEngineOptions& o) { o.cluster_dynamic_schedule = false; },
       [](CudaEngineOptions& o) { o.max_down_splits = 1; },
       [](CudaEngineOptions& o) { o.graph_batch_sizes.clear(); },
       [](CudaEngineOptions& o) {  // gate/up from the permuted x by TMA, down by TMA
         o.cluster_permute_x = Use::kAlways;
         o.cluster_tma_a_down = Use::kAlways;
       }},
      seed);
  CheckCases(cases, extra);
  CudaEngineOptions extra_overlap = extra;
  extra_overlap.cluster_down_overlap = Use::kAlways;
  CheckCases(cases, extra_overlap);
}

// Past kRouterMmaMaxTokens the router on the mma.sync tile with its K split into f32 partials
// (option large_batch_router_mma) against the CPU engine, and with it off (the fused router or the
// Hopper tile): 128 router rows (K of 16 steps in 4 splits), 257 (three column blocks: 2 splits at
// 2200 tokens, none at 3001, where the plan keeps the Hopper tile), 65 with a shared-expert gate in
// f16 (K of 12 steps in 2 splits), 64 of DeepSeek-V2 at a hidden of 2048 (4 splits in the graph of
// 2200 tokens, 8 eager); graphs and eager. By default the routers of 64-128 rows run on the
// 128 x 128 wgmma tile instead (option large_batch_router_narrow; K splits to fill the SMs, 8 at
// 1100 tokens: 4 k-steps an item), 257 rows on the mma.sync tile; then each rule alone.
TEST(CudaEngine, LargeBatchRouterMma) {
  MOE_REQUIRE_GPU();
  const std::vector<Case> cases = {
      {"qwen3 128 experts",
       Opts(Family::kQwen3Moe, 128, 8, 1024, 32, DType::kBF16, 121),
       DType::kBF16,
       {1100, 4100}},
      {"257 experts",
       Opts(Family::kQwen3Moe, 257, 8, 512, 32, DType::kBF16, 122),
       DType::kBF16,
       {2200, 3001}},
      {"qwen2 shared gate, f16",
       Opts(Family::kQwen2Moe, 64, 4, 768, 32, DType::kF16, 123),
       DType::kF16,
       {1500}},
      {"deepseek_v2, hidden 2048",
       Opts(Family::kDeepseekV2, 64, 6, 2048, 32, DType::kBF16, 124),
       DType::kBF16,
       {2048}},
  };
  CudaEngineOptions on = DefaultOptions();
  on.max_batch_tokens = 4200;
  on.graph_batch_sizes = {1100, 2200, 4200};
  on.large_batch_router_mma = true;
  CheckCases(cases, on);
  CudaEngineOptions eager = on;
  eager.graph_batch_sizes.clear();
  CheckCases(cases, eager);
  CudaEngineOptions mma = on;
  mma.large_batch_router_narrow = false;
  CheckCases(cases, mma);
  CudaEngineOptions off = mma;
  off.large_batch_router_mma = false;
  CheckCases(cases, off);
}

// The unrolled combine (4 chunks a thread at top-2, 2 at top-4 with a gated shared expert, 1 at
// top-6 with shared experts) gives the bits of the one-chunk combine, and both the CPU engine's
// values.
TEST(CudaEngine, CombineUnrolledSameBits) {
  MOE_REQUIRE_GPU();
  const std::vector<Case> cases = {
      {"mixtral top-2",
       Opts(Family::kMixtral, 8, 2, 256, 64, DType::kBF16, 91),
       DType::kBF16,
       {2, 31, 300}},
      {"qwen2 top-4 shared gate",
       Opts(Family::kQwen2Moe, 31, 4, 136, 48, DType::kBF16, 92),
       DType::kBF16,
       {33, 129}},
      {"deepseek_v2 top-6 shared, f32 act",
       Opts(Family::kDeepseekV2, 16, 6, 128, 64, DType::kF16, 93),
       DType::kF32,
       {64, 257}},
  };
  CudaEngineOptions on = DefaultOptions();
  CheckCases(cases, on);
  CudaEngineOptions off = on;
  off.combine_unrolled = false;
  CheckEnginesAgree(cases, on, off, 94, 0.0);
}

// Decode-tile batches whose down GEMM has under 2 waves of blocks split its K to fill them
// (CudaEngineOptions::wave_split_down: Mixtral-like hidden 4096 = 64 column blocks x 8 experts, 8
// k-steps: 2 splits at 8 tokens, none at 64) and still match the CPU engine, with and without
// graphs, and the unsplit engine to rounding; also the small-grid split of a narrow down GEMM (16
// k-steps, 4 splits) with shared experts and f32 activations, and on Hopper the cluster tile's
// split (512 tokens of the first case: ~5.9 work items of 2-block clusters per column block x 16,
// 1.44 rounds of 66 clusters: 2 splits) and the split of the warp-specialised wgmma tile's down
// GEMM (300 tokens, 75 rows per expert: 8 row tiles x 4 column blocks, 2 splits as the workspace
// of 640 tokens allows; the cluster tile does not split there).
TEST(CudaEngine, WaveFillingDownSplits) {
  MOE_REQUIRE_GPU();
  const std::vector<Case> cases = {
      {"mixtral, hidden 4096, inter 512",
       Opts(Family::kMixtral, 8, 2, 4096, 512, DType::kBF16, 75),
       DType::kBF16,
       {8, 64, 512}},
      {"deepseek_v2 shared experts, inter 1024, f32 act",
       Opts(Family::kDeepseekV2, 16, 4, 128, 1024, DType::kF16, 76),
       DType::kF32,
       {3, 31}},
      {"mixtral, hidden 1024, inter 1024, wgmma tile",
       Opts(Family::kMixtral, 8, 2, 1024, 1024, DType::kBF16, 78),
       DType::kBF16,
       {300}},
  };
  CudaEngineOptions o = DefaultOptions();
  o.decode_gemv = CudaEngineOptions::DecodeGemv::kNever;  // the decode tile, also at 1-4 tokens
  CheckCases(cases, o);
  CudaEngineOptions eager = o;
  eager.graph_batch_sizes.clear();
  CheckCases(cases, eager);
  CudaEngineOptions unsplit = o;
  unsplit.wave_split_down = false;
  CheckEnginesAgree(cases, o, unsplit, 77, 1e-2);
  const std::vector<Case> ws_cases = {cases.back()};
  const CudaEngineOptions ws = WithHopperTile(CudaEngineOptions::HopperTile::kWideWarpSpecialized);
  CheckCases(ws_cases, ws);
  CudaEngineOptions ws_unsplit = ws;
  ws_unsplit.wave_split_down = false;
  CheckEnginesAgree(ws_cases, ws, ws_unsplit, 79, 1e-2);
}

// The cluster tile at 5-16 rows per expert, where large experts (>= 2^24 weights) take it by
// default: the same bound asked for on experts of ~2^20 weights (8 experts, top-2: 20-64 tokens
// are 5-16 rows per expert; 31 experts, top-4: 5-8), with graphs and eager, against the CPU
// engine.
TEST(CudaEngine, ClusterTileAtFewRowsPerExpert) {
  MOE_REQUIRE_GPU();
  const std::vector<Case> cases = {
      {"mixtral, hidden 1024, inter 1024",
       Opts(Family::kMixtral, 8, 2, 1024, 1024, DType::kBF16, 80),
       DType::kBF16,
       {20, 33, 64}},
      {"qwen3, 31 experts, top-4, column and K tails",
       Opts(Family::kQwen3Moe, 31, 4, 1288, 816, DType::kBF16, 81),
       DType::kF32,
       {40, 64}},
  };
  CudaEngineOptions o = DefaultOptions();
  o.decode_tile_max_rows_per_expert = 4;
  o.wgmma_min_rows_per_expert = 4;
  CheckCases(cases, o);
  o.graph_batch_sizes.clear();
  CheckCases(cases, o);
}

// Both routed GEMMs of every decode-tile plan on the weight-streaming kernel (a no-op without an
// sm_90 image): the decode tile also at 1-4 tokens, up to 64 rows per expert.
CudaEngineOptions StreamGemmOptions() {
  CudaEngineOptions o = DefaultOptions();
  o.decode_gemv = CudaEngineOptions::DecodeGemv::kNever;
  o.decode_tile_max_rows_per_expert = 64;
  o.stream_gate_up = CudaEngineOptions::Use::kAlways;
  o.stream_down = true;
  return o;
}

// The weight-streaming kernel (StreamGemmOptions: both routed GEMMs) on decode-tile
// plans: 1-64 tokens with the decode experts path off, experts with no token (129 experts), K of
// 3-65 steps of 32 (fewer steps than the loop unrolls, odd step counts split over two warps),
// stages of 4-33 KiB, tiles of 1-16 rows (both halves of the mma's m16) and experts of several
// tiles (up to 64 rows per expert on the decode tile), f16 and bf16 weights, graphs and eager;
// against the CPU, and against the mma.sync decode tile. K not a multiple of 32 (hidden 264)
// falls back to the decode tile.
TEST(CudaEngine, StreamGemm) {
  MOE_REQUIRE_GPU();
  const std::vector<Case> cases = {
      {"qwen3, 129 experts, top-8, hidden 256, inter 96",
       Opts(Family::kQwen3Moe, 129, 8, 256, 96, DType::kBF16, 91),
       DType::kF32,
       {1, 3, 8, 33}},
      {"mixtral, hidden 2080, inter 1056",
       Opts(Family::kMixtral, 8, 2, 2080, 1056, DType::kBF16, 92),
       DType::kBF16,
       {1, 5, 20, 64}},
      {"deepseek_v2 shared experts, f16, hidden 160, inter 224",
       Opts(Family::kDeepseekV2, 32, 4, 160, 224, DType::kF16, 93),
       DType::kF16,
       {2, 9, 40}},
      {"qwen2 shared expert, hidden 264 (no stream kernel)",
       Opts(Family::kQwen2Moe, 16, 4, 264, 72, DType::kBF16, 95),
       DType::kBF16,
       {3, 17}},
  };
  CudaEngineOptions o = StreamGemmOptions();
  CheckCases(cases, o);
  CudaEngineOptions eager = o;
  eager.graph_batch_sizes.clear();
  CheckCases(cases, eager);
  CudaEngineOptions tile = o;
  tile.stream_gate_up = CudaEngineOptions::Use::kNever;
  CheckEnginesAgree(cases, o, tile, 94, 1e-2);
  // Three blocks: each block's share spans dozens of row tiles (both A slots reused many times,
  // many rounds of the ring).
  CudaEngineOptions few = o;
  few.stream_gemm_blocks = 3;
  CheckCases(cases, few);
  // Gate/up on the streaming kernel, down on the decode tile (with its K splits): the default.
  CudaEngineOptions gate_up_only = o;
  gate_up_only.stream_down = false;
  CheckCases(cases, gate_up_only);
}

// A small form of StreamGemm for compute-sanitizer: contiguous and padded weight stages, tiles of
// more than 8 rows, one block over many tiles.
TEST(CudaEngine, StreamGemmSmall) {
  MOE_REQUIRE_GPU();
  const std::vector<Case> cases = {
      {"qwen3, 129 experts, top-8, hidden 256, inter 96",
       Opts(Family::kQwen3Moe, 129, 8, 256, 96, DType::kBF16, 96),
       DType::kBF16,
       {1, 8}},
      {"mixtral, hidden 2080, inter 1056",
       Opts(Family::kMixtral, 8, 2, 2080, 1056, DType::kBF16, 97),
       DType::kBF16,
       {20}},
  };
  CudaEngineOptions o = StreamGemmOptions();
  o.graph_batch_sizes.clear();
  CheckCases(cases, o);
  o.stream_gemm_blocks = 1;
  CheckCases(cases, o);
}

// Deterministic mode: a token's output bits do not depend on the batch (size, position, tiles).
TEST(CudaEngine, DeterministicIsBatchInvariant) {
  MOE_REQUIRE_GPU();
  using Tile = CudaEngineOptions::HopperTile;
  for (auto [act, tile] :
       std::vector<std::pair<DType, Tile>>{{DType::kBF16, Tile::kWide},
                                           {DType::kF32, Tile::kWide},
                                           {DType::kBF16, Tile::kWideWarpSpecialized},
                                           {DType::kBF16, Tile::kWideCluster}}) {
    SCOPED_TRACE(::testing::Message() << "hopper tile " << static_cast<int>(tile));
    const auto model = RandomModel(Opts(Family::kDeepseekV3, 64, 8, 256, 128, DType::kBF16, 41));
    CudaEngineOptions o = WithHopperTile(tile);
    o.deterministic = true;
    o.deterministic_wgmma = act == DType::kBF16;  // both settings, one dtype each
    auto gpu = CudaEngine::Create(model, o);
    ASSERT_TRUE(gpu.ok()) << gpu.status();
    const int h = model->spec().hidden;
    const size_t row_bytes = h * DTypeSize(act);
    const int64_t n = 600;
    const auto x = MakeActivations(act, n * h, 42);
    const RunResult full = RunForward(**gpu, 0, act, x.bytes, n);
    // Sub-batches of other sizes (other tiles, graph capacities) and offsets, and a reversed batch.
    ASSERT_NO_FATAL_FAILURE(ExpectSubBatchesMatchFull(
        **gpu, act, x.bytes, full, {{0, 1}, {17, 1}, {5, 7}, {100, 40}, {3, 300}}));
    std::vector<uint8_t> rev(x.bytes.size());
    for (int64_t t = 0; t < n; ++t) {
      std::memcpy(rev.data() + t * row_bytes, x.bytes.data() + (n - 1 - t) * row_bytes, row_bytes);
    }
    const RunResult r = RunForward(**gpu, 0, act, rev, n);
    for (int64_t t = 0; t < n; ++t) {
      ASSERT_EQ(0, std::memcmp(r.out.data() + t * row_bytes,
                               full.out.data() + (n - 1 - t) * row_bytes, row_bytes))
          << "token " << t;
    }
  }
}

// Slots run concurrently and give the same results as one slot alone.
TEST(CudaEngine, ConcurrentSlots) {
  MOE_REQUIRE_GPU();
  const auto model = RandomModel(Opts(Family::kMixtral, 8, 2, 128, 64, DType::kBF16, 51));
  CudaEngineOptions o = DefaultOptions();
  o.num_slots = 3;
  o.deterministic = true;
  auto gpu = CudaEngine::Create(model, o);
  ASSERT_TRUE(gpu.ok()) << gpu.status();
  const int64_t n = 50;
  const auto x = MakeActivations(DType::kBF16, n * 128, 52);
  const RunResult expect = RunForward(**gpu, 0, DType::kBF16, x.bytes, n, 0);
  std::vector<std::thread> threads;
  std::vector<RunResult> results(3);
  for (int s = 0; s < 3; ++s) {
    threads.emplace_back([&, s] {
      for (int rep = 0; rep < 20; ++rep)
        results[s] = RunForward(**gpu, 0, DType::kBF16, x.bytes, n, s);
    });
  }
  for (auto& t : threads) t.join();
  for (int s = 0; s < 3; ++s) EXPECT_EQ(results[s].out, expect.out) << "slot " << s;
}

// The small-batch paths (fused decode front, PDL, decode GEMV, narrow gate/up tile) and the engine
// without them (the v6 paths), each against the CPU: f32 input, a shared expert with its gate
// (router rows 32), hidden 264 (K quarters of 8 and 9 chunks, a GEMV K tail), 32 tokens (4 passes
// of the front's GEMV), and 256 experts (the front's largest router, 32 blocks; 8 tokens at most:
// 32 tokens of top-8 over 256 experts drew 2 near ties on the H200). Every forward after the first
// reuses the front's ticket counter.
TEST(CudaEngine, SmallBatchPathsOnAndOff) {
  MOE_REQUIRE_GPU();
  CudaEngineOptions off = DefaultOptions();
  off.overlap_launches = off.fused_decode_front = off.narrow_decode_gate_up = false;
  off.decode_gemv = CudaEngineOptions::DecodeGemv::kNever;
  CudaEngineOptions on = DefaultOptions();
  on.graph_batch_sizes = {4, 32};
  on.decode_gemv = CudaEngineOptions::DecodeGemv::kAlways;  // the test shapes are below kAuto's
  CudaEngineOptions narrow = on;
  narrow.decode_gemv = CudaEngineOptions::DecodeGemv::kNever;
  narrow.narrow_decode_gate_up = true;
  for (const CudaEngineOptions& o : {off, on, narrow}) {
    SCOPED_TRACE(::testing::Message()
                 << "front " << o.fused_decode_front << " gemv " << static_cast<int>(o.decode_gemv)
                 << " narrow " << o.narrow_decode_gate_up);
    CheckCases({{"qwen2_moe",
                 Opts(Family::kQwen2Moe, 31, 4, 264, 72, DType::kBF16, 71),
                 DType::kF32,
                 {1, 7, 32}},
                {"256 experts",
                 Opts(Family::kQwen3Moe, 256, 8, 128, 48, DType::kBF16, 72),
                 DType::kBF16,
                 {1, 3, 8}}},
               o);
  }
}

// The warp-specialised 128 x 256 tile (the default Hopper tile past 64 rows per expert) against the
// CPU on shapes the other tests leave out: K tails (hidden 200 / 136 / 264, inter 88 / 200), N
// tails of plain GEMMs (down N = 200, 120, 264: last column blocks of 200, 120 and 8 columns;
// routers of 4-16 columns) and of gated ones (inter 88, 200 over 128-column blocks), experts of two
// and three row tiles whose last tile is partly empty (about 150, 166 and 320 rows per expert);
// then deterministic mode across the 128 x 256 and mma.sync tiles on such a shape.
TEST(CudaEngine, WarpSpecialisedTileShapes) {
  MOE_REQUIRE_GPU();
  CheckCases({{"ws tile bf16, K and N tails",
               Opts(Family::kMixtral, 8, 2, 200, 88, DType::kBF16, 81),
               DType::kBF16,
               {600}},
              {"ws tile f16, two and three row tiles per expert",
               Opts(Family::kQwen3Moe, 4, 2, 136, 200, DType::kF16, 82),
               DType::kF32,
               {333, 640}},
              {"ws tile bf16, 120 columns",
               Opts(Family::kDeepseekV2, 8, 4, 120, 96, DType::kBF16, 83),
               DType::kBF16,
               {250, 640}},
              {"ws tile bf16, 8-column tail",
               Opts(Family::kQwen3Moe, 16, 4, 264, 88, DType::kBF16, 86),
               DType::kBF16,
               {300, 333}},
              {"ws tile f16, 120 columns, f32 activations",
               Opts(Family::kMixtral, 8, 2, 120, 64, DType::kF16, 87),
               DType::kF32,
               {300}}},
             DefaultOptions());
  // Sub-batches of 1 / 7 (decode tile), 40 (medium tile), 300 / 301 (75 rows per expert) and the
  // full 600 (150 rows per expert; 128 x 256 tile) must give the same bits per token.
  const auto model = RandomModel(Opts(Family::kMixtral, 8, 2, 200, 88, DType::kBF16, 84));
  CudaEngineOptions o = DefaultOptions();
  o.deterministic = true;
  auto gpu = CudaEngine::Create(model, o);
  ASSERT_TRUE(gpu.ok()) << gpu.status();
  const int64_t n = 600;
  const auto x = MakeActivations(DType::kBF16, n * model->spec().hidden, 85);
  const RunResult full = RunForward(**gpu, 0, DType::kBF16, x.bytes, n);
  ASSERT_NO_FATAL_FAILURE(ExpectSubBatchesMatchFull(
      **gpu, DType::kBF16, x.bytes, full, {{0, 1}, {5, 7}, {100, 40}, {3, 300}, {299, 301}}));
}

// The decode experts path (gate/up per (token, k) pair, down + combine in one kernel) wherever it
// fits (<= 32 tokens, <= 4 rows per expert), with graphs and eager: every (weight, activation)
// dtype pair of its down + combine kernel, 129 and 31 experts (most without a token), top-k 2 to 8,
// shared experts with and without a gate (GEMV and split-K tile partials), hidden 2056 (a second
// gate/up pass with a K tail), hidden 136 (a pass of 17 chunks), inter 48 (down rows of 6
// chunks: a lane's chunks span several experts), h in pair order (1 token) and in sorted order.
TEST(CudaEngine, DecodeExpertsPath) {
  MOE_REQUIRE_GPU();
  CudaEngineOptions graphs = DefaultOptions();
  graphs.graph_batch_sizes = {1, 2, 4, 8, 16, 32};
  graphs.decode_gemv = CudaEngineOptions::DecodeGemv::kAlways;
  // h staged in shared memory where it fits (off by default since v9; the default reads it through
  // L1 in every other test's decode forwards).
  graphs.decode_down_h_smem = true;
  CudaEngineOptions eager = graphs;
  eager.graph_batch_sizes.clear();
  std::vector<Case> cases = {
      {"qwen3 129 experts top-8",
       Opts(Family::kQwen3Moe, 129, 8, 136, 48, DType::kBF16, 81),
       DType::kBF16,
       {1, 2, 5}},
      {"qwen2_moe 31 experts, shared + gate, f16 act",
       Opts(Family::kQwen2Moe, 31, 4, 128, 64, DType::kBF16, 82),
       DType::kF16,
       {1, 6}},
      {"deepseek_v2 shared, f16 weights, bf16 act",
       Opts(Family::kDeepseekV2, 32, 6, 128, 88, DType::kF16, 83),
       DType::kBF16,
       {1, 3, 9}},
      {"mixtral hidden 2056, f16 weights, f32 act",
       Opts(Family::kMixtral, 8, 2, 2056, 64, DType::kF16, 84),
       DType::kF32,
       {1, 5, 16}},
      {"olmoe 32 tokens, f16 weights, f16 act",
       Opts(Family::kOlmoe, 64, 8, 64, 128, DType::kF16, 85),
       DType::kF16,
       {32}},
      {"deepseek_v3 bf16 weights, f32 act",
       Opts(Family::kDeepseekV3, 64, 8, 256, 64, DType::kBF16, 86),
       DType::kF32,
       {1, 4}},
      {"qwen3 inter 1024: h in shared memory past 48 KiB (7 tokens), from global (16)",
       Opts(Family::kQwen3Moe, 16, 4, 64, 1024, DType::kBF16, 87),
       DType::kBF16,
       {7, 16}},
  };
  cases[1].model.norm_topk_prob = false;
  cases[4].model.norm_topk_prob = false;
  for (const CudaEngineOptions& o : {graphs, eager}) {
    SCOPED_TRACE(::testing::Message() << "graphs " << !o.graph_batch_sizes.empty());
    CheckCases(cases, o);
  }
}

// The decode experts path's down + combine in batches of 8, 10 and 12 chunks a lane (option
// decode_down_chunks): each lane adds the same chunks in the same order, so the bits agree, and
// they match the CPU engine. Runs of 264 chunks (top-6, inter 352: 8.25 a lane, a last batch of
// one chunk for a quarter of the lanes at 8), 48 (top-8, inter 48: rows of 6 chunks, so a batch
// spans experts) and 50 (top-2, inter 200), with shared experts and f32 activations.
TEST(CudaEngine, DecodeDownChunksSameBits) {
  MOE_REQUIRE_GPU();
  const std::vector<Case> cases = {
      {"deepseek_v2 top-6 inter 352, shared",
       Opts(Family::kDeepseekV2, 64, 6, 128, 352, DType::kBF16, 95),
       DType::kBF16,
       {1, 3}},
      {"qwen3 129 experts top-8 inter 48",
       Opts(Family::kQwen3Moe, 129, 8, 136, 48, DType::kBF16, 96),
       DType::kBF16,
       {1, 2, 5}},
      {"mixtral hidden 2056 inter 200, f32 act",
       Opts(Family::kMixtral, 8, 2, 2056, 200, DType::kF16, 97),
       DType::kF32,
       {1, 4}},
  };
  CudaEngineOptions base = DefaultOptions();
  base.graph_batch_sizes = {1, 2, 4, 8};
  base.decode_gemv = CudaEngineOptions::DecodeGemv::kAlways;
  base.decode_down_h_smem = false;
  base.decode_down_chunks = 8;
  base.decode_down_groups = false;  // the kernel whose batches these are, at 1 token too
  for (const int chunks : {10, 12, 0}) {
    SCOPED_TRACE(::testing::Message() << "chunks " << chunks);
    CudaEngineOptions o = base;
    o.decode_down_chunks = chunks;
    CheckCases(cases, o);
    CheckEnginesAgree(cases, base, o, 98, 0.0);
  }
}

// Down + combine by groups of 8 output columns at one token (option decode_down_groups), with
// batches of 4 and 6 pieces and 0-2 buffers loaded before the PDL wait, graphs and eager, against
// the CPU engine: packed weights (hidden, inter multiples of 128) and row-major ones (inter 192,
// 320, 64: pieces of 128-byte row parts), 129 / 31 experts, a warp range that ends inside a pair
// (top-6, 5 pieces a pair), groups past the grid (hidden 2056: 257 groups; hidden 4224: 528, two
// a block), 64 KiB and 96 KiB (the limit) of h in the opt-in shared memory, shared experts with
// and without a gate, f16 / f32 activations and f16 weights. The kernel ran where it applies: its
// sums go in another order than the old kernel's, so f32 outputs differ from an engine without
// the option at 1 token, and are the same bits where it does not apply (3 tokens).
TEST(CudaEngine, DecodeDownGroups) {
  MOE_REQUIRE_GPU();
  std::vector<Case> cases = {
      {"qwen3 129 experts top-8, packed",
       Opts(Family::kQwen3Moe, 129, 8, 256, 128, DType::kBF16, 111),
       DType::kBF16,
       {1, 3}},
      {"qwen2_moe 31 experts, shared + gate, inter 192, f16 act",
       Opts(Family::kQwen2Moe, 31, 4, 128, 192, DType::kBF16, 112),
       DType::kF16,
       {1}},
      {"deepseek_v2 top-6 inter 320, shared, f16 weights",
       Opts(Family::kDeepseekV2, 32, 6, 384, 320, DType::kF16, 113),
       DType::kBF16,
       {1, 2}},
      {"mixtral hidden 2056 inter 64, f32 act",
       Opts(Family::kMixtral, 8, 2, 2056, 64, DType::kF16, 114),
       DType::kF32,
       {1}},
      {"qwen3 hidden 4224 packed, f32 act",
       Opts(Family::kQwen3Moe, 16, 8, 4224, 128, DType::kBF16, 115),
       DType::kF32,
       {1}},
      {"olmoe inter 6144 top-8: 96 KiB of h, the limit",
       Opts(Family::kOlmoe, 16, 8, 64, 6144, DType::kBF16, 116),
       DType::kF32,
       {1}},
      {"qwen3 inter 4096 top-8: 64 KiB of h (past the default limit)",
       Opts(Family::kQwen3Moe, 16, 8, 128, 4096, DType::kBF16, 118),
       DType::kF32,
       {1}},
  };
  cases[1].model.norm_topk_prob = false;
  CudaEngineOptions base = DefaultOptions();
  base.graph_batch_sizes = {1, 2, 4};
  base.decode_gemv = CudaEngineOptions::DecodeGemv::kAlways;
  base.decode_down_groups = false;
  struct Variant {
    int batch, preload;
    bool graphs;
  };
  for (const Variant v :
       {Variant{4, 0, true}, Variant{4, 2, true}, Variant{6, 1, false}, Variant{4, 1, false}}) {
    SCOPED_TRACE(::testing::Message()
                 << "batch " << v.batch << " preload " << v.preload << " graphs " << v.graphs);
    CudaEngineOptions o = base;
    o.decode_down_groups = true;
    o.decode_down_groups_batch = v.batch;
    o.decode_down_groups_preload = v.preload;
    if (!v.graphs) o.graph_batch_sizes.clear();
    CheckCases(cases, o);
  }
  // Where it runs (f32 outputs at 1 token) and where it does not.
  CudaEngineOptions groups = base;
  groups.decode_down_groups = true;
  for (const Case& c : {cases[3], cases[4], cases[5], cases[6]}) {
    SCOPED_TRACE(c.name);
    const auto model = RandomModel(c.model);
    auto a = CudaEngine::Create(model, base);
    auto b = CudaEngine::Create(model, groups);
    ASSERT_TRUE(a.ok()) << a.status();
    ASSERT_TRUE(b.ok()) << b.status();
    for (const int64_t n : {1, 3}) {
      const auto x = MakeActivations(c.act, n * model->spec().hidden, 117 + n);
      const RunResult ra = RunForward(**a, 0, c.act, x.bytes, n);
      const RunResult rb = RunForward(**b, 0, c.act, x.bytes, n);
      EXPECT_EQ(ra.ids, rb.ids) << n << " tokens";
      const bool applies = n == 1 && c.model.moe_intermediate * c.model.top_k * 2 <= 96 * 1024;
      if (applies) {
        EXPECT_NE(ra.values, rb.values) << n << " tokens: the groups kernel did not run";
      } else {
        EXPECT_EQ(ra.values, rb.values) << n << " tokens: the groups kernel ran";
      }
    }
  }
}

// Exact ties in the routing pick the lower expert, as the CPU engine does (the other tests skip
// near ties): tokens whose input is zero (every logit 0, so every score ties; DeepSeek-V2's groups
// tie too, DeepSeek-V3's bias breaks them) between random ones, at 1 and 3 tokens (the decode
// front's routing) and 40 tokens (the routing kernel's), top-1 to top-8 of 8 to 256 experts,
// graphs and eager: their experts and weights against the CPU engine's.
TEST(CudaEngine, RoutingTiesPickTheLowerExpert) {
  MOE_REQUIRE_GPU();
  const std::vector<Case> cases = {
      {"qwen3 129 experts top-8",
       Opts(Family::kQwen3Moe, 129, 8, 136, 48, DType::kBF16, 131),
       DType::kBF16,
       {1, 3, 40}},
      {"qwen3 256 experts top-1",
       Opts(Family::kQwen3Moe, 256, 1, 64, 32, DType::kBF16, 132),
       DType::kBF16,
       {1, 3, 40}},
      {"mixtral top-2",
       Opts(Family::kMixtral, 8, 2, 128, 64, DType::kBF16, 133),
       DType::kF32,
       {1, 3, 40}},
      {"qwen2_moe 60 experts top-4, shared gate",
       Opts(Family::kQwen2Moe, 60, 4, 128, 64, DType::kBF16, 134),
       DType::kBF16,
       {1, 3, 40}},
      {"deepseek_v2 64 experts top-6, group-limited",
       Opts(Family::kDeepseekV2, 64, 6, 128, 64, DType::kBF16, 135),
       DType::kBF16,
       {1, 3, 40}},
      {"deepseek_v3 256 experts top-8, bias",
       Opts(Family::kDeepseekV3, 256, 8, 128, 64, DType::kBF16, 136),
       DType::kBF16,
       {1, 3, 40}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const auto model = RandomModel(c.model);
    const MoeSpec& spec = model->spec();
    auto cpu = testing::ReferenceCpuEngine(model, 64);
    ASSERT_TRUE(cpu.ok()) << cpu.status();
    for (const bool graphs : {true, false}) {
      CudaEngineOptions o = DefaultOptions();
      if (!graphs) o.graph_batch_sizes.clear();
      auto gpu = CudaEngine::Create(model, o);
      ASSERT_TRUE(gpu.ok()) << gpu.status();
      for (const int64_t n : c.tokens) {
        SCOPED_TRACE(::testing::Message() << n << " tokens, graphs " << graphs);
        // Tokens 0, 2, 4, ... zero; the others random.
        auto x = MakeActivations(c.act, n * spec.hidden, 137 + n);
        const size_t row_bytes = static_cast<size_t>(spec.hidden) * DTypeSize(c.act);
        for (int64_t t = 0; t < n; t += 2) {
          std::memset(x.bytes.data() + t * row_bytes, 0, row_bytes);
        }
        const RunResult want = RunForward(**cpu, 0, c.act, x.bytes, n);
        const RunResult got = RunForward(**gpu, 0, c.act, x.bytes, n);
        const int k = spec.top_k();
        for (int64_t t = 0; t < n; t += 2) {
          for (int j = 0; j < k; ++j) {
            EXPECT_EQ(got.ids[t * k + j], want.ids[t * k + j]) << "token " << t << " slot " << j;
            EXPECT_NEAR(got.weights[t * k + j], want.weights[t * k + j],
                        1e-5 * std::max(1.0f, std::fabs(want.weights[t * k + j])))
                << "token " << t << " slot " << j;
          }
        }
      }
    }
  }
}

// The fused decode front compiled for one token slot (decode_front_one_token_kernel, graphs and
// launches of a one-token capacity) gives the bits of the general kernel: every family's scoring
// (softmax, sigmoid with a selection bias, group-limited selection, a shared gate), 8 to 256
// experts (the cluster front with K split over it, the ticket front past 128 router rows), top-1
// to top-8, graphs (1 token: the front takes the meta) and eager, an engine of one token's
// capacity; and matches the CPU engine.
TEST(CudaEngine, FrontOneTokenKernelSameBits) {
  MOE_REQUIRE_GPU();
  const std::vector<Case> cases = {
      {"qwen3 128 experts top-8",
       Opts(Family::kQwen3Moe, 128, 8, 256, 128, DType::kBF16, 151),
       DType::kBF16,
       {1, 3, 1, 1}},
      {"qwen3 31 experts top-1, K split",
       Opts(Family::kQwen3Moe, 31, 1, 2048, 64, DType::kBF16, 152),
       DType::kBF16,
       {1, 2, 1}},
      {"qwen3 129 experts top-8",
       Opts(Family::kQwen3Moe, 129, 8, 136, 48, DType::kBF16, 153),
       DType::kBF16,
       {1, 1}},
      {"mixtral top-2, K split",
       Opts(Family::kMixtral, 8, 2, 4096, 128, DType::kBF16, 154),
       DType::kF32,
       {1, 5, 1}},
      {"qwen2_moe 61 experts top-4, shared gate",
       Opts(Family::kQwen2Moe, 61, 4, 128, 64, DType::kBF16, 155),
       DType::kBF16,
       {1, 2, 1}},
      {"deepseek_v2 64 experts top-6, group-limited, K split",
       Opts(Family::kDeepseekV2, 64, 6, 2048, 128, DType::kF16, 156),
       DType::kF32,
       {1, 4, 1}},
      {"deepseek_v3 256 experts top-8, bias",
       Opts(Family::kDeepseekV3, 256, 8, 128, 64, DType::kBF16, 157),
       DType::kBF16,
       {1, 3, 1}},
  };
  CudaEngineOptions general = DefaultOptions();
  general.decode_front_one_token_kernel = false;
  CudaEngineOptions one = general;
  one.decode_front_one_token_kernel = true;
  uint64_t seed = 158;
  CheckEnginesAgreeVaried(
      cases, general, one,
      {[](CudaEngineOptions&) {}, [](CudaEngineOptions& o) { o.graph_batch_sizes.clear(); },
       [](CudaEngineOptions& o) { o.decode_front_cluster = false; }},
      seed);
  CheckCases(cases, one);
  std::vector<Case> lone;
  for (Case c : cases) {
    c.tokens = {1, 1};
    lone.push_back(c);
  }
  CheckEnginesAgreeVaried(lone, general, one,
                          {[](CudaEngineOptions& o) { o.max_batch_tokens = 1; },
                           [](CudaEngineOptions& o) {
                             o.max_batch_tokens = 1;
                             o.graph_batch_sizes.clear();
                           }},
                          seed);
}

// The router and expert GEMMs reading the forward's input in place (option input_in_place, the
// default) against reading the first kernel's copy of it: the same bits, past the fused decode
// front (33 tokens) up to the Hopper tiles, with the input copy kernel (100, 1100 tokens: the
// router GEMM's A in place too) and the fused router (300), shared experts with a gate, f16, and
// f32 activations (split into hi + lo: never in place, the same path either way); and with the
// permuted copy of x, which the permutation then makes from the input itself.
TEST(CudaEngine, InputInPlace) {
  MOE_REQUIRE_GPU();
  std::vector<Case> cases = {
      {"qwen3",
       Opts(Family::kQwen3Moe, 64, 8, 256, 64, DType::kBF16, 101),
       DType::kBF16,
       {33, 100, 300, 1100}},
      {"qwen2 shared gate, f16",
       Opts(Family::kQwen2Moe, 60, 4, 256, 64, DType::kF16, 102),
       DType::kF16,
       {40, 300, 1100}},
      {"deepseek_v2 shared",
       Opts(Family::kDeepseekV2, 32, 6, 512, 64, DType::kBF16, 103),
       DType::kBF16,
       {64, 1100}},
      {"mixtral, f32 act",
       Opts(Family::kMixtral, 8, 2, 256, 64, DType::kBF16, 104),
       DType::kF32,
       {100}},
  };
  CudaEngineOptions in_place = DefaultOptions();
  in_place.max_batch_tokens = 1200;
  in_place.graph_batch_sizes = {64, 128, 512, 1200};
  CudaEngineOptions copy = in_place;
  copy.input_in_place = false;
  CheckEnginesAgree(cases, in_place, copy, 105, /*tol=*/0);
  in_place.graph_batch_sizes.clear();
  copy.graph_batch_sizes.clear();
  CheckEnginesAgree(cases, in_place, copy, 106, /*tol=*/0);
  CheckCases(cases, in_place);  // against the CPU engine too
  // Gate/up reading the permuted copy of x (cluster plans): in place, the permutation copies the
  // input's rows and the fused router stores no copy of x.
  in_place.cluster_permute_x = copy.cluster_permute_x = CudaEngineOptions::Use::kAlways;
  CheckEnginesAgree(cases, in_place, copy, 107, /*tol=*/0);
  CheckCases(cases, in_place);
}

// Forwards enqueued back to back on device buffers (no host sync between them), each with its own
// layer, token count and buffers, replay the graphs of a few capacities many times (and 600 tokens
// launch directly): with the meta given to the decode front at 1 token and to a one-thread first
// kernel elsewhere (the defaults: the graph's first node updated before each replay), with the
// meta kernel at 1 token too, and with the meta copied. Each output must match the same engine's
// synchronous forward of that input (a stale meta would give another layer's, another input's or
// the poison's values), on the decode experts path (1 token), the decode and mma.sync tiles and
// the Hopper tile, with a shared expert.
TEST(CudaEngine, MetaInGraphAndMetaCopy) {
  MOE_REQUIRE_GPU();
  const auto model = RandomModel(Opts(Family::kDeepseekV2, 64, 6, 256, 128, DType::kBF16, 91));
  const int hidden = model->spec().hidden;
  const std::vector<std::pair<int, int64_t>> calls = {
      {0, 1},  {2, 1}, {0, 3},  {2, 8}, {0, 5},   {2, 64}, {0, 1}, {2, 40},
      {0, 8},  {2, 3}, {2, 1},  {0, 1}, {0, 600}, {2, 7},  {0, 2}, {2, 64},
      {0, 33}, {2, 1}, {0, 64}, {2, 8}, {0, 1},   {2, 2},  {0, 4}, {2, 600}};
  for (const int mode : {0, 1, 2}) {
    const bool meta_in_graph = mode < 2, front_takes_meta = mode == 0;
    SCOPED_TRACE(::testing::Message()
                 << "meta_in_graph " << meta_in_graph << ", front_takes_meta " << front_takes_meta);
    CudaEngineOptions o = DefaultOptions();
    o.max_batch_tokens = 1024;
    o.meta_in_graph = meta_in_graph;
    o.front_takes_meta = front_takes_meta;
    auto gpu = CudaEngine::Create(model, o);
    ASSERT_TRUE(gpu.ok()) << gpu.status();
    CudaEngine& engine = **gpu;
    std::vector<RandomActivations> inputs;
    std::vector<void*> dev_in(calls.size()), dev_out(calls.size());
    for (size_t i = 0; i < calls.size(); ++i) {
      const int64_t n = calls[i].second;
      inputs.push_back(MakeActivations(DType::kBF16, n * hidden, 300 + i));
      const size_t bytes = inputs.back().bytes.size();
      ASSERT_EQ(cudaMalloc(&dev_in[i], bytes), cudaSuccess);
      ASSERT_EQ(cudaMalloc(&dev_out[i], bytes), cudaSuccess);
      ASSERT_EQ(cudaMemcpy(dev_in[i], inputs.back().bytes.data(), bytes, cudaMemcpyHostToDevice),
                cudaSuccess);
      ASSERT_EQ(cudaMemset(dev_out[i], 0xff, bytes), cudaSuccess);  // NaN in bf16
    }
    for (size_t i = 0; i < calls.size(); ++i) {
      DeviceForwardArgs a;
      a.layer = calls[i].first;
      a.n_tokens = calls[i].second;
      a.input = dev_in[i];
      a.output = dev_out[i];
      ASSERT_TRUE(engine.EnqueueDevice(a).ok());
    }
    ASSERT_EQ(cudaStreamSynchronize(engine.stream(0)), cudaSuccess);
    for (size_t i = 0; i < calls.size(); ++i) {
      SCOPED_TRACE(::testing::Message() << "call " << i << ": layer " << calls[i].first << ", "
                                        << calls[i].second << " tokens");
      const int64_t n = calls[i].second;
      std::vector<uint8_t> out(inputs[i].bytes.size());
      ASSERT_EQ(cudaMemcpy(out.data(), dev_out[i], out.size(), cudaMemcpyDeviceToHost),
                cudaSuccess);
      const RunResult expect = RunForward(engine, calls[i].first, DType::kBF16, inputs[i].bytes, n);
      const auto got = testing::ToFloats(DType::kBF16, out, out.size() / 2);
      for (float v : got) ASSERT_TRUE(std::isfinite(v));
      EXPECT_LT(testing::RelErr(got, expect.values, hidden, std::vector<bool>(n, true)), 1e-3);
      cudaFree(dev_in[i]);
      cudaFree(dev_out[i]);
    }
  }
}

// Routed experts in the packed layout (kernels/weight_layout.h, packed_expert_weights) give the
// bits of the row-major engine past 1 token on every path that reads them: the mma.sync tiles, the
// cluster GEMMs (multicast pairs, ping-pong, the 2 x 2 down GEMM, boxes by bulk and by tensor
// copies, the latter by default past kPackedTensorCopiesMinRows rows an expert), the cp.async wgmma
// tile, deterministic mode and an mma.sync-only engine (the A100 path), graphs and eager; over 31
// and 129 experts (some with no row at few tokens), f16 weights with f32 activations and shared
// experts; and match the CPU engine, at 1 token too (the decode experts path, whose gate/up sums
// packed weights in another order) and with the weight-streaming gate/up's plans (it does not read
// packed weights: the decode tile). Shapes that cannot be packed stay row-major; kAlways with a
// kernel that cannot read packed weights is refused.
TEST(CudaEngine, PackedExpertWeights) {
  MOE_REQUIRE_GPU();
  using Use = CudaEngineOptions::Use;
  const std::vector<Case> cases = {
      {"mixtral, 8 experts top-2",
       Opts(Family::kMixtral, 8, 2, 512, 1024, DType::kBF16, 181),
       DType::kBF16,
       {1, 3, 8, 64, 600, 4200}},  // 4200: 1050 rows an expert, boxes by tensor copies (kAuto)
      {"qwen3, 31 experts top-4",
       Opts(Family::kQwen3Moe, 31, 4, 256, 128, DType::kBF16, 182),
       DType::kBF16,
       {1, 5, 40, 600}},
      {"qwen3, 129 experts top-8",
       Opts(Family::kQwen3Moe, 129, 8, 256, 128, DType::kBF16, 187),
       DType::kBF16,
       {1, 3, 50, 600}},
      {"deepseek-v2 f16, 64 experts top-6",
       Opts(Family::kDeepseekV2, 64, 6, 384, 256, DType::kF16, 183),
       DType::kF32,
       {1, 2, 33, 600}},
      {"qwen2 shared gate",
       Opts(Family::kQwen2Moe, 16, 4, 256, 384, DType::kBF16, 184),
       DType::kBF16,
       {1, 7, 130, 600}},
  };
  CudaEngineOptions row_major = DefaultOptions();
  row_major.max_batch_tokens = 4224;  // the 4200-token case
  row_major.packed_expert_weights = Use::kNever;
  row_major.stream_gate_up = Use::kNever;
  CudaEngineOptions packed = row_major;
  packed.packed_expert_weights = Use::kAlways;
  {
    const auto model = RandomModel(cases[0].model);
    auto a = CudaEngine::Create(model, row_major);
    auto b = CudaEngine::Create(model, packed);
    ASSERT_TRUE(a.ok() && b.ok());
    EXPECT_FALSE((*a)->packed_expert_weights());
    EXPECT_TRUE((*b)->packed_expert_weights());
    auto odd = CudaEngine::Create(
        RandomModel(Opts(Family::kMixtral, 8, 2, 512, 88, DType::kBF16, 185)), packed);
    ASSERT_TRUE(odd.ok()) << odd.status();
    EXPECT_FALSE((*odd)->packed_expert_weights()) << "inter 88 cannot be packed";
    CudaEngineOptions fused = packed;
    fused.decode_fused_route = true;
    auto refused = CudaEngine::Create(model, fused);
    if ((*b)->uses_wgmma()) {  // the fused decode kernel exists on sm_90 only
      EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument) << refused.status();
    }
  }
  // Every count, 1 token too: the decode experts path sums packed gate/up rows in the row-major
  // order (an expert cache's row-major slots must give the all-resident bits); 2-8 tokens take it
  // with decode_gemv kAlways.
  uint64_t seed = 188;
  CheckEnginesAgreeVaried(
      cases, row_major, packed,
      {[](CudaEngineOptions&) {}, [](CudaEngineOptions& o) { o.cluster_pingpong = Use::kAlways; },
       [](CudaEngineOptions& o) { o.decode_gemv = CudaEngineOptions::DecodeGemv::kAlways; },
       [](CudaEngineOptions& o) {
         o.cluster_pingpong = Use::kNever;
         o.cluster_quad_down = Use::kAlways;
       },
       [](CudaEngineOptions& o) { o.packed_tensor_copies = Use::kAlways; },
       [](CudaEngineOptions& o) {
         o.hopper_tile = CudaEngineOptions::HopperTile::kWideWarpSpecialized;
       },
       [](CudaEngineOptions& o) { o.deterministic = true; },
       [](CudaEngineOptions& o) { o.use_wgmma = false; },
       [](CudaEngineOptions& o) { o.graph_batch_sizes.clear(); }},
      seed);
  CudaEngineOptions packed_default = DefaultOptions();
  packed_default.max_batch_tokens = 4224;
  packed_default.packed_expert_weights = Use::kAlways;
  CheckCases(cases, packed_default);
  // The decode experts path at every count it takes (2-8 tokens: sorted h rows, shared weights).
  packed_default.decode_gemv = CudaEngineOptions::DecodeGemv::kAlways;
  CheckCases(cases, packed_default);
}

TEST(CudaEngine, Errors) {
  MOE_REQUIRE_GPU();
  const auto model = RandomModel(Opts(Family::kMixtral, 8, 2, 128, 64, DType::kBF16, 61));
  CudaEngineOptions o = DefaultOptions();
  o.max_batch_tokens = 16;
  auto gpu = CudaEngine::Create(model, o);
  ASSERT_TRUE(gpu.ok()) << gpu.status();
  std::vector<uint8_t> in(32 * 128 * 2), out(in.size());
  ForwardArgs a;
  a.layer = 1;  // not a MoE layer
  a.n_tokens = 4;
  a.input = in.data();
  a.output = out.data();
  EXPECT_FALSE((*gpu)->Forward(a).ok());
  a.layer = 0;
  a.n_tokens = 17;
  EXPECT_EQ((*gpu)->Forward(a).code(), absl::StatusCode::kInvalidArgument);
  a.n_tokens = 4;
  a.slot = 1;
  EXPECT_EQ((*gpu)->Forward(a).code(), absl::StatusCode::kInvalidArgument);
  // Device buffers that are not 16-byte aligned.
  void* dev = nullptr;
  ASSERT_EQ(cudaMalloc(&dev, 2 * in.size() + 64), cudaSuccess);
  DeviceForwardArgs d;
  d.layer = 0;
  d.n_tokens = 4;
  d.input = static_cast<char*>(dev) + 8;
  d.output = static_cast<char*>(dev) + in.size() + 64;
  EXPECT_EQ((*gpu)->EnqueueDevice(d).code(), absl::StatusCode::kInvalidArgument);
  d.input = dev;
  d.output = static_cast<char*>(dev) + in.size() + 66;
  EXPECT_EQ((*gpu)->EnqueueDevice(d).code(), absl::StatusCode::kInvalidArgument);
  d.output = static_cast<char*>(dev) + in.size() + 64;
  EXPECT_TRUE((*gpu)->EnqueueDevice(d).ok());
  EXPECT_EQ(cudaStreamSynchronize((*gpu)->stream(0)), cudaSuccess);
  cudaFree(dev);
  // Workspaces that cannot fit: a clear RESOURCE_EXHAUSTED, not a crash.
  CudaEngineOptions huge = DefaultOptions();
  huge.max_batch_tokens = 1LL << 30;
  auto big = CudaEngine::Create(model, huge);
  ASSERT_FALSE(big.ok());
  EXPECT_EQ(big.status().code(), absl::StatusCode::kResourceExhausted) << big.status();
  // Unsupported weights.
  RandomModelOptions f32 = Opts(Family::kMixtral, 8, 2, 128, 64, DType::kF32, 62);
  EXPECT_EQ(CudaEngine::Create(RandomModel(f32), DefaultOptions()).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace moe
