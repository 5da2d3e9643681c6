// Grouped GEMM for Hopper (sm_90a), tile kWgmmaWsMc: the warp-specialised persistent 128 x 256
// wgmma tile of grouped_gemm_sm90.cu, with the weights (B) loaded by TMA and multicast to both
// blocks of a 2-block cluster.
//
// Why: the cp.async tile reads 48 KiB from L2 per 4.2 MFLOP (A 16 KiB + B 32 KiB a stage); ncu
// showed it bound by L2 bandwidth at large batches (benches/RESULTS.md). Two blocks that compute
// two row tiles of the same expert need the same B: each loads half of it once and the copy
// engine writes it into both blocks' shared memory, so a block reads 32 KiB a stage from L2.
//
// 1. Work: the rows of group (expert) g, [group_offsets[g], group_offsets[g + 1]), are cut into
//    multicast pairs of 256 rows (block rank r of the cluster computes rows 128 r .. 128 r + 127
//    of the pair; a last pair of 129-255 rows leaves block 1 the rest) and, when 1-128 rows
//    remain, one solo tile. Solo tiles of any groups are paired up: each block loads its own
//    weights for them (no multicast), so no block idles while its peer works. Units (a multicast
//    or solo pair) are ordered by group, a solo pair next to the group of its second tile
//    (ResolvePair). Work items (unit, column block, split) are ordered as in the cp.async
//    persistent kernel (DecodeWorkItem); cluster c takes item c first, then, with
//    GemmParams::item_counter (outside ping-pong mode), the next undrawn item each time its
//    leader draws one from that counter (PublishItem), else items c + clusters, c + 2 clusters,
//    ... Both blocks of a cluster walk the same items and k-steps, so their stage rings stay in
//    step. NOTES (H200, session 9 timeline): with the static order the blocks' end times spread
//    over 10-12% of the GEMM's span (Qwen3 4096 tokens: gate/up ends 419-476 us, down 255-305 us;
//    Mixtral 4096 down 1486-1723 us); with the dynamic one (session 17) Qwen3 4096 tokens went
//    822 -> 804 us, DeepSeek-V2-Lite 956 -> 947, Mixtral 16384 19607 -> 19114.
// 2. Producer warpgroup: per k-step, waits until the stage is free in BOTH blocks (the stage's
//    `empty` barrier counts the consumer warps of both blocks), gathers its A rows with cp.async
//    (arriving on `full` when they land), and thread 0 announces the stage's 32 KiB of B on `full`
//    (expect_tx) and issues one TMA box of 128 weight rows x 64 columns, multicast to both blocks:
//    gated tiles: rank 0 the gate rows, rank 1 the up rows; plain tiles: rank r rows 128 r...
//    For a solo tile it loads both boxes into its own block only. With A by TMA (GemmArgs::a_tmap,
//    contiguous A rows) thread 0 alone loads A's 64-row boxes as well (WgmmaMcGemmKernel's
//    TMA_A; on 2 x 2 clusters A is multicast too, see there).
// 3. Consumers: wait on `full`, fence the async proxy (A by cp.async), issue the wgmmas (skipped
//    for a consumer with no rows), and release the previous stage: lane 0 of each warp arrives on
//    that stage's `empty` barrier in every block of the cluster.
// 4. Epilogue: each consumer warp stages its rows through 2 KiB of shared memory past the stages
//    and stores whole 128-byte row segments (StoreWarpRowsStaged; f32 split partials are stored
//    from registers). Same k16 order and f32 accumulation from zero as the other wgmma tiles:
//    the same bits for every output element.
// 5. Registers: setmaxnreg gives the producer 80 (40 spilled: it holds the tile's A rows, both
//    descriptors and the pair's layout) and the consumers 208 (128 accumulators each):
//    128 x 80 + 256 x 208 = 63488 <= 64512, the block's 384 x 168 registers (setmaxnreg moves
//    registers inside that allocation: consumers at 216 would need 65536 and wait forever, which
//    hung an H200 run in session 5).
// 6. Teardown: the producer waits until every stage is released in both blocks, then all threads
//    of the cluster meet at a cluster barrier, so no block exits while its peer may still write
//    to its shared memory or arrive on its barriers.
// 7. Ping-pong mode (GemmParams::pingpong, plans of few rows per expert): tiles of 64 rows, never
//    multicast; the two consumer warpgroups take alternate work items of the block, each computing
//    the whole tile, and a stage is released by the 4 warps of one warpgroup per block. Named
//    barriers pass the turn: a warpgroup starts its item's stage waits only after the other one
//    has passed all of its own (so a wait never sees a phase a round behind), and its epilogue
//    then overlaps the other's loads and wgmmas. NOTES (H200, session 9 timeline): at 12 k-steps
//    an item the epilogue took a fifth of the down GEMM's time with one warpgroup idle.
//    By default (GemmArgs::pingpong_short_stages, kernel PP) a stage holds only the tile's 64 A
//    rows: 40 KiB, so kPpStages = 5 stages fit where 4 of 48 KiB did, and one more stage of
//    weights is in flight (H200, session 11: Qwen3 512 tokens 360.5 -> 354.5 us, DeepSeek-V2-Lite
//    256 / 512 tokens 331.5 -> 320 / 347.2 -> 339 us; the weight streams were latency-bound on the
//    ring's depth).
// 8. Full 128-row tiles of wtype output with GemmParams::c_tmap store by TMA (StoreWarpRowsTma):
//    the warps do not wait for the global writes.
// 9. h-ready counters (GemmParams::h_ready): gate/up counts the h rows each warp stores per group
//    (HReadyAdd); the down GEMM, launched with PDL, skips its PDL wait and waits per work item for
//    its group's count (WaitHReady). Its clusters take the SMs that gate/up's blocks leave as they
//    run out of items, and compute the experts whose h is complete while gate/up's last items
//    finish. Outside ping-pong mode a warp counts an item's rows at its next epilogue (or at the
//    end), so that it never waits for its own stores. NOTES (H200, session 19 timelines, 512
//    tokens, ping-pong): gate/up's blocks ended over 155-195 us (DeepSeek-V2-Lite: 5.3 items a
//    cluster, so a third of them run a sixth) and down's first block started ~4 us after the last
//    one; with the counters down's blocks started up to 46 us before gate/up's last block ended,
//    and the layer took 2.6-2.9% less (CudaEngineOptions::cluster_down_overlap). With every warp
//    counting at once (waiting for its stores) outside ping-pong mode too, the layer was 1.8-2.8%
//    slower than without counters at DeepSeek-V2-Lite 1024 / 4096 tokens.
// 10. A pair's extra rows (GemmParams::pair_extra_rows, kernel XR: pair clusters, outside
//    ping-pong mode): a group of R = 256 q + r rows, q >= 1, whose remainder r is 1..16
//    (or 129..144: then a solo tile of 128 rows and r - 128 extra) computes those last rows in its
//    last multicast pair instead of in a solo tile that streams the expert's weights once more.
//    Each stage holds the 16 extra A rows past its A and B (A by cp.async: one 16-byte chunk per
//    producer thread; by TMA: two 8-row boxes of GemmParams::a_x_tmap); each of the cluster's 4
//    consumer warpgroups, q = 2 rank + warpgroup, computes them against its quarter of the stage's
//    weight rows (gated: gate and up rows 32 q.., plain: rows 64 q..) with one more m64 wgmma per
//    k16 in the stage's commit group (its rows past the 16 read the next stage's bytes and are
//    dropped), and its warp 0 stores them from registers. Why: at ~256 rows per expert
//    (Qwen3-30B-A3B at 4096 tokens) half of the experts left a solo tile of a few rows, 158 units
//    of work for 128 pairs' worth of rows. NOTES (H200, session 20): the layer 1.7% faster there,
//    but the kernel costs 1-3% where no expert leaves such rows (its 32 more accumulators a
//    consumer thread), hence MoePlan::pair_extra_rows (kernels/tile_heuristics.h). Two n32
//    wgmmas for gate and up (their rows are not adjacent) read the extra A twice: the gated
//    extra rows add 60% to a stage's shared-memory reads, the plain ones 40%.
// 11. Packed weights (GemmParams::b_packed, the kernel's BL; kernels/weight_layout.h): each
//    128 x 64 box of B is one contiguous 16 KiB block already in the stage's swizzled order, so
//    thread 0 moves it by a 1-D bulk copy (cp.async.bulk, multicast like the boxes) from the
//    matrix's pointer (b0_table / b1_table) instead of a tensor copy through its descriptor.
//    NOTES (H200, session 24): a stream probe read 4.60-4.63 TB/s by bulk copies against
//    4.34-4.40 by 2-D tensor copies of row-major weights and 4.30-4.41 by 4-D tensor copies of
//    packed ones (b_packed 2); the layer: Mixtral 64 / 256 tokens 691 -> 659 / 740 -> 703 us,
//    Qwen3 512 354 -> 334, DeepSeek-V2-Lite 512 316 -> 305. But at 1024+ rows per expert the 4-D
//    tensor copies made the layer 0.3-1.3% faster (session 27), so plans of that many rows take
//    them (MoePlan::packed_tensor_copies).
#include <algorithm>

#include "kernels/cluster.cuh"
#include "kernels/cuda_status.h"
#include "kernels/gemm_common.cuh"
#include "kernels/gemm_trace.cuh"
#include "kernels/pdl.cuh"
#include "kernels/tensor_map.h"
#include "kernels/wgmma_common.cuh"

namespace moe::cuda {
#ifdef MOE_GEMM_TRACE
__device__ uint64_t* g_gemm_trace = nullptr;  // SetGemmTraceBuffer
#endif
namespace {

constexpr int kClusterBlocks = 2;
constexpr int kMcStages = 4;
// The stages, then the staged epilogue's buffers of the 8 consumer warps.
constexpr int kMcSmem = WgSmemBytes(128, 256, kMcStages) + 8 * kStagedEpilogueWarpBytes;
// With a pair's extra rows (GemmParams::pair_extra_rows): kClusterPairExtraRows more A rows a
// stage.
constexpr int kMcXrSmem = kMcSmem + kMcStages * kClusterPairExtraRows * kBk * 2;
// Ping-pong tiles have 64 rows, so their stages can hold 64 A rows instead of 128: 40 KiB a stage,
// kPpStages of them in about the shared memory of the kMcStages 48 KiB ones
// (GemmArgs::pingpong_short_stages).
constexpr int kPpStages = 5;
constexpr int kPpSmem = WgSmemBytes(64, 256, kPpStages) + 8 * kStagedEpilogueWarpBytes;
static_assert(kTensorMapBoxRows == 128 && kTensorMapBoxCols == kBk,
              "one TMA box is half of a stage's 256 weight rows");

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
constexpr int kPairRows = 128 * kClusterBlocks;
constexpr int kBoxBytes = kTensorMapBoxRows * kTensorMapBoxCols * 2;
// Arrives on the barrier at the same shared-memory offset as `bar` in cluster block `rank`.
// NOTES: default (.release.cta) semantics, as CUTLASS's cluster barriers: the arrival only says
// that this warp's wgmmas have finished reading the stage (wgmma.wait_group before it). With
// .release.cluster, ptxas puts a memory barrier before the arrive that waits for the warp's
// wgmma still in flight: the kernel ran 1.45x slower (H200, ncu: 34% of stalls on memory
// barriers).
__device__ __forceinline__ void MbarArriveCluster(uint64_t* bar, uint32_t rank) {
  asm volatile(
      "mbarrier.arrive.shared::cluster.b64 _, [%0];\n" ::"r"(MapShared(SmemAddr(bar), rank))
      : "memory");
}
// Named barriers 1 and 2 order the two consumer warpgroups in ping-pong mode (barrier 0 is
// __syncthreads): warpgroup c waits on kOrderBarrier + c; the other arrives on it.
constexpr int kOrderBarrier = 1;
// Waits for phase `parity` of a barrier that blocks of the cluster arrive on.
__device__ __forceinline__ void MbarWaitCluster(uint64_t* bar, uint32_t parity) {
  MbarWait(bar, parity);
}
// One arrival on `bar` that also expects `bytes` more of asynchronous (TMA) writes this phase.
__device__ __forceinline__ void MbarArriveExpectTx(uint64_t* bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(SmemAddr(bar)),
               "r"(bytes)
               : "memory");
}
// TMA: the box at (col, row) of `tmap` into shared offset `dst` of the cluster blocks in `mask`,
// signalling each one's barrier at offset `bar`.
__device__ __forceinline__ void TmaLoadMulticastTo(uint32_t dst, const void* tmap, int col, int row,
                                                   uint64_t* bar, uint16_t mask) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes.multicast::"
      "cluster [%0], [%1, {%2, %3}], [%4], %5;\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(tmap)), "r"(col), "r"(row), "r"(SmemAddr(bar)), "h"(mask)
      : "memory");
}
// The same for the 4-D descriptor of a packed matrix (kernels/weight_layout.h; GemmParams::b_packed
// 2): the box of rows row.. (a multiple of 128), columns col.. (a multiple of 64).
__device__ __forceinline__ void TmaLoadMulticastTo4d(uint32_t dst, const void* tmap, int col,
                                                     int row, uint64_t* bar, uint16_t mask) {
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.mbarrier::complete_tx::bytes.multicast::"
      "cluster [%0], [%1, {%2, %2, %3, %4}], [%5], %6;\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(tmap)), "r"(0), "r"(col / kBk), "r"(row / 128),
      "r"(SmemAddr(bar)), "h"(mask)
      : "memory");
}
__device__ __forceinline__ void TmaLoad4d(uint32_t dst, const void* tmap, int col, int row,
                                          uint64_t* bar) {
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, "
      "%2, %3, %4}], [%5];\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(tmap)), "r"(0), "r"(col / kBk), "r"(row / 128),
      "r"(SmemAddr(bar))
      : "memory");
}
// 1-D bulk copies of `bytes` at `src` (packed B, GemmParams::b_packed 1), multicast to the cluster
// blocks in `mask` or into this block.
__device__ __forceinline__ void BulkLoadMulticastTo(uint32_t dst, const void* src, uint32_t bytes,
                                                    uint64_t* bar, uint16_t mask) {
  asm volatile(
      "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes.multicast::cluster [%0], "
      "[%1], %2, [%3], %4;\n" ::"r"(dst),
      "l"(src), "r"(bytes), "r"(SmemAddr(bar)), "h"(mask)
      : "memory");
}
__device__ __forceinline__ void BulkLoad(uint32_t dst, const void* src, uint32_t bytes,
                                         uint64_t* bar) {
  asm volatile(
      "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::
          "r"(dst),
      "l"(src), "r"(bytes), "r"(SmemAddr(bar))
      : "memory");
}
// TMA: the box at (col, row) of `tmap` into this block's shared offset `dst`.
__device__ __forceinline__ void TmaLoad(uint32_t dst, const void* tmap, int col, int row,
                                        uint64_t* bar) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, "
      "%3}], [%4];\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(tmap)), "r"(col), "r"(row), "r"(SmemAddr(bar))
      : "memory");
}
// TMA store of the 8 x 64 box at shared `src` (1024-byte aligned, 128-byte swizzle) to (col, row)
// of `tmap`'s matrix (clipped at its bounds), as one bulk async-group of this thread.
__device__ __forceinline__ void TmaStoreBox(const void* tmap, const void* src, int col, int row) {
  asm volatile(
      "cp.async.bulk.tensor.2d.global.shared::cta.bulk_group [%0, {%1, %2}], [%3];\n"
      "cp.async.bulk.commit_group;\n" ::"l"(reinterpret_cast<uint64_t>(tmap)),
      "r"(col), "r"(row), "r"(SmemAddr(src))
      : "memory");
}
// Waits until this thread's bulk async-groups but the newest N have read their shared memory.
template <int N>
__device__ __forceinline__ void BulkWaitRead() {
  asm volatile("cp.async.bulk.wait_group.read %0;\n" ::"n"(N) : "memory");
}
// Waits until every bulk async-group of this thread has completed (its writes are done).
__device__ __forceinline__ void BulkWaitAll() {
  asm volatile("cp.async.bulk.wait_group 0;\n" ::: "memory");
}

// The epilogue of one consumer warp for its 16 rows (row0..row0 + 15, all inside the tile) of a
// full tile by TMA stores (GemmParams::c_tmap, boxes of kStoreTensorMapBoxRows = 8 rows x 64
// columns): per 64-column pass, each 8-row half goes into its 1 KiB of the warp's buffer
// (StageWarpHalf, as StoreWarpRowsStaged: the same values and rounding), then lane 0
// stores it by TMA and the warp moves on; a half is rewritten once its previous store (one
// bulk group back) has read it. The warp waits for no global write.
template <typename T, bool GATED, int N, int G>
__device__ __forceinline__ void StoreWarpRowsTma(const GemmParams& p, const float (&acc)[G][N / 2],
                                                 int row0, int n0, int lane, uint8_t* buf) {
  static_assert(N % 64 == 0, "whole 64-column passes");
#pragma unroll
  for (int pass = 0; pass < N / 64; ++pass) {
    const int col = n0 + pass * 64;
    if (col >= p.n) break;  // the same for the whole warp: no store, no group
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      uint8_t* hb = buf + half * 1024;
      if (lane == 0) BulkWaitRead<1>();  // this half's previous store has read it
      __syncwarp();
      StageWarpHalf<T, GATED, N, G>(acc, pass, half, lane, hb);
      FenceProxyAsync();  // the writes, before the async proxy reads them
      __syncwarp();
      if (lane == 0) TmaStoreBox(p.c_tmap, hb, col, row0 + 8 * half);
    }
  }
}

__device__ __forceinline__ void PrefetchTensorMap(const void* tmap) {
  asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64_t>(tmap)) : "memory");
}

// Exclusive prefix sums over the groups of count(g) into start[0..n_groups], in shared memory.
// Called by all threads of the block; ends with a block barrier.
template <typename Count>
__device__ __forceinline__ void GroupPrefix(int n, int* start, Count count) {
  for (int g = threadIdx.x; g < n; g += blockDim.x) start[g + 1] = count(g);
  __syncthreads();
  if (threadIdx.x < 32) {
    // Warp 0: a lane owns a contiguous chunk of groups.
    const int lane = threadIdx.x;
    const int per = (n + 31) / 32;
    const int g0 = min(n, lane * per), g1 = min(n, g0 + per);
    int sum = 0;
    for (int g = g0; g < g1; ++g) sum += start[g + 1];
    int incl = sum;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const int v = __shfl_up_sync(0xffffffffu, incl, o);
      if (lane >= o) incl += v;
    }
    int run = incl - sum;
    for (int g = g0; g < g1; ++g) {
      run += start[g + 1];
      start[g + 1] = run;
    }
    if (lane == 0) start[0] = 0;
  }
  __syncthreads();
}

// The last group g with start[g] <= t (skips empty groups: they share the next one's start).
__device__ __forceinline__ int FindGroup(const int* start, int n, int t) {
  int lo = 0, hi = n - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) >> 1;
    if (start[mid] <= t) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  return lo;
}

// How the rows of every group are cut, the same for the whole launch: multicast pairs or not,
// and the rows of a solo tile (128, or 64 in ping-pong mode, which never multicasts).
struct RowCut {
  bool multicast;
  int tile_rows;
  int extra;  // a pair's extra rows at most (GemmParams::pair_extra_rows), else 0
};
// A group's last rows that its last multicast pair computes as extra rows (10., multicast with
// cut.extra > 0): those past floor(R / 256) >= 1 pairs when 1..extra remain, or past the pairs and
// a solo tile of 128 when 129..128 + extra remain; else none.
__device__ __forceinline__ int ExtraRows(int rows, const RowCut& cut) {
  if (!cut.multicast || cut.extra == 0 || rows < kPairRows) return 0;
  const int rem = rows % kPairRows;
  if (rem > 0 && rem <= cut.extra) return rem;
  if (rem > 128 && rem <= 128 + cut.extra) return rem - 128;
  return 0;
}
// How the rows of group g are cut (rows R, multicast on; R less its extra rows): floor(R / 256)
// multicast pairs, one more if the remainder exceeds 128 rows (its second block gets the rest),
// else the remainder (1..128 rows) is one solo tile. Multicast off: every tile of cut.tile_rows
// rows is a solo tile.
__device__ __forceinline__ int McPairs(int rows, const RowCut& cut) {
  if (!cut.multicast) return 0;
  rows -= ExtraRows(rows, cut);
  return rows / kPairRows + (rows % kPairRows > 128 ? 1 : 0);
}
__device__ __forceinline__ int SoloTiles(int rows, const RowCut& cut) {
  if (!cut.multicast) return (rows + cut.tile_rows - 1) / cut.tile_rows;
  const int rem = (rows - ExtraRows(rows, cut)) % kPairRows;
  return rem > 0 && rem <= 128 ? 1 : 0;
}

// Solo pair j is solo tiles 2 j and 2 j + 1 (any groups; the last pair may have one tile). Its
// owner is the group of its last tile, so that it runs next to that group's multicast pairs and
// their weights are still in L2. Returns how many solo pairs group g owns, given its solo tiles
// [a, b) of `solos` in all.
__device__ __forceinline__ int OwnedSoloPairs(int a, int b, int solos) {
  const int odd = b / 2 - a / 2;  // odd tile numbers in [a, b)
  const bool last_even = b == solos && b > a && ((b - 1) & 1) == 0;
  return odd + (last_even ? 1 : 0);
}

// What cluster block `rank` computes for unit t. Units are ordered by group: group g's multicast
// pairs (both blocks, one group), then the solo pairs it owns (see OwnedSoloPairs; rank r takes
// tile 2 j + r, group -1 when it does not exist). Rows [row_begin, row_end), maybe empty; the
// group's last pair also its extra rows [extra_begin, extra_end) (ExtraRows: its last rows).
// NOTES: before, every solo pair came after all multicast pairs; a solo tile then read its
// expert's weights from HBM a second time, long after the pair had.
struct PairWork {
  bool multicast;
  int group;
  int row_begin, row_end;
  int extra_begin, extra_end;
};
__device__ __forceinline__ PairWork ResolvePair(const GemmParams& p, const int* unit_start,
                                                const int* solo_start, int t, uint32_t rank,
                                                const RowCut& cut) {
  const int n = p.n_groups;
  const int g = FindGroup(unit_start, n, t);
  const int local = t - unit_start[g];
  const int g_rows = p.group_offsets[g + 1] - p.group_offsets[g];
  const int mc_pairs = McPairs(g_rows, cut);
  PairWork w;
  w.extra_begin = w.extra_end = 0;
  if (local < mc_pairs) {
    w.multicast = true;
    w.group = g;
    w.row_begin = p.group_offsets[g] + local * kPairRows + static_cast<int>(rank) * 128;
    if (local == mc_pairs - 1) {
      w.extra_end = p.group_offsets[g + 1];
      w.extra_begin = w.extra_end - ExtraRows(g_rows, cut);
    }
  } else {
    w.multicast = false;
    const int j = solo_start[g] / 2 + (local - mc_pairs);
    const int s = 2 * j + static_cast<int>(rank);
    if (s >= solo_start[n]) return PairWork{false, -1, 0, 0, 0, 0};
    w.group = FindGroup(solo_start, n, s);
    const int rows = p.group_offsets[w.group + 1] - p.group_offsets[w.group];
    w.row_begin = p.group_offsets[w.group] + McPairs(rows, cut) * kPairRows +
                  (s - solo_start[w.group]) * cut.tile_rows;
  }
  w.row_end = min(p.group_offsets[w.group + 1], w.row_begin + (w.multicast ? 128 : cut.tile_rows));
  return w;
}

// Work item w of a cluster (DecodeWorkItem's order over `pairs` pairs and `col_groups` groups of
// cn column blocks): this block's rows (row tile rm of the pair), its column block (number rn of
// the group), the split and its k-steps [kt_begin, kt_end).
struct ClusterItem {
  PairWork pw;
  int nb, split, kt_begin, kt_end;
};
__device__ __forceinline__ ClusterItem ResolveClusterItem(
    const GemmParams& p, const int* unit_start, const int* solo_start, int64_t w, int pairs,
    int col_groups, int cn, int k_steps, uint32_t rm, uint32_t rn, const RowCut& cut) {
  ClusterItem c;
  int t, group;
  DecodeWorkItem(w, pairs, col_groups, t, group, c.split,
                 p.raster_units > 0 ? p.raster_units : kWsGroupRows);
  c.nb = cn * group + static_cast<int>(rn);
  c.pw = ResolvePair(p, unit_start, solo_start, t, rm, cut);
  c.kt_begin = static_cast<int>(static_cast<int64_t>(c.split) * k_steps / p.splits);
  c.kt_end = static_cast<int>(static_cast<int64_t>(c.split + 1) * k_steps / p.splits);
  return c;
}

// The dynamic schedule (GemmParams::item_counter, not in ping-pong mode). A cluster's first work
// item is its ClusterId(), as in the static schedule; its leader (rank 0's producer thread 0)
// draws each next one from the counter (ClusterCount() + ticket) while the current one streams,
// and publishes it as the cluster's n-th item (n >= 1) in slot (n - 1) % kItemRing of every
// block's `s_item`: an arrival on that block's `item_bar[slot]` that expects 4 bytes, then an
// asynchronous store of the item that completes them (st.async, as a TMA copy completes a stage).
// Every other role (the peers' producers, the leader's own other producer threads, all consumer
// warps) waits there for phase (n - 1) / kItemRing and reads it. No role is more than a stage
// ring behind the leader (the `empty` barriers), so a slot is never rewritten before all have
// read it. An item past the work ends every role's loop. When its last draw has come back, each
// leader counts its cluster done; the last one zeroes both ints for the next launch.
// NOTES (H200, session 18): with a plain st.shared::cluster store and a release arrival,
// compute-sanitizer racecheck reported ~960 read/write hazards per launch between ReadItem and
// PublishItem (CudaEngine.ClusterDynamicSchedule), and still did with a second ring of barriers
// on which every reader warp released its slot to the leader (cluster scope; that variant was
// also 2.4% slower at Mixtral 4096 / 16384 tokens); with st.async it reports none.
constexpr int kItemRing = 8;
static_assert(kItemRing > kMcStages + 1 && kItemRing > kPpStages + 1,
              "no role lags the leader by a whole ring");
__device__ __forceinline__ void PublishItem(int* s_item, uint64_t* item_bar, uint32_t n, int w,
                                            int blocks) {
  const uint32_t slot = (n - 1) % kItemRing;
  for (int r = 0; r < blocks; ++r) {
    // The phase expects the item's 4 bytes, which the asynchronous store completes (as a TMA
    // copy completes a stage): the readers' wait covers the write itself.
    const uint32_t bar = MapShared(SmemAddr(item_bar + slot), r);
    asm volatile(
        "mbarrier.arrive.expect_tx.release.cluster.shared::cluster.b64 _, [%0], 4;\n" ::"r"(bar)
        : "memory");
    asm volatile(
        "st.async.shared::cluster.mbarrier::complete_tx::bytes.u32 [%0], %1, [%2];\n" ::"r"(
            MapShared(SmemAddr(s_item + slot), r)),
        "r"(w), "r"(bar)
        : "memory");
  }
}
__device__ __forceinline__ int ReadItem(const int* s_item, uint64_t* item_bar, uint32_t n) {
  const uint32_t slot = (n - 1) % kItemRing;
  MbarWait</*CLUSTER=*/true>(item_bar + slot, ((n - 1) / kItemRing) & 1);
  int w;
  asm volatile("ld.shared.u32 %0, [%1];\n" : "=r"(w) : "r"(SmemAddr(s_item + slot)) : "memory");
  return w;
}

// The h-ready counters (GemmArgs::h_ready). Gate/up: each consumer warp, once the h rows it stored
// for a work item are visible (its st.global before a __syncwarp, or its TMA stores complete), adds
// their count (kHReadyQuarters per row of the item's columns, 1 per extra row of its quarter of
// them) to its group's counter with release semantics (as CUTLASS's generic barrier: a
// block barrier, then one releasing thread). Down: a producer thread acquires the count before
// it loads any A row of the group; the proxy fence then orders the TMA reads of A after it.
__device__ __forceinline__ void HReadyAdd(int32_t* counter, int rows) {
  asm volatile("red.release.gpu.global.add.s32 [%0], %1;\n" ::"l"(counter), "r"(rows) : "memory");
}
__device__ __forceinline__ void WaitHReady(const GemmParams& p, int g) {
  const int rows = p.group_offsets[g + 1] - p.group_offsets[g];
  const int target =
      rows * ((p.k + kClusterGatedColumns - 1) / kClusterGatedColumns) * kHReadyQuarters;
  const long long t0 = clock64();
  for (;;) {
    int ready;
    asm volatile("ld.acquire.gpu.global.s32 %0, [%1];\n"
                 : "=r"(ready)
                 : "l"(p.h_ready + g)
                 : "memory");
    if (ready == target) break;
    // Past the target (counters not zeroed by the last launch) or waiting for ~4 s: a wrong count
    // must neither pass nor hang the GPU.
    if (ready > target || clock64() - t0 > (1LL << 33)) __trap();
    __nanosleep(128);
  }
  asm volatile("fence.proxy.async.global;\n" ::: "memory");
}
#endif

// A by TMA (GemmArgs::a_tmap: contiguous A rows, the routed down GEMM's h or the permuted copy of
// x) on clusters of 2 x CN blocks. Cluster rank r is row tile rm = r & 1 of a unit (rank r of the
// pair) and column block CN c + rn, rn = r >> 1, of column group c. Per stage one producer
// thread loads the 64-row boxes of its row tile's A that hold rows: with CN = 2 only box rn,
// multicast to the block of the other column (same rm), with CN = 1 both; B as in the pair
// kernel, multicast to the block of the other row tile (same rn). The `full` barrier then counts
// that one expect_tx arrival. With CN = 2 a block of full tiles reads 24 KiB a stage from L2
// instead of 32.
// NOTES (H200, session 6): with A by TMA the down GEMM was 0.7-3% faster at Mixtral 512-4096 and
// Qwen3 512 tokens (one thread issues the loads instead of 128 issuing cp.async); CN = 2 was 0-2%
// slower than CN = 1 at 4096-16384 tokens and 1-4% slower at 512-1024.
constexpr int kQuadBlocks = 4;
// [[maybe_unused]]: only the sm_90a kernel bodies use it (the sm_80 pass compiles them out).
[[maybe_unused]] constexpr int kActBoxBytes = kActTensorMapBoxRows * kTensorMapBoxCols * 2;
static_assert(2 * kActTensorMapBoxRows == 128, "two A boxes make a 128-row tile");

// PP: ping-pong only (p.pingpong set), with kPpStages stages of 64 A rows. XR: pairs with extra
// rows (p.pair_extra_rows; pair clusters outside ping-pong mode), whose stages also hold
// kClusterPairExtraRows A rows. BL: how B moves, p.b_packed (see Find).
template <typename T, bool GATED, int CN, bool TMA_A, bool PP = false, bool XR = false, int BL = 0>
__global__ void __launch_bounds__(384, 1) WgmmaMcGemmKernel(const GemmParams p) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  static_assert(CN == 1 || (CN == 2 && TMA_A), "A is multicast by TMA only");
  constexpr int kBlocks = kClusterBlocks * CN;
  static_assert(!PP || CN == 1, "ping-pong runs on pair clusters");
  static_assert(!XR || (CN == 1 && !PP), "extra rows: pair clusters outside ping-pong mode");
  constexpr int B_ROWS = 256, STAGES = PP ? kPpStages : kMcStages;
  constexpr int BM = PP ? 64 : 128;  // A rows a stage holds
  constexpr int BN = GATED ? B_ROWS / 2 : B_ROWS;
  constexpr int kG = GATED ? 2 : 1;
  static_assert(!GATED || BN == kClusterGatedColumns,
                "h-ready counts: columns a gated item stores");
  // Extra rows: warpgroup q (of the cluster's 4) computes columns [q NX, q NX + NX) of each slice.
  constexpr int NX = BN / 4;
  static_assert(kClusterPairExtraRows == 16,
                "the extra rows: one row of the 16 per producer thread");
  constexpr int kXrBytes = kClusterPairExtraRows * kBk * 2;  // a stage's extra A rows
  static_assert(kStoreTensorMapBoxRows * 2 == kClusterPairExtraRows, "two 8-row boxes (TMA_A)");
  constexpr int kStageBytes = WgStageBytes(BM, B_ROWS) + (XR ? kXrBytes : 0);
  __shared__ __align__(8) uint64_t full_bar[STAGES];
  __shared__ __align__(8) uint64_t empty_bar[STAGES];
  __shared__ int unit_start[kMaxClusterGemmGroups + 1];
  __shared__ int solo_start[kMaxClusterGemmGroups + 1];
  __shared__ int s_item[kItemRing];                      // dynamic schedule: PublishItem
  __shared__ __align__(8) uint64_t item_bar[kItemRing];  // one arrival (the leader's) a phase
  extern __shared__ uint8_t mc_smem_raw[];
  uint8_t* smem = AlignedStageSmem(mc_smem_raw);

  // Phase 0: barriers (full: the 128 producer threads' cp.async and one expect_tx arrival, or that
  // arrival alone with A by TMA; empty: the 8 consumer warps of each cluster block), pair starts,
  // then a cluster barrier so that the peers' barriers exist before anything arrives on them.
  // Ping-pong (GemmParams::pingpong, pair clusters only): 64-row solo tiles, each work item taken
  // by one consumer warpgroup (they alternate), so a stage is released by 4 warps per block.
  const bool pingpong = PP || (CN == 1 && p.pingpong != 0);
  const RowCut cut{p.tma_multicast != 0 && !pingpong, pingpong ? 64 : 128,
                   XR ? kClusterPairExtraRows : 0};
  const bool dynamic = p.item_counter != nullptr && !pingpong;
  if (dynamic && threadIdx.x == 0) {
    for (int i = 0; i < kItemRing; ++i) MbarInit(&item_bar[i]);  // fenced by InitStageBarriers
  }
  InitStageBarriers<STAGES>(full_bar, empty_bar, TMA_A ? 1 : 128 + 1, (pingpong ? 4 : 8) * kBlocks);
  // PDL: the group offsets (and A) come from earlier kernels. With pdl_prefetch (A by TMA) they
  // are two or more launches old: only A waits, and the producer streams the first stages' B
  // before that wait.
  // h_wait (the down GEMM with h-ready counters): no PDL wait at all; A rows wait for their
  // group's counter (WaitHReady), and the group offsets are from the scan, which ended before
  // gate/up began.
  const bool h_wait = !GATED && p.h_ready != nullptr;
  const bool prefetch_b = TMA_A && p.pdl_prefetch != 0 && !h_wait;
  if (!prefetch_b && !h_wait) GridDepWait();
  auto rows_of = [&](int g) { return p.group_offsets[g + 1] - p.group_offsets[g]; };
  GroupPrefix(p.n_groups, solo_start, [&](int g) { return SoloTiles(rows_of(g), cut); });
  const int solos = solo_start[p.n_groups];
  GroupPrefix(p.n_groups, unit_start, [&](int g) {
    return McPairs(rows_of(g), cut) + OwnedSoloPairs(solo_start[g], solo_start[g + 1], solos);
  });
  ClusterSync();
  GridDepTrigger();  // the next kernel may launch; it waits for free SMs, then for this one
#ifdef MOE_GEMM_TRACE
  uint64_t* trace = TraceBlock(g_gemm_trace, GATED ? 0 : 1);
  if (trace != nullptr && threadIdx.x == 0) {
    trace[0] = TraceGlobalTime();
    trace[1] = TraceClock();
  }
#endif
  const uint32_t rank = ClusterRank();
  const uint32_t rm = rank & 1, rn = rank >> 1;
  const int pairs = unit_start[p.n_groups];
  const int col_blocks = (p.n + BN - 1) / BN;
  const int col_groups = (col_blocks + CN - 1) / CN;
  const int64_t work = static_cast<int64_t>(pairs) * col_groups * p.splits;
  const int k_steps = (p.k + kBk - 1) / kBk;
  const int64_t layer_base = (p.layer_dev ? *p.layer_dev : 0) * p.b_layer_stride;
  const int wg = threadIdx.x / 128;
  const int64_t first_item = ClusterId(), item_stride = ClusterCount();

  if (wg == 0) {
    // Phase 1: producer (thread 0 alone with A by TMA).
    SetMaxNRegDec<80>();
    const int tid = threadIdx.x;
    if (!TMA_A || tid == 0) {
      const uint16_t m_peers = static_cast<uint16_t>(0x3u << (2 * rn));  // share B
      const uint16_t n_peers =
          static_cast<uint16_t>((1u << rm) | (CN == 2 ? 1u << (rm + 2) : 0u));  // share A
      const int r0 = tid >> 3, chunk = tid & 7;
      const int dst0 = r0 * kBk + ((chunk ^ (r0 & 7)) << 3);  // element offset of row r0's chunk
      const T* a_base = GemmABase<T>(p);
      if constexpr (TMA_A) PrefetchTensorMap(p.a_tmap);
      // B descriptors of a unit's expert, or with packed weights loaded by bulk copies the
      // matrices themselves (null: this block has no tile in the unit).
      auto unit_tmaps = [&](const PairWork& pw, const void*& tmap0, const void*& tmap1) {
        tmap0 = tmap1 = nullptr;
        if (pw.group >= 0 && BL == 1) {  // the matrices themselves, not descriptors
          tmap0 = p.b0_table[layer_base + pw.group];
          tmap1 = GATED ? p.b1_table[layer_base + pw.group] : tmap0;
        } else if (pw.group >= 0) {
          tmap0 = p.b0_tmaps[layer_base + pw.group];
          tmap1 = GATED ? p.b1_tmaps[layer_base + pw.group] : tmap0;
          if (tid == 0) {
            PrefetchTensorMap(tmap0);
            if (GATED) PrefetchTensorMap(tmap1);
          }
        }
      };
      // B boxes of one stage (thread 0). Multicast: this block's half (gated: gate rows n0.. for
      // rm 0, up rows n0.. for rm 1; plain: rows n0 + 128 rm..) into both blocks of its column.
      // Solo: both halves, this block only.
      auto issue_b = [&](const PairWork& pw, const void* tmap0, const void* tmap1, int n0,
                         int stage, int k0) {
        const uint32_t b_dst = SmemAddr(smem + stage * kStageBytes + BM * kBk * 2);
        if constexpr (BL == 1) {
          // The box at (k0, row) of a packed matrix: one contiguous kBoxBytes tile. A box past
          // the matrix's rows (a plain GEMM's last column block when n % 256 != 0) reads the
          // first row block instead: its columns are never stored, and nothing past the matrix
          // is read.
          auto tile = [&](const void* base, int row) {
            return static_cast<const char*>(base) + PackedOffset(row < p.n ? row : 0, k0, p.k) * 2;
          };
          if (pw.multicast) {
            BulkLoadMulticastTo(
                b_dst + rm * kBoxBytes,
                tile(rm == 1 ? tmap1 : tmap0, GATED ? n0 : n0 + 128 * static_cast<int>(rm)),
                kBoxBytes, &full_bar[stage], m_peers);
          } else if (tmap0 != nullptr) {
            BulkLoad(b_dst, tile(tmap0, n0), kBoxBytes, &full_bar[stage]);
            BulkLoad(b_dst + kBoxBytes, tile(tmap1, GATED ? n0 : n0 + 128), kBoxBytes,
                     &full_bar[stage]);
          }
        } else if constexpr (BL == 2) {
          if (pw.multicast) {
            TmaLoadMulticastTo4d(b_dst + rm * kBoxBytes, rm == 1 ? tmap1 : tmap0, k0,
                                 GATED ? n0 : n0 + 128 * static_cast<int>(rm), &full_bar[stage],
                                 m_peers);
          } else if (tmap0 != nullptr) {
            TmaLoad4d(b_dst, tmap0, k0, n0, &full_bar[stage]);
            TmaLoad4d(b_dst + kBoxBytes, tmap1, k0, GATED ? n0 : n0 + 128, &full_bar[stage]);
          }
        } else if (pw.multicast) {
          TmaLoadMulticastTo(b_dst + rm * kBoxBytes, rm == 1 ? tmap1 : tmap0, k0,
                             GATED ? n0 : n0 + 128 * static_cast<int>(rm), &full_bar[stage],
                             m_peers);
        } else if (tmap0 != nullptr) {
          TmaLoad(b_dst, tmap0, k0, n0, &full_bar[stage]);
          TmaLoad(b_dst + kBoxBytes, tmap1, k0, GATED ? n0 : n0 + 128, &full_bar[stage]);
        }
      };
      // A by TMA: the 64-row boxes that hold rows of the tile (both blocks of a row tile agree).
      auto a_boxes_of = [](const PairWork& pw) {
        return (max(pw.row_end - pw.row_begin, 0) + kActTensorMapBoxRows - 1) /
               kActTensorMapBoxRows;
      };
      uint32_t it = 0;
      // PDL weight prefetch: stages [0, npre) of the first item get their B (and the expected
      // bytes of B and A) before the wait; the loop below then issues only their A.
      uint32_t npre = 0;
      if (prefetch_b) {
        if (first_item < work) {
          const ClusterItem item0 = ResolveClusterItem(p, unit_start, solo_start, first_item, pairs,
                                                       col_groups, CN, k_steps, rm, rn, cut);
          const void* tmap0;
          const void* tmap1;
          unit_tmaps(item0.pw, tmap0, tmap1);
          const uint32_t bytes = a_boxes_of(item0.pw) * kActBoxBytes +
                                 (tmap0 != nullptr ? 2 * kBoxBytes : 0) +
                                 (XR && item0.pw.extra_end > item0.pw.extra_begin ? kXrBytes : 0);
          npre = static_cast<uint32_t>(min(STAGES, item0.kt_end - item0.kt_begin));
          for (uint32_t st = 0; st < npre; ++st) {  // free at the start: no empty wait
            MbarArriveExpectTx(&full_bar[st], bytes);
            issue_b(item0.pw, tmap0, tmap1, item0.nb * BN, static_cast<int>(st),
                    (item0.kt_begin + static_cast<int>(st)) * kBk);
          }
        }
        GridDepWait();
      }
      const bool leader = dynamic && rank == 0 && tid == 0;
      int64_t w = first_item, next = 0;
      for (uint32_t n = 0;; ++n) {
        if (n > 0) w = !dynamic ? w + item_stride : leader ? next : ReadItem(s_item, item_bar, n);
        if (w >= work) break;
        // The leader's next draw comes back while this item's stages go out.
        if (leader) next = item_stride + atomicAdd(p.item_counter, 1);
        const ClusterItem item = ResolveClusterItem(p, unit_start, solo_start, w, pairs, col_groups,
                                                    CN, k_steps, rm, rn, cut);
        const PairWork& pw = item.pw;
        const int nb = item.nb;
        const void* tmap0;
        const void* tmap1;
        unit_tmaps(pw, tmap0, tmap1);
        const int n0 = nb * BN;
        // A by cp.async: this thread's rows (-1: past the tile), as 32-bit row numbers (the
        // producer runs on 80 registers).
        const int a_row = pw.row_begin + kActTensorMapBoxRows * static_cast<int>(rn);
        const int a_boxes = a_boxes_of(pw);
        if (h_wait && pw.group >= 0 && pw.row_end > pw.row_begin) WaitHReady(p, pw.group);
        int a_rows[TMA_A ? 1 : BM / 16];
        if constexpr (!TMA_A) {
#pragma unroll
          for (int i = 0; i < BM / 16; ++i) {
            const int r = pw.row_begin + r0 + 16 * i;
            a_rows[i] = r < pw.row_end ? (p.a_rows ? p.a_rows[r] : r) : -1;
          }
        }
        // Extra rows (XR): this thread's one (row r0 of the 16), -1 past them; -2: none this item
        // (or A by TMA: thread 0 loads them in two 8-row boxes of p.a_x_tmap).
        const bool has_extra = XR && pw.extra_end > pw.extra_begin;
        int x_row = -2;
        if constexpr (XR && !TMA_A) {
          if (has_extra) {
            const int r = pw.extra_begin + r0;
            x_row = r < pw.extra_end ? (p.a_rows ? p.a_rows[r] : r) : -1;
          }
        }
        for (int kt = item.kt_begin; kt < item.kt_end; ++kt, ++it) {
          const int stage = static_cast<int>(it % STAGES);
          const bool pre = it < npre;  // B out before the PDL wait (prefetch_b)
#ifdef MOE_GEMM_TRACE
          if (tid == 0) TraceAt(trace, GemmTraceLayout::kProdWait, GemmTraceLayout::kMaxSteps, it);
#endif
          if (!pre) MbarWaitCluster(&empty_bar[stage], ((it / STAGES) & 1) ^ 1);
#ifdef MOE_GEMM_TRACE
          if (tid == 0) TraceAt(trace, GemmTraceLayout::kProdIssue, GemmTraceLayout::kMaxSteps, it);
#endif
          const int k0 = kt * kBk;
          T* st = reinterpret_cast<T*>(smem + stage * kStageBytes);
          const uint32_t a_dst = SmemAddr(st);
          const uint32_t b_bytes = tmap0 != nullptr ? 2 * kBoxBytes : 0;
          if constexpr (TMA_A) {
            if (!pre) {
              MbarArriveExpectTx(&full_bar[stage],
                                 a_boxes * kActBoxBytes + b_bytes + (has_extra ? kXrBytes : 0));
            }
            if (XR && has_extra) {  // past the stage's A and B; rows past the extra ones: dropped
              const uint32_t x_dst = a_dst + (BM + B_ROWS) * kBk * 2;
              TmaLoad(x_dst, p.a_x_tmap, k0, pw.extra_begin, &full_bar[stage]);
              TmaLoad(x_dst + kXrBytes / 2, p.a_x_tmap, k0, pw.extra_begin + 8, &full_bar[stage]);
            }
            if constexpr (CN == 2) {
              if (static_cast<int>(rn) < a_boxes) {
                TmaLoadMulticastTo(a_dst + rn * kActBoxBytes, p.a_tmap, k0, a_row, &full_bar[stage],
                                   n_peers);
              }
            } else {
              for (int b = 0; b < a_boxes; ++b) {
                TmaLoad(a_dst + b * kActBoxBytes, p.a_tmap, k0, a_row + b * kActTensorMapBoxRows,
                        &full_bar[stage]);
              }
            }
          } else {
            if (a_boxes > 0) {
              const bool k_ok = k0 + chunk * 8 < p.k;
#pragma unroll
              for (int i = 0; i < BM / 16; ++i) {
                const bool ok = k_ok && a_rows[i] >= 0;
                const T* src = a_base + static_cast<int64_t>(a_rows[i]) * p.lda + chunk * 8 + k0;
                CpAsync16(SmemAddr(st + dst0 + 16 * i * kBk), ok ? src : a_base, ok);
              }
              if (XR && x_row != -2) {  // past the stage's A and B (zeros past the extra rows)
                const bool ok = k_ok && x_row >= 0;
                const T* src = a_base + static_cast<int64_t>(x_row) * p.lda + chunk * 8 + k0;
                CpAsync16(SmemAddr(st + (BM + B_ROWS) * kBk + dst0), ok ? src : a_base, ok);
              }
            }
            CpAsyncMbarArrive(&full_bar[stage]);
            if (tid == 0) {
              if (b_bytes > 0) {
                MbarArriveExpectTx(&full_bar[stage], b_bytes);
              } else {
                MbarArrive(&full_bar[stage]);  // an idle block: nothing to load
              }
            }
          }
          if (tid == 0 && !pre) issue_b(pw, tmap0, tmap1, n0, stage, k0);
        }
        if (leader) PublishItem(s_item, item_bar, n + 1, static_cast<int>(next), kBlocks);
      }
      if (leader) {
        __threadfence();  // the last draw before the count of clusters done
        if (atomicAdd(p.item_counter + 1, 1) == static_cast<int>(item_stride) - 1) {
          p.item_counter[0] = 0;  // every cluster has drawn its last: zero for the next launch
          p.item_counter[1] = 0;
        }
      }
      // Tail: leave only once every block's consumers have released every stage.
      for (int s = 0; s < STAGES; ++s, ++it) {
        MbarWaitCluster(&empty_bar[it % STAGES], ((it / STAGES) & 1) ^ 1);
      }
      // Every block's producer has passed its last h wait (each stage released above was loaded
      // after it): the last cluster to get here zeroes the counters for the next forward.
      if (h_wait && rank == 0 && tid == 0) {
        __threadfence();
        if (atomicAdd(p.h_ready + p.n_groups, 1) == static_cast<int>(item_stride) - 1) {
          for (int g = 0; g <= p.n_groups; ++g) p.h_ready[g] = 0;
        }
      }
    } else if (prefetch_b) {
      GridDepWait();  // every thread waits (pdl.cuh)
    }
    __syncwarp();
  } else {
    // Phase 2: consumers.
    SetMaxNRegInc<208>();
    if (prefetch_b) GridDepWait();  // before the epilogues write what earlier kernels may read
    const int cw = wg - 1;          // rows 64 cw .. 64 cw + 63 of the block's 128
    const int lane = threadIdx.x & 31, warp_in_wg = (threadIdx.x >> 5) & 3;
    const bool out_f32 = !GATED && p.out_f32;
    const bool staged = CanStoreStaged(p, out_f32);
    const bool tma_store = staged && p.c_tmap != nullptr;  // full tiles: StoreWarpRowsTma
    uint8_t* epilogue_buf = StagedEpilogueBuf(smem + STAGES * kStageBytes);
    auto release = [&](int stage) {
      __syncwarp();
      if (lane == 0) {
#pragma unroll
        for (uint32_t r = 0; r < kBlocks; ++r) MbarArriveCluster(&empty_bar[stage], r);
      }
    };
    // h-ready counts (GATED with p.h_ready): this warp's rows of an item once they are written (its
    // st.global before a __syncwarp, its TMA stores complete). Outside ping-pong mode an item's
    // count waits for the next item's epilogue (or the end), so no warp waits for its own stores.
    int pending_group = -1, pending_units = 0;
    auto signal_rows = [&](int group, int units) {
      __syncwarp();
      if (lane == 0) {
        BulkWaitAll();
        asm volatile("fence.proxy.async.global;\n" ::: "memory");
        HReadyAdd(p.h_ready + group, units);
      }
    };
    uint32_t it = 0;
#ifdef MOE_GEMM_TRACE
    const bool tracer = threadIdx.x == 128;
    uint32_t items_done = 0;
#endif
    // Ping-pong: this warpgroup's rows of a tile start at row 0, and it takes every other item.
    const int wg_row0 = pingpong ? 0 : cw * 64;
    int64_t w = first_item;
    for (uint32_t ordinal = 0;; ++ordinal) {  // of the item among this cluster's
      if (ordinal > 0) w = dynamic ? ReadItem(s_item, item_bar, ordinal) : w + item_stride;
      if (w >= work) break;
      const ClusterItem item = ResolveClusterItem(p, unit_start, solo_start, w, pairs, col_groups,
                                                  CN, k_steps, rm, rn, cut);
      if (pingpong && static_cast<int>(ordinal & 1) != cw) {
        it += static_cast<uint32_t>(item.kt_end - item.kt_begin);  // the other warpgroup's stages
        continue;
      }
      // Ping-pong: wait until the other warpgroup has passed every stage wait of its item (so
      // this one's waits see the phases of its own stages, never one a round behind).
      if (pingpong && ordinal > 0) NamedBarrierSync(kOrderBarrier + cw, 256);
      const PairWork& pw = item.pw;
      const int nb = item.nb;
      const bool compute = pw.row_begin + wg_row0 < pw.row_end && nb < col_blocks;
      float acc[kG][BN / 2];
#pragma unroll
      for (int g = 0; g < kG; ++g)
#pragma unroll
        for (int i = 0; i < BN / 2; ++i) acc[g][i] = 0.0f;
      // Extra rows (XR): this warpgroup's quarter xq of the item's columns, from the same stages.
      const bool has_x = XR && compute && pw.extra_end > pw.extra_begin;
      const int xq = 2 * static_cast<int>(rm) + cw;
      float acc_x[kG][XR ? NX / 2 : 1];
      if constexpr (XR) {
#pragma unroll
        for (int g = 0; g < kG; ++g)
#pragma unroll
          for (int i = 0; i < NX / 2; ++i) acc_x[g][i] = 0.0f;
      }
      int prev_stage = -1;
      for (int kt = item.kt_begin; kt < item.kt_end; ++kt, ++it) {
        const int stage = static_cast<int>(it % STAGES);
#ifdef MOE_GEMM_TRACE
        if (tracer) TraceAt(trace, GemmTraceLayout::kConsWait, GemmTraceLayout::kMaxSteps, it);
#endif
        MbarWait(&full_bar[stage], (it / STAGES) & 1);
#ifdef MOE_GEMM_TRACE
        if (tracer) TraceAt(trace, GemmTraceLayout::kConsReady, GemmTraceLayout::kMaxSteps, it);
#endif
        if (compute) {
          if constexpr (!TMA_A) FenceProxyAsync();  // cp.async wrote A through the generic proxy
          const uint32_t st = SmemAddr(smem + stage * kStageBytes);
          const uint64_t a_desc = Desc(st + wg_row0 * kBk * 2), b_desc = Desc(st + BM * kBk * 2);
          if constexpr (XR) {
            if (has_x) {
              uint64_t bx_desc[kG];
#pragma unroll
              for (int g = 0; g < kG; ++g)
                bx_desc[g] = Desc(st + (BM + g * BN + xq * NX) * kBk * 2);
              WgmmaStageExtra<T, BN, kG, NX>(acc, acc_x, a_desc, b_desc,
                                             Desc(st + (BM + B_ROWS) * kBk * 2), bx_desc);
            } else {
              WgmmaStage<T, BN, kG>(acc, a_desc, b_desc);
            }
          } else {
            WgmmaStage<T, BN, kG>(acc, a_desc, b_desc);
          }
        }
        if (prev_stage >= 0) release(prev_stage);
        prev_stage = stage;
      }
      // Ping-pong: the other warpgroup may start its item's stages (its epilogue, then this one's,
      // overlap the next item's loads and wgmmas).
      if (pingpong && w + item_stride < work) NamedBarrierArrive(kOrderBarrier + (cw ^ 1), 256);
      WgmmaWait<0>();
      if (prev_stage >= 0) release(prev_stage);
#ifdef MOE_GEMM_TRACE
      if (tracer) {
        TraceAt(trace, GemmTraceLayout::kEpiStart, GemmTraceLayout::kMaxItems, items_done);
      }
#endif

      // Phase 3: epilogue (warp w of the consumer warpgroup owns rows 16w..16w+15 of its 64).
      if (GATED && pending_units > 0) {
        signal_rows(pending_group, pending_units);  // the last item's stores are long done
        pending_units = 0;
      }
      if (compute) {
        const int row0 = pw.row_begin + wg_row0 + warp_in_wg * 16;
        if (tma_store && pw.row_end - pw.row_begin >= 128) {
          StoreWarpRowsTma<T, GATED, BN, kG>(p, acc, row0, nb * BN, lane, epilogue_buf);
        } else {
          // A partial tile stages through the buffers that full tiles' TMA stores read: this
          // warp's earlier stores must have read them (cp.async.bulk.wait_group.read).
          if (tma_store && lane == 0) BulkWaitRead<0>();
          __syncwarp();
          StoreWarpTile<T, GATED, BN, kG>(p, acc, out_f32, staged, item.split, pw.row_begin, row0,
                                          pw.row_end, nb * BN, lane, epilogue_buf);
        }
        // Extra rows: warp 0 of each warpgroup holds all of them (rows 0..15 of its m64 tile).
        const bool store_x = has_x && warp_in_wg == 0;
        if constexpr (XR) {
          if (store_x) {
            StoreWarpRows<T, GATED, NX, kG>(p, acc_x, out_f32, item.split, pw.extra_begin,
                                            pw.extra_end, nb * BN + xq * NX, lane);
          }
        }
        const int units = kHReadyQuarters * max(0, min(16, pw.row_end - row0)) +
                          (store_x ? pw.extra_end - pw.extra_begin : 0);
        if (GATED && p.h_ready != nullptr && units > 0) {
          if (pingpong) {
            signal_rows(pw.group, units);  // the other warpgroup's mainloop hides the wait
          } else {
            pending_group = pw.group;
            pending_units = units;
          }
        }
      }
#ifdef MOE_GEMM_TRACE
      if (tracer) {
        TraceAt(trace, GemmTraceLayout::kEpiEnd, GemmTraceLayout::kMaxItems, items_done++);
      }
#endif
    }
    if (tma_store && lane == 0)
      BulkWaitAll();  // the last stores are written before the kernel ends
    if (GATED && pending_units > 0) signal_rows(pending_group, pending_units);
#ifdef MOE_GEMM_TRACE
    if (tracer && trace != nullptr) {
      trace[4] = it;
      trace[5] = items_done;
    }
#endif
  }
  // Phase 4: no block leaves while a peer may still touch its shared memory.
  ClusterSync();
#ifdef MOE_GEMM_TRACE
  if (trace != nullptr && threadIdx.x == 0) {  // every role of both blocks is done
    trace[2] = TraceGlobalTime();
    trace[3] = TraceClock();
  }
#endif
#endif
}

using KernelFn = void (*)(GemmParams);

template <typename T, bool GATED, int BL>
KernelFn FindFor(bool tma_a, int cn, bool pp, bool xr) {
  if (pp) {
    return tma_a ? &WgmmaMcGemmKernel<T, GATED, 1, true, true, false, BL>
                 : &WgmmaMcGemmKernel<T, GATED, 1, false, true, false, BL>;
  }
  if (!tma_a) {
    return xr ? &WgmmaMcGemmKernel<T, GATED, 1, false, false, true, BL>
              : &WgmmaMcGemmKernel<T, GATED, 1, false, false, false, BL>;
  }
  if (cn == 2) return &WgmmaMcGemmKernel<T, GATED, 2, true, false, false, BL>;
  return xr ? &WgmmaMcGemmKernel<T, GATED, 1, true, false, true, BL>
            : &WgmmaMcGemmKernel<T, GATED, 1, true, false, false, BL>;
}
template <typename T, bool GATED>
KernelFn FindFor(int bl, bool tma_a, int cn, bool pp, bool xr) {
  return bl == 1   ? FindFor<T, GATED, 1>(tma_a, cn, pp, xr)
         : bl == 2 ? FindFor<T, GATED, 2>(tma_a, cn, pp, xr)
                   : FindFor<T, GATED, 0>(tma_a, cn, pp, xr);
}
// The kernel for A by cp.async (tma_a false) or by TMA on clusters of 2 x cn blocks; pp: the
// ping-pong kernel of kPpStages 64-row stages (cn 1); xr: the pair kernel with extra rows (cn 1);
// bl: how B moves (GemmParams::b_packed: 0 row-major boxes by tensor copies, 1 packed tiles by
// bulk copies, 2 packed tiles by 4-D tensor copies).
// NOTES (H200, session 26): with b_packed a run-time switch inside one kernel, the layer ran
// 0.2-2.5% slower at 4096-16384 tokens than builds with the layout fixed at compile time.
KernelFn Find(bool gated, WType wtype, int bl = 0, bool tma_a = false, int cn = 1, bool pp = false,
              bool xr = false) {
  if (wtype == WType::kBF16) {
    return gated ? FindFor<__nv_bfloat16, true>(bl, tma_a, cn, pp, xr)
                 : FindFor<__nv_bfloat16, false>(bl, tma_a, cn, pp, xr);
  }
  return gated ? FindFor<__half, true>(bl, tma_a, cn, pp, xr)
               : FindFor<__half, false>(bl, tma_a, cn, pp, xr);
}

}  // namespace

Status InitGemmKernelsSm90Cluster() {
  for (const WType wtype : {WType::kBF16, WType::kF16}) {
    for (const int bl : {0, 1, 2}) {
      for (const bool gated : {false, true}) {
        CUDA_RETURN_IF_ERROR(cudaFuncSetAttribute(
            Find(gated, wtype, bl), cudaFuncAttributeMaxDynamicSharedMemorySize, kMcSmem));
        for (const bool tma_a : {false, true}) {
          CUDA_RETURN_IF_ERROR(cudaFuncSetAttribute(Find(gated, wtype, bl, tma_a, 1, false, true),
                                                    cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                    kMcXrSmem));
          CUDA_RETURN_IF_ERROR(cudaFuncSetAttribute(Find(gated, wtype, bl, tma_a, 1, true),
                                                    cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                    kPpSmem));
        }
        for (const int cn : {1, 2}) {
          CUDA_RETURN_IF_ERROR(cudaFuncSetAttribute(Find(gated, wtype, bl, true, cn),
                                                    cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                    kMcSmem));
        }
      }
    }
  }
  return absl::OkStatus();
}

namespace {
// attr: room for 2 attributes (the cluster shape, and PDL when `pdl`).
cudaLaunchConfig_t ClusterConfig(cudaLaunchAttribute* attr, unsigned blocks, cudaStream_t stream,
                                 int cluster_blocks = kClusterBlocks, bool pdl = false) {
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = cluster_blocks;
  attr[0].val.clusterDim.y = 1;
  attr[0].val.clusterDim.z = 1;
  attr[1].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[1].val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t config = {};
  config.attrs = attr;
  config.numAttrs = pdl ? 2 : 1;
  config.blockDim = dim3(384);
  config.dynamicSmemBytes = kMcSmem;
  config.stream = stream;
  config.gridDim = dim3(blocks);
  return config;
}
}  // namespace

StatusOr<int> ClusterGemmResidentClusters(int cluster_blocks) {
  if (cluster_blocks != kClusterBlocks && cluster_blocks != kQuadBlocks) {
    return absl::InvalidArgumentError("ClusterGemmResidentClusters: clusters of 2 or 4 blocks");
  }
  int device = 0, sms = 0;
  CUDA_RETURN_IF_ERROR(cudaGetDevice(&device));
  CUDA_RETURN_IF_ERROR(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  cudaLaunchAttribute attr[2];
  const cudaLaunchConfig_t config = ClusterConfig(
      attr, static_cast<unsigned>(sms / cluster_blocks * cluster_blocks), nullptr, cluster_blocks);
  int clusters = 0;
  CUDA_RETURN_IF_ERROR(cudaOccupancyMaxActiveClusters(&clusters,
                                                      cluster_blocks == kQuadBlocks
                                                          ? Find(false, WType::kBF16, 0, true, 2)
                                                          : Find(true, WType::kBF16),
                                                      &config));
  return clusters;
}

#ifdef MOE_GEMM_TRACE
Status SetGemmTraceBuffer(uint64_t* buf) {
  CUDA_RETURN_IF_ERROR(cudaMemcpyToSymbol(g_gemm_trace, &buf, sizeof(buf)));
  return absl::OkStatus();
}
#endif

Status LaunchGemmSm90Cluster(const GemmParams& p, bool gated, WType wtype, int64_t max_items,
                             int resident_clusters, cudaStream_t stream) {
  // As many clusters as can be resident at once (the kernel loops over its items).
  const bool tma_a = p.a_tmap != nullptr && p.a_rows == nullptr;
  const int cn = tma_a && p.a_cluster_cols == 2 ? 2 : 1;
  const int cluster_blocks = tma_a ? 2 * cn : kClusterBlocks;
  int clusters = resident_clusters;
  if (clusters <= 0) {
    MOE_ASSIGN_OR_RETURN(clusters, ClusterGemmResidentClusters(cluster_blocks));
  }
  if (clusters <= 0) return absl::InternalError("no cluster of the GEMM kernel fits on the device");
  clusters = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(clusters, max_items)));
  cudaLaunchAttribute attr[2];
  cudaLaunchConfig_t config = ClusterConfig(attr, static_cast<unsigned>(clusters * cluster_blocks),
                                            stream, cluster_blocks, p.pdl != 0);
  const bool pp = p.pingpong == 2 && cn == 1;
  if (pp) config.dynamicSmemBytes = kPpSmem;
  // Extra rows: pair clusters with multicast, outside ping-pong mode, A by cp.async or by TMA with
  // the descriptor of its 8-row boxes.
  const bool xr = p.pair_extra_rows != 0 && p.tma_multicast != 0 && p.pingpong == 0 && cn == 1 &&
                  (!tma_a || p.a_x_tmap != nullptr);
  if (xr) config.dynamicSmemBytes = kMcXrSmem;
  CUDA_RETURN_IF_ERROR(
      cudaLaunchKernelEx(&config, Find(gated, wtype, p.b_packed, tma_a, cn, pp, xr), p));
  return absl::OkStatus();
}

}  // namespace moe::cuda
