// The GEMM tile table and launch heuristics, on the CPU.
#include "kernels/tile_heuristics.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <vector>

#include "kernels/weight_layout.h"

namespace moe::cuda {
namespace {

TEST(TileTable, ShapesAreConsistent) {
  for (int i = 0; i < kNumGemmTiles; ++i) {
    const TileShape& s = kTileShapes[i];
    SCOPED_TRACE(TileName(static_cast<GemmTile>(i)));
    EXPECT_EQ(s.bm % (16 * s.warps_m), 0);
    for (bool gated : {false, true}) {
      // Each warp covers a multiple of 16 output columns (two n8 MMA tiles per ldmatrix.x4).
      EXPECT_EQ(s.bn(gated) % (16 * s.warps_n), 0);
      const int b_rows = gated ? 2 * s.bn_gated : s.bn_plain;
      EXPECT_EQ(s.bm * 8 % s.threads(), 0);
      EXPECT_EQ(b_rows * 8 % s.threads(), 0);
      EXPECT_LE(s.smem_bytes(gated), 227 * 1024);  // sm_80 and sm_90 dynamic shared memory limit
    }
    EXPECT_GE(s.stages, 2);
  }
}

TEST(TileTable, HopperTiles) {
  EXPECT_FALSE(IsHopperTile(GemmTile::kDecode));
  EXPECT_FALSE(IsHopperTile(GemmTile::kDecodeNarrow));
  EXPECT_FALSE(IsHopperTile(GemmTile::kLarge));
  EXPECT_TRUE(IsHopperTile(GemmTile::kWgmma));
  EXPECT_TRUE(IsHopperTile(GemmTile::kWgmmaTall));
  EXPECT_TRUE(IsHopperTile(GemmTile::kWgmmaWs));
  EXPECT_TRUE(IsHopperTile(GemmTile::kWgmmaWsNarrow));
  // The warp-specialised kernel computes kWgmma's tile: same rows (tile list), columns and stages.
  const TileShape& wide = ShapeOf(GemmTile::kWgmma);
  const TileShape& ws = ShapeOf(GemmTile::kWgmmaWs);
  EXPECT_EQ(ws.bm, wide.bm);
  EXPECT_EQ(ws.bn_plain, wide.bn_plain);
  EXPECT_EQ(ws.bn_gated, wide.bn_gated);
  EXPECT_EQ(ws.smem_bytes(true), wide.smem_bytes(true));
}

TEST(ChooseTile, GrowsWithRowsPerExpert) {
  EXPECT_EQ(ChooseTile(1), GemmTile::kDecode);
  EXPECT_EQ(ChooseTile(16), GemmTile::kDecode);
  EXPECT_EQ(ChooseTile(17), GemmTile::kMedium);
  EXPECT_EQ(ChooseTile(64), GemmTile::kMedium);
  EXPECT_EQ(ChooseTile(65), GemmTile::kLarge);
  EXPECT_EQ(ChooseTile(32, true, GemmTile::kWgmmaWsMc), GemmTile::kMedium);
  EXPECT_EQ(ChooseTile(32, true, GemmTile::kWgmmaWsMc, 16), GemmTile::kWgmmaWsMc);
  EXPECT_EQ(ChooseTile(16, true, GemmTile::kWgmmaWsMc, 16), GemmTile::kDecode);
  EXPECT_EQ(ChooseTile(32, false, GemmTile::kWgmmaWsMc, 16), GemmTile::kMedium);  // no wgmma
  EXPECT_EQ(ChooseTile(1e6), GemmTile::kLarge);
  EXPECT_EQ(ChooseTile(16, true), GemmTile::kDecode);
  EXPECT_EQ(ChooseTile(64, true), GemmTile::kMedium);
  EXPECT_EQ(ChooseTile(65, true), GemmTile::kWgmma);
  EXPECT_EQ(ChooseTile(65, true, GemmTile::kWgmma2), GemmTile::kWgmma2);
  EXPECT_EQ(ChooseTile(65, true, GemmTile::kWgmmaTall), GemmTile::kWgmmaTall);
  EXPECT_EQ(ChooseTile(65, true, GemmTile::kWgmmaWs), GemmTile::kWgmmaWs);
  EXPECT_EQ(ChooseTile(64, true, GemmTile::kWgmmaWs), GemmTile::kMedium);
}

TEST(ChooseSplitK, SplitsOnlySmallUnderfilledProblems) {
  // Mixtral down projection at 1 token: 2 experts x 64 column blocks of 64, K = 14336.
  EXPECT_EQ(ChooseSplitK(128, 14336, 2, 132, false), 4);
  // Already 2 blocks per SM: no split.
  EXPECT_EQ(ChooseSplitK(264, 14336, 2, 132, false), 1);
  // K too short to split (each split keeps >= 4 k-steps of 64).
  EXPECT_EQ(ChooseSplitK(8, 256, 1, 132, false), 1);
  EXPECT_EQ(ChooseSplitK(8, 512, 1, 132, false), 2);
  // Never more than kMaxSplits.
  EXPECT_EQ(ChooseSplitK(1, 1 << 20, 1, 132, false), kMaxSplits);
  // Deterministic mode and large row counts never split.
  EXPECT_EQ(ChooseSplitK(128, 14336, 2, 132, true), 1);
  EXPECT_EQ(ChooseSplitK(128, 14336, kMaxSplitRows + 1, 132, false), 1);
}

TEST(MaxGroupedTiles, BoundsEveryDistribution) {
  // Worst case: every active expert has one partial tile.
  for (int bm : {16, 64, 128}) {
    for (int64_t pairs : {1, 7, 64, 1000, 131072}) {
      for (int experts : {1, 8, 31, 129}) {
        // Distribution: pairs spread as evenly as possible (most partial tiles).
        int64_t tiles = 0;
        for (int e = 0; e < experts; ++e) {
          const int64_t c = pairs / experts + (e < pairs % experts ? 1 : 0);
          tiles += (c + bm - 1) / bm;
        }
        EXPECT_LE(tiles, MaxGroupedTiles(pairs, experts, bm))
            << bm << " " << pairs << " " << experts;
        // All pairs on one expert.
        EXPECT_LE((pairs + bm - 1) / bm, MaxGroupedTiles(pairs, experts, bm));
      }
    }
  }
}

TEST(PlanMoe, DecodeAndPrefillShapes) {
  MoePlanInput in;
  in.top_k = 8;
  in.n_experts = 128;
  in.hidden = 2048;
  in.inter = 768;
  in.router_rows = 128;
  in.router_k = 2048;
  in.sm_count = 132;
  in.tokens = 1;
  MoePlan p = PlanMoe(in);
  EXPECT_EQ(p.tile, GemmTile::kDecode);
  EXPECT_EQ(p.gated_tile, GemmTile::kDecodeNarrow);
  EXPECT_EQ(ShapeOf(p.gated_tile).bm, ShapeOf(p.tile).bm);  // one tile list serves both
  EXPECT_EQ(p.grouped_tiles, 8);
  EXPECT_EQ(p.dense_tiles, 1);
  EXPECT_EQ(p.router_tile, GemmTile::kDecode);
  EXPECT_EQ(p.router_tiles, 1);
  EXPECT_GT(p.router_splits, 1);
  in.tokens = 16384;
  p = PlanMoe(in);
  EXPECT_EQ(p.tile, GemmTile::kLarge);
  EXPECT_EQ(p.gated_tile, GemmTile::kLarge);
  EXPECT_EQ(p.router_splits, 1);
  EXPECT_EQ(p.down_splits, 1);
  EXPECT_EQ(p.grouped_tiles, 16384 * 8 / 128 + 128);
  in.wgmma = true;
  EXPECT_EQ(PlanMoe(in).tile, GemmTile::kWgmma);
  EXPECT_EQ(PlanMoe(in).router_splits, 1);  // 128 row tiles: the router GEMM fills the chip
  {
    MoePlanInput small = in;  // 32 rows per expert, from 17 rows on: large experts only
    small.tokens = 512;
    small.wgmma_min_rows = 16;
    small.wgmma_tile = GemmTile::kWgmmaWsMc;
    EXPECT_EQ(PlanMoe(small).tile, GemmTile::kWgmmaWsMc);  // 2048 x 768
    small.hidden = 512;
    small.inter = 256;  // the embedded model's experts: the mma.sync tile up to 64 rows
    EXPECT_EQ(PlanMoe(small).tile, GemmTile::kMedium);
    small.tokens = 2048;  // 128 rows per expert
    EXPECT_EQ(PlanMoe(small).tile, GemmTile::kWgmmaWsMc);
  }
  in.tokens = 4096;  // 32 row tiles: the router's K (32 steps) is split in 4 (128 blocks)
  EXPECT_EQ(PlanMoe(in).router_splits, 4);
  in.router_k = 512;  // 8 k-steps: not split below 4 steps a part
  EXPECT_EQ(PlanMoe(in).router_splits, 2);
  in.router_k = 256;
  EXPECT_EQ(PlanMoe(in).router_splits, 1);
  in.router_k = 2048;
  {
    MoePlanInput r = in;  // 8 row tiles: 8 splits of 4 k-steps, if the workspace holds them
    r.tokens = 512;
    r.wgmma_min_rows = 16;  // 32 rows per expert: a Hopper plan
    EXPECT_EQ(PlanMoe(r).tile, GemmTile::kWgmma);
    EXPECT_EQ(PlanMoe(r).router_tile, GemmTile::kWgmma);  // not asked for
    EXPECT_EQ(PlanMoe(r).router_tiles, 4);
    r.router_mma_max_tokens = kRouterMmaMaxTokens;
    EXPECT_EQ(PlanMoe(r).router_tile, GemmTile::kMedium);  // a small batch of Hopper tiles
    EXPECT_EQ(PlanMoe(r).router_tiles, 8);
    EXPECT_EQ(PlanMoe(r).router_splits, 4);  // default workspace: 4 rows per token
    r.router_partial_rows = kRouterPartialRowsPerToken * 16384;
    EXPECT_EQ(PlanMoe(r).router_splits, kMaxLargeRouterSplits);
  }
  in.router_mma_max_tokens = kRouterMmaMaxTokens;
  EXPECT_EQ(PlanMoe(in).router_tile, GemmTile::kWgmma);  // 4096 tokens: the Hopper tile
  in.deterministic = true;
  EXPECT_EQ(PlanMoe(in).router_splits, 1);
  {
    MoePlanInput r = in;  // deterministic: the router tile never depends on the batch size
    r.tokens = 512;
    r.wgmma_min_rows = 16;
    r.router_mma_max_tokens = kRouterMmaMaxTokens;
    r.deterministic_wgmma = true;
    EXPECT_EQ(PlanMoe(r).tile, GemmTile::kWgmma);
    EXPECT_EQ(PlanMoe(r).router_tile, GemmTile::kWgmma);
  }
  in.deterministic = false;
  in.tokens = 16384;
  in.deterministic = true;
  EXPECT_EQ(PlanMoe(in).tile, GemmTile::kLarge);
  in.deterministic_wgmma = true;
  EXPECT_EQ(PlanMoe(in).tile, GemmTile::kWgmma);
  in.deterministic = false;
  in.wgmma = false;
  in.tokens = 1;
  EXPECT_FALSE(PlanMoe(in).decode_gemv);  // only when asked for
  in.decode_gemv = GemvPolicy::kAuto;
  EXPECT_TRUE(PlanMoe(in).decode_gemv);
  in.tokens = kDecodeGemvAutoTokens + 1;
  EXPECT_FALSE(PlanMoe(in).decode_gemv);  // kAuto: only where it measured faster
  in.tokens = 1;
  in.decode_gemv = GemvPolicy::kAlways;
  p = PlanMoe(in);
  EXPECT_TRUE(p.decode_gemv);
  EXPECT_TRUE(p.shared_gemv);
  EXPECT_EQ(p.down_splits, 1);
  in.tokens = 8;
  EXPECT_TRUE(PlanMoe(in).decode_gemv);
  EXPECT_FALSE(PlanMoe(in).shared_gemv);
  in.tokens = kDecodeExpertsMaxTokens;  // 256 pairs over 128 experts: 2 rows each
  EXPECT_TRUE(PlanMoe(in).decode_gemv);
  in.tokens = kDecodeExpertsMaxTokens + 1;  // past the fused front's and the kernels' limit
  EXPECT_FALSE(PlanMoe(in).decode_gemv);
  in.tokens = 8;
  in.n_experts = 8;
  in.top_k = 8;  // 8 rows per expert: the tensor-core tile
  EXPECT_FALSE(PlanMoe(in).decode_gemv);
  in.n_experts = 128;
  in.tokens = 1;
  in.deterministic = true;
  EXPECT_FALSE(PlanMoe(in).decode_gemv);  // rounds unlike the mma.sync tiles
  p = PlanMoe(in);
  EXPECT_EQ(p.router_splits, 1);
  EXPECT_EQ(p.down_splits, 1);
  EXPECT_EQ(p.shared_down_splits, 1);
}

// A Hopper plan input of `tokens` tokens for a Mixtral-8x7B (hidden 4096, inter 14336, 8
// experts, top-2) or Qwen3-30B-A3B (2048, 768, 128, top-8) layer on 132 SMs; the cluster tile
// unless `tile` says otherwise.
MoePlanInput HopperInput(bool mixtral, int64_t tokens, GemmTile tile = GemmTile::kWgmmaWsMc) {
  MoePlanInput in;
  in.tokens = tokens;
  in.top_k = mixtral ? 2 : 8;
  in.n_experts = mixtral ? 8 : 128;
  in.hidden = mixtral ? 4096 : 2048;
  in.inter = mixtral ? 14336 : 768;
  in.router_rows = in.n_experts;
  in.router_k = in.hidden;
  in.sm_count = 132;
  in.wgmma = true;
  in.wgmma_tile = tile;
  in.wgmma_min_rows = 16;
  return in;
}

// The down GEMM of a decode-tile plan with few waves of blocks splits its K (kWaveSplitMinWaves).
TEST(PlanMoe, WaveFillingDownSplits) {
  // Mixtral-8x7B at 8 tokens: 8 experts x 64 column blocks, 3 blocks per SM
  MoePlanInput in = HopperInput(/*mixtral=*/true, 8, GemmTile::kWgmma);
  in.wgmma_min_rows = 64.0;
  in.smem_per_sm = 233472;
  EXPECT_EQ(PlanMoe(in).down_splits, 1);  // the option off: no split
  in.wave_split_down = true;
  in.smem_per_sm = 0;
  EXPECT_EQ(PlanMoe(in).down_splits, 1);  // the SM's shared memory unknown: no split
  in.smem_per_sm = 233472;
  MoePlan p = PlanMoe(in);
  EXPECT_EQ(p.tile, GemmTile::kDecode);
  EXPECT_EQ(p.down_splits, 4);  // 512 blocks for 396 resident: 4 splits, 2048 >= 4 waves
  in.deterministic = true;
  EXPECT_EQ(PlanMoe(in).down_splits, 1);
  in.deterministic = false;
  in.tokens = 64;  // 16 rows per expert: a Hopper plan whose 128 down blocks fill the SMs
  EXPECT_EQ(PlanMoe(in).tile, GemmTile::kWgmma);
  EXPECT_EQ(PlanMoe(in).down_splits, 1);
  in.sm_count = 264;  // ... or half of them: split until 3/4 are busy
  EXPECT_EQ(PlanMoe(in).down_splits, 2);
  in.sm_count = 132;
  in.tokens = 8;
  in.inter = 256;  // 4 k-steps: never below 4 a part
  EXPECT_EQ(PlanMoe(in).down_splits, 1);
  in.top_k = 8;  // Qwen3-30B-A3B: 64 experts x 32 column blocks, over 2 waves
  in.n_experts = 128;
  in.hidden = 2048;
  in.inter = 768;
  EXPECT_EQ(PlanMoe(in).down_splits, 1);
  in.top_k = 6;  // DeepSeek-V2-Lite: 48 experts x 32 column blocks, 3.9 waves
  in.n_experts = 64;
  in.inter = 1408;
  EXPECT_EQ(PlanMoe(in).down_splits, 1);
}

// Experts of >= 2^24 weights take the Hopper tile past 4 rows per expert; smaller ones keep the
// decode tile up to 16; an explicit decode bound overrides the rule.
TEST(PlanMoe, LargeExpertsLeaveTheDecodeTileEarly) {
  MoePlanInput in = HopperInput(/*mixtral=*/true, 8);  // 16 pairs over 8 experts: 2 rows
  EXPECT_EQ(PlanMoe(in).tile, GemmTile::kDecode);
  in.tokens = 32;  // 8 rows
  EXPECT_EQ(PlanMoe(in).tile, GemmTile::kWgmmaWsMc);
  in.tokens = 64;  // 16 rows: the router on the decode tile, the experts on the cluster tile
  MoePlan p = PlanMoe(in);
  EXPECT_EQ(p.tile, GemmTile::kWgmmaWsMc);
  EXPECT_EQ(p.router_tile, GemmTile::kWgmmaWsMc);  // router_mma_max_tokens not set
  in.router_mma_max_tokens = kRouterMmaMaxTokens;
  p = PlanMoe(in);
  EXPECT_EQ(p.router_tile, GemmTile::kDecode);
  EXPECT_EQ(p.router_tiles, 4);
  in.tokens = 128;
  EXPECT_EQ(PlanMoe(in).router_tile, GemmTile::kMedium);
  in.tokens = 64;
  in.decode_max_rows = 16;  // asked for: the old bound
  EXPECT_EQ(PlanMoe(in).tile, GemmTile::kDecode);
  in.tokens = 128;  // 32 rows: past it wgmma_min_rows (16) applies as given
  EXPECT_EQ(PlanMoe(in).tile, GemmTile::kWgmmaWsMc);
  in.wgmma_min_rows = 32;
  EXPECT_EQ(PlanMoe(in).tile, GemmTile::kMedium);
  in.tokens = 64;
  in.deterministic = true;  // no Hopper tile in deterministic mode: the decode tile up to 16
  in.decode_max_rows = -1;
  EXPECT_EQ(PlanMoe(in).tile, GemmTile::kDecode);
  in.deterministic_wgmma = true;  // unless asked for
  EXPECT_EQ(PlanMoe(in).tile, GemmTile::kWgmmaWsMc);
  in = HopperInput(/*mixtral=*/false, 64);  // Qwen3: 4 rows, decode tile either way
  EXPECT_EQ(PlanMoe(in).tile, GemmTile::kDecode);
  in.top_k = 6;  // DeepSeek-V2-Lite at 64 tokens: 6 rows over 64 experts of 2048 x 1408
  in.n_experts = 64;
  in.inter = 1408;
  EXPECT_EQ(PlanMoe(in).tile, GemmTile::kDecode);
  in.tokens = 256;  // 24 rows
  EXPECT_EQ(PlanMoe(in).tile, GemmTile::kWgmmaWsMc);
}

// Ping-pong cluster GEMMs (64-row tiles) up to kPingpongMaxRows expected rows per expert: not
// past it (an expert over 64 rows would stream its weights once per 64-row tile), not on other
// tiles, never when off, at any size when forced.
TEST(PlanMoe, PingPongForFewRowsPerExpert) {
  MoePlanInput in = HopperInput(/*mixtral=*/false, 512);  // Qwen3: 32 rows per expert
  EXPECT_FALSE(PlanMoe(in).pingpong);                     // policy kNever (the input's default)
  in.pingpong = PathPolicy::kAuto;
  EXPECT_EQ(PlanMoe(in).tile, GemmTile::kWgmmaWsMc);
  EXPECT_TRUE(PlanMoe(in).pingpong);
  in.tokens = 768;  // 48 rows
  EXPECT_TRUE(PlanMoe(in).pingpong);
  in.tokens = 1024;  // 64 rows
  EXPECT_FALSE(PlanMoe(in).pingpong);
  in.pingpong = PathPolicy::kAlways;
  EXPECT_TRUE(PlanMoe(in).pingpong);
  in.wgmma_tile = GemmTile::kWgmmaWs;  // only the cluster tile has it
  EXPECT_FALSE(PlanMoe(in).pingpong);
  in = HopperInput(/*mixtral=*/true, 256);  // Mixtral: 64 rows per expert
  in.pingpong = PathPolicy::kAuto;
  EXPECT_FALSE(PlanMoe(in).pingpong);
  in.tokens = 64;  // 16 rows
  EXPECT_TRUE(PlanMoe(in).pingpong);
  in.tokens = 8;  // the decode tile
  EXPECT_FALSE(PlanMoe(in).pingpong);
}

// The down GEMM's A by TMA (MoePlan::tma_a_down): cluster plans outside ping-pong mode.
TEST(PlanMoe, TmaADownOutsidePingPong) {
  MoePlanInput in = HopperInput(/*mixtral=*/false, 512);  // Qwen3: 32 rows per expert
  in.pingpong = PathPolicy::kAuto;
  EXPECT_FALSE(PlanMoe(in).tma_a_down);  // policy kNever (the input's default)
  in.tma_a_down = PathPolicy::kAuto;
  EXPECT_TRUE(PlanMoe(in).pingpong);
  EXPECT_FALSE(PlanMoe(in).tma_a_down);
  in.tma_a_down = PathPolicy::kAlways;
  EXPECT_TRUE(PlanMoe(in).tma_a_down);
  in.tma_a_down = PathPolicy::kAuto;
  in.tokens = 1024;  // 64 rows: no ping-pong
  EXPECT_FALSE(PlanMoe(in).pingpong);
  EXPECT_TRUE(PlanMoe(in).tma_a_down);
  in.wgmma_tile = GemmTile::kWgmmaWs;  // only the cluster tile has it
  EXPECT_FALSE(PlanMoe(in).tma_a_down);
}

// The down GEMM under gate/up's tail (MoePlan::down_overlap): ping-pong plans, and cluster plans
// of at most kDownOverlapMaxItemsPerCluster gate/up work items a cluster; never with permute_x.
TEST(PlanMoe, DownOverlapWhereGateUpHasFewItems) {
  MoePlanInput in = HopperInput(/*mixtral=*/false, 512);  // Qwen3: 32 rows per expert
  in.pingpong = PathPolicy::kAuto;
  EXPECT_FALSE(PlanMoe(in).down_overlap);  // policy kNever (the input's default)
  in.down_overlap = PathPolicy::kAuto;
  EXPECT_TRUE(PlanMoe(in).pingpong);
  EXPECT_TRUE(PlanMoe(in).down_overlap);
  in.tokens = 4096;  // 256 rows: 128 experts x 2 units x 6 column blocks / 66 clusters = 23 items
  EXPECT_FALSE(PlanMoe(in).pingpong);
  EXPECT_TRUE(PlanMoe(in).down_overlap);
  in.tokens = 16384;  // 1024 rows: 58 items
  EXPECT_FALSE(PlanMoe(in).down_overlap);
  in.down_overlap = PathPolicy::kAlways;
  EXPECT_TRUE(PlanMoe(in).down_overlap);
  in.wgmma_tile = GemmTile::kWgmmaWs;  // only the cluster tile has it
  EXPECT_FALSE(PlanMoe(in).down_overlap);
  in = HopperInput(/*mixtral=*/true, 64);  // Mixtral: 16 rows per expert, ping-pong
  in.pingpong = in.down_overlap = PathPolicy::kAuto;
  EXPECT_TRUE(PlanMoe(in).down_overlap);
  in.permute_x = PathPolicy::kAuto;  // inter 14336: gate/up reads x from y, which down writes
  EXPECT_TRUE(PlanMoe(in).permute_x);
  EXPECT_FALSE(PlanMoe(in).down_overlap);
}

// Packed weights by 4-D tensor copies (kAuto): cluster plans of at least kPackedTensorCopiesMinRows
// rows per expert, never in ping-pong mode; kAlways in every cluster plan, kNever never.
TEST(PlanMoe, PackedTensorCopiesForManyRowsPerExpert) {
  MoePlanInput in = HopperInput(/*mixtral=*/false, 16384);  // Qwen3: 1024 rows per expert
  EXPECT_FALSE(PlanMoe(in).packed_tensor_copies);           // policy kNever (the input's default)
  in.packed_tensor_copies = PathPolicy::kAuto;
  EXPECT_TRUE(PlanMoe(in).packed_tensor_copies);
  in.tokens = 4096;  // 256 rows: bulk copies
  EXPECT_FALSE(PlanMoe(in).packed_tensor_copies);
  in.packed_tensor_copies = PathPolicy::kAlways;
  EXPECT_TRUE(PlanMoe(in).packed_tensor_copies);
  in.tokens = 512;  // ping-pong: kAlways still applies
  in.pingpong = PathPolicy::kAuto;
  EXPECT_TRUE(PlanMoe(in).pingpong);
  EXPECT_TRUE(PlanMoe(in).packed_tensor_copies);
  in.packed_tensor_copies = PathPolicy::kAuto;
  EXPECT_FALSE(PlanMoe(in).packed_tensor_copies);
  in = HopperInput(/*mixtral=*/true, 4096);  // Mixtral: 1024 rows per expert
  in.packed_tensor_copies = PathPolicy::kAuto;
  EXPECT_TRUE(PlanMoe(in).packed_tensor_copies);
  in.tokens = 2048;
  EXPECT_FALSE(PlanMoe(in).packed_tensor_copies);
  in.tokens = 16384;
  in.wgmma_tile = GemmTile::kWgmmaWs;  // only the cluster tile loads boxes by tensor copies
  EXPECT_FALSE(PlanMoe(in).packed_tensor_copies);
}

// A pair's extra rows: the expected share of work units they remove (binomial rows per expert),
// and the plan takes them (kAuto) where it is at least kPairExtraRowsMinSaving, outside ping-pong.
TEST(PlanMoe, PairExtraRowsWhereTheyRemoveSoloTiles) {
  // Qwen3 at 4096 tokens: 256 +- 16 rows per expert, a third of the experts 1-16 rows past a pair.
  EXPECT_GT(PairExtraRowsSaving(4096 * 8, 128), 0.10);
  EXPECT_LT(PairExtraRowsSaving(4096 * 8, 128), 0.16);
  EXPECT_LT(PairExtraRowsSaving(2048 * 8, 128), 1e-3);   // 128 rows: no pair to ride on
  EXPECT_LT(PairExtraRowsSaving(4096 * 6, 64), 0.01);    // DeepSeek-V2-Lite: 384 +- 19 rows
  EXPECT_LT(PairExtraRowsSaving(16384 * 8, 128), 0.05);  // 1024 +- 32 rows: 4 pairs an expert
  EXPECT_GT(PairExtraRowsSaving(1024 * 2, 8), kPairExtraRowsMinSaving);  // Mixtral: 256 rows
  EXPECT_EQ(PairExtraRowsSaving(0, 128), 0.0);
  MoePlanInput in = HopperInput(/*mixtral=*/false, 4096);
  EXPECT_FALSE(PlanMoe(in).pair_extra_rows);  // policy kNever (the input's default)
  in.pair_extra_rows = PathPolicy::kAuto;
  EXPECT_TRUE(PlanMoe(in).pair_extra_rows);
  in.tokens = 2048;
  EXPECT_FALSE(PlanMoe(in).pair_extra_rows);
  in.pair_extra_rows = PathPolicy::kAlways;
  EXPECT_TRUE(PlanMoe(in).pair_extra_rows);
  in.tokens = 512;  // 32 rows per expert: ping-pong, never
  in.pingpong = PathPolicy::kAuto;
  EXPECT_TRUE(PlanMoe(in).pingpong);
  EXPECT_FALSE(PlanMoe(in).pair_extra_rows);
  in = HopperInput(/*mixtral=*/false, 4096);
  in.pair_extra_rows = PathPolicy::kAlways;
  in.wgmma_tile = GemmTile::kWgmmaWs;  // only the cluster tile has them
  EXPECT_FALSE(PlanMoe(in).pair_extra_rows);
  in = HopperInput(/*mixtral=*/true, 1024);  // Mixtral: 256 rows per expert
  in.pair_extra_rows = PathPolicy::kAuto;
  EXPECT_TRUE(PlanMoe(in).pair_extra_rows);
  in.permute_x = PathPolicy::kAuto;  // kAuto: not in permuted-x plans
  EXPECT_TRUE(PlanMoe(in).permute_x);
  EXPECT_FALSE(PlanMoe(in).pair_extra_rows);
  in.pair_extra_rows = PathPolicy::kAlways;
  EXPECT_TRUE(PlanMoe(in).pair_extra_rows);
}

// Raster groups of the cluster tile: kRasterUnits[2] units where an expert expects at least that
// many (Mixtral at 16384 tokens: 16), kRasterUnits[0] (one) where it expects at most one, else
// kRasterUnits[1]; the option's value wins; 0 outside the cluster tile.
TEST(PlanMoe, RasterUnitsGrowWithUnitsPerExpert) {
  MoePlanInput in = HopperInput(/*mixtral=*/true, 16384);
  ASSERT_EQ(PlanMoe(in).tile, GemmTile::kWgmmaWsMc);
  EXPECT_EQ(PlanMoe(in).raster_units, kRasterUnits[2]);
  in.tokens = 8192;  // 2048 +- 42 rows: 8 units an expert and more (a solo tile past them)
  EXPECT_EQ(PlanMoe(in).raster_units, kRasterUnits[2]);
  in.tokens = 6144;  // 6 units an expert
  EXPECT_EQ(PlanMoe(in).raster_units, kRasterUnits[1]);
  in.tokens = 4096;  // 4 units an expert
  EXPECT_EQ(PlanMoe(in).raster_units, kRasterUnits[1]);
  in.tokens = 1024;  // 256 +- 15 rows: one unit or one and a half
  EXPECT_EQ(PlanMoe(in).raster_units, kRasterUnits[1]);
  in.tokens = 768;  // 192 +- 13 rows: one multicast pair
  EXPECT_EQ(PlanMoe(in).raster_units, kRasterUnits[0]);
  in.tokens = 512;  // 128 +- 11: a solo tile or a pair
  EXPECT_EQ(PlanMoe(in).raster_units, kRasterUnits[0]);
  in.tokens = 64;  // 16 rows (a ping-pong plan)
  ASSERT_EQ(PlanMoe(in).tile, GemmTile::kWgmmaWsMc);
  EXPECT_EQ(PlanMoe(in).raster_units, kRasterUnits[0]);
  in.tokens = 4096;
  in.raster_units = 3;
  EXPECT_EQ(PlanMoe(in).raster_units, 3);
  in = HopperInput(/*mixtral=*/false, 16384);  // Qwen3: 1024 rows, 4 units an expert
  EXPECT_EQ(PlanMoe(in).raster_units, kRasterUnits[1]);
  in.tokens = 4096;  // 256 +- 16 rows
  EXPECT_EQ(PlanMoe(in).raster_units, kRasterUnits[1]);
  in.tokens = 2048;  // 128 +- 11 rows
  EXPECT_EQ(PlanMoe(in).raster_units, kRasterUnits[0]);
  in.wgmma_tile = GemmTile::kWgmmaWs;
  EXPECT_EQ(PlanMoe(in).raster_units, 0);
}

// The routed gate/up GEMM of decode-tile plans on the weight-streaming kernel: up to
// kStreamGateUpMaxRows rows per expert, experts of at least kStreamGateUpMinExpertElems.
TEST(PlanMoe, StreamGateUpForFewRowsOfLargeExperts) {
  MoePlanInput in = HopperInput(/*mixtral=*/false, 8);  // Qwen3: 1 row per expert
  EXPECT_EQ(PlanMoe(in).tile, GemmTile::kDecode);
  EXPECT_FALSE(PlanMoe(in).stream_gate_up);  // policy kNever (the input's default)
  in.stream_gate_up = PathPolicy::kAuto;
  EXPECT_TRUE(PlanMoe(in).stream_gate_up);
  in.tokens = 48;  // 3 rows
  EXPECT_TRUE(PlanMoe(in).stream_gate_up);
  in.tokens = 64;  // 4 rows, still the decode tile
  EXPECT_EQ(PlanMoe(in).tile, GemmTile::kDecode);
  EXPECT_FALSE(PlanMoe(in).stream_gate_up);
  in.stream_gate_up = PathPolicy::kAlways;
  EXPECT_TRUE(PlanMoe(in).stream_gate_up);
  in.deterministic = true;  // not batch invariant
  EXPECT_FALSE(PlanMoe(in).stream_gate_up);
  in.deterministic = false;
  in.tokens = 512;  // 32 rows: a Hopper tile
  EXPECT_EQ(PlanMoe(in).tile, GemmTile::kWgmmaWsMc);
  EXPECT_FALSE(PlanMoe(in).stream_gate_up);
  in.tokens = 1;  // the decode experts path takes the routed experts
  in.decode_gemv = GemvPolicy::kAlways;
  EXPECT_TRUE(PlanMoe(in).decode_gemv);
  EXPECT_FALSE(PlanMoe(in).stream_gate_up);
  // Small experts (the embedded model's 512 x 256): the decode tile.
  in = HopperInput(/*mixtral=*/false, 8);
  in.stream_gate_up = PathPolicy::kAuto;
  in.hidden = 512;
  in.inter = 256;
  EXPECT_EQ(PlanMoe(in).tile, GemmTile::kDecode);
  EXPECT_FALSE(PlanMoe(in).stream_gate_up);
  in.inter = 1024;  // 512 Ki elements
  EXPECT_TRUE(PlanMoe(in).stream_gate_up);
}

TEST(PlanMoe, HopperDownSplitsUnderTwoWaves) {
  // Mixtral-8x7B at 512 tokens: 1024 pairs, 128 rows per expert
  MoePlanInput in = HopperInput(/*mixtral=*/true, 512);
  in.down_partial_rows = 16 * 1024;       // 16384 tokens: 32768 bf16 pair rows = 16384 f32 rows
  EXPECT_EQ(PlanMoe(in).down_splits, 1);  // the option off: no split
  in.wave_split_down = true;
  MoePlan p = PlanMoe(in);
  EXPECT_EQ(p.tile, GemmTile::kWgmmaWsMc);
  // 128 +- 11 rows per expert: a multicast pair (1 unit) or a solo tile (1/2): ~5.9 units x 16
  // column blocks = 95 items, 1.44 rounds of 66 clusters.
  EXPECT_NEAR(ExpectedClusterUnits(1024, 8), 5.9, 0.15);
  EXPECT_EQ(p.down_splits, 2);
  in.deterministic = true;
  EXPECT_EQ(PlanMoe(in).down_splits, 1);
  in.deterministic = false;
  in.down_partial_rows = 2047;  // 2 x 1024 f32 rows do not fit
  EXPECT_EQ(PlanMoe(in).down_splits, 1);
  in.down_partial_rows = 0;  // the default workspace: kMaxSplits x kMaxSplitRows = 2048 rows
  EXPECT_EQ(PlanMoe(in).down_splits, 2);
  in.down_partial_rows = 16 * 1024;
  in.tokens = 4096;  // 64 + 4 row tiles x 16: over 2 waves
  EXPECT_EQ(PlanMoe(in).down_splits, 1);
  // The cluster tile splits only for a poorly filled second round: solo tiles only (64 items, one
  // round) up to ~448 tokens, pairs only (128 items, two full rounds) from ~640.
  for (int64_t t : {256, 320, 384, 448, 640, 768, 1024, 2048}) {
    in.tokens = t;
    EXPECT_EQ(PlanMoe(in).down_splits, 1) << t << " tokens";
  }
  in.tokens = 256;
  in.wgmma_tile = GemmTile::kWgmmaWs;  // other Hopper tiles: (4 + 4) x 16 = 128 blocks -> 4
  EXPECT_EQ(PlanMoe(in).down_splits, 4);
  in.wgmma_tile = GemmTile::kWgmmaWsMc;
  in.tokens = 512;
  in.pingpong = PathPolicy::kAlways;  // ping-pong plans never split this way
  EXPECT_EQ(PlanMoe(in).down_splits, 1);
  in.pingpong = PathPolicy::kNever;
  in.top_k = 8;  // Qwen3-30B-A3B at 512 tokens: (32 + 64) x 8 column blocks = 768 blocks
  in.n_experts = 128;
  in.hidden = 2048;
  in.inter = 768;
  EXPECT_EQ(PlanMoe(in).down_splits, 1);
}

TEST(PlanMoe, QuadDownFromTwelveWaves) {
  // Qwen3-30B-A3B at 4096 tokens: (256 + 64) row tiles x 8 column blocks = 2560 blocks: 19 waves
  MoePlanInput in = HopperInput(/*mixtral=*/false, 4096);
  in.quad_down = PathPolicy::kAuto;
  EXPECT_TRUE(PlanMoe(in).quad_down);
  in.tokens = 1024;  // (64 + 64) x 8 = 1024 blocks: 7.8 waves
  EXPECT_FALSE(PlanMoe(in).quad_down);
  in.quad_down = PathPolicy::kAlways;
  EXPECT_TRUE(PlanMoe(in).quad_down);
  in.tokens = 8;  // the decode tile: never
  EXPECT_FALSE(PlanMoe(in).quad_down);
  in.tokens = 4096;
  in.quad_down = PathPolicy::kNever;
  EXPECT_FALSE(PlanMoe(in).quad_down);
  in.quad_down = PathPolicy::kAuto;
  in.wgmma_tile = GemmTile::kWgmmaWs;  // not the cluster tile
  EXPECT_FALSE(PlanMoe(in).quad_down);
}

TEST(PlanMoe, PermuteXForWideExperts) {
  MoePlanInput in = HopperInput(/*mixtral=*/true, 4096);
  EXPECT_FALSE(PlanMoe(in).permute_x);  // kNever
  in.permute_x = PathPolicy::kAuto;
  EXPECT_TRUE(PlanMoe(in).permute_x);
  in.tokens = 8;  // the decode tile: never
  EXPECT_FALSE(PlanMoe(in).permute_x);
  in.tokens = 4096;
  in.inter = 2048;  // narrow experts: the copy would cost more than it saves
  EXPECT_FALSE(PlanMoe(in).permute_x);
  in.permute_x = PathPolicy::kAlways;
  EXPECT_TRUE(PlanMoe(in).permute_x);
  in.wgmma_tile = GemmTile::kWgmmaWs;  // not the cluster tile
  EXPECT_FALSE(PlanMoe(in).permute_x);
}

// Past kRouterMmaMaxTokens a router of >= kLargeRouterMmaMinRows rows stays on the mma.sync tile
// (MoePlanInput::large_router_mma), its K split while the blocks fit two per SM; Mixtral's 8 rows,
// deterministic mode and the option off keep the plan's Hopper tile.
TEST(PlanMoe, LargeBatchRouterOnTheMmaTile) {
  MoePlanInput in = HopperInput(/*mixtral=*/false, 4096);
  in.router_mma_max_tokens = kRouterMmaMaxTokens;
  in.router_partial_rows = kRouterPartialRowsPerToken * 16384;
  MoePlan p = PlanMoe(in);
  EXPECT_FALSE(p.large_router_mma);  // the option off
  EXPECT_EQ(p.router_tile, GemmTile::kWgmmaWsMc);
  EXPECT_EQ(p.router_tiles, 32);
  EXPECT_EQ(p.router_splits, 4);  // 32 x 4 blocks: one per SM at most
  in.large_router_mma = true;
  p = PlanMoe(in);
  EXPECT_TRUE(p.large_router_mma);
  EXPECT_EQ(p.router_tile, GemmTile::kMedium);
  EXPECT_EQ(p.router_tiles, 64);
  EXPECT_EQ(p.router_splits, 4);  // 256 blocks: two per SM
  in.tokens = 16384;  // 256 row tiles already fill two per SM: no split, so the Hopper tile
  p = PlanMoe(in);
  EXPECT_FALSE(p.large_router_mma);
  EXPECT_EQ(p.router_tile, GemmTile::kWgmmaWsMc);
  EXPECT_EQ(p.router_splits, 1);
  in.tokens = 8192;  // 128 row tiles: 2 splits
  p = PlanMoe(in);
  EXPECT_TRUE(p.large_router_mma);
  EXPECT_EQ(p.router_splits, 2);
  in.tokens = 2048;  // 32 row tiles, 8 splits of 4 k-steps
  p = PlanMoe(in);
  EXPECT_EQ(p.router_splits, 8);
  in.router_partial_rows = 4 * 2048;  // a workspace of 4 rows per token: 4 splits
  EXPECT_EQ(PlanMoe(in).router_splits, 4);
  in.tokens = 1024;  // the small-batch rule's last size: as before
  in.router_partial_rows = kRouterPartialRowsPerToken * 16384;
  p = PlanMoe(in);
  EXPECT_FALSE(p.large_router_mma);
  EXPECT_EQ(p.router_tile, GemmTile::kMedium);
  in.tokens = 4096;
  in.router_rows = kLargeRouterMmaMinRows - 1;
  EXPECT_FALSE(PlanMoe(in).large_router_mma);
  MoePlanInput mixtral = HopperInput(/*mixtral=*/true, 4096);
  mixtral.large_router_mma = true;
  EXPECT_FALSE(PlanMoe(mixtral).large_router_mma);
  EXPECT_EQ(PlanMoe(mixtral).router_tile, GemmTile::kWgmmaWsMc);
  in.router_rows = 128;
  in.deterministic = true;
  in.deterministic_wgmma = true;
  p = PlanMoe(in);
  EXPECT_FALSE(p.large_router_mma);
  EXPECT_EQ(p.router_splits, 1);
}

// Past kRouterMmaMaxTokens a router of kLargeRouterMmaMinRows..kNarrowRouterMaxRows rows runs on
// kWgmmaWsNarrow (MoePlanInput::narrow_router, before large_router_mma), its K split while the
// items fit one per SM and keep kLargeRouterMinSplitSteps k-steps; Mixtral's 8 rows, 129+ rows,
// deterministic mode, the small-batch sizes and the option off keep the other rules.
TEST(PlanMoe, LargeBatchRouterOnTheNarrowWgmmaTile) {
  MoePlanInput in = HopperInput(/*mixtral=*/false, 4096);
  in.router_mma_max_tokens = kRouterMmaMaxTokens;
  in.router_partial_rows = kRouterPartialRowsPerToken * 16384;
  in.large_router_mma = true;
  in.narrow_router = true;
  MoePlan p = PlanMoe(in);
  EXPECT_TRUE(p.narrow_router);
  EXPECT_FALSE(p.large_router_mma);
  EXPECT_EQ(p.router_tile, GemmTile::kWgmmaWsNarrow);
  EXPECT_EQ(p.router_tiles, 32);
  EXPECT_EQ(p.router_splits, 4);  // 128 items of 8 k-steps: one per SM at most
  in.tokens = 16384;              // 128 row tiles fill the SMs: no split
  p = PlanMoe(in);
  EXPECT_TRUE(p.narrow_router);
  EXPECT_EQ(p.router_tiles, 128);
  EXPECT_EQ(p.router_splits, 1);
  in.tokens = 8192;
  EXPECT_EQ(PlanMoe(in).router_splits, 2);
  in.tokens = 1100;  // 9 row tiles: 8 splits of 4 k-steps
  p = PlanMoe(in);
  EXPECT_TRUE(p.narrow_router);
  EXPECT_EQ(p.router_splits, 8);
  in.router_partial_rows = 4 * 1100;  // a workspace of 4 rows per token: 4 splits
  EXPECT_EQ(PlanMoe(in).router_splits, 4);
  in.router_partial_rows = kRouterPartialRowsPerToken * 16384;
  in.router_k = 512;  // 8 k-steps: 2 splits of 4
  EXPECT_EQ(PlanMoe(in).router_splits, 2);
  in.router_k = 2048;
  in.tokens = 1024;  // the small-batch rule's last size: as before
  p = PlanMoe(in);
  EXPECT_FALSE(p.narrow_router);
  EXPECT_EQ(p.router_tile, GemmTile::kMedium);
  in.tokens = 4096;
  in.router_rows = 65;  // 64 experts and a shared-expert gate
  EXPECT_TRUE(PlanMoe(in).narrow_router);
  in.router_rows = kNarrowRouterMaxRows + 1;  // the mma.sync rule
  p = PlanMoe(in);
  EXPECT_FALSE(p.narrow_router);
  EXPECT_TRUE(p.large_router_mma);
  in.router_rows = kLargeRouterMmaMinRows - 1;
  EXPECT_FALSE(PlanMoe(in).narrow_router);
  MoePlanInput mixtral = HopperInput(/*mixtral=*/true, 4096);
  mixtral.narrow_router = true;
  EXPECT_FALSE(PlanMoe(mixtral).narrow_router);
  in.router_rows = 128;
  in.narrow_router = false;  // the option off: the mma.sync rule
  EXPECT_EQ(PlanMoe(in).router_tile, GemmTile::kMedium);
  in.narrow_router = true;
  in.deterministic = true;
  in.deterministic_wgmma = true;
  p = PlanMoe(in);
  EXPECT_FALSE(p.narrow_router);
  EXPECT_EQ(p.router_splits, 1);
  in.deterministic = false;
  in.wgmma = false;  // no Hopper plan
  EXPECT_FALSE(PlanMoe(in).narrow_router);
}

// The fused router's grid: every router row tile in exactly one split of at most
// kRouterConvertMaxTiles tiles, and enough blocks to spread over the SMs where the rows allow.
TEST(RouterConvert, GridCoversTheRowsAndFillsTheChip) {
  for (const int rows : {1, 8, 9, 61, 64, 128, 129, 257}) {
    for (const int64_t capacity : {1, 31, 33, 64, 256, 512, 600, 4096, 16384}) {
      SCOPED_TRACE(::testing::Message() << "rows " << rows << " capacity " << capacity);
      const RouterConvertGrid g = PlanRouterConvert(capacity, rows, 2048, 132, 1);
      const int64_t row_tiles = (rows + 7) / 8;
      EXPECT_GE(g.tiles_per_block, 1);
      EXPECT_LE(g.tiles_per_block, kRouterConvertMaxTiles);
      EXPECT_GE(g.row_splits * g.tiles_per_block, row_tiles);
      EXPECT_LT((g.row_splits - 1) * g.tiles_per_block, row_tiles);  // no empty split
      EXPECT_EQ(g.token_blocks, (capacity + 31) / 32);
      // At least half a block per SM where there are that many (token block, row tile) pairs.
      EXPECT_GE(2 * g.blocks(), std::min<int64_t>(132, g.token_blocks * row_tiles));
    }
  }
  // The shapes of the GPU test and the bench (H200: 132 SMs).
  EXPECT_EQ(PlanRouterConvert(40, 257, 2048, 132, 1).tiles_per_block, 1);   // 33 splits of 1 tile
  EXPECT_EQ(PlanRouterConvert(600, 257, 2048, 132, 1).tiles_per_block, 4);  // 9 splits of <= 4
  EXPECT_EQ(PlanRouterConvert(512, 128, 2048, 132, 1).blocks(), 16 * 8);  // Qwen3: 2 tiles a block
  EXPECT_EQ(PlanRouterConvert(4096, 128, 2048, 132, 1).blocks(), 128 * 4);
  EXPECT_EQ(PlanRouterConvert(16384, 8, 4096, 132, 1).blocks(), 512);  // Mixtral: one tile
}

// K splits: powers of two up to the limit, each warp keeps kRouterConvertMinWarpSteps steps, the
// grid stays within one block per SM; the rows are planned as without splits.
TEST(RouterConvert, KSplitsWithinWavesAndWarpSteps) {
  const int sms = 132;
  for (const int hidden : {32, 256, 1024, 2048, 4096, 7168}) {
    for (const int rows : {8, 64, 128, 257}) {
      for (const int64_t capacity : {1, 64, 256, 512, 4096, 16384}) {
        for (const int limit : {1, 2, 4}) {
          SCOPED_TRACE(::testing::Message() << "hidden " << hidden << " rows " << rows
                                            << " capacity " << capacity << " limit " << limit);
          const RouterConvertGrid one = PlanRouterConvert(capacity, rows, hidden, sms, 1);
          const RouterConvertGrid g = PlanRouterConvert(capacity, rows, hidden, sms, limit);
          EXPECT_EQ(one.k_splits, 1);
          EXPECT_EQ(g.tiles_per_block, one.tiles_per_block);
          EXPECT_EQ(g.row_splits, one.row_splits);
          EXPECT_GE(g.k_splits, 1);
          EXPECT_LE(g.k_splits, limit);
          EXPECT_EQ(g.k_splits & (g.k_splits - 1), 0);
          if (g.k_splits > 1) {
            EXPECT_GE(hidden / kRouterConvertStepCols / 8 / g.k_splits, kRouterConvertMinWarpSteps);
            EXPECT_LE(g.blocks(), sms * RouterConvertBlocksPerSm(g.tiles_per_block));
          }
        }
      }
    }
  }
  // The table's shapes at 512 and 4096 tokens (H200: 132 SMs).
  EXPECT_EQ(PlanRouterConvert(512, 8, 4096, sms).k_splits, 4);    // Mixtral: 16 -> 64 blocks
  EXPECT_EQ(PlanRouterConvert(256, 8, 4096, sms).k_splits, 4);    // 8 -> 32
  EXPECT_EQ(PlanRouterConvert(4096, 8, 4096, sms).k_splits, 2);   // 128 -> 256, two an SM
  EXPECT_EQ(PlanRouterConvert(8192, 8, 4096, sms).k_splits, 1);   // 256 blocks already
  EXPECT_EQ(PlanRouterConvert(512, 128, 2048, sms).k_splits, 1);  // Qwen3: 128
  EXPECT_EQ(PlanRouterConvert(4096, 64, 2048, sms).k_splits, 1);  // DSv2-Lite: 256
  EXPECT_EQ(PlanRouterConvert(256, 64, 2048, sms).k_splits, 2);   // 64 -> 128: 8 K steps a warp
  EXPECT_EQ(PlanRouterConvert(512, 64, 2048, sms).k_splits, 2);   // 16 x 8 = 128 -> 256
}

TEST(RouterConvert, FromMinTokensUpToMaxWaves) {
  const int sms = 132;
  // kAuto: from 256 tokens, while the grid has at most 4 waves of blocks.
  EXPECT_FALSE(UseRouterConvert(PathPolicy::kAuto, 128, 2048, 128, sms));
  EXPECT_TRUE(UseRouterConvert(PathPolicy::kAuto, 256, 2048, 128, sms));
  EXPECT_TRUE(UseRouterConvert(PathPolicy::kAuto, 4096, 2048, 128, sms));    // 512 blocks
  EXPECT_FALSE(UseRouterConvert(PathPolicy::kAuto, 16384, 2048, 128, sms));  // 2048 blocks
  EXPECT_TRUE(UseRouterConvert(PathPolicy::kAuto, 16384, 4096, 8, sms));     // Mixtral: 512
  EXPECT_FALSE(UseRouterConvert(PathPolicy::kAuto, 16384, 2048, 64, sms));   // DSv2-Lite: 1024
  // kAlways and kNever ignore the size; no policy runs a hidden size off the kernel's K step.
  EXPECT_TRUE(UseRouterConvert(PathPolicy::kAlways, 33, 2048, 128, sms));
  EXPECT_TRUE(UseRouterConvert(PathPolicy::kAlways, 16384, 2048, 128, sms));
  EXPECT_FALSE(UseRouterConvert(PathPolicy::kNever, 4096, 2048, 128, sms));
  EXPECT_FALSE(UseRouterConvert(PathPolicy::kAlways, 4096, 200, 128, sms));
  EXPECT_FALSE(CanRouterConvert(136, 128));
  EXPECT_TRUE(CanRouterConvert(192, 257));
}

// The packed weight layout (kernels/weight_layout.h): a bijection onto [0, rows x cols); each
// 128 x 64 box one contiguous 16 KiB block, its rows 128 bytes apart in order, each row's 16-byte
// chunk c at position c ^ (row % 8) (TMA's 128-byte swizzle); tiles ordered by row block, then
// column block.
TEST(WeightLayout, PackedOffsetsAreTheSwizzledTiles) {
  EXPECT_TRUE(PackableShape(256, 192));
  EXPECT_FALSE(PackableShape(200, 192));
  EXPECT_FALSE(PackableShape(256, 100));
  EXPECT_FALSE(PackableShape(0, 64));
  const int64_t rows = 384, cols = 192;
  std::vector<int> hits(rows * cols, 0);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) {
      const int64_t off = PackedOffset(r, c, cols);
      ASSERT_GE(off, 0);
      ASSERT_LT(off, rows * cols);
      ++hits[off];
      const int64_t tile = (r / 128) * (cols / 64) + c / 64;
      const int64_t in_tile = (r % 128) * 64 + (((c / 8) ^ (r % 8)) % 8) * 8 + c % 8;
      ASSERT_EQ(off, tile * kPackedTileElems + in_tile) << r << ", " << c;
    }
  }
  EXPECT_EQ(std::count(hits.begin(), hits.end(), 1), rows * cols);
  // A chunk's 8 elements are adjacent, so 16-byte loads stay whole.
  EXPECT_EQ(PackedOffset(5, 16 + 7, cols), PackedOffset(5, 16, cols) + 7);
  // The next column block of a row lies one tile further.
  EXPECT_EQ(PackedOffset(9, 64 + 24, cols), PackedOffset(9, 24, cols) + kPackedTileElems);
}

}  // namespace
}  // namespace moe::cuda
