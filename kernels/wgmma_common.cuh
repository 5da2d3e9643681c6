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
__device__ __forceinline__ void FenceProxyAsync() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
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
  } else {
    if constexpr (kBf16)
      Wgmma64x64Bf16(d, a, b);
    else
      Wgmma64x64F16(d, a, b);
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

// One stage's k-steps: D[g] += A * B_g over the stage's kBk columns for each of the kG weight
// slices (gate and up when gated), then commit the group and keep at most one group in flight.
// a_desc / b_desc: descriptors of the stage's A rows (64 per warpgroup) and first B slice; the
// gate and up slices are adjacent, so a gated k16 step is ONE wgmma over both (N = 2 x BN).
// NOTES: two wgmmas of BN columns read the A operand from shared memory twice per k16; the gated
// 128x256 tile then moved ~147 bytes per clock through shared memory at the tensor peak (A twice
// for each consumer, B once for each consumer, the stage fills), above the ~128 of an SM.
template <typename T, int N, int G>
__device__ __forceinline__ void WgmmaStage(float (&acc)[G][N / 2], uint64_t a_desc,
                                           uint64_t b_desc) {
  static_assert(G == 1 || G == 2, "one slice, or gate and up");
  WgmmaFence();
#pragma unroll
  for (int kk = 0; kk < kBk / 16; ++kk) {
    // +32 bytes per k16 step inside the swizzled 128-byte rows (descriptor units of 16 bytes).
    if constexpr (G == 2) {
      WgmmaPair<T, N>(acc[0], acc[1], a_desc + 2 * kk, b_desc + 2 * kk);
    } else {
      Wgmma<T, N>(acc[0], a_desc + 2 * kk, b_desc + 2 * kk);
    }
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
#endif

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
// mbarrier helpers (shared::cta, 64-bit barriers in static shared memory).
__device__ __forceinline__ void MbarInit(uint64_t* bar, int count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(SmemAddr(bar)), "r"(count)
               : "memory");
}
__device__ __forceinline__ void MbarArrive(uint64_t* bar) {
  asm volatile(
      "{\n"
      ".reg .b64 state;\n"
      "mbarrier.arrive.shared::cta.b64 state, [%0];\n"
      "}\n" ::"r"(SmemAddr(bar))
      : "memory");
}
// Arrives on `bar` once every cp.async this thread issued so far has landed (counts as one of the
// barrier's expected arrivals: .noinc).
__device__ __forceinline__ void CpAsyncMbarArrive(uint64_t* bar) {
  asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(SmemAddr(bar))
               : "memory");
}
// Waits until the phase of parity `parity` of `bar` has completed.
__device__ __forceinline__ void MbarWait(uint64_t* bar, uint32_t parity) {
  const uint32_t addr = SmemAddr(bar);
  uint32_t done = 0;
  do {
    asm volatile(
        "{\n"
        ".reg .pred p;\n"
        "mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
        "selp.u32 %0, 1, 0, p;\n"
        "}\n"
        : "=r"(done)
        : "r"(addr), "r"(parity)
        : "memory");
  } while (!done);
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
// inside a split, groups of kWsGroupRows row tiles, each walked column block by column block with
// the row tile fastest. NOTES: blocks that run together then share a few row tiles of A (16 x 128
// rows) and a few B slices in L2, instead of every row tile of the batch for one column block (at
// Mixtral 16384 tokens the gate/up A alone is 268 MB, re-read from HBM for each of 112 column
// blocks in that order). The order changes which block computes an output, never how.
__device__ __forceinline__ void DecodeWorkItem(int64_t w, int row_tiles, int col_blocks, int& t,
                                               int& nb, int& split) {
  const int64_t per_split = static_cast<int64_t>(row_tiles) * col_blocks;
  split = static_cast<int>(w / per_split);
  int64_t r = w - split * per_split;
  const int64_t group_items = static_cast<int64_t>(kWsGroupRows) * col_blocks;
  const int group = static_cast<int>(r / group_items);
  const int first = group * kWsGroupRows;
  const int rows_in_group = min(kWsGroupRows, row_tiles - first);
  r -= group * group_items;
  t = first + static_cast<int>(r % rows_in_group);
  nb = static_cast<int>(r / rows_in_group);
}
#endif

}  // namespace moe::cuda
