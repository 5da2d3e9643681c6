#include "kernels/tile_heuristics.h"

#include <algorithm>
#include <cmath>

namespace moe::cuda {

const char* TileName(GemmTile tile) {
  switch (tile) {
#define MOE_TILE_NAME_(id, ...) \
  case GemmTile::id:            \
    return #id;
    MOE_GEMM_TILE_TABLE(MOE_TILE_NAME_)
    MOE_GEMM_SM90_TILE_TABLE(MOE_TILE_NAME_)
#undef MOE_TILE_NAME_
  }
  return "?";
}

GemmTile ChooseTile(double rows_per_group, bool wgmma, GemmTile wgmma_tile, double wgmma_min_rows,
                    double decode_max_rows) {
  // NOTES: the weights dominate below ~64 rows per expert, so the smallest tile that covers the
  // rows streams each expert once; past that, bigger tiles re-read A and B less. On Hopper the
  // wgmma tile takes over past `wgmma_min_rows` (the engine's default: 16). Measured on an H200:
  // in session 1, at 32 rows per expert the 64-row mma.sync tile streamed the weights ~10% faster
  // than the cp.async wgmma tile of then; in session 3 the warp-specialised TMA cluster tile beat
  // the mma.sync tile by 4-6% at 24-48 rows (Qwen3, DSv2-Lite 256/512 tokens) and 28% at 64 (Qwen3
  // 1024 tokens), and tied it at Mixtral's 32-64.
  if (rows_per_group <= decode_max_rows) return GemmTile::kDecode;
  if (wgmma && rows_per_group > wgmma_min_rows) return wgmma_tile;
  if (rows_per_group <= 64.0) return GemmTile::kMedium;
  if (wgmma) return wgmma_tile;
  return GemmTile::kLarge;
}

int ChooseSplitK(int64_t blocks, int64_t k, int64_t rows, int sm_count, bool deterministic) {
  if (deterministic || rows > kMaxSplitRows || blocks <= 0) return 1;
  const int64_t k_steps = (k + TileShape::kBk - 1) / TileShape::kBk;
  int splits = 1;
  while (splits < kMaxSplits && blocks * splits < 2 * static_cast<int64_t>(sm_count) &&
         k_steps / (2 * splits) >= 4) {
    splits *= 2;
  }
  return splits;
}

namespace {

// The K splits of a large batch's router GEMM of `blocks` blocks: doubled while twice the split
// blocks fit in `slots`, each split keeps kLargeRouterMinSplitSteps k-steps, and the partials
// workspace (MoePlanInput::router_partial_rows) holds them.
int LargeRouterSplits(const MoePlanInput& in, int64_t blocks, int64_t slots) {
  const int64_t k_steps = (in.router_k + TileShape::kBk - 1) / TileShape::kBk;
  const int64_t partial_rows =
      in.router_partial_rows > 0 ? in.router_partial_rows : kRouterPartialRowsPerToken * in.tokens;
  int splits = 1;
  while (splits < kMaxLargeRouterSplits && blocks * 2 * splits <= slots &&
         k_steps / (2 * splits) >= kLargeRouterMinSplitSteps &&
         2 * splits * in.tokens <= partial_rows) {
    splits *= 2;
  }
  return splits;
}

}  // namespace

int64_t MaxGroupedTiles(int64_t pairs, int n_experts, int bm) {
  return pairs / bm + std::min<int64_t>(pairs, n_experts);
}

MoePlan PlanMoe(const MoePlanInput& in) {
  MoePlan plan;
  const int64_t pairs = in.tokens * in.top_k;
  const int64_t active = std::max<int64_t>(1, std::min<int64_t>(pairs, in.n_experts));
  const int64_t expert_elems = static_cast<int64_t>(in.hidden) * in.inter;
  const bool wgmma = in.wgmma && (!in.deterministic || in.deterministic_wgmma);
  // Large experts leave the decode tile early for the Hopper tile (not for mma.sync tiles).
  const bool large_rule =
      wgmma && in.decode_max_rows < 0.0 && expert_elems >= kWgmmaLargeExpertElems;
  const double decode_max_rows = in.decode_max_rows >= 0.0 ? in.decode_max_rows
                                 : large_rule              ? kLargeExpertDecodeMaxRows
                                                           : 16.0;
  const double wgmma_min_rows = expert_elems < kWgmmaSmallExpertElems
                                    ? std::max(in.wgmma_min_rows, 64.0)
                                : large_rule ? std::min(in.wgmma_min_rows, decode_max_rows)
                                             : in.wgmma_min_rows;
  plan.tile = ChooseTile(static_cast<double>(pairs) / static_cast<double>(active), wgmma,
                         in.wgmma_tile, wgmma_min_rows, decode_max_rows);
  // NOTES: at 1 token Qwen3's gate/up is 8 experts x 12 blocks of 64 columns = 96 blocks for 132
  // SMs (73% of them busy); 16 columns give 384 blocks, 2.9 per SM (97% balance).
  const double rows_per_group = static_cast<double>(pairs) / static_cast<double>(active);
  plan.gated_tile = plan.tile == GemmTile::kDecode && rows_per_group <= kNarrowGatedMaxRows
                        ? GemmTile::kDecodeNarrow
                        : plan.tile;
  const bool gemv_fits = !in.deterministic && plan.tile == GemmTile::kDecode &&
                         rows_per_group <= kDecodeGemvMaxRows &&
                         in.tokens <= kDecodeExpertsMaxTokens && pairs <= kDecodeExpertsMaxPairs;
  plan.decode_gemv =
      gemv_fits && (in.decode_gemv == GemvPolicy::kAlways ||
                    (in.decode_gemv == GemvPolicy::kAuto && in.tokens <= kDecodeGemvAutoTokens));
  plan.shared_gemv = plan.decode_gemv && in.tokens <= static_cast<int64_t>(kDecodeGemvMaxRows);
  const TileShape& shape = ShapeOf(plan.tile);
  plan.grouped_tiles = MaxGroupedTiles(pairs, in.n_experts, shape.bm);
  plan.dense_tiles = (in.tokens + shape.bm - 1) / shape.bm;
  const int bn = shape.bn_plain;
  // The router GEMM: its tile, grid and K splits with or without the large-batch mma.sync rule.
  auto plan_router = [&](bool large) {
    plan.large_router_mma = large;
    const bool router_mma = IsHopperTile(plan.tile) && !in.deterministic &&
                            (in.tokens <= in.router_mma_max_tokens || large);
    plan.router_tile = !router_mma                               ? plan.tile
                       : in.tokens <= kRouterDecodeTileMaxTokens ? GemmTile::kDecode
                                                                 : GemmTile::kMedium;
    const TileShape& rshape = ShapeOf(plan.router_tile);
    plan.router_tiles = (in.tokens + rshape.bm - 1) / rshape.bm;
    const int64_t router_blocks =
        plan.router_tiles * ((in.router_rows + rshape.bn_plain - 1) / rshape.bn_plain);
    plan.router_splits =
        ChooseSplitK(router_blocks, in.router_k, in.tokens, in.sm_count, in.deterministic);
    if (!in.deterministic && in.tokens > kMaxSplitRows) {
      plan.router_splits = LargeRouterSplits(
          in, router_blocks,
          static_cast<int64_t>(large ? kLargeRouterMmaBlocksPerSm : 1) * in.sm_count);
    }
  };
  // Past the small-batch sizes, outside deterministic mode, a router of enough rows may take one
  // of the large-batch rules: the narrow wgmma tile (up to its columns) before the mma.sync tile.
  const bool large_batch_router = IsHopperTile(plan.tile) && !in.deterministic &&
                                  in.tokens > kRouterMmaMaxTokens &&
                                  in.router_rows >= kLargeRouterMmaMinRows;
  const bool large_router = in.large_router_mma && large_batch_router;
  if (in.narrow_router && large_batch_router && in.router_rows <= kNarrowRouterMaxRows) {
    plan.narrow_router = true;
    plan.router_tile = GemmTile::kWgmmaWsNarrow;
    const int bm = ShapeOf(plan.router_tile).bm;
    plan.router_tiles = (in.tokens + bm - 1) / bm;
    plan.router_splits = LargeRouterSplits(in, plan.router_tiles, in.sm_count);
  } else {
    plan_router(large_router);
    // Only where its K splits: unsplit, the row tiles alone fill the SMs and kMedium re-reads the
    // router weights once per 64 rows from L2.
    if (large_router && plan.router_splits < 2) plan_router(false);
  }
  // The down GEMM: N = hidden, K = inter.
  const int64_t down_col_blocks = (in.hidden + bn - 1) / bn;
  const int64_t down_k_steps = (in.inter + TileShape::kBk - 1) / TileShape::kBk;
  const int64_t down_blocks = ((pairs + shape.bm - 1) / shape.bm + active - 1) *
                              down_col_blocks;  // ~ one extra partial tile per active expert
  const int64_t split_blocks = std::min(down_blocks, plan.grouped_tiles * down_col_blocks);
  plan.down_splits = ChooseSplitK(split_blocks, in.inter, pairs, in.sm_count, in.deterministic);
  if (IsHopperTile(plan.tile) && plan.down_splits > 1) {
    // Resident blocks: one per SM (two for kWgmma2). Split only while the blocks fill under
    // kHopperSplitFill of them: each split adds f32 partials that the combine reads back.
    const int64_t slots = int64_t{in.sm_count} * (plan.tile == GemmTile::kWgmma2 ? 2 : 1);
    int splits = 1;
    while (splits < plan.down_splits &&
           static_cast<double>(split_blocks * splits) < kHopperSplitFill * slots) {
      splits *= 2;
    }
    plan.down_splits = splits;
  }
  // Expected blocks of a Hopper-tile down GEMM: pairs / bm full row tiles plus half a partial
  // one per activated expert.
  const int64_t hopper_down_blocks = (pairs / shape.bm + active / 2) * down_col_blocks;
  // Splits of the down K (powers of two up to kMaxSplits, >= 4 k-steps a part, `fits(splits)`)
  // until `blocks` x splits reaches `target` blocks.
  auto down_splits_until = [&](int64_t blocks, int64_t target, auto fits) {
    int splits = 1;
    while (splits < kMaxSplits && blocks * splits < target && down_k_steps / (2 * splits) >= 4 &&
           fits(2 * splits)) {
      splits *= 2;
    }
    return splits;
  };
  plan.pingpong = in.pingpong != PathPolicy::kNever && plan.tile == GemmTile::kWgmmaWsMc &&
                  (in.pingpong == PathPolicy::kAlways || rows_per_group <= kPingpongMaxRows);
  // The cluster tile's expected work units (pairs and solo tiles) of all experts: its down split
  // and raster rules below.
  const double cluster_units =
      plan.tile == GemmTile::kWgmmaWsMc ? ExpectedClusterUnits(pairs, in.n_experts) : 0.0;
  const bool wave_split = in.wave_split_down && !in.deterministic && plan.down_splits == 1;
  if (wave_split && plan.tile == GemmTile::kDecode && !plan.decode_gemv && in.smem_per_sm > 0 &&
      pairs <= kMaxSplitRows && rows_per_group <= kDecodeGemvMaxRows) {
    const int64_t per_sm =
        std::min<int64_t>(in.smem_per_sm / shape.smem_bytes(false), 2048 / shape.threads());
    const int64_t slots = per_sm * in.sm_count;
    const int64_t blocks = active * down_col_blocks;  // one row tile per expert
    if (blocks < kWaveSplitBelowWaves * slots) {
      plan.down_splits =
          down_splits_until(blocks, kWaveSplitMinWaves * slots, [](int) { return true; });
    }
  }
  if (wave_split && IsHopperTile(plan.tile) && pairs > kMaxSplitRows) {
    const int64_t partial_rows =
        in.down_partial_rows > 0 ? in.down_partial_rows : int64_t{kMaxSplits} * kMaxSplitRows;
    const auto fits = [&](int splits) { return splits * pairs <= partial_rows; };
    if (plan.tile == GemmTile::kWgmmaWsMc) {
      // The cluster tile: work items of 2-block clusters, in rounds over sm_count / 2 clusters.
      const double rounds =
          cluster_units * static_cast<double>(down_col_blocks) / std::max(1, in.sm_count / 2);
      if (!plan.pingpong && rounds > kClusterDownSplitRounds[0] &&
          rounds < kClusterDownSplitRounds[1] && down_k_steps / 2 >= 4 && fits(2)) {
        plan.down_splits = 2;
      }
    } else {
      plan.down_splits =
          down_splits_until(hopper_down_blocks, kWaveSplitBelowWaves * in.sm_count, fits);
    }
  }
  if (in.quad_down != PathPolicy::kNever && plan.tile == GemmTile::kWgmmaWsMc) {
    plan.quad_down = in.quad_down == PathPolicy::kAlways ||
                     hopper_down_blocks * plan.down_splits >= kQuadDownMinWaves * in.sm_count;
  }
  plan.tma_a_down = in.tma_a_down != PathPolicy::kNever && plan.tile == GemmTile::kWgmmaWsMc &&
                    (in.tma_a_down == PathPolicy::kAlways || !plan.pingpong);
  plan.permute_x = in.permute_x != PathPolicy::kNever && plan.tile == GemmTile::kWgmmaWsMc &&
                   (in.permute_x == PathPolicy::kAlways || in.inter >= kPermuteXMinInter);
  if (in.down_overlap != PathPolicy::kNever && plan.tile == GemmTile::kWgmmaWsMc &&
      !plan.permute_x) {
    const double units = std::floor(rows_per_group / 256.0) + 1.0;
    const double col_blocks = std::ceil(in.inter / static_cast<double>(kClusterGatedColumns));
    const double items_per_cluster = active * units * col_blocks / std::max(1, in.sm_count / 2);
    plan.down_overlap = in.down_overlap == PathPolicy::kAlways || plan.pingpong ||
                        items_per_cluster <= kDownOverlapMaxItemsPerCluster;
  }
  plan.pair_extra_rows =
      in.pair_extra_rows != PathPolicy::kNever && plan.tile == GemmTile::kWgmmaWsMc &&
      !plan.pingpong &&
      (in.pair_extra_rows == PathPolicy::kAlways ||
       (!plan.permute_x && PairExtraRowsSaving(pairs, in.n_experts) >= kPairExtraRowsMinSaving));
  plan.packed_tensor_copies = in.packed_tensor_copies != PathPolicy::kNever &&
                              plan.tile == GemmTile::kWgmmaWsMc &&
                              (in.packed_tensor_copies == PathPolicy::kAlways ||
                               (!plan.pingpong && rows_per_group >= kPackedTensorCopiesMinRows));
  if (plan.tile == GemmTile::kWgmmaWsMc) {
    const double units_per_expert = cluster_units / std::max(1, in.n_experts);
    plan.raster_units = in.raster_units > 0                                 ? in.raster_units
                        : units_per_expert <= kRasterOneUnitMaxUnits + 1e-9 ? kRasterUnits[0]
                        : units_per_expert >= kRasterUnits[2]               ? kRasterUnits[2]
                                                                            : kRasterUnits[1];
  }
  if (in.shared_inter > 0) {
    const int64_t shared_blocks = plan.dense_tiles * down_col_blocks;
    plan.shared_down_splits =
        ChooseSplitK(shared_blocks, in.shared_inter, in.tokens, in.sm_count, in.deterministic);
  }
  if (in.max_down_splits > 0) plan.down_splits = std::min(plan.down_splits, in.max_down_splits);
  plan.stream_gate_up =
      in.stream_gate_up != PathPolicy::kNever && !in.deterministic &&
      plan.tile == GemmTile::kDecode && !plan.decode_gemv &&
      (in.stream_gate_up == PathPolicy::kAlways ||
       (rows_per_group <= kStreamGateUpMaxRows && expert_elems >= kStreamGateUpMinExpertElems));
  // The GEMV spreads its columns over every SM without splitting K.
  if (plan.decode_gemv) plan.down_splits = 1;
  if (plan.shared_gemv) plan.shared_down_splits = 1;
  return plan;
}

namespace {

// One expert's work units on the cluster tile (a multicast pair of up to 256 rows: 1, a solo
// tile of up to 128: 1/2; the kernel's McPairs / SoloTiles cut) and of them the units that a
// pair's extra rows remove, expected over its rows ~ binomial(pairs, 1 / experts) (the normal
// approximation, +-6 sd).
struct ClusterUnits {
  double units = 0.0;
  double extra_rows_saved = 0.0;
};
ClusterUnits ExpectedUnitsPerExpert(int64_t pairs, int experts) {
  ClusterUnits u;
  if (pairs <= 0 || experts <= 0) return u;
  const double p = 1.0 / experts;
  const double mean = static_cast<double>(pairs) * p;
  const double sd = std::sqrt(std::max(1e-9, static_cast<double>(pairs) * p * (1.0 - p)));
  const int64_t lo = std::max<int64_t>(0, static_cast<int64_t>(mean - 6 * sd));
  const int64_t hi = static_cast<int64_t>(mean + 6 * sd) + 1;
  double weights = 0.0;
  for (int64_t r = lo; r <= hi; ++r) {
    const double z = (static_cast<double>(r) - mean) / sd;
    const double w = std::exp(-0.5 * z * z);
    const int64_t rem = r % 256;
    weights += w;
    u.units += w * (static_cast<double>(r / 256) + (rem > 128 ? 1.0 : rem > 0 ? 0.5 : 0.0));
    if (r >= 256 && rem > 0 && rem <= kClusterPairExtraRows) u.extra_rows_saved += w * 0.5;
  }
  if (weights > 0.0) {
    u.units /= weights;
    u.extra_rows_saved /= weights;
  }
  return u;
}

}  // namespace

double PairExtraRowsSaving(int64_t pairs, int experts) {
  const ClusterUnits u = ExpectedUnitsPerExpert(pairs, experts);
  return u.units > 0 ? u.extra_rows_saved / u.units : 0.0;
}

double ExpectedClusterUnits(int64_t pairs, int experts) {
  return experts * ExpectedUnitsPerExpert(pairs, experts).units;
}

RouterConvertGrid PlanRouterConvert(int64_t capacity, int router_rows, int hidden, int sm_count,
                                    int max_k_splits) {
  RouterConvertGrid g;
  const int64_t row_tiles = (router_rows + 7) / 8;
  g.token_blocks =
      std::max<int64_t>(1, (capacity + kRouterConvertBlockTokens - 1) / kRouterConvertBlockTokens);
  const int64_t splits =
      std::clamp<int64_t>((sm_count + g.token_blocks - 1) / g.token_blocks,
                          (row_tiles + kRouterConvertMaxTiles - 1) / kRouterConvertMaxTiles,
                          std::max<int64_t>(1, row_tiles));
  g.tiles_per_block = static_cast<int>((row_tiles + splits - 1) / splits);
  g.row_splits = (row_tiles + g.tiles_per_block - 1) / g.tiles_per_block;
  const int64_t warp_steps = hidden / kRouterConvertStepCols / 8;  // 8 warps a block
  const int limit = std::clamp(max_k_splits, 1, kRouterConvertMaxKSplits);
  while (2 * g.k_splits <= limit && warp_steps / (2 * g.k_splits) >= kRouterConvertMinWarpSteps &&
         2 * g.blocks() <=
             static_cast<int64_t>(sm_count) * RouterConvertBlocksPerSm(g.tiles_per_block)) {
    g.k_splits *= 2;
  }
  return g;
}

bool CanRouterConvert(int hidden, int router_rows) {
  return hidden > 0 && hidden % kRouterConvertStepCols == 0 && router_rows > 0;
}

bool UseRouterConvert(PathPolicy policy, int64_t capacity, int hidden, int router_rows,
                      int sm_count) {
  if (policy == PathPolicy::kNever || !CanRouterConvert(hidden, router_rows)) return false;
  if (policy == PathPolicy::kAlways) return true;
  return capacity >= kRouterConvertMinTokens &&
         PlanRouterConvert(capacity, router_rows, hidden, sm_count, 1).blocks() <=
             kRouterConvertMaxWaves * sm_count;
}

}  // namespace moe::cuda
