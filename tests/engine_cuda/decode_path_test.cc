// The fused decode kernel (kernels/decode_fused.cu: router, routing and routed gate/up in one
// launch of 8-block clusters, then down + combine) against the CPU engine and the double-precision
// reference routing, and against the unfused decode experts path on the same GPU. Odd shapes:
// 129 / 31 / 4 experts (cluster blocks without router rows), top-k 1, 2 to 8 tokens, hidden 2056
// and 4096 (router rows of two segments, K tails), shared experts with a sigmoid gate,
// group-limited and biased routing, f32 / f16 activations and f16 weights. Skips without a GPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "common/forward_run.h"
#include "common/gpu_test_util.h"
#include "engine_cpu/random_model.h"
#include "engine_cpu/reference.h"
#include "engine_cuda/engine_compare.h"
#include "kernels/moe_kernels.h"
#include "moe/engine/cpu_engine.h"
#include "moe/engine/cuda_engine.h"

namespace moe {
namespace {

using testing::MakeActivations;
using testing::RandomModel;
using testing::RandomModelOptions;

using Case = testing::EngineCase;
using testing::ReferenceCpuEngine;
using testing::RelErr;
using testing::ToFloats;
using testing::UnambiguousTokens;
constexpr auto Opts = testing::CaseModel;

// Fused path (graphs at 1/2/4/8 tokens, or eager) against the CPU engine, the reference routing and
// the unfused decode experts path, at every token count of the case, on both MoE layers. `tune`
// sets the fused kernel's cluster size, cluster cap, L2 prefetch and the down kernel's h staging.
struct Tuning {
  int cluster_size = 8;
  int max_clusters = 0;
  CudaEngineOptions::DownPrefetch prefetch_down = CudaEngineOptions::DownPrefetch::kEarly;
  bool down_h_smem = true;
  int prefetch_units = 0;
  bool down_tma = false;
  bool gate_up_tma = false;
};
void CheckFused(const Case& tc, bool graphs, const Tuning& tune = {}) {
  SCOPED_TRACE(::testing::Message()
               << tc.name << (graphs ? " (graphs)" : " (eager)") << " clusters of "
               << tune.cluster_size << ", at most " << tune.max_clusters);
  const auto model = RandomModel(tc.model);
  const MoeSpec& spec = model->spec();
  auto cpu = ReferenceCpuEngine(model, 16);
  ASSERT_TRUE(cpu.ok()) << cpu.status();
  CudaEngineOptions fused_options;
  fused_options.max_batch_tokens = 16;
  fused_options.graph_batch_sizes = {1, 2, 4, 8};
  if (!graphs) fused_options.graph_batch_sizes.clear();
  fused_options.decode_gemv = CudaEngineOptions::DecodeGemv::kAlways;
  fused_options.decode_fused_route = true;  // off by default (measured slower, RESULTS.md "v9")
  fused_options.decode_fused_cluster_size = tune.cluster_size;
  fused_options.decode_fused_max_clusters = tune.max_clusters;
  fused_options.decode_prefetch_down = tune.prefetch_down;
  fused_options.decode_down_h_smem = tune.down_h_smem;
  fused_options.decode_prefetch_units = tune.prefetch_units;
  fused_options.decode_down_tma = tune.down_tma;
  fused_options.decode_gate_up_tma = tune.gate_up_tma;
  CudaEngineOptions unfused_options = fused_options;
  unfused_options.decode_fused_route = false;
  auto fused = CudaEngine::Create(model, fused_options);
  ASSERT_TRUE(fused.ok()) << fused.status();
  auto unfused = CudaEngine::Create(model, unfused_options);
  ASSERT_TRUE(unfused.ok()) << unfused.status();
  EXPECT_EQ((*unfused)->fused_decode_blocks(), 0);
  if ((*fused)->fused_decode_blocks() == 0) {
    GTEST_SKIP() << "the fused decode kernel needs an sm_90 device and this build's sm_90a image";
  }
  const int h = spec.hidden, k = spec.top_k();
  uint64_t seed = tc.model.seed * 7919;
  for (int layer : tc.model.moe_layers) {
    for (int64_t n : tc.tokens) {
      SCOPED_TRACE(::testing::Message() << "layer " << layer << " n_tokens " << n);
      const auto act = MakeActivations(tc.act, n * h, ++seed);
      // Twice through the fused engine: the second forward reuses its graph and workspaces.
      testing::RunResult g = testing::ExpectForward(**fused, layer, tc.act, act.bytes, n);
      g = testing::ExpectForward(**fused, layer, tc.act, act.bytes, n);
      const testing::RunResult u = testing::ExpectForward(**unfused, layer, tc.act, act.bytes, n);
      const testing::RunResult c = testing::ExpectForward(**cpu, layer, tc.act, act.bytes, n);
      const auto gv = ToFloats(tc.act, g.out, n * h);
      const auto uv = ToFloats(tc.act, u.out, n * h);
      const auto cv = ToFloats(tc.act, c.out, n * h);
      for (float v : gv) ASSERT_TRUE(std::isfinite(v)) << "unwritten or non-finite output";
      const testing::ReferenceOutput ref = testing::ReferenceForward(*model, layer, act.values, n);
      const std::vector<bool> keep = UnambiguousTokens(ref, n);
      int64_t skipped = 0;
      for (int64_t t = 0; t < n; ++t) {
        if (!keep[t]) {
          ++skipped;
          continue;
        }
        for (int j = 0; j < k; ++j) {
          EXPECT_EQ(g.ids[t * k + j], ref.routing.ids[t * k + j]) << "token " << t << " k " << j;
          EXPECT_EQ(g.ids[t * k + j], u.ids[t * k + j]) << "token " << t << " k " << j;
          EXPECT_NEAR(g.weights[t * k + j], c.weights[t * k + j],
                      1e-4 * std::max(1.0f, std::fabs(c.weights[t * k + j])));
        }
      }
      EXPECT_LE(skipped, std::max<int64_t>(1, n / 20)) << "too many near ties";
      EXPECT_LT(RelErr(gv, cv, h, keep), 1e-2) << "fused vs CPU";
      EXPECT_LT(RelErr(gv, uv, h, keep), 1e-2) << "fused vs unfused decode path";
    }
  }
}

const std::vector<Case>& Cases() {
  static const std::vector<Case> cases = [] {
    std::vector<Case> c = {
        {"qwen3 129 experts top-8, hidden 136",
         Opts(Family::kQwen3Moe, 129, 8, 136, 48, DType::kBF16, 91),
         DType::kBF16,
         {1, 2, 5, 8}},
        {"31 experts top-1, hidden 2056, f32 act",
         Opts(Family::kQwen3Moe, 31, 1, 2056, 64, DType::kBF16, 92),
         DType::kF32,
         {1, 2, 3}},
        {"qwen2_moe 31 experts, shared expert + gate, f16 weights, f32 act",
         Opts(Family::kQwen2Moe, 31, 4, 128, 64, DType::kF16, 93),
         DType::kF32,
         {1, 2, 7}},
        {"deepseek_v3 256 experts, bias, groups, f16 act",
         Opts(Family::kDeepseekV3, 256, 8, 64, 32, DType::kBF16, 94),
         DType::kF16,
         {1, 8}},
        {"mixtral 4 experts (router rows < cluster blocks), hidden 4096, f16 weights",
         Opts(Family::kMixtral, 4, 2, 4096, 32, DType::kF16, 95),
         DType::kBF16,
         {1, 4}},
        {"deepseek_v2 group-limited, shared experts",
         Opts(Family::kDeepseekV2, 32, 6, 128, 88, DType::kBF16, 96),
         DType::kBF16,
         {1, 3}},
    };
    c[2].model.norm_topk_prob = false;
    return c;
  }();
  return cases;
}

TEST(DecodePath, FusedKernelWithGraphs) {
  MOE_REQUIRE_GPU();
  for (const Case& c : Cases()) CheckFused(c, /*graphs=*/true);
}

TEST(DecodePath, FusedKernelEager) {
  MOE_REQUIRE_GPU();
  for (const Case& c : Cases()) CheckFused(c, /*graphs=*/false);
}

// Clusters of 2 and 4 blocks (more router rows per block), a grid of 1 or 3 clusters (many gate/up
// units per warp), L2 prefetch of each warp's next units (also in the unfused engine it is compared
// with) and of the down weights after the gate/up units, h read from global memory by down +
// combine, down and gate/up weights by the bulk copy engine (both engines).
TEST(DecodePath, FusedKernelClusterSizesAndSmallGrids) {
  MOE_REQUIRE_GPU();
  const std::vector<Case>& c = Cases();
  for (const Case& tc : {c[0], c[2], c[4]}) {
    CheckFused(tc, /*graphs=*/true, {2, 3, CudaEngineOptions::DownPrefetch::kNone, false, 3});
    CheckFused(tc, /*graphs=*/false, {4, 1, CudaEngineOptions::DownPrefetch::kLate, true, 2});
    CheckFused(tc, /*graphs=*/true, {4, 0, CudaEngineOptions::DownPrefetch::kNone, false, 0, true});
    CheckFused(tc, /*graphs=*/false,
               {8, 2, CudaEngineOptions::DownPrefetch::kNone, true, 2, true, true});
  }
}

// Beyond the fused kernel's limits (more than 8 tokens, or an x row block past 32 KiB) the engine
// keeps the unfused decode experts path: still correct.
TEST(DecodePath, PastFusedLimits) {
  MOE_REQUIRE_GPU();
  const auto model = RandomModel(Opts(Family::kQwen3Moe, 31, 4, 4096, 32, DType::kBF16, 97));
  auto cpu = ReferenceCpuEngine(model, 16);
  ASSERT_TRUE(cpu.ok()) << cpu.status();
  CudaEngineOptions o;
  o.max_batch_tokens = 16;
  o.graph_batch_sizes = {1, 8, 16};
  o.decode_gemv = CudaEngineOptions::DecodeGemv::kAlways;
  auto gpu = CudaEngine::Create(model, o);
  ASSERT_TRUE(gpu.ok()) << gpu.status();
  const int h = model->spec().hidden;
  for (int64_t n : {int64_t{5}, int64_t{12}}) {  // 8 x 4096 x 2 bytes: past the x limit; 16 tokens
    SCOPED_TRACE(::testing::Message() << "n_tokens " << n);
    const auto act = MakeActivations(DType::kBF16, n * h, 98 + n);
    const testing::RunResult g = testing::ExpectForward(**gpu, 0, DType::kBF16, act.bytes, n);
    const testing::RunResult c = testing::ExpectForward(**cpu, 0, DType::kBF16, act.bytes, n);
    const testing::ReferenceOutput ref = testing::ReferenceForward(*model, 0, act.values, n);
    const std::vector<bool> keep = UnambiguousTokens(ref, n);
    EXPECT_LT(
        RelErr(ToFloats(DType::kBF16, g.out, n * h), ToFloats(DType::kBF16, c.out, n * h), h, keep),
        1e-2);
  }
}

// The front as one thread-block cluster (router rows meet in block 0's shared memory) gives the
// same routing and the same outputs, bit for bit, as the ticket front (same sums in the same
// order), at every token count of the front (1 to 32 tokens) and with graphs, unless it cuts K
// into parts (routers of few row blocks, cuda::FrontKSplits): then both match the CPU engine and
// the reference routing. Cases past 128 router rows (129 experts, 256 experts) keep the ticket
// front and are compared all the same.
TEST(DecodePath, FrontClusterMatchesTicketFront) {
  MOE_REQUIRE_GPU();
  for (const Case& tc : Cases()) {
    SCOPED_TRACE(tc.name);
    const auto model = RandomModel(tc.model);
    const int h = model->spec().hidden, k = model->spec().top_k();
    const int router_rows = model->spec().n_experts() + (model->spec().shared_expert_gate ? 1 : 0);
    const bool same_sums = cuda::FrontKSplits(router_rows, h) == 1;
    CudaEngineOptions o;
    o.max_batch_tokens = 32;
    o.graph_batch_sizes = {1, 4, 32};
    o.decode_front_cluster = false;
    CudaEngineOptions oc = o;
    oc.decode_front_cluster = true;
    auto ticket = CudaEngine::Create(model, o);
    ASSERT_TRUE(ticket.ok()) << ticket.status();
    auto cluster = CudaEngine::Create(model, oc);
    ASSERT_TRUE(cluster.ok()) << cluster.status();
    auto cpu = ReferenceCpuEngine(model, 32);
    ASSERT_TRUE(cpu.ok()) << cpu.status();
    uint64_t seed = tc.model.seed * 31;
    for (int layer : tc.model.moe_layers) {
      for (int64_t n : {int64_t{1}, int64_t{3}, int64_t{32}}) {
        SCOPED_TRACE(::testing::Message() << "layer " << layer << " n_tokens " << n);
        const auto act = MakeActivations(tc.act, n * h, ++seed);
        const testing::RunResult a = testing::ExpectForward(**ticket, layer, tc.act, act.bytes, n);
        const testing::RunResult b = testing::ExpectForward(**cluster, layer, tc.act, act.bytes, n);
        const testing::RunResult c = testing::ExpectForward(**cpu, layer, tc.act, act.bytes, n);
        if (same_sums) {
          EXPECT_EQ(a.ids, b.ids);
          EXPECT_EQ(a.weights, b.weights);
          EXPECT_EQ(a.out, b.out) << "cluster front output differs from the ticket front's";
        }
        const testing::ReferenceOutput ref =
            testing::ReferenceForward(*model, layer, act.values, n);
        const std::vector<bool> keep = UnambiguousTokens(ref, n);
        EXPECT_LT(RelErr(ToFloats(tc.act, a.out, n * h), ToFloats(tc.act, c.out, n * h), h, keep),
                  1e-2);
        for (int64_t t = 0; t < n; ++t) {
          for (int j = 0; keep[t] && j < k; ++j) {
            EXPECT_EQ(b.ids[t * k + j], ref.routing.ids[t * k + j]) << "token " << t;
          }
        }
        EXPECT_LT(RelErr(ToFloats(tc.act, b.out, n * h), ToFloats(tc.act, c.out, n * h), h, keep),
                  1e-2);
      }
    }
  }
}

}  // namespace
}  // namespace moe
