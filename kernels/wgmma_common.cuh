// Device pieces shared by the Hopper (sm_90a) wgmma GEMM kernels (grouped_gemm_sm90.cu,
// grouped_gemm_sm90_cluster.cu): stage sizes, wgmma descriptors and issue, the register epilogue,
// mbarrier and register-reallocation helpers, and the persistent kernels' work-item order.
// Everything but the stage sizes exists in sm_90a device code only.
#pragma once

#include <type_traits>

#include "kernels/gemm_common.cuh"
#include "kernels/wgmma_ops.cuh"

namespace moe::cuda {

// Dynamic shared memory of one block: STAGES x (A 128 rows + B_ROWS rows) x 128 bytes, + slack to
// align the stages to 1024 bytes.
constexpr int WgStageBytes(int bm, int b_rows) { return (bm + b_rows) * kBk * 2; }
constexpr int WgSmemBytes(int bm, int b_rows, int stages) {
  return stages * WgStageBytes(bm, b_rows) + 1024;
}

// Shared memory of one consumer warp for StoreWarpRowsStaged: 16 rows x 64 columns of T.
constexpr int kStagedEpilogueWarpBytes = 16 * 64 * 2;

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
__device__ __forceinline__ uint64_t Desc(uint32_t smem_addr) {
  uint64_t d = (smem_addr & 0x3FFFFu) >> 4;  // start address
  d |= uint64_t{1} << 16;                    // leading byte offset (unused with 128B swizzle)
  d |= uint64_t{1024 >> 4} << 32;            // stride byte offset: 8 rows x 128 bytes
  d |= uint64_t{1} << 62;                    // 128-byte swizzle
  return d;
}
__device__ __forceinline__ void WgmmaFence() {
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void WgmmaCommit() {
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
template <int N>
__device__ __forceinline__ void WgmmaWait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
template <typename T, int N>
__device__ __forceinline__ void Wgmma(float (&d)[N / 2], uint64_t a, uint64_t b) {
  constexpr bool kBf16 = std::is_same_v<T, __nv_bfloat16>;
  if constexpr (N == 256) {
    if constexpr (kBf16)
      Wgmma64x256Bf16(d, a, b);
    else
      Wgmma64x256F16(d, a, b);
  } else if constexpr (N == 128) {
    if constexpr (kBf16)
      Wgmma64x128Bf16(d, a, b);
    else
      Wgmma64x128F16(d, a, b);
  } else if constexpr (N == 64) {
    if constexpr (kBf16)
      Wgmma64x64Bf16(d, a, b);
    else
      Wgmma64x64F16(d, a, b);
  } else {
    static_assert(N == 32, "m64nNk16 of 32, 64, 128 or 256 columns");
    if constexpr (kBf16)
      Wgmma64x32Bf16(d, a, b);
    else
      Wgmma64x32F16(d, a, b);
  }
}

// One m64(2N)k16 wgmma whose columns 0..N-1 accumulate into d0 and N..2N-1 into d1 (B: 2N rows
// from b, i.e. two adjacent N-row slices).
template <typename T, int N>
__device__ __forceinline__ void WgmmaPair(float (&d0)[N / 2], float (&d1)[N / 2], uint64_t a,
                                          uint64_t b) {
  constexpr bool kBf16 = std::is_same_v<T, __nv_bfloat16>;
  static_assert(N == 128 || N == 64, "paired wgmma of 256 or 128 columns");
  if constexpr (N == 128) {
    if constexpr (kBf16)
      Wgmma64x256Bf16Pair(d0, d1, a, b);
    else
      Wgmma64x256F16Pair(d0, d1, a, b);
  } else {
    if constexpr (kBf16)
      Wgmma64x128Bf16Pair(d0, d1, a, b);
    else
      Wgmma64x128F16Pair(d0, d1, a, b);
  }
}

// One k16 step of a stage for the kG weight slices: D[g] += A * B_g. a / b: descriptors of the
// step's A rows (64 per warpgroup) and first B slice; the gate and up slices are adjacent, so a
// gated step is ONE wgmma over both (N = 2 x BN).
// NOTES: two wgmmas of BN columns read the A operand from shared memory twice per k16; the gated
// 128x256 tile then moved ~147 bytes per clock through shared memory at the tensor peak (A twice
// for each consumer, B once for each consumer, the stage fills), above the ~128 of an SM.
template <typename T, int N, int G>
__device__ __forceinline__ void WgmmaK16(float (&acc)[G][N / 2], uint64_t a, uint64_t b) {
  static_assert(G == 1 || G == 2, "one slice, or gate and up");
  if constexpr (G == 2) {
    WgmmaPair<T, N>(acc[0], acc[1], a, b);
  } else {
    Wgmma<T, N>(acc[0], a, b);
  }
}

// One stage's k-steps (WgmmaK16 over the stage's kBk columns), then commit the group and keep at
// most one group in flight.
template <typename T, int N, int G>
__device__ __forceinline__ void WgmmaStage(float (&acc)[G][N / 2], uint64_t a_desc,
                                           uint64_t b_desc) {
  WgmmaFence();
#pragma unroll
  for (int kk = 0; kk < kBk / 16; ++kk) {
    // +32 bytes per k16 step inside the swizzled 128-byte rows (descriptor units of 16 bytes).
    WgmmaK16<T, N, G>(acc, a_desc + 2 * kk, b_desc + 2 * kk);
  }
  WgmmaCommit();
  WgmmaWait<1>();
}

// WgmmaStage plus, in the same commit group, the stage's extra rows (a multicast pair's; see
// grouped_gemm_sm90_cluster.cu): D_x[g] += A_x * B_x[g] with A_x the extra rows' 64-row operand
// (rows past the extra ones are other data, whose output rows the epilogue drops) and B_x[g] this
// warpgroup's slice of NX rows of weight slice g (gate and up apart: not adjacent).
template <typename T, int N, int G, int NX>
__device__ __forceinline__ void WgmmaStageExtra(float (&acc)[G][N / 2], float (&acc_x)[G][NX / 2],
                                                uint64_t a_desc, uint64_t b_desc, uint64_t ax_desc,
                                                const uint64_t (&bx_desc)[G]) {
  WgmmaFence();
#pragma unroll
  for (int kk = 0; kk < kBk / 16; ++kk) {
    WgmmaK16<T, N, G>(acc, a_desc + 2 * kk, b_desc + 2 * kk);
#pragma unroll
    for (int g = 0; g < G; ++g) Wgmma<T, NX>(acc_x[g], ax_desc + 2 * kk, bx_desc[g] + 2 * kk);
  }
  WgmmaCommit();
  WgmmaWait<1>();
}

// Epilogue of one warp: rows row0 + lane / 4 and row0 + 8 + lane / 4 (those < row_end) of the
// wgmma accumulators, columns n0.. of the block; SiLU(gate) * up when gated.
template <typename T, bool GATED, int N, int G>
__device__ __forceinline__ void StoreWarpRows(const GemmParams& p, const float (&acc)[G][N / 2],
                                              bool out_f32, int split, int row0, int row_end,
                                              int n0, int lane) {
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int r = row0 + (lane >> 2) + 8 * half;
    if (r >= row_end) continue;
#pragma unroll
    for (int j = 0; j < N / 8; ++j) {
      const int col = n0 + j * 8 + 2 * (lane & 3);
      float v0 = acc[0][j * 4 + 2 * half], v1 = acc[0][j * 4 + 2 * half + 1];
      if constexpr (GATED) {
        v0 = Silu(v0) * acc[G - 1][j * 4 + 2 * half];
        v1 = Silu(v1) * acc[G - 1][j * 4 + 2 * half + 1];
      }
      StorePairAt<T>(p, out_f32, split, r, col, v0, v1);
    }
  }
}

// Whether StoreWarpRowsStaged may store p's output: T elements (no f32 partials), rows 16-byte
// aligned.
__device__ __forceinline__ bool CanStoreStaged(const GemmParams& p, bool out_f32) {
  return !out_f32 && p.ldc % 8 == 0 && (reinterpret_cast<uintptr_t>(p.c) & 15) == 0;
}

// The epilogue of StoreWarpRows (same values, same rounding), through `buf`, this warp's
// kStagedEpilogueWarpBytes of shared memory: per 64-column pass the warp writes its 16 rows in
// the accumulator layout (16-byte chunks XOR-swizzled by row: no bank conflicts either way),
// then reads them back as row chunks, so each 8 lanes store 128 contiguous bytes with 16-byte
// stores, where the direct stores write 16 bytes of each of 8 rows per instruction. The kernels
// take it for full 128-row tiles only.
// NOTES (H200, RESULTS.md session 4): skipping the epilogue's stores altogether made Qwen3 4096
// tokens 19% faster, Mixtral 12%. Staged for full tiles: Qwen3 / DSv2-Lite 4096 tokens -3%,
// embedded model 4096 / 16384 -8% / -14%, Mixtral equal; staged for every tile was 5-10% slower
// at 512 tokens (tiles of 32-48 rows, whose row-less warps the direct stores skip).
// Rows 8 half .. 8 half + 7 of one consumer warp's 16, columns 64 pass .. 64 pass + 63 of its
// accumulators (SiLU(gate) * up when gated), as T into the 1 KiB at `half_buf`: row r at r * 128
// bytes, its 16-byte chunk c at chunk c ^ r (the 128-byte swizzle; 1024-byte aligned for TMA).
template <typename T, bool GATED, int N, int G>
__device__ __forceinline__ void StageWarpHalf(const float (&acc)[G][N / 2], int pass, int half,
                                              int lane, uint8_t* half_buf) {
  using P = typename Pair<T>::Type;
  const int r = lane >> 2;
#pragma unroll
  for (int jj = 0; jj < 8; ++jj) {
    const int j = pass * 8 + jj;
    float v0 = acc[0][j * 4 + 2 * half], v1 = acc[0][j * 4 + 2 * half + 1];
    if constexpr (GATED) {
      v0 = Silu(v0) * acc[G - 1][j * 4 + 2 * half];
      v1 = Silu(v1) * acc[G - 1][j * 4 + 2 * half + 1];
    }
    *reinterpret_cast<P*>(half_buf + r * 128 + ((jj ^ r) << 4) + 4 * (lane & 3)) =
        Pair<T>::Make(v0, v1);
  }
}

template <typename T, bool GATED, int N, int G>
__device__ __forceinline__ void StoreWarpRowsStaged(const GemmParams& p,
                                                    const float (&acc)[G][N / 2], int row0,
                                                    int row_end, int n0, int lane, uint8_t* buf) {
  static_assert(N % 64 == 0, "whole 64-column passes");
  T* out = static_cast<T*>(p.c);
#pragma unroll
  for (int pass = 0; pass < N / 64; ++pass) {
    StageWarpHalf<T, GATED, N, G>(acc, pass, 0, lane, buf);
    StageWarpHalf<T, GATED, N, G>(acc, pass, 1, lane, buf + 1024);
    __syncwarp();
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int r = 4 * i + (lane >> 3), c = lane & 7;
      const uint4 v = *reinterpret_cast<const uint4*>(buf + r * 128 + ((c ^ (r & 7)) << 4));
      const int row = row0 + r, col = n0 + pass * 64 + 8 * c;
      if (row >= row_end || col >= p.n) continue;
      T* dst = out + static_cast<int64_t>(row) * p.ldc + col;
      if (col + 8 <= p.n) {
        *reinterpret_cast<uint4*>(dst) = v;
      } else {
        // Column tail: whole pairs, then maybe one element (v stays in registers).
        const int left = p.n - col;
        const uint32_t words[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          if (2 * k + 2 <= left) {
            *reinterpret_cast<uint32_t*>(dst + 2 * k) = words[k];
          } else if (2 * k + 1 == left) {
            *reinterpret_cast<uint16_t*>(dst + 2 * k) = static_cast<uint16_t>(words[k] & 0xFFFFu);
          }
        }
      }
    }
    __syncwarp();
  }
}

// Consumer warp w (warps 4.. of the kernel: warpgroup 0 produces) of a warp-specialised kernel:
// its kStagedEpilogueWarpBytes of shared memory, in the region `after_stages` (past the stages).
__device__ __forceinline__ uint8_t* StagedEpilogueBuf(uint8_t* after_stages) {
  return after_stages + (threadIdx.x / 32 - 4) * kStagedEpilogueWarpBytes;
}

// One consumer warp's epilogue of the tile of rows [row_begin, row_end): staged through `buf`
// (StoreWarpRowsStaged) for a full 128-row tile when the output allows it (`staged`:
// CanStoreStaged), else from the registers (StoreWarpRows). Partial tiles stay direct: their
// warps without rows skip every store there (staging every tile was 5-10% slower at 512 tokens).
template <typename T, bool GATED, int N, int G>
__device__ __forceinline__ void StoreWarpTile(const GemmParams& p, const float (&acc)[G][N / 2],
                                              bool out_f32, bool staged, int split, int row_begin,
                                              int row0, int row_end, int n0, int lane,
                                              uint8_t* buf) {
  if (staged && row_end - row_begin >= 128) {
    StoreWarpRowsStaged<T, GATED, N, G>(p, acc, row0, row_end, n0, lane, buf);
  } else {
    StoreWarpRows<T, GATED, N, G>(p, acc, out_f32, split, row0, row_end, n0, lane);
  }
}

// The kernel's dynamic shared memory from its first 1024-byte boundary (the 128-byte swizzle's
// repeat; WgSmemBytes counts the slack).
__device__ __forceinline__ uint8_t* AlignedStageSmem(uint8_t* raw) {
  const uint32_t addr = SmemAddr(raw);
  return raw + (((addr + 1023u) & ~1023u) - addr);
}
#endif

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
// mbarrier helpers (MbarInit, MbarArrive: gemm_common.cuh).
// Thread 0: the full and empty barrier of each of the STAGES stages, with their arrival counts,
// and the fence that makes the initialisation visible (to the cluster's blocks too).
template <int STAGES>
__device__ __forceinline__ void InitStageBarriers(uint64_t* full, uint64_t* empty, int full_count,
                                                  int empty_count) {
  if (threadIdx.x != 0) return;
#pragma unroll
  for (int s = 0; s < STAGES; ++s) {
    MbarInit(&full[s], full_count);
    MbarInit(&empty[s], empty_count);
  }
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}
// Arrives on `bar` once every cp.async this thread issued so far has landed (counts as one of the
// barrier's expected arrivals: .noinc).
__device__ __forceinline__ void CpAsyncMbarArrive(uint64_t* bar) {
  asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(SmemAddr(bar))
               : "memory");
}
// Whether the phase of parity `parity` of the barrier at shared address `addr` has completed.
// CLUSTER: with cluster-scope acquire, for arrivals by other blocks of the cluster that release
// their writes into this block's shared memory (the default acquire is CTA-scope).
#define MOE_MBAR_TRY_WAIT_(SEM)     \
  "{\n"                             \
  ".reg .pred p;\n"                 \
  "mbarrier.try_wait.parity" SEM    \
  ".shared::cta.b64 p, [%1], %2;\n" \
  "selp.u32 %0, 1, 0, p;\n"         \
  "}\n"
template <bool CLUSTER = false>
__device__ __forceinline__ bool MbarTryWait(uint32_t addr, uint32_t parity) {
  uint32_t done = 0;
  if constexpr (CLUSTER) {
    asm volatile(MOE_MBAR_TRY_WAIT_(".acquire.cluster")
                 : "=r"(done)
                 : "r"(addr), "r"(parity)
                 : "memory");
  } else {
    asm volatile(MOE_MBAR_TRY_WAIT_("") : "=r"(done) : "r"(addr), "r"(parity) : "memory");
  }
  return done != 0;
}
#undef MOE_MBAR_TRY_WAIT_
// Waits until the phase of parity `parity` of `bar` has completed (CLUSTER: see MbarTryWait).
template <bool CLUSTER = false>
__device__ __forceinline__ void MbarWait(uint64_t* bar, uint32_t parity) {
  const uint32_t addr = SmemAddr(bar);
  while (!MbarTryWait<CLUSTER>(addr, parity)) {
  }
}
template <int N>
__device__ __forceinline__ void SetMaxNRegInc() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N));
}
template <int N>
__device__ __forceinline__ void SetMaxNRegDec() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N));
}
#endif

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)  // sm_90a code only
// Row tiles per raster group of the persistent kernel (see DecodeWorkItem).
constexpr int kWsGroupRows = 16;

// Work item w of a persistent launch -> (row tile t, column block nb, K split). Splits outermost;
// inside a split, groups of `group_rows` row tiles (kWsGroupRows; the cluster kernel's units:
// GemmParams::raster_units, MoePlan::raster_units), each walked column block by column block with
// the row tile fastest. NOTES: blocks that run together then share a few row tiles of A (16 x 128
// rows) and a few B slices in L2, instead of every row tile of the batch for one column block (at
// Mixtral 16384 tokens the gate/up A alone is 268 MB, re-read from HBM for each of 112 column
// blocks in that order). The order changes which block computes an output, never how.
__device__ __forceinline__ void DecodeWorkItem(int64_t w, int row_tiles, int col_blocks, int& t,
                                               int& nb, int& split, int group_rows = kWsGroupRows) {
  const int64_t per_split = static_cast<int64_t>(row_tiles) * col_blocks;
  split = static_cast<int>(w / per_split);
  int64_t r = w - split * per_split;
  const int64_t group_items = static_cast<int64_t>(group_rows) * col_blocks;
  const int group = static_cast<int>(r / group_items);
  const int first = group * group_rows;
  const int rows_in_group = min(group_rows, row_tiles - first);
  r -= group * group_items;
  t = first + static_cast<int>(r % rows_in_group);
  nb = static_cast<int>(r / rows_in_group);
}
#endif

}  // namespace moe::cuda
