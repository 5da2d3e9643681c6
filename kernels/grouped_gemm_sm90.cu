// Grouped GEMM for Hopper (sm_90a): wgmma.mma_async from shared memory, same problem as
// grouped_gemm.cu (GemmParams, tiles, gather, gated SiLU epilogue, split-K partials).
//
// 1. BM / 64 warpgroups; a block owns BM rows (64 per warpgroup) and BN output columns,
//    B_ROWS weight rows per stage: plain tiles BN = B_ROWS (one m64nBN wgmma per k16), gated tiles
//    BN = B_ROWS / 2 of gate and of up (two wgmmas per k16).
// 2. All threads stream A (rows gathered through a_rows) and B (the group's weight rows) with
//    cp.async into a STAGES-deep ring, in the 128-byte-swizzled K-major layout wgmma descriptors
//    read (the same XOR swizzle the mma.sync kernel uses, with 1024-byte aligned stage bases).
// 3. k-step kt: wait for its stage, fence the async proxy, barrier, prefetch kt + STAGES - 2 into
//    the stage whose wgmmas (kt - 2) have retired, issue the wgmmas, keep one wgmma group in
//    flight.
// 4. Epilogue from registers (the m64nN accumulator layout repeats mma.sync's m16n8 one per warp).
// 5. WgmmaWsGemmKernel (tile kWgmmaWs) computes kWgmma's tile with a producer warpgroup, two
//    consumer warpgroups and mbarriers instead of block-wide barriers, on a persistent grid (its
//    own summary is above it); same per-element arithmetic, so the same bits.
#include <algorithm>
#include <type_traits>

#include "kernels/cuda_status.h"
#include "kernels/gemm_common.cuh"
#include "kernels/pdl.cuh"
#include "kernels/wgmma_common.cuh"

namespace moe::cuda {
namespace {

template <typename T, bool GATED, int BM, int B_ROWS, int STAGES, int MIN_BLOCKS>
__global__ void __launch_bounds__(BM * 2, MIN_BLOCKS) WgmmaGemmKernel(const GemmParams p) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  constexpr int kWgThreads = BM * 2;  // one warpgroup (128 threads) per 64 rows
  constexpr int kWgBm = BM;
  constexpr int BN = GATED ? B_ROWS / 2 : B_ROWS;  // output columns of the block
  constexpr int kWn = BN;                          // N of each wgmma
  constexpr int kG = GATED ? 2 : 1;
  constexpr int kAChunks = kWgBm * 8 / kWgThreads;
  constexpr int kBChunks = B_ROWS * 8 / kWgThreads;
  constexpr int kWgStages = STAGES;
  constexpr int kWgStageBytes = WgStageBytes(BM, B_ROWS);

  // Phase 0: rows, columns and K range of this block.
  int group, row_begin, row_end;
  if (!ResolveTile(p, kWgBm, group, row_begin, row_end)) return;
  const int n0 = blockIdx.y * BN;
  const int64_t table_index = (p.layer_dev ? *p.layer_dev : 0) * p.b_layer_stride + group;
  const T* b0 = static_cast<const T*>(p.b0_table[table_index]);
  const T* b1 = GATED ? static_cast<const T*>(p.b1_table[table_index]) : nullptr;
  const int k_steps = (p.k + kBk - 1) / kBk;
  const int kt_begin = static_cast<int>(static_cast<int64_t>(blockIdx.z) * k_steps / p.splits);
  const int kt_end = static_cast<int>(static_cast<int64_t>(blockIdx.z + 1) * k_steps / p.splits);

  extern __shared__ uint8_t wg_smem_raw[];
  uint8_t* smem = AlignedStageSmem(wg_smem_raw);
  const int tid = threadIdx.x;
  const T* a_base = GemmABase<T>(p);

  // Phase 1: copy descriptors (stage layout: A [128 rows][64], then B [256 rows][64]).
  const T* a_src[kAChunks];
  bool a_ok[kAChunks];
  int a_dst[kAChunks], a_col[kAChunks];
  PlanARowCopies<T, kAChunks, kWgThreads>(p, a_base, tid, row_begin, row_end, a_src, a_ok, a_dst,
                                          a_col);
  const T* b_src[kBChunks];
  bool b_ok[kBChunks];
  int b_dst[kBChunks], b_col[kBChunks];
#pragma unroll
  for (int i = 0; i < kBChunks; ++i) {
    const int c = tid + i * kWgThreads;
    const int row = c >> 3, chunk = c & 7;
    const bool second = GATED && row >= BN;
    const int n = n0 + (second ? row - BN : row);
    b_ok[i] = n < p.n;
    b_src[i] = (second ? b1 : b0) + (b_ok[i] ? BChunkOffset(p, n, chunk * 8) : 0);
    b_dst[i] = kWgBm * kBk + Swizzle(row, chunk);
    b_col[i] = chunk * 8;
  }
  const int b_kstep = BKStep(p);
  auto load_stage = [&](int kt, int stage) {
    const int k0 = kt * kBk;
    T* st = reinterpret_cast<T*>(smem + stage * kWgStageBytes);
#pragma unroll
    for (int i = 0; i < kAChunks; ++i) {
      const bool ok = a_ok[i] && k0 + a_col[i] < p.k;
      CpAsync16(SmemAddr(st + a_dst[i]), ok ? a_src[i] + k0 : a_base, ok);
    }
#pragma unroll
    for (int i = 0; i < kBChunks; ++i) {
      const bool ok = b_ok[i] && k0 + b_col[i] < p.k;
      CpAsync16(SmemAddr(st + b_dst[i]), ok ? b_src[i] + static_cast<int64_t>(kt) * b_kstep : b0,
                ok);
    }
  };

  // Phase 2: prologue, two stages ahead.
#pragma unroll
  for (int s = 0; s < kWgStages - 2; ++s) {
    if (kt_begin + s < kt_end) load_stage(kt_begin + s, s);
    CpAsyncCommit();
  }

  // Phase 3: main loop.
  const int wg = tid / 128;
  float acc[kG][kWn / 2];
#pragma unroll
  for (int g = 0; g < kG; ++g)
#pragma unroll
    for (int i = 0; i < kWn / 2; ++i) acc[g][i] = 0.0f;
  int stage = 0;
  for (int kt = kt_begin; kt < kt_end; ++kt) {
    CpAsyncWait<kWgStages - 3>();
    FenceProxyAsync();
    __syncthreads();
    {
      const int next = kt + kWgStages - 2;
      int next_stage = stage + kWgStages - 2;
      if (next_stage >= kWgStages) next_stage -= kWgStages;
      if (next < kt_end) load_stage(next, next_stage);
      CpAsyncCommit();
    }
    const uint32_t st = SmemAddr(smem + stage * kWgStageBytes);
    const uint64_t a_desc = Desc(st + wg * 64 * kBk * 2);
    const uint64_t b_desc = Desc(st + kWgBm * kBk * 2);
    WgmmaStage<T, kWn, kG>(acc, a_desc, b_desc);
    if (++stage == kWgStages) stage = 0;
  }
  WgmmaWait<0>();
  CpAsyncWait<0>();

  // Phase 4: epilogue. Warp w of the warpgroup owns rows 16w..16w+15 of the warpgroup's 64.
  const int lane = tid & 31, warp_in_wg = (tid >> 5) & 3;
  const bool out_f32 = !GATED && p.out_f32;
  StoreWarpRows<T, GATED, kWn, kG>(p, acc, out_f32, static_cast<int>(blockIdx.z),
                                   row_begin + wg * 64 + warp_in_wg * 16, row_end, n0, lane);
#endif
}

// Warp-specialised, persistent variant of the 128 x 256 wgmma tile (GemmTile::kWgmmaWs), and of
// 128 x 128 (B_ROWS = 128: GemmTile::kWgmmaWsNarrow, the large-batch router of at most 128 rows).
//
// 1. Three warpgroups: warpgroup 0 is the producer, warpgroups 1 and 2 the consumers (64 rows
//    each). The grid is at most one block per SM; block b takes work items b, b + gridDim.x, ...
//    of (row tile, column block, split) in DecodeWorkItem's order, so that blocks running together
//    share A tiles and B slices in L2.
// 2. Producer: each thread owns 16-byte chunk (tid & 7) of rows tid / 8 + 16 i, gathers A rows
//    through a_rows and B (weight) rows with cp.async into a STAGES-deep ring (same swizzled
//    layout as WgmmaGemmKernel), waiting on the stage's `empty` barrier first and arriving on its
//    `full` barrier when the copies land (cp.async.mbarrier.arrive.noinc). It runs ahead into the
//    next work item while the consumers are in their epilogue.
// 3. Consumers: wait on `full`, fence the async proxy, issue the k-step's wgmmas, keep one wgmma
//    group in flight and release the previous stage on `empty`. No block-wide barrier in the loop.
// 4. Epilogue from registers as in WgmmaGemmKernel. Each output element sees the same k16 order
//    and the same f32 accumulation from zero as WgmmaGemmKernel, whatever block computes it, so
//    the results are bitwise equal to it (and batch invariant in deterministic mode).
// NOTES: setmaxnreg gives the consumers 232 registers (128 accumulators each at B_ROWS = 256) and
// the producer 40: 128 x 40 + 256 x 232 = 64512, the block's 384 x 168 registers (the launch
// bound's allocation, inside which setmaxnreg moves them).
// Launched with PDL (p.pdl: kWgmmaWsNarrow only), every thread waits for the previous kernel
// before its first global access, then lets the next kernel launch.
// NOTES (H200, session 28, nsys): the router of Qwen3 at 4096 / 16384 tokens took 18.9 / 35.0 us
// on kWgmmaWsNarrow, the same with each item's k-steps rotated by its row tile (so that the
// blocks would not ask L2 for the same weight lines at once): not kept.
template <typename T, bool GATED, int B_ROWS, int STAGES, bool PACKED>
__global__ void __launch_bounds__(384, 1) WgmmaWsGemmKernel(const GemmParams p) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  static_assert(B_ROWS == 256 || B_ROWS == 128, "B rows per stage");
  constexpr int BM = 128;
  constexpr int BN = GATED ? B_ROWS / 2 : B_ROWS;
  constexpr int kG = GATED ? 2 : 1;
  constexpr int kStageBytes = WgStageBytes(BM, B_ROWS);
  __shared__ __align__(8) uint64_t full_bar[STAGES];
  __shared__ __align__(8) uint64_t empty_bar[STAGES];
  extern __shared__ uint8_t ws_smem_raw[];
  uint8_t* smem = AlignedStageSmem(ws_smem_raw);

  // Phase 0: barriers (full: 128 producer threads; empty: 256 consumer threads) and work count.
  InitStageBarriers<STAGES>(full_bar, empty_bar, 128, 256);
  __syncthreads();
  if (p.pdl) {
    GridDepWait();
    GridDepTrigger();
  }
  const int row_tiles = RowTiles(p, BM);
  const int col_blocks = (p.n + BN - 1) / BN;
  const int64_t work = static_cast<int64_t>(row_tiles) * col_blocks * p.splits;
  const int k_steps = (p.k + kBk - 1) / kBk;
  const int64_t layer_base = (p.layer_dev ? *p.layer_dev : 0) * p.b_layer_stride;
  const int wg = threadIdx.x / 128;

  if (wg == 0) {
    // Phase 1: producer.
    SetMaxNRegDec<40>();
    const int tid = threadIdx.x;
    const int r0 = tid >> 3, chunk = tid & 7;
    const int dst0 = r0 * kBk + ((chunk ^ (r0 & 7)) << 3);  // element offset of row r0's chunk
    const T* a_base = GemmABase<T>(p);
    uint32_t it = 0;
    for (int64_t w = blockIdx.x; w < work; w += gridDim.x) {
      int t, nb, split;
      DecodeWorkItem(w, row_tiles, col_blocks, t, nb, split);
      int group, row_begin, row_end;
      if (!ResolveTileAt(p, BM, t, group, row_begin, row_end)) continue;
      const int kt_begin = static_cast<int>(static_cast<int64_t>(split) * k_steps / p.splits);
      const int kt_end = static_cast<int>(static_cast<int64_t>(split + 1) * k_steps / p.splits);
      const T* b0 = static_cast<const T*>(p.b0_table[layer_base + group]);
      const T* b1 = GATED ? static_cast<const T*>(p.b1_table[layer_base + group]) : b0;
      const T* a_src[BM / 16];
#pragma unroll
      for (int i = 0; i < BM / 16; ++i) {
        const int r = row_begin + r0 + 16 * i;
        a_src[i] = nullptr;
        if (r < row_end) {
          const int64_t src_row = p.a_rows ? p.a_rows[r] : r;
          a_src[i] = a_base + src_row * p.lda + chunk * 8;
        }
      }
      // B row j of the stage: weight row n0 + r0 + 16 j (gated: of gate for j < 8, of up past),
      // row n_first + 16 jj of its matrix, whose chunk the loop finds from row n_first's chunk of
      // k-step 0. The layout is a template parameter, so that the producer (40 registers) adds
      // offsets of kernel parameters as the row-major kernel always did (ptxas: the spills of
      // session 22's kernel). NOTES (H200, session 26): the layout chosen at run time for every
      // chunk inside the k-step loop (BChunkOffset) spilled the producer and made the router of
      // 16384 tokens ~4x slower (43-46 -> 182-183 us).
      const int n_first = nb * BN + r0;
      // The offset is written out for each matrix on purpose: held once in a 64-bit variable it
      // makes ptxas spill 28 bytes of the gated row-major producer instead of 4
      // (kernel_spills_test).
      const T* b_src0 = b0 + (PACKED ? PackedOffset(n_first, chunk * 8, p.k)
                                     : static_cast<int64_t>(n_first) * p.ldb + chunk * 8);
      const T* b_src1 = b1 + (PACKED ? PackedOffset(n_first, chunk * 8, p.k)
                                     : static_cast<int64_t>(n_first) * p.ldb + chunk * 8);
      for (int kt = kt_begin; kt < kt_end; ++kt, ++it) {
        const int stage = static_cast<int>(it % STAGES);
        MbarWait(&empty_bar[stage], ((it / STAGES) & 1) ^ 1);
        const int k0 = kt * kBk;
        const bool k_ok = k0 + chunk * 8 < p.k;
        T* st = reinterpret_cast<T*>(smem + stage * kStageBytes);
#pragma unroll
        for (int i = 0; i < BM / 16; ++i) {
          const bool ok = k_ok && a_src[i] != nullptr;
          CpAsync16(SmemAddr(st + dst0 + 16 * i * kBk), ok ? a_src[i] + k0 : a_base, ok);
        }
#pragma unroll
        for (int j = 0; j < B_ROWS / 16; ++j) {
          const bool second = GATED && j >= B_ROWS / 32;
          const int jj = second ? j - B_ROWS / 32 : j;
          const bool ok = k_ok && n_first + 16 * jj < p.n;
          // Packed: n_first % 128 < 16, so rows n_first + 16 jj change row block at jj = 8.
          const T* src = (second ? b_src1 : b_src0) +
                         (PACKED ? (jj / 8) * (static_cast<int64_t>(kPackedRows) * p.k) +
                                       (jj % 8) * (16 * kPackedCols) +
                                       static_cast<int64_t>(kt) * kPackedTileElems
                                 : static_cast<int64_t>(16 * jj) * p.ldb + k0);
          CpAsync16(SmemAddr(st + (BM + 16 * j) * kBk + dst0), ok ? src : b0, ok);
        }
        CpAsyncMbarArrive(&full_bar[stage]);
      }
    }
    // Tail: leave only once the consumers have released every stage (no copy still in flight).
    for (int s = 0; s < STAGES; ++s, ++it) {
      MbarWait(&empty_bar[it % STAGES], ((it / STAGES) & 1) ^ 1);
    }
  } else {
    // Phase 2: consumers.
    SetMaxNRegInc<232>();
    const int cw = wg - 1;  // rows 64 cw .. 64 cw + 63 of the tile
    const int lane = threadIdx.x & 31, warp_in_wg = (threadIdx.x >> 5) & 3;
    const bool out_f32 = !GATED && p.out_f32;
    const bool staged = CanStoreStaged(p, out_f32);
    uint8_t* epilogue_buf = StagedEpilogueBuf(smem + STAGES * kStageBytes);
    uint32_t it = 0;
    for (int64_t w = blockIdx.x; w < work; w += gridDim.x) {
      int t, nb, split;
      DecodeWorkItem(w, row_tiles, col_blocks, t, nb, split);
      int group, row_begin, row_end;
      if (!ResolveTileAt(p, BM, t, group, row_begin, row_end)) continue;
      const int kt_begin = static_cast<int>(static_cast<int64_t>(split) * k_steps / p.splits);
      const int kt_end = static_cast<int>(static_cast<int64_t>(split + 1) * k_steps / p.splits);
      float acc[kG][BN / 2];
#pragma unroll
      for (int g = 0; g < kG; ++g)
#pragma unroll
        for (int i = 0; i < BN / 2; ++i) acc[g][i] = 0.0f;
      int prev_stage = -1;
      for (int kt = kt_begin; kt < kt_end; ++kt, ++it) {
        const int stage = static_cast<int>(it % STAGES);
        MbarWait(&full_bar[stage], (it / STAGES) & 1);
        FenceProxyAsync();
        const uint32_t st = SmemAddr(smem + stage * kStageBytes);
        const uint64_t a_desc = Desc(st + cw * 64 * kBk * 2);
        const uint64_t b_desc = Desc(st + BM * kBk * 2);
        WgmmaStage<T, BN, kG>(acc, a_desc, b_desc);
        if (prev_stage >= 0) MbarArrive(&empty_bar[prev_stage]);
        prev_stage = stage;
      }
      WgmmaWait<0>();
      if (prev_stage >= 0) MbarArrive(&empty_bar[prev_stage]);

      // Phase 3: epilogue (warp w of the consumer warpgroup owns rows 16w..16w+15 of its 64).
      StoreWarpTile<T, GATED, BN, kG>(p, acc, out_f32, staged, split, row_begin,
                                      row_begin + cw * 64 + warp_in_wg * 16, row_end, nb * BN, lane,
                                      epilogue_buf);
    }
  }
#endif
}

__global__ void ProbeKernel(int* out) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  *out = 1;
#else
  *out = 0;
#endif
}

using KernelFn = void (*)(GemmParams);

// One entry per (tile, gated, dtype): B rows per stage, stages and blocks per SM of each Hopper
// tile.
struct WgEntry {
  KernelFn fn;
  GemmTile tile;
  bool gated;
  WType wtype;
  int smem;
  int threads;
  bool persistent;  // grid of at most one block per SM looping over the work items
  int packed;       // the B layout the kernel reads: 0 row-major, 1 packed, -1 either
};
#define MOE_WG_ENTRY_(TILE, T, WT, GATED, BM, B_ROWS, STAGES, MINB) \
  {&WgmmaGemmKernel<T, GATED, BM, B_ROWS, STAGES, MINB>,            \
   GemmTile::TILE,                                                  \
   GATED,                                                           \
   WType::WT,                                                       \
   WgSmemBytes(BM, B_ROWS, STAGES),                                 \
   BM * 2,                                                          \
   false,                                                           \
   -1},
#define MOE_WG_WS_ENTRY_(TILE, T, WT, GATED, B_ROWS, STAGES, PACKED) \
  {&WgmmaWsGemmKernel<T, GATED, B_ROWS, STAGES, PACKED>,             \
   GemmTile::TILE,                                                   \
   GATED,                                                            \
   WType::WT,                                                        \
   WgSmemBytes(128, B_ROWS, STAGES) + 8 * kStagedEpilogueWarpBytes,  \
   384,                                                              \
   true,                                                             \
   PACKED ? 1 : 0},
#define MOE_WG_WS_ENTRIES_(T, WT)                         \
  MOE_WG_WS_ENTRY_(kWgmmaWs, T, WT, false, 256, 4, false) \
  MOE_WG_WS_ENTRY_(kWgmmaWs, T, WT, true, 256, 4, false)  \
  MOE_WG_WS_ENTRY_(kWgmmaWs, T, WT, false, 256, 4, true)  \
  MOE_WG_WS_ENTRY_(kWgmmaWs, T, WT, true, 256, 4, true)   \
  MOE_WG_WS_ENTRY_(kWgmmaWsNarrow, T, WT, false, 128, 6, false)
#define MOE_WG_ENTRIES_(TILE, BM, B_ROWS, STAGES, MINB)                      \
  MOE_WG_ENTRY_(TILE, __nv_bfloat16, kBF16, false, BM, B_ROWS, STAGES, MINB) \
  MOE_WG_ENTRY_(TILE, __nv_bfloat16, kBF16, true, BM, B_ROWS, STAGES, MINB)  \
  MOE_WG_ENTRY_(TILE, __half, kF16, false, BM, B_ROWS, STAGES, MINB)         \
  MOE_WG_ENTRY_(TILE, __half, kF16, true, BM, B_ROWS, STAGES, MINB)
// NOTES: kWgmma: 128 x 256 outputs, 4 stages, 1 block per SM. kWgmma2: 128 x 128 outputs, 3
// stages and 2 blocks per SM, so one block's barriers, prologue and epilogue overlap the other's
// wgmmas. kWgmmaTall: 256 x 128 outputs (4 warpgroups), 4 stages: an expert of up to 256 rows
// streams its weights once. kWgmmaWs: 128 x 256 outputs, warp-specialised and persistent
// (WgmmaWsGemmKernel), 4 stages (5 would need 240 KiB). kWgmmaWsNarrow: the same kernel at 128 x
// 128 outputs, 6 stages, plain row-major GEMMs only (the large-batch router: MoePlanInput::
// narrow_router), launched with PDL. Must match MOE_GEMM_SM90_TILE_TABLE.
const WgEntry kWgKernels[] = {
    MOE_WG_ENTRIES_(kWgmma, 128, 256, 4, 1) MOE_WG_ENTRIES_(kWgmma2, 128, 128, 3, 2)
        MOE_WG_ENTRIES_(kWgmmaTall, 256, 128, 4, 1) MOE_WG_WS_ENTRIES_(__nv_bfloat16, kBF16)
            MOE_WG_WS_ENTRIES_(__half, kF16)};
#undef MOE_WG_ENTRY_
#undef MOE_WG_ENTRIES_
#undef MOE_WG_WS_ENTRY_
#undef MOE_WG_WS_ENTRIES_

const WgEntry* Find(GemmTile tile, bool gated, WType wtype, bool packed) {
  for (const WgEntry& e : kWgKernels) {
    if (e.tile == tile && e.gated == gated && e.wtype == wtype &&
        (e.packed < 0 || e.packed == (packed ? 1 : 0))) {
      return &e;
    }
  }
  return nullptr;
}

}  // namespace

StatusOr<bool> ProbeWgmmaKernels() {
  int* flag = nullptr;
  CUDA_RETURN_IF_ERROR(cudaMalloc(&flag, sizeof(int)));
  ProbeKernel<<<1, 1>>>(flag);
  int host = 0;
  cudaError_t err = cudaGetLastError();
  if (err == cudaSuccess) err = cudaMemcpy(&host, flag, sizeof(int), cudaMemcpyDeviceToHost);
  cudaFree(flag);
  if (err == cudaErrorNoKernelImageForDevice || err == cudaErrorInvalidDeviceFunction) {
    cudaGetLastError();
    return false;
  }
  CUDA_RETURN_IF_ERROR(err);
  return host == 1;
}

Status InitGemmKernelsSm90() {
  MOE_RETURN_IF_ERROR(InitGemmKernelsSm90Cluster());
  for (const WgEntry& e : kWgKernels) {
    CUDA_RETURN_IF_ERROR(
        cudaFuncSetAttribute(e.fn, cudaFuncAttributeMaxDynamicSharedMemorySize, e.smem));
  }
  return absl::OkStatus();
}

Status LaunchGemmSm90(const GemmParams& p, GemmTile tile, bool gated, WType wtype, dim3 grid,
                      int resident_clusters, cudaStream_t stream) {
  if (tile == GemmTile::kWgmmaWsMc) {
    if (p.b0_tmaps != nullptr && p.tiles != nullptr && p.n_groups > 0 &&
        p.n_groups <= kMaxClusterGemmGroups) {
      return LaunchGemmSm90Cluster(p, gated, wtype, static_cast<int64_t>(grid.x) * grid.y * grid.z,
                                   resident_clusters, stream);
    }
    tile = GemmTile::kWgmmaWs;  // no descriptors (e.g. expert-cache slots): the cp.async kernel
  }
  const WgEntry* e = Find(tile, gated, wtype, p.b_packed != 0);
  if (e == nullptr) return absl::InternalError("no wgmma kernel for this tile");
  if (e->persistent) {
    // One block per SM at most (the kernel reads the real tile count on the device).
    int device = 0, sms = 0;
    CUDA_RETURN_IF_ERROR(cudaGetDevice(&device));
    CUDA_RETURN_IF_ERROR(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    const int64_t items = static_cast<int64_t>(grid.x) * grid.y * grid.z;
    const unsigned blocks =
        static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>(items, sms)));
    // PDL for the router's tile only (the 128 x 256 kernel's dependents have not been measured
    // launching early).
    GemmParams q = p;
    if (tile != GemmTile::kWgmmaWsNarrow) q.pdl = 0;
    CUDA_RETURN_IF_ERROR(LaunchMaybePdl(e->fn, dim3(blocks), dim3(e->threads),
                                        static_cast<size_t>(e->smem), stream, q.pdl != 0, q));
  } else {
    e->fn<<<grid, e->threads, e->smem, stream>>>(p);
  }
  CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

}  // namespace moe::cuda
