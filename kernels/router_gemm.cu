// The router GEMM of batches past the fused decode front, fused with the input conversion, for
// activations that already have the weights' dtype (outside deterministic mode): one launch
// instead of ConvertKernel followed by a GEMM tile, shaped for at most a few hundred router rows.
//
// Why: at 4096 tokens (H200, ncu with warm caches) the conversion copy took 11 us and the router on
// the 128 x 256 wgmma tile 23 us at Qwen3-30B-A3B (128 router rows: half of the tile's columns
// are empty; at Mixtral's 8 rows 31 of 32 are), 20 + 24 us at Mixtral-8x7B.
//
// 1. Block (i, j, z) owns tokens [32 i, 32 i + 32), router row tiles (8 rows each)
//    [j * tiles, (j + 1) * tiles), tiles = RouterConvertArgs::tiles_per_block <= 4, and the z-th
//    of RouterConvertArgs::k_splits parts of K (PlanRouterConvert in kernels/tile_heuristics.cc
//    chooses the grid).
// 2. Its 8 warps split its K: warp w takes the w-th eighth of its 32-column steps. Per step a
//    thread loads 16 bytes (8 columns) of each of its 4 token rows and of its router row in each
//    tile straight from global memory into registers, and feeds them to mma.sync m16n8k16 as
//    fragments of a permuted k: thread q's 8 columns 8q..8q+7 stand for the k pairs (2q, 2q+1),
//    (2q+8, 2q+9) of two k16 steps, the same for A and B, so every product still pairs equal
//    columns. No shared memory on the way in: 4 steps of loads are in flight per thread.
// 3. Blocks of column 0 (j == 0) store the token rows (their part of K) they loaded into x, the
//    layout ConvertKernel writes (hi part only: no split_lo here), for the expert GEMMs.
// 4. The warps' partial sums meet in shared memory and are added in warp order, so a logit's
//    rounding depends on the hidden size and the K splits only: not on the block.
// 5. Partial logits go to split z of [split, token, router row] f32; the route adds the splits
//    in order.
// 6. The kernel is compiled for 1, 2 and 4 row tiles a block (TILES): registers for 4 tiles
//    (224) leave one block of 8 warps an SM, latency-bound (ncu, Mixtral 4096 tokens: 40% of DRAM
//    bandwidth, warps stalled on their loads 66% of the time); 1 tile takes 128, two blocks.
// NOTES: a first version staged 64-column chunks of both operands through a cp.async ring and
// left the warps without a tile idle: 21 us at Qwen3 512 tokens and 32 us at 4096 (H200, ncu),
// no faster than the two kernels it replaced; this one with 2 steps in flight took 11 and 35 us
// (RESULTS.md, session 7).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "kernels/cuda_status.h"
#include "kernels/decode_common.cuh"
#include "kernels/gemm_common.cuh"
#include "kernels/moe_kernels.h"
#include "kernels/pdl.cuh"

namespace moe::cuda {
namespace {

constexpr int kRcTokens = kRouterConvertBlockTokens;
constexpr int kRcWarps = 8;
constexpr int kRcThreads = kRcWarps * 32;
constexpr int kRcMaxTiles = kRouterConvertMaxTiles;
constexpr int kRcStepCols = kRouterConvertStepCols;
constexpr int kRcDepth = 4;  // steps of loads in flight per thread

// One 32-column step's operands of a thread: its 4 token rows (16-row half m, + 8 h) and its
// router row of each of TILES tiles.
template <int TILES>
struct RcStep {
  uint4 a[2][2];
  uint4 b[TILES];
};

// TILES: the row tiles a block holds at most (RouterConvertBlocksPerSm: one tile's registers let
// two blocks share an SM).
template <typename T, int TILES>
__global__ void __launch_bounds__(kRcThreads, RouterConvertBlocksPerSm(TILES))
    RouterConvertKernel(const RouterConvertArgs a) {
  __shared__ float red[kRcWarps][kRcTokens][TILES * 8 + 1];
  GridDepWait();
  GridDepTrigger();
  if (blockIdx.x == 0 && blockIdx.y == 0 && blockIdx.z == 0) {
    for (int i = static_cast<int>(threadIdx.x); i < a.n_zero; i += kRcThreads) a.zero[i] = 0;
  }
  // The meta and the layer index load together: two dependent round trips before the data, not
  // three.
  const int n = a.meta->n_tokens;
  const T* in = static_cast<const T*>(a.meta->input);
  const int layer = a.layer_dev ? *a.layer_dev : 0;
  const T* w = static_cast<const T*>(a.router_table[layer]);
  const int t0 = static_cast<int>(blockIdx.x) * kRcTokens;
  if (t0 >= n) return;
  const int tiles = a.tiles_per_block;
  const int row0 = static_cast<int>(blockIdx.y) * tiles * 8;  // first router row of the block
  const int lane = static_cast<int>(threadIdx.x) & 31, warp = static_cast<int>(threadIdx.x) >> 5;
  const int g = lane >> 2, q = lane & 3;
  const int steps = a.hidden / kRcStepCols, splits = a.k_splits, z = static_cast<int>(blockIdx.z);
  const int s_begin = (z * kRcWarps + warp) * steps / (splits * kRcWarps);
  const int s_end = (z * kRcWarps + warp + 1) * steps / (splits * kRcWarps);
  const bool write_x = blockIdx.y == 0 && a.x != nullptr;

  // Row pointers (column 8 q of step 0); rows past the batch or the router read a valid row and
  // are never stored.
  const T* a_row[2][2];
  bool a_ok[2][2];
#pragma unroll
  for (int m = 0; m < 2; ++m)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int t = t0 + 16 * m + 8 * h + g;
      a_ok[m][h] = t < n;
      a_row[m][h] = in + static_cast<int64_t>(a_ok[m][h] ? t : t0) * a.hidden + 8 * q;
    }
  const T* b_row[TILES];
#pragma unroll
  for (int j = 0; j < TILES; ++j) {
    const int r = min(row0 + 8 * j + g, a.router_rows - 1);
    b_row[j] = w + static_cast<int64_t>(r) * a.ld_router + 8 * q;
  }
  auto load = [&](int s, RcStep<TILES>& st) {
    const int k = s * kRcStepCols;
#pragma unroll
    for (int m = 0; m < 2; ++m)
#pragma unroll
      for (int h = 0; h < 2; ++h) st.a[m][h] = LoadKept(a_row[m][h] + k);
#pragma unroll
    for (int j = 0; j < TILES; ++j) {
      if (j < tiles) st.b[j] = LoadKept(b_row[j] + k);
    }
  };

  float acc[2][TILES][4];
#pragma unroll
  for (int m = 0; m < 2; ++m)
#pragma unroll
    for (int j = 0; j < TILES; ++j)
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[m][j][i] = 0.0f;
  auto compute = [&](int s, const RcStep<TILES>& st) {
    if (write_x) {
      T* x = static_cast<T*>(a.x) + s * kRcStepCols + 8 * q;
#pragma unroll
      for (int m = 0; m < 2; ++m)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          if (a_ok[m][h]) {
            *reinterpret_cast<uint4*>(x + static_cast<int64_t>(t0 + 16 * m + 8 * h + g) * a.ldx) =
                st.a[m][h];
          }
        }
    }
#pragma unroll
    for (int m = 0; m < 2; ++m) {
      const uint32_t f0[4] = {st.a[m][0].x, st.a[m][1].x, st.a[m][0].y, st.a[m][1].y};
      const uint32_t f1[4] = {st.a[m][0].z, st.a[m][1].z, st.a[m][0].w, st.a[m][1].w};
#pragma unroll
      for (int j = 0; j < TILES; ++j) {
        if (j < tiles) {
          MmaOp<T>::Run(acc[m][j], f0, st.b[j].x, st.b[j].y);
          MmaOp<T>::Run(acc[m][j], f1, st.b[j].z, st.b[j].w);
        }
      }
    }
  };

  // kRcDepth steps of loads in flight: buffer i holds steps s_begin + i, + kRcDepth, ...
  RcStep<TILES> buf[kRcDepth];
#pragma unroll
  for (int i = 0; i < kRcDepth; ++i) {
    if (s_begin + i < s_end) load(s_begin + i, buf[i]);
  }
  for (int s = s_begin; s < s_end; s += kRcDepth) {
#pragma unroll
    for (int i = 0; i < kRcDepth; ++i) {
      if (s + i < s_end) {
        compute(s + i, buf[i]);
        if (s + i + kRcDepth < s_end) load(s + i + kRcDepth, buf[i]);
      }
    }
  }

  // Partial sums in warp order: accumulator element i of tile j, half m is (row 16 m + g + 8 (i /
  // 2), column 8 j + 2 q + i % 2).
#pragma unroll
  for (int m = 0; m < 2; ++m)
#pragma unroll
    for (int j = 0; j < TILES; ++j)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        if (j < tiles) red[warp][16 * m + g + 8 * (i >> 1)][8 * j + 2 * q + (i & 1)] = acc[m][j][i];
      }
  __syncthreads();
  const int cols = 8 * tiles;
  for (int e = static_cast<int>(threadIdx.x); e < kRcTokens * cols; e += kRcThreads) {
    const int r = e / cols, c = e % cols;
    const int t = t0 + r, col = row0 + c;
    if (t >= n || col >= a.router_rows) continue;
    float v = red[0][r][c];
#pragma unroll
    for (int ww = 1; ww < kRcWarps; ++ww) v += red[ww][r][c];
    a.logits[z * a.split_stride + static_cast<int64_t>(t) * a.ld_logits + col] = v;
  }
}

}  // namespace

Status RouterConvertArgs::Validate() const {
  if (meta == nullptr || router_table == nullptr || logits == nullptr || n_zero < 0 ||
      (n_zero > 0 && zero == nullptr)) {
    return absl::InvalidArgumentError("RouterConvertArgs: null pointer");
  }
  if (!CanRouterConvert(hidden, router_rows) || capacity <= 0 || ldx < hidden || ldx % 8 != 0 ||
      ld_router < hidden || ld_router % 8 != 0 || ld_logits < router_rows || tiles_per_block < 1 ||
      tiles_per_block > kRcMaxTiles || k_splits < 1 || k_splits > kRouterConvertMaxKSplits ||
      (k_splits > 1 && split_stride < capacity * ld_logits)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "RouterConvertArgs: need hidden a multiple of ", kRcStepCols,
        ", ldx and ld_router >= hidden and multiples of 8, ld_logits >= router_rows, 1..",
        kRcMaxTiles, " row tiles a block and 1..", kRouterConvertMaxKSplits,
        " K splits of capacity x ld_logits each; hidden=", hidden, " router_rows=", router_rows,
        " tiles_per_block=", tiles_per_block, " k_splits=", k_splits));
  }
  return absl::OkStatus();
}

Status LaunchRouterConvert(const RouterConvertArgs& a, cudaStream_t stream) {
  MOE_RETURN_IF_ERROR(a.Validate());
  const int row_tiles = (a.router_rows + 7) / 8;
  const dim3 grid(static_cast<unsigned>((a.capacity + kRcTokens - 1) / kRcTokens),
                  static_cast<unsigned>((row_tiles + a.tiles_per_block - 1) / a.tiles_per_block),
                  static_cast<unsigned>(a.k_splits));
  const bool bf16 = a.wtype == WType::kBF16;
  auto kernel =
      a.tiles_per_block == 1
          ? (bf16 ? RouterConvertKernel<__nv_bfloat16, 1> : RouterConvertKernel<__half, 1>)
      : a.tiles_per_block == 2
          ? (bf16 ? RouterConvertKernel<__nv_bfloat16, 2> : RouterConvertKernel<__half, 2>)
          : (bf16 ? RouterConvertKernel<__nv_bfloat16, kRcMaxTiles>
                  : RouterConvertKernel<__half, kRcMaxTiles>);
  const cudaError_t err = LaunchMaybePdl(kernel, grid, dim3(kRcThreads), 0, stream, a.pdl, a);
  CUDA_RETURN_IF_ERROR(err);
  return absl::OkStatus();
}

}  // namespace moe::cuda
