// Grouped GEMM on tensor cores (mma.sync m16n8k16, bf16/f16 in, f32 accumulate), sm_80 and sm_90a.
//
// 1. Each block owns one BM-row tile of one group (expert) and BN output columns (plus a K split).
// 2. A rows are gathered through a_rows (token permutation), B is the group's weight matrix from a
//    per-(layer, group) pointer table, so experts stay individually addressable.
// 3. A and B tiles stream through a STAGES-deep cp.async pipeline into XOR-swizzled shared memory
//    (16-byte chunks, conflict-free for both the cp.async stores and ldmatrix).
// 4. Warps compute WTM x WTN sub-tiles with ldmatrix.x4 + mma.sync; K is walked in ascending order
//    with one accumulator chain per element, so a row's result never depends on the tile shape or
//    on which other rows share the tile (batch invariance).
// 5. Epilogue straight from registers: gated tiles apply silu(gate) * up and store wtype; plain
// tiles
//    store wtype, or f32 partial sums per K split (reduced in fixed order by the consumer).
// 6. Launched with PDL (GemmArgs::pdl) the kernel waits for the previous kernel first; with
//    prefetch_weights it resolves its tile and streams its first STAGES - 1 weight stages before
//    that wait (the tile list and layer then come from kernels two or more launches back).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "kernels/cuda_status.h"
#include "kernels/gemm_common.cuh"
#include "kernels/moe_kernels.h"
#include "kernels/pdl.cuh"

namespace moe::cuda {
namespace {

template <typename T, int BM, int BN, int WM, int WN, int STAGES, bool GATED>
__global__ void __launch_bounds__(WM* WN * 32) GemmKernel(const GemmParams p, int prefetch_b) {
  constexpr int kThreads = WM * WN * 32;
  constexpr int kBRows = GATED ? 2 * BN : BN;
  constexpr int kWtm = BM / WM;
  constexpr int kWtn = BN / WN;
  constexpr int kMi = kWtm / 16;
  constexpr int kNi = kWtn / 8;
  constexpr int kAChunks = BM * 8 / kThreads;
  constexpr int kBChunks = kBRows * 8 / kThreads;
  constexpr int kG = GATED ? 2 : 1;
  static_assert(kNi % 2 == 0 && kMi >= 1 && kAChunks >= 1 && kBChunks >= 1, "bad tile");
  static_assert(BM * 8 % kThreads == 0 && kBRows * 8 % kThreads == 0, "bad tile");

  // Phase 0: which rows, columns and K range this block owns (after the previous kernel, unless
  // the tile list is older: see pdl.cuh).
  if (!prefetch_b) {
    GridDepWait();
    GridDepTrigger();
  }
  int group, row_begin, row_end;
  const int n0 = blockIdx.y * BN;
  if (!ResolveTile(p, BM, group, row_begin, row_end) || n0 >= p.n) {
    if (prefetch_b) GridDepWait();
    return;
  }
  const int64_t table_index = (p.layer_dev ? *p.layer_dev : 0) * p.b_layer_stride + group;
  const T* b0 = static_cast<const T*>(p.b0_table[table_index]);
  const T* b1 = GATED ? static_cast<const T*>(p.b1_table[table_index]) : nullptr;
  const int k_steps = (p.k + kBk - 1) / kBk;
  const int kt_begin = static_cast<int>(static_cast<int64_t>(blockIdx.z) * k_steps / p.splits);
  const int kt_end = static_cast<int>(static_cast<int64_t>(blockIdx.z + 1) * k_steps / p.splits);

  extern __shared__ uint4 smem_raw[];
  T* smem_a = reinterpret_cast<T*>(smem_raw);
  T* smem_b = smem_a + STAGES * BM * kBk;
  const int tid = threadIdx.x;
  const T* a_base = GemmABase<T>(p);

  // Phase 1: per-thread copy descriptors (fixed rows, K advances per stage).
  const T* a_src[kAChunks];
  bool a_ok[kAChunks];
  int a_dst[kAChunks];
  int a_col[kAChunks];
  PlanARowCopies<T, kAChunks, kThreads>(p, a_base, tid, row_begin, row_end, a_src, a_ok, a_dst,
                                        a_col);
  const T* b_src[kBChunks];
  bool b_ok[kBChunks];
  int b_dst[kBChunks];
  int b_col[kBChunks];
#pragma unroll
  for (int i = 0; i < kBChunks; ++i) {
    const int c = tid + i * kThreads;
    const int row = c >> 3, chunk = c & 7;
    const bool second = GATED && row >= BN;
    const int n = n0 + (second ? row - BN : row);
    b_ok[i] = n < p.n;
    b_src[i] = (second ? b1 : b0) + (b_ok[i] ? BChunkOffset(p, n, chunk * 8) : 0);
    b_dst[i] = Swizzle(row, chunk);
    b_col[i] = chunk * 8;
  }
  const int b_kstep = BKStep(p);
  auto load_a = [&](int kt, int stage) {
    const int k0 = kt * kBk;
    T* sa = smem_a + stage * BM * kBk;
#pragma unroll
    for (int i = 0; i < kAChunks; ++i) {
      const bool ok = a_ok[i] && k0 + a_col[i] < p.k;
      CpAsync16(SmemAddr(sa + a_dst[i]), ok ? a_src[i] + k0 : a_base, ok);
    }
  };
  auto load_b = [&](int kt, int stage) {
    const int k0 = kt * kBk;
    T* sb = smem_b + stage * kBRows * kBk;
#pragma unroll
    for (int i = 0; i < kBChunks; ++i) {
      const bool ok = b_ok[i] && k0 + b_col[i] < p.k;
      CpAsync16(SmemAddr(sb + b_dst[i]), ok ? b_src[i] + static_cast<int64_t>(kt) * b_kstep : b0,
                ok);
    }
  };
  auto load_stage = [&](int kt, int stage) {
    load_a(kt, stage);
    load_b(kt, stage);
  };

  // Phase 2: pipeline prologue. With prefetch_b the weights of every prologue stage go into the
  // first commit group (ahead of their A halves), so each stage is still complete when its group
  // is: the main loop's wait counts stay as they are.
  if (prefetch_b) {
#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
      if (kt_begin + s < kt_end) load_b(kt_begin + s, s);
    }
    GridDepWait();
    GridDepTrigger();
#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
      if (kt_begin + s < kt_end) load_a(kt_begin + s, s);
      CpAsyncCommit();
    }
  } else {
#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
      if (kt_begin + s < kt_end) load_stage(kt_begin + s, s);
      CpAsyncCommit();
    }
  }

  // Phase 3: main loop; stage (kt - kt_begin) % STAGES holds k-step kt.
  const int lane = tid & 31, warp = tid >> 5;
  const int warp_m = warp / WN, warp_n = warp % WN;
  float acc[kG][kMi][kNi][4];
#pragma unroll
  for (int g = 0; g < kG; ++g)
#pragma unroll
    for (int mi = 0; mi < kMi; ++mi)
#pragma unroll
      for (int ni = 0; ni < kNi; ++ni)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[g][mi][ni][e] = 0.0f;

  int stage = 0;
  for (int kt = kt_begin; kt < kt_end; ++kt) {
    CpAsyncWait<STAGES - 2>();
    __syncthreads();
    {
      const int next = kt + STAGES - 1;
      int next_stage = stage + STAGES - 1;
      if (next_stage >= STAGES) next_stage -= STAGES;
      if (next < kt_end) load_stage(next, next_stage);
      CpAsyncCommit();
    }
    const T* sa = smem_a + stage * BM * kBk;
    const T* sb = smem_b + stage * kBRows * kBk;
#pragma unroll
    for (int kk = 0; kk < kBk / 16; ++kk) {
      uint32_t af[kMi][4];
#pragma unroll
      for (int mi = 0; mi < kMi; ++mi) {
        const int row = warp_m * kWtm + mi * 16 + (lane & 15);
        LdMatrixX4(af[mi], SmemAddr(sa + Swizzle(row, kk * 2 + (lane >> 4))));
      }
#pragma unroll
      for (int g = 0; g < kG; ++g) {
#pragma unroll
        for (int nj = 0; nj < kNi / 2; ++nj) {
          uint32_t bf[4];
          const int row = g * BN + warp_n * kWtn + nj * 16 + (lane & 7) + ((lane >> 4) << 3);
          LdMatrixX4(bf, SmemAddr(sb + Swizzle(row, kk * 2 + ((lane >> 3) & 1))));
#pragma unroll
          for (int mi = 0; mi < kMi; ++mi) {
            MmaOp<T>::Run(acc[g][mi][2 * nj], af[mi], bf[0], bf[1]);
            MmaOp<T>::Run(acc[g][mi][2 * nj + 1], af[mi], bf[2], bf[3]);
          }
        }
      }
    }
    if (++stage == STAGES) stage = 0;
  }
  CpAsyncWait<0>();

  // Phase 4: epilogue from registers.
#pragma unroll
  for (int mi = 0; mi < kMi; ++mi) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int r = row_begin + warp_m * kWtm + mi * 16 + (lane >> 2) + 8 * half;
      if (r >= row_end) continue;
#pragma unroll
      for (int ni = 0; ni < kNi; ++ni) {
        const int col = n0 + warp_n * kWtn + ni * 8 + 2 * (lane & 3);
        float v0 = acc[0][mi][ni][2 * half], v1 = acc[0][mi][ni][2 * half + 1];
        if constexpr (GATED) {
          const float u0 = acc[kG - 1][mi][ni][2 * half], u1 = acc[kG - 1][mi][ni][2 * half + 1];
          v0 = Silu(v0) * u0;
          v1 = Silu(v1) * u1;
        }
        StorePair<T>(p, !GATED && p.out_f32, r, col, v0, v1);
      }
    }
  }
}

using KernelFn = void (*)(GemmParams, int);

// One entry per (tile, gated, dtype), generated from MOE_GEMM_TILE_TABLE.
struct KernelEntry {
  KernelFn fn;
  GemmTile tile;
  bool gated;
  WType wtype;
};

#define MOE_GEMM_ENTRIES_(id, bm, bnp, bng, wm, wn, st)                                          \
  {&GemmKernel<__nv_bfloat16, bm, bnp, wm, wn, st, false>, GemmTile::id, false, WType::kBF16},   \
      {&GemmKernel<__nv_bfloat16, bm, bng, wm, wn, st, true>, GemmTile::id, true, WType::kBF16}, \
      {&GemmKernel<__half, bm, bnp, wm, wn, st, false>, GemmTile::id, false, WType::kF16},       \
      {&GemmKernel<__half, bm, bng, wm, wn, st, true>, GemmTile::id, true, WType::kF16},
const KernelEntry kKernels[] = {MOE_GEMM_TILE_TABLE(MOE_GEMM_ENTRIES_)};
#undef MOE_GEMM_ENTRIES_

KernelFn FindKernel(GemmTile tile, bool gated, WType wtype) {
  for (const KernelEntry& e : kKernels) {
    if (e.tile == tile && e.gated == gated && e.wtype == wtype) return e.fn;
  }
  return nullptr;
}

}  // namespace

Status GemmArgs::Validate() const {
  if ((a == nullptr && a_indirect == nullptr) || b0_table == nullptr || c == nullptr ||
      (gated && b1_table == nullptr)) {
    return absl::InvalidArgumentError("GemmArgs: null A, B table or C");
  }
  if ((tiles == nullptr) == (m_dev == nullptr) || (tiles && (!n_tiles || !group_offsets))) {
    return absl::InvalidArgumentError("GemmArgs: give either tiles+n_tiles+group_offsets or m_dev");
  }
  if (n <= 0 || k <= 0 || k % 8 != 0 || lda % 8 != 0 || ldb % 8 != 0 || lda < k || ldb < k) {
    return absl::InvalidArgumentError(
        absl::StrCat("GemmArgs: need n, k > 0, k, lda, ldb multiples of 8 and >= k; n=", n,
                     " k=", k, " lda=", lda, " ldb=", ldb));
  }
  if (ldc < n || (!out_f32 && ldc % 2 != 0)) {
    return absl::InvalidArgumentError("GemmArgs: ldc must be >= n (and even for 2-byte output)");
  }
  if (splits < 1 || splits > kMaxSplits || (splits > 1 && (!out_f32 || gated))) {
    return absl::InvalidArgumentError("GemmArgs: split-K needs a plain GEMM with f32 output");
  }
  if (gated && out_f32) return absl::InvalidArgumentError("GemmArgs: gated output is wtype");
  if (b0_tmaps != nullptr &&
      (tiles == nullptr || n_groups <= 0 || (gated && b1_tmaps == nullptr))) {
    return absl::InvalidArgumentError(
        "GemmArgs: TMA descriptor tables need a tile list, n_groups > 0 and (gated) b1_tmaps");
  }
  if (a_tmap != nullptr && (a_rows != nullptr || b0_tmaps == nullptr || a_indirect != nullptr ||
                            (a_cluster_cols != 1 && a_cluster_cols != 2))) {
    return absl::InvalidArgumentError(
        "GemmArgs: an A descriptor needs contiguous A rows, B descriptors, no a_indirect and "
        "a_cluster_cols 1 or 2");
  }
  if ((c_tmap != nullptr || pingpong) && b0_tmaps == nullptr) {
    return absl::InvalidArgumentError(
        "GemmArgs: a C descriptor or ping-pong mode needs B descriptors (the cluster tile)");
  }
  if (h_ready != nullptr &&
      (tile != GemmTile::kWgmmaWsMc || b0_tmaps == nullptr || n_groups > kMaxClusterGemmGroups)) {
    return absl::InvalidArgumentError(
        "GemmArgs: h-ready counters need the cluster tile with B descriptors");
  }
  if (b_packed && (ldb != k || !PackableShape(n, k) || (b_packed_tensor && b0_tmaps == nullptr))) {
    return absl::InvalidArgumentError(
        "GemmArgs: packed B needs ldb == k, n % 128 == 0, k % 64 == 0 (and descriptors for "
        "tensor copies)");
  }
  if (grid_tiles <= 0 || grid_tiles > (1LL << 31) - 1) {
    return absl::InvalidArgumentError("GemmArgs: grid_tiles out of range");
  }
  return absl::OkStatus();
}

Status InitGemmKernels(bool sm90) {
  if (sm90) MOE_RETURN_IF_ERROR(InitGemmKernelsSm90());
  for (const KernelEntry& e : kKernels) {
    const int smem = ShapeOf(e.tile).smem_bytes(e.gated);
    CUDA_RETURN_IF_ERROR(
        cudaFuncSetAttribute(e.fn, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  }
  return absl::OkStatus();
}

Status LaunchGemm(const GemmArgs& args, cudaStream_t stream) {
  MOE_RETURN_IF_ERROR(args.Validate());
  const TileShape& shape = ShapeOf(args.tile);
  const int bn = shape.bn(args.gated);
  const GemmParams p = MakeGemmParams(args);
  const dim3 grid(static_cast<unsigned>(args.grid_tiles),
                  static_cast<unsigned>((args.n + bn - 1) / bn),
                  static_cast<unsigned>(args.splits));
  if (IsHopperTile(args.tile)) {
    return LaunchGemmSm90(p, args.tile, args.gated, args.wtype, grid, args.resident_clusters,
                          stream);
  }
  const KernelFn fn = FindKernel(args.tile, args.gated, args.wtype);
  if (fn == nullptr) return absl::InternalError("no GEMM kernel for this tile");
  CUDA_RETURN_IF_ERROR(LaunchMaybePdl(fn, grid, dim3(shape.threads()), shape.smem_bytes(args.gated),
                                      stream, args.pdl, p, args.prefetch_weights ? 1 : 0));
  return absl::OkStatus();
}

}  // namespace moe::cuda
