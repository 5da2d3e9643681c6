// Tile shapes of the grouped GEMM and the pure functions that choose them (testable on the CPU).
//
// 1. MOE_GEMM_TILE_TABLE is the one table of tile shapes: grouped_gemm.cu instantiates one kernel
// per
//    row (x dtype x gated/plain) from it, and the heuristics below pick rows from it by id.
// 2. ChooseTile() picks the tile by the expected rows per active expert (M of each group).
// 3. ChooseSplitK() splits K of a plain (non-gated) GEMM when it has too few blocks to fill the
// chip;
//    never in deterministic mode (a split that depends on the batch size breaks batch invariance).
// 4. PlanMoe() combines them into the launch plan of one MoE layer forward.
#pragma once

#include <cstdint>

namespace moe::cuda {

// NOTES (H200, full-layer bench): the decode row was also tried as (16, 32, 32, 1, 2, 6): Mixtral
// 64 tokens 823 -> 885 us; and with 10 stages: Mixtral 1 token 220 -> 253 us, 64 tokens -> 1208 us
// (fewer resident blocks per SM). The 128x128 two-blocks-per-SM wgmma row (kWgmma2) lost to
// kWgmma by 10-25% at 512-16384 tokens: higher A/B reuse per byte beats overlap here.
// X(id, bm, bn_plain, bn_gated, warps_m, warps_n, stages). BK is 64 for every tile. bn_gated is the
// output width of a gated (gate+up, SiLU*mul) tile, whose B tile holds 2 * bn_gated weight rows.
// kDecodeNarrow (one warp, 16 gated output columns) splits the gated decode GEMM 4x finer than
// kDecode so that a few activated experts still spread evenly over every SM (same bm, so it shares
// kDecode's tile list; same per-element K order, so it rounds like every other mma.sync tile).
#define MOE_GEMM_TILE_TABLE(X)     \
  X(kDecode, 16, 64, 64, 1, 4, 6)  \
  X(kMedium, 64, 128, 64, 2, 2, 4) \
  X(kLarge, 128, 128, 64, 2, 4, 3) \
  X(kDecodeNarrow, 16, 32, 16, 1, 1, 6)

// Hopper-only tiles (wgmma, grouped_gemm_sm90.cu): warps_m counts warpgroups of 4 warps (warps_n).
// kWgmmaWs is kWgmma's shape computed by a warp-specialised persistent kernel: one more (producer)
// warpgroup than warps_m says, 384 threads, at most one block per SM. kWgmmaWsMc is kWgmmaWs with
// the weights (B) loaded by TMA and multicast to both blocks of a 2-block cluster, which compute
// two 128-row tiles of one expert (grouped GEMMs with TMA descriptors; otherwise it runs as
// kWgmmaWs). kWgmmaWsNarrow is kWgmmaWs at 128 columns (6 stages; plain row-major GEMMs only):
// the large-batch router of at most 128 rows (MoePlanInput::narrow_router).
#define MOE_GEMM_SM90_TILE_TABLE(X)     \
  X(kWgmma, 128, 256, 128, 2, 4, 4)     \
  X(kWgmma2, 128, 128, 64, 2, 4, 3)     \
  X(kWgmmaTall, 256, 128, 64, 4, 4, 4)  \
  X(kWgmmaWs, 128, 256, 128, 2, 4, 4)   \
  X(kWgmmaWsMc, 128, 256, 128, 2, 4, 4) \
  X(kWgmmaWsNarrow, 128, 128, 64, 2, 4, 6)

enum class GemmTile : uint8_t {
#define MOE_TILE_ENUM_(id, ...) id,
  MOE_GEMM_TILE_TABLE(MOE_TILE_ENUM_) MOE_GEMM_SM90_TILE_TABLE(MOE_TILE_ENUM_)
#undef MOE_TILE_ENUM_
};

struct TileShape {
  int bm;
  int bn_plain;
  int bn_gated;
  int warps_m;
  int warps_n;
  int stages;
  static constexpr int kBk = 64;

  int threads() const { return warps_m * warps_n * 32; }
  int bn(bool gated) const { return gated ? bn_gated : bn_plain; }
  // Dynamic shared memory of one block, for 2-byte elements.
  int smem_bytes(bool gated) const {
    const int b_rows = gated ? 2 * bn_gated : bn_plain;
    return stages * (bm + b_rows) * kBk * 2;
  }
};

inline constexpr TileShape kTileShapes[] = {
#define MOE_TILE_SHAPE_(id, bm, bnp, bng, wm, wn, st) TileShape{bm, bnp, bng, wm, wn, st},
    MOE_GEMM_TILE_TABLE(MOE_TILE_SHAPE_) MOE_GEMM_SM90_TILE_TABLE(MOE_TILE_SHAPE_)
#undef MOE_TILE_SHAPE_
};
inline constexpr int kNumGemmTiles = sizeof(kTileShapes) / sizeof(kTileShapes[0]);

inline const TileShape& ShapeOf(GemmTile tile) { return kTileShapes[static_cast<int>(tile)]; }
// True for the wgmma (MOE_GEMM_SM90_TILE_TABLE) tiles.
inline constexpr bool IsHopperTile(GemmTile tile) {
#define MOE_IS_SM90_TILE_(id, ...) tile == GemmTile::id ||
  return MOE_GEMM_SM90_TILE_TABLE(MOE_IS_SM90_TILE_) false;
#undef MOE_IS_SM90_TILE_
}
const char* TileName(GemmTile tile);

// Split-K partial sums go to an f32 workspace; splits are allowed only for GEMMs of at most this
// many rows, which bounds that workspace.
inline constexpr int64_t kMaxSplitRows = 256;
inline constexpr int kMaxSplits = 8;
// The router GEMM of a large batch (more than kMaxSplitRows rows) has one column block (its N is
// the expert count), so its grid is one block per row tile: 32 blocks for 4096 tokens on a
// 128-row tile. When that fills at most half of the SMs, its K is split into up to this many
// parts (f32 partials: splits x rows x router rows floats; the routing kernel sums them).
// NOTES (H200, ncu, Qwen3 4096 tokens): unsplit, that GEMM took 36 us of a 995 us layer on 32 of
// 132 SMs. At 512 tokens 4 splits left it on 16 blocks (16 us at Qwen3, 21 us at Mixtral).
inline constexpr int kMaxLargeRouterSplits = kMaxSplits;
// The partials workspace holds this many rows per row of the engine's largest batch, so a batch
// of at most 1 / 2 of that may split its router K in 8 (kMaxLargeRouterSplits).
inline constexpr int kRouterPartialRowsPerToken = 4;

// The tile for grouped GEMMs whose groups hold `rows_per_group` rows on average; `wgmma`: the
// device runs the Hopper tiles (sm_90a build on an sm_90 device, not deterministic mode).
// Up to `decode_max_rows` rows per group (16 by default) the decode tile runs; past them the Hopper
// tile takes groups of more than `wgmma_min_rows` rows.
// NOTES (H200): for small experts the mma.sync 64-row tile stays faster up to 64 rows: the embedded
// model (hidden 512, inter 256) at 512 tokens (64 rows per expert) took 67.7 us with it and 89.3 us
// with the cluster tile; Qwen3 (2048 x 768) and DSv2-Lite (2048 x 1408) gained 4-28% there.
inline constexpr int64_t kWgmmaSmallExpertElems = int64_t{1} << 20;  // hidden x inter
// Experts of at least kWgmmaLargeExpertElems (hidden x inter) take the Hopper tile past
// kLargeExpertDecodeMaxRows rows per expert (whatever wgmma_min_rows says), unless the plan input
// names its own decode bound.
// NOTES (H200, session 8, two rounds per call): Mixtral (4096 x 14336) at 64 tokens (16 rows per
// expert) 748 / 749 -> 721 / 722 us with the cluster tile (ncu: gate/up 491 -> 448 us, 81 -> 88%
// of DRAM peak; down 238 -> 240), on another H200 809 / 816 -> 749 / 774, and at 32 tokens 788 ->
// 753; the 64-row mma.sync tile at 64 tokens 745 / 746. DeepSeek-V2-Lite (2048 x 1408) at 64
// tokens (6 rows) was 9% slower with the cluster tile, Mixtral at 8 tokens (~2 rows) 6%.
inline constexpr int64_t kWgmmaLargeExpertElems = int64_t{1} << 24;
inline constexpr double kLargeExpertDecodeMaxRows = 4.0;
GemmTile ChooseTile(double rows_per_group, bool wgmma = false,
                    GemmTile wgmma_tile = GemmTile::kWgmma, double wgmma_min_rows = 64.0,
                    double decode_max_rows = 16.0);

// Splits of K for a plain GEMM of `rows` rows launched as `blocks` blocks (before splitting) over K
// `k`: the smallest power of two (<= kMaxSplits) giving at least 2 blocks per SM while each split
// keeps >= 4 k-steps of 64. 1 when deterministic or rows > kMaxSplitRows.
int ChooseSplitK(int64_t blocks, int64_t k, int64_t rows, int sm_count, bool deterministic);

// Upper bound of the tiles of a grouped GEMM over `pairs` rows in `n_experts` groups of tile height
// bm.
int64_t MaxGroupedTiles(int64_t pairs, int n_experts, int bm);

// When PlanMoe picks the decode experts path (decode_experts.cu: the routed gate/up and down +
// combine per (token, k) pair on CUDA cores): never; where it measured faster (kAuto: batches of
// at most kDecodeGemvAutoTokens tokens); or wherever it fits (kAlways: tests, comparisons).
enum class GemvPolicy : uint8_t { kNever, kAuto, kAlways };

// When a plan takes an optional path (MoePlanInput::quad_down, permute_x): never (not available
// or switched off), where its rule says (kAuto), or always (tests, comparisons).
enum class PathPolicy : uint8_t { kNever, kAuto, kAlways };

struct MoePlanInput {
  int64_t tokens = 0;  // capacity of the launch (rows of the batch)
  int top_k = 0;
  int n_experts = 0;
  int hidden = 0;
  int inter = 0;         // routed expert width
  int shared_inter = 0;  // 0 = no shared expert
  int router_rows = 0;   // n_experts (+1 with a shared-expert gate)
  int router_k = 0;      // hidden, or 2 * hidden when activations are split into hi + lo parts
  // f32 rows (of hidden) of the down GEMM's split partials workspace (0: kMaxSplits x
  // kMaxSplitRows); a split of a down GEMM over more than kMaxSplitRows pairs needs splits x pairs.
  int64_t down_partial_rows = 0;
  // Rows of the router partials workspace past kMaxSplitRows tokens (0: kRouterPartialRowsPerToken
  // x tokens); a split of the router's K needs splits x tokens of them.
  int64_t router_partial_rows = 0;
  int sm_count = 132;
  // Shared memory per SM (0: unknown), for the resident blocks of a wave (down GEMM splits).
  int64_t smem_per_sm = 0;
  // The wave-filling down splits (kWaveSplitMinWaves; the decode-tile one needs smem_per_sm).
  bool wave_split_down = false;
  // Batches of up to this many tokens run the router GEMM of a Hopper plan on the mma.sync tile
  // (0: never; the engine passes kRouterMmaMaxTokens unless told otherwise).
  int64_t router_mma_max_tokens = 0;
  // Batches past kRouterMmaMaxTokens of a Hopper plan run a router of at least
  // kLargeRouterMmaMinRows rows on the mma.sync tile too, K split to fill
  // kLargeRouterMmaBlocksPerSm blocks per SM (MoePlan:: large_router_mma; never in deterministic
  // mode).
  bool large_router_mma = false;
  // Batches past kRouterMmaMaxTokens of a Hopper plan run a router of kLargeRouterMmaMinRows to
  // 128 rows on kWgmmaWsNarrow, K split to fill the SMs (MoePlan::narrow_router; never in
  // deterministic mode). Takes precedence over large_router_mma.
  bool narrow_router = false;
  bool deterministic = false;
  bool wgmma = false;                // Hopper tiles allowed (ignored when deterministic, unless:)
  bool deterministic_wgmma = false;  // deterministic mode may use them too (see CudaEngineOptions)
  GemmTile wgmma_tile = GemmTile::kWgmma;  // Hopper tile (kWgmma, kWgmma2, kWgmmaTall, kWgmmaWs)
  // Rows per expert past which the Hopper tile runs (ChooseTile); experts smaller than
  // kWgmmaSmallExpertElems keep at least 64.
  double wgmma_min_rows = 64.0;
  // At most this many K splits of the routed down GEMM (0: kMaxSplits; comparisons).
  int max_down_splits = 0;
  // Units per raster group of the kWgmmaWsMc GEMMs (0: the rule, MoePlan::raster_units).
  int raster_units = 0;
  // Rows per expert up to which the decode tile runs (ChooseTile); negative: the default rule
  // (kLargeExpertDecodeMaxRows for experts of at least kWgmmaLargeExpertElems, else 16).
  double decode_max_rows = -1.0;
  GemvPolicy decode_gemv = GemvPolicy::kNever;      // when the CUDA-core decode experts path takes
                                                    // the routed experts (never when deterministic)
  PathPolicy quad_down = PathPolicy::kNever;        // the 2 x 2 cluster down GEMM (MoePlan)
  PathPolicy permute_x = PathPolicy::kNever;        // gate/up from a permuted copy of x (MoePlan)
  PathPolicy pingpong = PathPolicy::kNever;         // ping-pong cluster GEMMs (MoePlan)
  PathPolicy tma_a_down = PathPolicy::kNever;       // the down GEMM's A by TMA (MoePlan)
  PathPolicy down_overlap = PathPolicy::kNever;     // down starts under gate/up's tail (MoePlan)
  PathPolicy pair_extra_rows = PathPolicy::kNever;  // a pair's extra rows (MoePlan)
  // Packed weights moved by 4-D tensor copies rather than 1-D bulk copies (MoePlan); the caller
  // passes kNever where the weights are not packed or have no tensor maps.
  PathPolicy packed_tensor_copies = PathPolicy::kNever;
  // The routed gate/up GEMM of a decode-tile plan on the weight-streaming kernel (MoePlan); the
  // caller passes kNever where the kernel does not run (no sm_90 image).
  PathPolicy stream_gate_up = PathPolicy::kNever;
};

struct MoePlan {
  GemmTile tile = GemmTile::kDecode;  // every GEMM of the forward uses this tile family, except:
  GemmTile gated_tile = GemmTile::kDecode;  // the routed gate/up GEMM (same bm as `tile`)
  int router_splits = 1;
  int down_splits = 1;
  int shared_down_splits = 1;
  int64_t grouped_tiles = 0;  // grid.x of the grouped GEMMs (blocks past the real tiles exit)
  int64_t dense_tiles = 0;    // grid.x of the shared-expert GEMMs
  GemmTile router_tile = GemmTile::kDecode;  // the router GEMM's tile
  int64_t router_tiles = 0;                  // and its grid.x
  // The router of a batch past router_mma_max_tokens runs on the mma.sync tile (MoePlanInput::
  // large_router_mma): the engine then runs it as a GEMM, not fused with the input copy.
  bool large_router_mma = false;
  // The router runs on kWgmmaWsNarrow (MoePlanInput::narrow_router): also as a GEMM, not fused
  // with the input copy.
  bool narrow_router = false;
  // The routed experts run as the decode experts kernels (LaunchDecodeGateUp, then
  // LaunchDecodeDownCombine, which also does the combine: no routed down GEMM, no combine launch),
  // and at <= kDecodeGemvMaxRows tokens the shared expert as the decode GEMV (LaunchDecodeGemv).
  bool decode_gemv = false;
  bool shared_gemv = false;
  // The routed down GEMM runs on 2 x 2 clusters (kWgmmaWsMc plans; MoePlanInput::quad_down).
  bool quad_down = false;
  // The permutation copies x into the permuted order and the routed gate/up GEMM loads it by TMA
  // (kWgmmaWsMc plans, MoePlanInput::permute_x, kPermuteXMinInter).
  bool permute_x = false;
  // The routed GEMMs of a kWgmmaWsMc plan run in ping-pong mode (GemmArgs::pingpong: 64-row tiles,
  // the consumer warpgroups take turns; MoePlanInput::pingpong, kPingpongMaxRows). Not with
  // quad_down (the down GEMM then stays on 2 x 2 clusters).
  bool pingpong = false;
  // The routed down GEMM of a kWgmmaWsMc plan not on 2 x 2 clusters loads its A (h) by TMA rather
  // than by cp.async (MoePlanInput::tma_a_down): outside ping-pong plans (CudaEngineOptions::
  // cluster_tma_a_down has the measurements).
  bool tma_a_down = false;
  // The routed down GEMM of a kWgmmaWsMc plan without permute_x starts on the SMs that gate/up's
  // last work items leave idle (GemmArgs::h_ready; MoePlanInput::down_overlap): in ping-pong plans
  // and where gate/up has at most kDownOverlapMaxItemsPerCluster work items a cluster.
  bool down_overlap = false;
  // The routed GEMMs of a kWgmmaWsMc plan outside ping-pong mode compute an expert's last few rows
  // in its last multicast pair (GemmArgs::pair_extra_rows; MoePlanInput::pair_extra_rows): where
  // PairExtraRowsSaving is at least kPairExtraRowsMinSaving.
  bool pair_extra_rows = false;
  // The routed GEMMs of a kWgmmaWsMc plan outside ping-pong mode load the packed weights' boxes by
  // 4-D tensor copies (GemmArgs::b_packed_tensor) rather than 1-D bulk copies: where an expert
  // expects at least kPackedTensorCopiesMinRows rows (MoePlanInput::packed_tensor_copies).
  bool packed_tensor_copies = false;
  // Work units (multicast or solo pairs) per raster group of a kWgmmaWsMc plan's routed GEMMs
  // (GemmArgs::raster_units): kRasterUnits[0] (one) where an expert expects at most
  // kRasterOneUnitMaxUnits units (ExpectedClusterUnits), kRasterUnits[2] where it expects at least
  // that many, else kRasterUnits[1]; 0 in other plans (the kernel's kWsGroupRows).
  int raster_units = 0;
  // The routed gate/up GEMM of a decode-tile plan runs on the weight-streaming kernel
  // (LaunchStreamGemm: bulk copies of whole weight rows, mma.sync; not batch invariant, so never
  // when deterministic) where the engine can launch it (CanStreamGemm): MoePlanInput::
  // stream_gate_up, kStreamGateUpMaxRows, kStreamGateUpMinExpertElems.
  bool stream_gate_up = false;
};

// A weight-streaming down GEMM (the decode tile, at most kDecodeGemvMaxRows rows per expert) of
// fewer than kWaveSplitBelowWaves waves of resident blocks has its K split (up to kMaxSplits, >= 4
// k-steps a part) until it has kWaveSplitMinWaves: SMs left idle by the last wave then weigh less.
// NOTES (H200, session 5): Mixtral at 8 tokens (7 experts x 64 column blocks = 448 blocks for 396
// resident, 3 per SM; 4 splits) 653.7/655.2 -> 617.7/618.5 us. Splitting more widely measured
// slower: Mixtral at 64 tokens (16 rows per expert, 4 splits) +0.7%, DeepSeek-V2-Lite at 8 tokens
// (1536 blocks, 3.9 waves, 2 splits) +1.4%; hence the row and wave bounds.
inline constexpr int64_t kWaveSplitBelowWaves = 2;
inline constexpr int64_t kWaveSplitMinWaves = 4;
// The same for a Hopper-tile down GEMM (one block per SM) of more than kMaxSplitRows rows: under
// kWaveSplitBelowWaves waves of blocks (expected row tiles: pairs / bm plus half a partial tile
// per activated expert), its K is split until it has that many, when the down partials workspace
// (MoePlanInput::down_partial_rows) holds splits x pairs f32 rows. The cluster tile (kWgmmaWsMc)
// instead splits in 2, outside ping-pong plans, only where its expected work items
// (ExpectedClusterUnits x column blocks) take between kClusterDownSplitRounds[0] and [1] rounds
// of its sm_count / 2 clusters: a second round that leaves most clusters idle.
// NOTES (H200, session 21, Mixtral, three rounds, us, the rule of blocks (1 split at 1024+, 2
// at 320-768, 4 at 192-256) / no split / 2 splits): 192 tokens (ping-pong) 750.6 / 733.0 / 741.7,
// 256 793.4 / 759.9 / 779.2, 320 898.8 / 883.1 / 914.5, 384 892.3 / 874.2 / 885.0, 448 887.5 /
// 879.9 / 886.1, 512 (0.74 units an expert: 95 items, 1.44 rounds) 1057.5 / 1075.6 / 1062.3,
// 640 1278.8 / 1224.4 / 1269.4, 768 1266.2 / 1223.2 / 1269.2; 4 and 8 splits slower still. The
// split's f32 partials cost 1-4% where the rounds are whole.
inline constexpr double kClusterDownSplitRounds[2] = {1.2, 1.6};
// Units per raster group of the cluster tile's work-item order (MoePlan::raster_units): the units
// of a group walk the column blocks together, unit fastest, so the ~66 clusters at work share a
// group's A rows and the weight panels of its experts in L2. With 16 (kWsGroupRows) a group's A
// is 16 x 256 rows x K: 32 MiB at K = 4096, 117 MiB for Mixtral's down GEMM (K = 14336), so it
// left L2 between the rounds of column blocks. 4 keeps it at 8 / 29 MiB; 8 where an expert has at
// least 8 units (2048+ rows), so that each weight panel is read by 8 units, not 4.
// NOTES (H200, session 22 call 4, two rounds, mean us, 16 -> 4 for both GEMMs; call 3 agreed):
// Mixtral 1024 / 4096 / 16384 tokens 1582 -> 1566 / 5050 -> 4901 (-2.9%) / 18389 -> 18291; Qwen3
// 1024 / 4096 / 16384 402.2 -> 398.1 / 795.2 -> 791.3 / 2629.6 -> 2585.9 (-1.7%); DeepSeek-V2-Lite
// 1024 / 4096 / 16384 399.7 -> 391.7 / 969.9 -> 966.8 / 3286 -> 3224. At Mixtral 16384 tokens (16
// units an expert) 8 for both: 18389 -> 18133 (-1.4%). ncu DRAM reads of gate/up + down (16 -> 4
// / 8): Mixtral 4096 5.46 + 2.92 -> 3.63 + 2.29 / 3.70 + 2.29 GB, 16384 13.1 + 13.6 -> 10.4 + 8.4
// / 7.6 + 8.3 GB; Qwen3 16384 1.77 + 0.69 -> 1.46 + 0.63 GB. 2 units was slower at Mixtral
// 16384 (+2.5%).
// Where an expert expects at most one unit (its rows fit one multicast pair, or a solo tile),
// groups of one unit instead: the clusters at work then stream the adjacent weight panels of one
// expert, not of 4 experts at once, and a unit's A is read by all of its column blocks anyway.
// NOTES (H200, session 23, three A/B calls of two rounds, best of rounds, groups of 4 -> 1):
// Mixtral 64 tokens (0.5 units an expert) -1.2 / -1.0 / -1.3%, 256 (0.5) -0.9 / -1.3%, 768 (1.0)
// -0.6 / -1.1 / -0.1%, 512 (0.75) -1.0 / +0.8 / +0.9% (this point spreads ~2% between runs);
// DeepSeek-V2-Lite 256 / 512 / 1024 / 2048 (0.5-1.0) -0.4 / -0.8 and -0.9 / -1.1 / -0.9 and
// -0.7%; Qwen3 256-2048 -0.4 to +0.1%. Past one unit an expert 4 wins: it was 1.3 / 3.1 / 4.1%
// faster than 1 at Mixtral 1024 (1.25) / 2048 / 4096, equal at DeepSeek-V2-Lite 4096 (1.5).
inline constexpr int kRasterUnits[3] = {1, 4, 8};
inline constexpr double kRasterOneUnitMaxUnits = 1.0;
// A Hopper-tile down GEMM of at most kMaxSplitRows rows splits its K (as ChooseSplitK says, at
// most) only while its blocks fill less than this fraction of the resident blocks.
// NOTES (H200, session 8, Mixtral, 8 experts x 16 column blocks = 128 blocks for 132 SMs):
// 4 splits (ChooseSplitK's 2 blocks per SM) -> 1 at 64 tokens 727 -> 712.5 us (ncu: down 239 ->
// 229 us, combine 6.3 -> 4.0), at 32 tokens 753 -> 744; 2 splits 718 / 747.
inline constexpr double kHopperSplitFill = 0.75;
// A kWgmmaWsMc plan runs its routed down GEMM on 2 x 2 clusters (GemmArgs::a_tmap; A multicast
// along column blocks too) when that GEMM has at least this many waves of blocks (expected row
// tiles x column blocks x splits over the SMs).
// NOTES (H200, session 6, against the cp.async 2-block kernel in one call): 16384 tokens 0-3%
// faster (Mixtral 20274/20335 -> 19713/20110 us), Qwen3 / DSv2-Lite 4096 (19 / 14 waves) 0.6-0.9%
// faster, Mixtral 4096 (8 waves) within +-0.8%; at 512-1024 tokens (2.4-8 waves) 1-4% slower
// (DSv2-Lite 512 350 -> 360 us): a cluster of 4 blocks leaves more SMs idle in a short GEMM. But
// the 2-block kernel with A by TMA too was 0-2% faster than it at 4096-16384, so the engine's
// option (CudaEngineOptions::cluster_quad_down) is off by default.
inline constexpr int64_t kQuadDownMinWaves = 12;
// A kWgmmaWsMc plan whose experts are at least this wide (inter) copies x into the permuted order
// (pairs x hidden, one more write and read of the activations) so that the routed gate/up GEMM
// loads A by TMA (one producer thread) instead of gathering it with cp.async (128 threads): the
// GEMM's work grows with inter, the copy does not.
inline constexpr int kPermuteXMinInter = 4096;
// A kWgmmaWsMc plan of at least this many expected rows per activated expert loads packed weights
// by 4-D tensor copies (MoePlan::packed_tensor_copies, kAuto), fewer by 1-D bulk copies.
// NOTES (H200, session 27, two calls of two rounds, layer us, bulk -> tensor copies; the
// second call's card ran every point 2-10% slower): at 1024+ rows per expert Mixtral 4096 tokens
// 4909 / 4889 -> 4842 / 4834 and 4949 / 4947 -> 4920 / 4911, 16384 18783 / 18811 -> 18720 /
// 18726 and 18767 / 18840 -> 18676 / 18618, Qwen3 16384 2564 / 2565 -> 2539 / 2552 and 2836 /
// 2849 -> 2823 / 2817; at 128-768 rows within the spread (Qwen3 4096 766 / 767 -> 768 / 772
// and 799 / 790 -> 786 / 790, Mixtral 2048, Qwen3 and DeepSeek-V2-Lite 2048 / 8192); at 512
// tokens (ping-pong) the bulk copies faster: Qwen3 326 -> 335, DeepSeek-V2-Lite 305 -> 313,
// Mixtral 957 -> 971.
inline constexpr double kPackedTensorCopiesMinRows = 1024.0;
// A kWgmmaWsMc plan of at most this many expected rows per activated expert runs its routed GEMMs
// in ping-pong mode (kAuto): tiles of 64 rows, one consumer warpgroup per work item, so that an
// item's epilogue overlaps the next one's loads instead of stalling them.
// NOTES (H200, session 9, in-kernel timeline, tools/device/gemm_trace.py): at Qwen3 512 tokens
// (32 rows per expert, K = 768, 12 k-steps an item) the down GEMM's blocks spent 21% of their
// time in epilogues while the second consumer warpgroup had no rows at all.
inline constexpr double kPingpongMaxRows = 48.0;
// Output columns of a gated work item of the kWgmmaWsMc tile (its 256 weight rows: 128 gate, 128
// up): the width of the column blocks of h that gate/up stores (GemmArgs::h_ready).
inline constexpr int kClusterGatedColumns = 128;
// The h-ready counters count each stored h row kHReadyQuarters times per column block: a warp adds
// 4 per row of a whole item's columns, 1 per row of a quarter of them (GemmArgs::pair_extra_rows).
inline constexpr int kHReadyQuarters = 4;
// Extra rows of a multicast pair at most (GemmArgs::pair_extra_rows): one 16-row slice of A per
// stage (2 KiB past the stage's A and B), which the 4 consumer warpgroups of the pair share.
inline constexpr int kClusterPairExtraRows = 16;
// The share of a cluster GEMM's work units (multicast pairs, and solo tiles counted as half a unit)
// that a pair's extra rows remove in expectation: the solo tiles of the experts whose rows leave
// 1..kClusterPairExtraRows past at least one pair, over the units without them. Rows per expert
// are taken as binomial: `pairs` (token, k) pairs over `experts` equally likely experts.
double PairExtraRowsSaving(int64_t pairs, int experts);
// The cluster GEMM's expected work units (multicast pairs, solo tiles as half a unit) for one
// column block: `experts` x the expectation of one expert's units, rows binomial as above.
double ExpectedClusterUnits(int64_t pairs, int experts);
// MoePlan::pair_extra_rows (kAuto) where that share is at least this, and not in permuted-x plans.
// NOTES (H200, session 20, three rounds each, layer us, off -> on for both GEMMs): Qwen3-30B-A3B
// 4096 tokens (256 rows per expert: the share is 14%) 823.5 -> 795.7 (call 4) and 790.1 -> 777.0
// (call 5, the rule), DeepSeek-V2-Lite 2730 tokens (256 rows) 667.4 -> 654.1; but where no expert
// leaves a few rows past its pairs the kernel of extra rows costs more than the plain one: Qwen3
// 1024 / 2048 400.3 / 513.1 -> 407.2 / 525.5, DeepSeek-V2-Lite 1024 / 2048 / 4096 (384 rows) 395.7
// / 568.5 / 963.1 -> 402.8 / 585.7 / 971.9, Qwen3 16384 (1024 rows, 2%) 2691.7 -> 2717.8; and
// Mixtral at 1024 tokens (256 rows, permuted x, K of 64 steps) 1488.9 -> 1495.6.
inline constexpr double kPairExtraRowsMinSaving = 0.08;
// MoePlan::down_overlap outside ping-pong plans: up to this many gate/up work items a 2-block
// cluster (estimated: experts x (rows / 256 + 1) units x column blocks of 128). NOTES (H200,
// session 19, call 4, three rounds, off -> on): Qwen3 1024 / 2048 / 4096 tokens (~12 / 12 / 23
// items) -1.2 / -1.9 / -2.4%, DeepSeek-V2-Lite 2048 / 4096 (~11 / 21) -0.4 / -0.9%, 1024 +0.2%;
// at 16384 (~58 / 75 items, a short tail against the GEMM) Qwen3 +1.6%, DeepSeek-V2-Lite +0.5%.
inline constexpr double kDownOverlapMaxItemsPerCluster = 32.0;
// Up to this many tokens a plan of Hopper tiles runs the router GEMM (N = experts, at most 257)
// on the mma.sync kMedium tile (64 x 128) instead, outside deterministic mode (a tile that changes
// with the batch size would change a token's logits).
// NOTES (H200, session 5, RESULTS.md): at 512 tokens 6.9 / 5.3 us faster a layer at the Qwen3 /
// DeepSeek-V2-Lite shapes (the 128 x 256 warp-specialised tile computes 256 columns for 128
// experts and cost ~12 us in the graph); at 1024 tokens 6 / 9 us faster; at 2048 and 4096 tokens
// within the spread, so larger batches keep the Hopper tile.
inline constexpr int64_t kRouterMmaMaxTokens = 1024;
// Past kRouterMmaMaxTokens (MoePlanInput::large_router_mma) a router of at least this many rows
// stays on kMedium (fewer rows would leave most of its 128 columns empty: Mixtral's 8 keep the
// fused router), its K split while the blocks stay within kLargeRouterMmaBlocksPerSm per SM (two
// 96 KiB kMedium blocks fit an SM); batches whose row tiles leave no room for a split keep the
// plan's Hopper tile.
// NOTES (H200, ncu, session 14): at 4096 tokens of Qwen3 the fused router (CUDA-core loads, 512
// blocks re-reading x once per 32 router rows) took 34 us and the 128 x 256 wgmma tile (32 row
// tiles, K split in 4: 128 blocks) 23 us, for 2.1 GFLOP and 17 MB of input. Session 17 (three
// rounds): Qwen3 4096 tokens 835.5 -> 813.6 us with kMedium in 4 splits, DeepSeek-V2-Lite's 64 rows
// unchanged (950.6 -> 949.4), 2048 tokens within the spread, and at 16384 (256 row tiles, unsplit)
// Qwen3 2581 -> 2609 us: hence only where it splits.
inline constexpr int kLargeRouterMmaMinRows = 64;
// MoePlanInput::narrow_router: kWgmmaWsNarrow takes the large-batch routers of
// kLargeRouterMmaMinRows to this many rows (its columns), K split while the items stay within one
// per SM (its persistent grid).
// NOTES (H200, nsys, session 28, kernel us, the mma.sync / 128 x 256 rule -> this): Qwen3 4096
// tokens 19.8 -> 18.2-18.9 (4 splits), 16384 46.2 -> 33.7-35.0; DeepSeek-V2-Lite 4096 14.8 ->
// 11.8-12.5, 16384 42.4 -> 27.6-28.8: the expert GEMMs start 12-15 us sooner at 16384 tokens.
// The layer (two calls, three rounds each) moved by -0.9 to +0.6%, within the spread of a point.
inline constexpr int kNarrowRouterMaxRows = 128;
// Each K split of a large batch's router keeps at least this many k-steps (both rules).
inline constexpr int kLargeRouterMinSplitSteps = 4;
inline constexpr int kLargeRouterMmaBlocksPerSm = 2;
// Up to this many tokens that router runs on the decode tile (16 x 64) instead of kMedium.
// NOTES (H200, session 8, ncu, Mixtral 64 tokens): kMedium (one 64-row tile, K split in 8) took
// 10.9 us, the decode tile of a decode plan (4 row tiles, K split in 8) 6.0 us.
inline constexpr int64_t kRouterDecodeTileMaxTokens = 64;
// Batches of at least kRouterConvertMinTokens tokens whose fused router has at most
// kRouterConvertMaxWaves waves of blocks run the router fused with the input copy
// (CudaEngineOptions::fused_router_convert, kernels/router_gemm.cu). NOTES (H200, session 7): at
// 64 tokens it was 1-1.7% slower than the copy + router GEMM (the mma.sync router then overlaps
// the copy by PDL), at 128-512 0.3-0.6% faster (the embedded model 8-10%); each of its blocks
// walks all of K for 32 tokens, so its time grows with its waves: at 16384 tokens Qwen3's 2048
// blocks (15.5 waves) took 168 us against 77 for the two kernels (layer +2.8%), Mixtral's 512
// blocks 104 against 130.
inline constexpr int64_t kRouterConvertMinTokens = 256;
inline constexpr int64_t kRouterConvertMaxWaves = 4;
// Its blocks: kRouterConvertBlockTokens tokens x at most kRouterConvertMaxTiles router row tiles
// of 8 rows; K in steps of kRouterConvertStepCols columns.
inline constexpr int kRouterConvertBlockTokens = 32;
inline constexpr int kRouterConvertMaxTiles = 4;
inline constexpr int kRouterConvertStepCols = 32;
// K splits of the fused router (partial logits, added in split order by the route): at most this
// many (<= kRouterPartialRowsPerToken, the logits workspace's rows per token), each warp of a split
// keeps at least kRouterConvertMinWarpSteps steps, and only grids of under one block per SM split.
// NOTES (H200, session 10, ncu): Mixtral's router at 512 tokens (16 blocks, each walking 8 KiB
// rows of 32 tokens) took 18.3 us, 8.1 with 4 splits (layer -6 us); splits that took a grid past
// one wave were slower: Mixtral 4096 tokens 24.3 -> 28.4 us (128 -> 512 blocks), Qwen3 512 10.4 ->
// 11.5 us (128 -> 256; layer +2 us), DSv2-Lite 512 +1.5 us.
inline constexpr int kRouterConvertMaxKSplits = 4;
// Blocks of the fused router an SM holds: two of one row tile (128 registers a thread), one of
// more (174 and 224). The K splits fill up to that many blocks per SM.
// NOTES (H200, session 27, nsys, kernel us, one block of 224 registers an SM -> these): Mixtral
// 4096 tokens 31.8 -> 18.6 (K split in 2: 256 blocks), 16384 114.9 -> 57.4 (512 blocks, no
// split), DeepSeek-V2-Lite 512 8.7 -> 5.6 (128 -> 256 blocks); layer, four rounds alternating
// binaries: DeepSeek-V2-Lite 256 / 512 -0.8 / -1.1%, Qwen3 256 -1.0%.
constexpr int RouterConvertBlocksPerSm(int tiles_per_block) { return tiles_per_block == 1 ? 2 : 1; }
inline constexpr int kRouterConvertMinWarpSteps = 4;
static_assert(kRouterConvertMaxKSplits <= kRouterPartialRowsPerToken);

// The grid of a fused-router launch of `capacity` tokens: token blocks x row splits x K splits,
// each row split `tiles_per_block` row tiles. The rows are split over enough blocks to give every
// SM one (each block streams its router rows once per 32 tokens), within the tiles a block holds;
// then K is split (up to `max_k_splits`, a power of two) while the grid stays within one block
// per SM and each warp keeps kRouterConvertMinWarpSteps steps of K.
struct RouterConvertGrid {
  int tiles_per_block = 1;
  int64_t token_blocks = 1;
  int64_t row_splits = 1;
  int k_splits = 1;
  int64_t blocks() const { return token_blocks * row_splits * k_splits; }
};
RouterConvertGrid PlanRouterConvert(int64_t capacity, int router_rows, int hidden, int sm_count,
                                    int max_k_splits = kRouterConvertMaxKSplits);
// Whether the kernel can run this router (hidden a multiple of its K step).
bool CanRouterConvert(int hidden, int router_rows);
// Whether a forward of `capacity` tokens runs the fused router under `policy`; the caller checks
// the rest (activations in the weights' dtype, not deterministic, not the fused decode front).
// (K splits never take a grid past one wave, so they do not change the answer.)
bool UseRouterConvert(PathPolicy policy, int64_t capacity, int hidden, int router_rows,
                      int sm_count);
// Rows per activated expert up to which the routed gate/up GEMM uses kDecodeNarrow: there the
// weights dominate (the narrow tile re-reads A 4x more often than kDecode, cheap for a few rows).
inline constexpr double kNarrowGatedMaxRows = 4.0;
// The weight-streaming gate/up GEMM (MoePlan::stream_gate_up) takes decode-tile plans of at most
// kStreamGateUpMaxRows rows per activated expert whose experts have at least
// kStreamGateUpMinExpertElems elements per matrix (hidden x inter).
// NOTES (H200, session 13, layer us, two rounds each, benches/RESULTS.md): decode tile ->
// streaming gate/up, Qwen3-30B-A3B 4 / 8 / 16 / 32 / 48 tokens 97.0 / 148.0 / 215.8 / 295.3 /
// 298.9 -> 90.0 / 140.4 / 210.5 / 287.8 / 293.4, DeepSeek-V2-Lite 4 / 8 / 16 / 32 tokens 119.7 /
// 169.4 / 238.0 / 287.0 -> 115.9 / 165.2 / 229.8 / 279.0; but Qwen3 at 64 tokens (4 rows)
// 304.0 -> 307.0, DeepSeek-V2-Lite at 64 (6 rows; tiles of more than 8 rows read A through L1)
// 296.5 -> 314.0, and the embedded model (512 x 256 experts: 64 units a row tile, a short layer
// whose neighbours the decode tile's small blocks overlap) 33.3 -> 34.8 at 8 tokens, 34.7 -> 38.7
// at 64. With the down GEMM on the kernel too, every point was slower than with gate/up alone
// (its 200 KiB blocks cannot start under the gate/up kernel as the decode tile's blocks do).
inline constexpr double kStreamGateUpMaxRows = 3.0;
inline constexpr int64_t kStreamGateUpMinExpertElems = 512 * 1024;
// Rows per activated expert up to which the decode experts path may replace the decode tile: it
// streams each (token, k) pair's weight rows (pairs of one expert re-read them from L2) and has no
// tensor cores, so it is a weight stream for a few rows per expert only.
// NOTES (H200, v7, the earlier tile-list GEMV, one block per 8 columns): 1 token Mixtral 206.5 ->
// 195.4 us, Qwen3 54.3 -> 52.0, DSv2-Lite 51.1 -> 55.6; 8 tokens slower everywhere (Qwen3 156 ->
// 180): short-lived blocks that each resolved their tile through a chain of dependent loads.
inline constexpr double kDecodeGemvMaxRows = 4.0;
// The decode experts kernels stage per-pair data in shared memory and take at most this many
// tokens (the fused decode front's limit) and (token, k) pairs.
inline constexpr int64_t kDecodeExpertsMaxTokens = 32;
inline constexpr int64_t kDecodeExpertsMaxPairs = 1024;
// kAuto takes the decode experts path up to this many tokens.
inline constexpr int64_t kDecodeGemvAutoTokens = 1;

MoePlan PlanMoe(const MoePlanInput& in);

}  // namespace moe::cuda
