// Weight-streaming grouped GEMM for batches of a few rows per expert (sm_90): the weights move by
// the bulk copy engine through a ring of shared-memory stages, and mma.sync multiplies them with A.
// The engine runs the routed gate/up GEMM of decode-tile plans on it (MoePlan::stream_gate_up).
//
// Why: at 2-48 tokens the routed GEMMs only stream weights. The mma.sync decode tile loads them
// with cp.async in 128-byte row segments and reached 72-78% of DRAM peak (ncu, Qwen3 8 tokens);
// 1-D bulk copies of >= 4 KiB into stages of >= 16 KiB read 4.5-4.6 TB/s on an H200, 7-9% above
// the device copy (benches/cuda_engine/stream_probe.cu, RESULTS.md session 11). A weight matrix
// is [n, ldb] row-major, so `cols` consecutive output columns are cols * K contiguous elements.
//
// 1. Work: a unit is (row tile t of the decode tile list, `cols` output columns), numbered
//    tile-major: u = t * col_units + column unit. Block b takes an even share of consecutive units,
//    so a tile's lookups (dependent global loads: tile list, offsets, weight tables, A row ids)
//    are made once per tile. The block's i-th unit goes into stage i % stages.
// 2. Weight producer (lane 0 of warp kConsumers): per unit, waits until the stage is free,
//    announces its bytes on the stage's `full` barrier and copies the unit's rows (gate rows, then
//    up rows when gated; ldb == k, so they are contiguous: one copy per matrix, or one per row
//    where rows are padded, BPitch). With pdl_prefetch its copies start before the PDL wait.
// 3. A producer (lane 0 of warp kConsumers + 1): the first kSmemARows rows of the block's j-th
//    tile into A slot j % kASlots (one copy per row, padded: APitch), once every group has
//    released the slot's previous tile; so the next tile's rows load while the groups finish one.
// 4. Consumers (kConsumers warps in sh.groups groups of SPLIT): group c takes the block's units
//    c, c + groups, ... A unit is 8 weight rows (gated: 4 gate rows, then the same 4 columns' up
//    rows), one mma.sync n8 operand; the tile's <= 16 rows are its m16 operand. Per 32 columns of
//    K, lane (g, t) loads 16 bytes of weight row g (k = t * 8 .. t * 8 + 7) and the same 16 bytes
//    of A rows g (its slot) and g + 8 (global memory through L1, tiles of more than 8 rows only),
//    and runs two m16n8k16 mmas. The mmas' k slots thus map to K in a lane-permuted order, the same
//    for A and B, so the sums are the dot products (in another order than the mma.sync tiles').
//    The warps of a group take every SPLIT-th step of 32 columns; the first adds the others' sums
//    (through shared memory, after a named barrier of the group) in a fixed order. The step
//    stride is a template parameter and the loop has no per-step test (MmaUnitSteps).
// 5. Barrier phases. Stages are a multiple of the groups, so each stage has one reader group,
//    which waits on it only after it consumed the stage's previous unit itself: that unit was
//    loaded, and the wait (the parity of the unit's round) cannot pass on the phase a round
//    behind. Every group takes every tile of its block's range in order (also tiles it has no
//    unit of), so the A slots' waits are likewise never a round behind.
// 6. Outputs: gated, silu(gate) * up in wtype (lanes t and t + 2 meet by a shuffle); plain,
//    wtype or f32.
// NOTES: not batch invariant against the mma.sync tiles (other K order), so deterministic mode
// never takes it. H200 (benches/RESULTS.md, sessions 12-13): six slower designs first (CUDA-core
// dots bound by instruction issue; mma consumers whose loop took run-time strides and per-step
// predicates, ~270 cycles a step; a ring where 12 groups shared 15-16 stages, whose waits could
// alias a round behind once consumers ran ahead of the copies: a no-math build trapped). Then,
// with A read through L1, leaving its loads out took 6% (Qwen3 8 tokens) to 22% (DeepSeek-V2-Lite
// 64) off the layer; A slots in shared memory won back a third to a half of that at Qwen3 (8 and
// 64 tokens), little at DeepSeek-V2-Lite 64 (tiles of more than 8 rows); two-way bank
// conflicts (rows 2K bytes apart) held the L1/shared pipe at 57% of its peak, 30% padded. The
// down GEMM on this kernel measured slower than on the decode tile (its persistent 200 KiB
// blocks cannot start under the gate/up kernel as the decode tile's small blocks do), so the
// engine takes it for gate/up only (CudaEngineOptions::stream_down for comparisons).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>

#include "kernels/cuda_status.h"
#include "kernels/decode_common.cuh"
#include "kernels/gemm_common.cuh"
#include "kernels/moe_kernels.h"
#include "kernels/pdl.cuh"

namespace moe::cuda {
namespace {

constexpr int kConsumers = 12;
constexpr int kThreads = (kConsumers + 2) * 32;  // + the weight producer and the A producer
constexpr int kMaxStages = 16;
constexpr int kUnitRows = 8;   // weight rows of a unit: the mma's n
constexpr int kSmemARows = 8;  // A rows of a tile in its shared-memory slot (the rest: via L1)
constexpr int kASlots = 2;     // A slots: a tile's rows load while the groups finish the previous
constexpr int kMaxSplit = 3;   // warps of a group
// Row pitches in shared memory (bytes). A quarter warp's 16-byte loads meet two rows (lanes g and
// g + 1) at the same columns; rows K * 2 bytes apart (a multiple of 128) would put both on the
// same banks. 64 more bytes move the second row to the other 16 banks. A rows are copied one by
// one, so always; weight rows too when a row is >= 2 KiB (4 KiB copies stream at full rate, 1 KiB
// ones at ~55%: stream_probe), else a unit's rows are one copy and 2-way conflicts remain.
constexpr int APitch(int k) { return 2 * k + 64; }
constexpr int BPitch(int k) { return 2 * k >= 2048 ? 2 * k + 64 : 2 * k; }
// Steps of 32 columns whose loads a consumer issues together.
[[maybe_unused]] constexpr int kUnroll = 4;
// Output columns of a unit: gated units hold 4 gate and 4 up rows.
constexpr int UnitCols(bool gated) { return gated ? kUnitRows / 2 : kUnitRows; }

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
// One step of 32 columns: the unit's 8 weight rows (b: this lane's 16 bytes of row g) times the
// tile's rows g (lo) and g + 8 (hi; zero when the tile has <= 8 rows), as two m16n8k16 mmas whose
// k slots hold the columns in a lane-permuted order, the same for A and B.
template <typename T, bool HI>
__device__ __forceinline__ void MmaStep(const uint4& b, const uint4& lo, const uint4& hi,
                                        float (&d0)[4], float (&d1)[4]) {
  const uint32_t a0[4] = {lo.x, HI ? hi.x : 0u, lo.y, HI ? hi.y : 0u};
  const uint32_t a1[4] = {lo.z, HI ? hi.z : 0u, lo.w, HI ? hi.w : 0u};
  MmaOp<T>::Run(d0, a0, b.x, b.y);
  MmaOp<T>::Run(d1, a1, b.z, b.w);
}

// `steps` steps of 32 columns, kStride elements apart (32 * the group's split), of the unit's 8
// weight rows `b` (shared memory) times the tile's A rows `lo` / `hi` (global memory, through L1;
// each already at this lane's first column). The loop has no run-time test but its trip count:
// a consumer's rate depends on how its loop compiles far more than on the work around it (a
// general form with run-time strides and per-step predicates ran 2.5x slower per warp on an H200,
// benches/RESULTS.md session 12), so the loads of kUnroll steps are issued before their mmas.
// v: the mma's C fragment, rows g (0, 1) and g + 8 (2, 3) of unit rows 2t and 2t + 1.
template <typename T, int kStride, bool HI>
__device__ __forceinline__ void MmaUnitSteps(const T* b, const T* lo, const T* hi, int steps,
                                             float (&v)[4]) {
  float c[4][4] = {};
  int j = 0;
  for (; j + kUnroll <= steps; j += kUnroll) {
    uint4 bv[kUnroll], lv[kUnroll], hv[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int k = (j + u) * kStride;
      bv[u] = *reinterpret_cast<const uint4*>(b + k);
      lv[u] = *reinterpret_cast<const uint4*>(lo + k);
      hv[u] = HI ? LoadCached(hi + k) : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      MmaStep<T, HI>(bv[u], lv[u], hv[u], c[(2 * u) & 3], c[(2 * u + 1) & 3]);
    }
  }
  for (; j < steps; ++j) {
    const int k = j * kStride;
    const uint4 bv = *reinterpret_cast<const uint4*>(b + k);
    const uint4 lv = *reinterpret_cast<const uint4*>(lo + k);
    const uint4 hv = HI ? LoadCached(hi + k) : make_uint4(0, 0, 0, 0);
    MmaStep<T, HI>(bv, lv, hv, c[0], c[1]);
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) v[i] = (c[0][i] + c[1][i]) + (c[2][i] + c[3][i]);
}

// Stores the unit's sums v (MmaUnitSteps' layout, all parts added) at tile rows r0 + g,
// r0 + g + 8 (< r0 + rows) and columns n0 + 2t, n0 + 2t + 1 (StorePairAt drops columns >= n: the
// last unit's stage may hold fewer rows; the rest is stale). Gated: unit rows 0-3 are the gate
// rows of columns n0 .. n0 + 3, rows 4-7 their up rows, so lane t < 2 takes the up sums from lane
// t + 2.
template <typename T, bool GATED>
__device__ __forceinline__ void StoreUnit(const GemmParams& p, float (&v)[4], int lane, int r0,
                                          int rows, int n0) {
  const int g = lane >> 2, t = lane & 3;
  if constexpr (GATED) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float up = __shfl_xor_sync(0xffffffffu, v[i], 2);
      v[i] = Silu(v[i]) * up;
    }
    if (t >= 2) return;
  }
  const int col = n0 + 2 * t;
  if (g < rows) StorePairAt<T>(p, !GATED && p.out_f32, 0, r0 + g, col, v[0], v[1]);
  if (g + 8 < rows) StorePairAt<T>(p, !GATED && p.out_f32, 0, r0 + g + 8, col, v[2], v[3]);
}
#endif

// The row tile of a thread's current unit, looked up again (dependent global loads) only when
// the tile changes: a block's units are consecutive, tile-major.
struct TileCursor {
  int t = -1;
  int group = 0, row_begin = 0, row_end = 0;
};
// Moves `c` to tile `t`; true when it changed.
[[maybe_unused]] __device__ __forceinline__ bool SeekTile(const GemmParams& p, int bm, int t,
                                                          TileCursor& c) {
  if (t == c.t) return false;
  c.t = t;
  if (!ResolveTileAt(p, bm, t, c.group, c.row_begin, c.row_end)) c.row_end = c.row_begin;
  return true;
}
// The units [begin, end) of this block: an even share of n_tiles * col_units.
[[maybe_unused]] __device__ __forceinline__ void BlockUnits(int n_tiles, int col_units,
                                                            int64_t& begin, int64_t& end) {
  const int64_t units = static_cast<int64_t>(n_tiles) * col_units;
  begin = units * blockIdx.x / gridDim.x;
  end = units * (blockIdx.x + 1) / gridDim.x;
}

template <typename T, bool GATED, int SPLIT>
__global__ void __launch_bounds__(kThreads, 1)
    StreamGemmKernel(const GemmParams p, StreamGemmShape sh, int bm) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  constexpr int kG = GATED ? 2 : 1;
  extern __shared__ __align__(128) uint8_t smem[];  // [kASlots][a_slot_bytes], [stages][stage]
  __shared__ __align__(8) uint64_t full_bar[kMaxStages];
  __shared__ __align__(8) uint64_t empty_bar[kMaxStages];
  __shared__ __align__(8) uint64_t a_full[kASlots];
  __shared__ __align__(8) uint64_t a_empty[kASlots];
  __shared__ float4 partial[SPLIT > 1 ? 2 : 1][SPLIT > 1 ? kConsumers : 1][32];  // parts > 0
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if (threadIdx.x < sh.stages) {
    MbarInit(&full_bar[threadIdx.x]);
    MbarInit(&empty_bar[threadIdx.x]);
  }
  if (threadIdx.x < kASlots) {
    MbarInit(&a_full[threadIdx.x]);
    MbarInit(&a_empty[threadIdx.x], sh.groups);
  }
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  __syncthreads();

  T* a_slots = reinterpret_cast<T*>(smem);
  const int a_pitch = APitch(p.k) / 2, b_pitch = sh.b_pitch / 2;  // in elements
  const int a_slot_elems = kSmemARows * a_pitch;
  uint8_t* ring = smem + kASlots * sh.a_slot_bytes;
  const uint32_t row_bytes = static_cast<uint32_t>(p.k) * 2u;
  int64_t u_begin = 0, u_end = 0;
  if (warp == kConsumers) {
    // Weight producer. With pdl_prefetch the tile list and the layer come from two or more
    // launches back (pdl.cuh), so the weights may start moving before the previous kernel ends.
    if (!p.pdl_prefetch) GridDepWait();
    if (lane == 0) {
      BlockUnits(RowTiles(p, bm), sh.col_units, u_begin, u_end);
      const int64_t layer = p.layer_dev ? *p.layer_dev : 0;
      TileCursor tile;
      const T* w[kG] = {};
      uint32_t i = 0;
      for (int64_t u = u_begin; u < u_end; ++u, ++i) {
        const int t = static_cast<int>(u / sh.col_units);
        const int n0 = static_cast<int>(u - static_cast<int64_t>(t) * sh.col_units) * sh.cols;
        const int cols = min(sh.cols, p.n - n0);
        if (SeekTile(p, bm, t, tile)) {
          const int64_t table_index = layer * p.b_layer_stride + tile.group;
          w[0] = static_cast<const T*>(p.b0_table[table_index]);
          if constexpr (GATED) w[kG - 1] = static_cast<const T*>(p.b1_table[table_index]);
        }
        const int s = static_cast<int>(i % sh.stages);
        if (i >= static_cast<uint32_t>(sh.stages)) {
          MbarWait(&empty_bar[s], ((i / sh.stages) & 1) ^ 1);
        }
        MbarExpectTx(&full_bar[s], static_cast<uint32_t>(kG * cols) * row_bytes);
        T* dst = reinterpret_cast<T*>(ring + static_cast<int64_t>(s) * sh.stage_bytes);
#pragma unroll
        for (int g = 0; g < kG; ++g) {  // ldb == k: the unit's rows are contiguous in memory
          const T* src = w[g] + static_cast<int64_t>(n0) * p.ldb;
          T* to = dst + g * sh.cols * b_pitch;
          if (b_pitch == p.k) {
            BulkCopy(to, src, static_cast<uint32_t>(cols) * row_bytes, &full_bar[s]);
          } else {
            for (int r = 0; r < cols; ++r) {
              BulkCopy(to + r * b_pitch, src + static_cast<int64_t>(r) * p.k, row_bytes,
                       &full_bar[s]);
            }
          }
        }
      }
    }
    if (p.pdl_prefetch) GridDepWait();
    GridDepTrigger();
    return;
  }
  // A (the previous kernel's output, or rows of x) and the outputs' readers belong to the
  // previous kernel.
  GridDepWait();
  GridDepTrigger();
  BlockUnits(RowTiles(p, bm), sh.col_units, u_begin, u_end);
  if (u_begin >= u_end) return;
  const int first_tile = static_cast<int>(u_begin / sh.col_units);
  const int last_tile = static_cast<int>((u_end - 1) / sh.col_units);
  const T* a_base = GemmABase<T>(p);
  if (warp == kConsumers + 1) {
    // A producer: the first kSmemARows rows of the block's tile j (from first_tile) into slot
    // j % kASlots, once every group has released tile j - kASlots from it.
    if (lane == 0) {
      for (int j = 0; j <= last_tile - first_tile; ++j) {
        const int slot = j % kASlots, round = j / kASlots;
        if (round > 0) MbarWait(&a_empty[slot], (round - 1) & 1);
        TileCursor tile;
        SeekTile(p, bm, first_tile + j, tile);
        const int rows = min(kSmemARows, tile.row_end - tile.row_begin);
        MbarExpectTx(&a_full[slot], static_cast<uint32_t>(rows) * row_bytes);
        for (int r = 0; r < rows; ++r) {
          const int row = tile.row_begin + r;
          BulkCopy(a_slots + slot * a_slot_elems + r * a_pitch,
                   a_base + static_cast<int64_t>(p.a_rows ? p.a_rows[row] : row) * p.lda, row_bytes,
                   &a_full[slot]);
        }
      }
    }
    return;
  }

  // Consumers. Group `grp` of SPLIT warps consumes the block's units grp, grp + groups, ...; its
  // warp `part` takes every SPLIT-th step of 32 columns of K, and part 0 adds the others' sums
  // (from `partial`, double-buffered by the group's unit parity) in part order and stores.
  const int grp = warp / SPLIT, part = warp - grp * SPLIT;
  if (grp >= sh.groups) return;
  const int g = lane >> 2, t = lane & 3;
  const int col0 = 32 * part + 8 * t;  // this lane's first column of K
  const int total_steps = p.k / 32;
  const int steps = (total_steps - part + SPLIT - 1) / SPLIT;
  // The A slots' handshake: a group takes every tile of the block's range in order (also those
  // it has no unit of): it waits until the tile's rows are in its slot, and releases the slot
  // (part 0, once the group's last unit of that tile is done) before taking the next tile.
  int held = -1;  // the tile (from first_tile) whose slot the group holds
  auto take = [&](int j) {
    while (held < j) {
      if (held >= 0 && part == 0 && lane == 0) MbarArrive(&a_empty[held % kASlots]);
      ++held;
      MbarWait(&a_full[held % kASlots], (held / kASlots) & 1);
    }
  };
  TileCursor tile;
  // This lane's A rows g (the slot) and g + 8 (global memory, through L1: tiles of more than
  // kSmemARows rows), at col0. Rows past the tile read its last row (lanes of one address share
  // a load): the mma's rows are independent and their sums are not stored.
  const T* a_lo = nullptr;
  const T* a_hi = nullptr;
  bool hi = false;
  uint32_t i = static_cast<uint32_t>(grp), parity = 0;
  for (int64_t u = u_begin + grp; u < u_end; u += sh.groups, i += sh.groups, parity ^= 1) {
    const int tt = static_cast<int>(u / sh.col_units);
    const int n0 = static_cast<int>(u - static_cast<int64_t>(tt) * sh.col_units) * sh.cols;
    if (SeekTile(p, bm, tt, tile)) {
      const int rows = tile.row_end - tile.row_begin;
      const int r_hi = min(tile.row_begin + g + 8, tile.row_end - 1);
      take(tt - first_tile);
      a_lo = a_slots + ((tt - first_tile) % kASlots) * a_slot_elems +
             min(g, min(rows, kSmemARows) - 1) * a_pitch + col0;
      a_hi = a_base + static_cast<int64_t>(p.a_rows ? p.a_rows[r_hi] : r_hi) * p.lda + col0;
      hi = rows > kSmemARows;
    }
    const int s = static_cast<int>(i % sh.stages);
    MbarWait(&full_bar[s], (i / sh.stages) & 1);
    const T* b = reinterpret_cast<const T*>(ring + static_cast<int64_t>(s) * sh.stage_bytes) +
                 g * b_pitch + col0;
    float v[4];
    if (hi) {
      MmaUnitSteps<T, 32 * SPLIT, true>(b, a_lo, a_hi, steps, v);
    } else {
      MmaUnitSteps<T, 32 * SPLIT, false>(b, a_lo, a_hi, steps, v);
    }
    // This warp's reads of the stage and the A slot (generic proxy) are ordered before the bulk
    // copies (async proxy) that the producers issue into them once released.
    FenceProxyAsync();
    if constexpr (SPLIT > 1) {
      if (part > 0) partial[parity][warp][lane] = make_float4(v[0], v[1], v[2], v[3]);
      NamedBarrierSync(1 + grp,
                       32 * SPLIT);  // the group is done with the stage, its A and its sums
      if (part > 0) continue;
#pragma unroll
      for (int q = 1; q < SPLIT; ++q) {
        const float4 o = partial[parity][warp + q][lane];
        v[0] += o.x;
        v[1] += o.y;
        v[2] += o.z;
        v[3] += o.w;
      }
    }
    StoreUnit<T, GATED>(p, v, lane, tile.row_begin, tile.row_end - tile.row_begin, n0);
    __syncwarp();
    if (lane == 0) MbarArrive(&empty_bar[s]);
  }
  // Release every tile of the range but the last (the A producer waits for none after it).
  take(last_tile - first_tile);
#endif
}

using StreamFn = void (*)(GemmParams, StreamGemmShape, int);
struct StreamEntry {
  WType wtype;
  bool gated;
  int split;
  StreamFn fn;
};
constexpr StreamEntry kStreamKernels[] = {
    {WType::kBF16, true, 1, &StreamGemmKernel<__nv_bfloat16, true, 1>},
    {WType::kBF16, true, 2, &StreamGemmKernel<__nv_bfloat16, true, 2>},
    {WType::kBF16, true, 3, &StreamGemmKernel<__nv_bfloat16, true, 3>},
    {WType::kBF16, false, 1, &StreamGemmKernel<__nv_bfloat16, false, 1>},
    {WType::kBF16, false, 2, &StreamGemmKernel<__nv_bfloat16, false, 2>},
    {WType::kBF16, false, 3, &StreamGemmKernel<__nv_bfloat16, false, 3>},
    {WType::kF16, true, 1, &StreamGemmKernel<__half, true, 1>},
    {WType::kF16, true, 2, &StreamGemmKernel<__half, true, 2>},
    {WType::kF16, true, 3, &StreamGemmKernel<__half, true, 3>},
    {WType::kF16, false, 1, &StreamGemmKernel<__half, false, 1>},
    {WType::kF16, false, 2, &StreamGemmKernel<__half, false, 2>},
    {WType::kF16, false, 3, &StreamGemmKernel<__half, false, 3>},
};

}  // namespace

StreamGemmShape PlanStreamGemm(bool gated, int k) {
  StreamGemmShape sh;
  const int cols = UnitCols(gated);
  if (k <= 0 || k % 32 != 0) return sh;  // stages 0: cannot run
  const int64_t b_pitch = BPitch(k);
  const int64_t stage = kUnitRows * b_pitch;
  const int64_t a_slot = static_cast<int64_t>(kSmemARows) * APitch(k);
  int64_t stages = std::min<int64_t>(kMaxStages, (kStreamSmemBytes - kASlots * a_slot) / stage);
  if (stages < kStreamMinStages) return sh;
  // Each stage is read by one group only (stages a multiple of groups): a group then waits on a
  // stage only after it has consumed that stage's previous unit itself, so the unit is loaded and
  // the wait's parity cannot alias a round behind. (With 12 groups on 15 or 16 stages, a group
  // could wait for a stage whose previous unit, another group's, was still in flight, pass on
  // that phase's parity and release the stage early: consumers that run ahead of the copies, as
  // in session 12's diagnostic build without math, then broke the ring.)
  sh.groups = static_cast<int>(std::min<int64_t>(kConsumers, stages));
  stages = stages / sh.groups * sh.groups;
  sh.split = std::min(kMaxSplit, kConsumers / sh.groups);
  sh.cols = cols;
  sh.stage_bytes = static_cast<int>(stage);
  sh.stages = static_cast<int>(stages);
  sh.a_slot_bytes = static_cast<int>(a_slot);
  sh.b_pitch = static_cast<int>(b_pitch);
  return sh;
}

bool CanStreamGemm(const GemmArgs& args) {
  // A rows move by bulk copies: 16-byte aligned rows; weight rows too (not packed).
  return args.splits == 1 && args.tile == GemmTile::kDecode && args.ldb == args.k &&
         !args.b_packed && args.a_indirect == nullptr && args.lda % 8 == 0 &&
         reinterpret_cast<uintptr_t>(args.a) % 16 == 0 &&
         PlanStreamGemm(args.gated, args.k).stages > 0;
}

StatusOr<bool> InitStreamGemm() {
  MOE_ASSIGN_OR_RETURN(const bool sm90,
                       RunsSm90Image(reinterpret_cast<const void*>(kStreamKernels[0].fn)));
  if (!sm90) return false;
  for (const StreamEntry& e : kStreamKernels) {
    CUDA_RETURN_IF_ERROR(
        cudaFuncSetAttribute(e.fn, cudaFuncAttributeMaxDynamicSharedMemorySize, kStreamSmemBytes));
  }
  return true;
}

Status LaunchStreamGemm(const GemmArgs& args, int blocks, cudaStream_t stream) {
  MOE_RETURN_IF_ERROR(args.Validate());
  if (!CanStreamGemm(args)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "StreamGemm: needs the decode tile list, no K split, row-major B with ldb == k "
        "and a K whose unit fits a stage; k=",
        args.k, " ldb=", args.ldb));
  }
  if (blocks <= 0) return absl::InvalidArgumentError("StreamGemm: blocks must be > 0");
  StreamGemmShape sh = PlanStreamGemm(args.gated, args.k);
  sh.col_units = (args.n + sh.cols - 1) / sh.cols;
  StreamFn fn = nullptr;
  for (const StreamEntry& e : kStreamKernels) {
    if (e.wtype == args.wtype && e.gated == args.gated && e.split == sh.split) fn = e.fn;
  }
  if (fn == nullptr) return absl::InternalError("StreamGemm: no kernel for this weight type");
  const GemmParams p = MakeGemmParams(args);
  CUDA_RETURN_IF_ERROR(LaunchMaybePdl(fn, dim3(static_cast<unsigned>(blocks)), dim3(kThreads),
                                      static_cast<size_t>(kASlots) * sh.a_slot_bytes +
                                          static_cast<size_t>(sh.stages) * sh.stage_bytes,
                                      stream, args.pdl, p, sh, ShapeOf(args.tile).bm));
  return absl::OkStatus();
}

}  // namespace moe::cuda
