// Decode GEMV for grouped GEMMs of a few rows per expert (CUDA cores, f32 accumulate).
//
// 1. Same problem and tile list as LaunchGemm (kernels/moe_kernels.h): block (t, y) takes row
//    tile t (group = expert, up to `tile_bm` rows) and output columns 8y..8y+7, one per warp.
// 2. A warp streams its weight row(s) once, front to back: lane l reads 16 bytes at elements
//    8l + 256j (a warp reads 512 contiguous bytes per load, four loads in flight per row), so the
//    activated experts' weights move like a copy spread over every SM.
// 3. The tile's rows are taken kGemvRows at a time (A rows from L1/L2, gathered through a_rows);
//    each lane accumulates its K slice in ascending order, then a fixed xor tree sums the lanes.
// 4. Gated: silu(gate) * up; stored in wtype (or f32 at split 0 for a plain f32 output).
// 5. Packed weights (GemmArgs::b_packed, kernels/weight_layout.h): each 16-byte chunk of 8
//    elements stays contiguous in that layout, so lane l reads the same chunks from their packed
//    addresses and sums them in the same order: the same bits as on row-major weights. The expert
//    cache's rounds take this kernel on packed slots (ExpertCacheOptions::pack_slots).
// NOTES: rounds differently from the mma.sync tiles, so deterministic (batch-invariant) mode must
// not use it (PlanMoe never picks it there).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "kernels/cuda_status.h"
#include "kernels/decode_common.cuh"
#include "kernels/gemm_common.cuh"
#include "kernels/moe_kernels.h"
#include "kernels/pdl.cuh"

namespace moe::cuda {
namespace {

constexpr int kGemvWarps = 8;   // output columns per block
constexpr int kGemvRows = 4;    // A rows per pass over the weights
constexpr int kGemvUnroll = 4;  // 16-byte weight loads in flight per lane and weight row

template <typename T, bool GATED, bool PACKED>
__global__ void __launch_bounds__(kGemvWarps * 32)
    DecodeGemvKernel(const GemmParams p, int tile_bm) {
  constexpr int kG = GATED ? 2 : 1;
  // Phase 0: wait for the previous kernel (tile list, A); which rows and column this warp owns.
  GridDepWait();
  GridDepTrigger();
  int group, row_begin, row_end;
  if (!ResolveTile(p, tile_bm, group, row_begin, row_end)) return;
  const int lane = threadIdx.x & 31;
  const int n = blockIdx.y * kGemvWarps + (threadIdx.x >> 5);
  if (n >= p.n) return;  // no block-wide synchronisation below
  const int64_t table_index = (p.layer_dev ? *p.layer_dev : 0) * p.b_layer_stride + group;
  // Row n's start (row-major), or the matrix's (packed: chunks at PackedOffset(n, k, K)).
  const int64_t row_offset = PACKED ? 0 : static_cast<int64_t>(n) * p.ldb;
  const T* w[kG];
  w[0] = static_cast<const T*>(p.b0_table[table_index]) + row_offset;
  if constexpr (GATED) w[kG - 1] = static_cast<const T*>(p.b1_table[table_index]) + row_offset;
  const T* a_base = GemmABase<T>(p);

  // Phase 1: passes of kGemvRows rows over the weight row(s).
  for (int r0 = row_begin; r0 < row_end; r0 += kGemvRows) {
    const int rows = min(kGemvRows, row_end - r0);
    const T* a[kGemvRows];
#pragma unroll
    for (int i = 0; i < kGemvRows; ++i) {
      const int r = r0 + (i < rows ? i : 0);
      a[i] = a_base + static_cast<int64_t>(p.a_rows ? p.a_rows[r] : r) * p.lda;
    }
    float acc[kG][kGemvRows];
#pragma unroll
    for (int g = 0; g < kG; ++g)
#pragma unroll
      for (int i = 0; i < kGemvRows; ++i) acc[g][i] = 0.0f;

    for (int k0 = lane * 8; k0 < p.k; k0 += 32 * 8 * kGemvUnroll) {
      uint4 wv[kG][kGemvUnroll];
#pragma unroll
      for (int u = 0; u < kGemvUnroll; ++u) {
        const int k = k0 + 256 * u;
#pragma unroll
        for (int g = 0; g < kG; ++g) {
          const int64_t at = PACKED ? PackedOffset(n, k, p.k) : k;
          wv[g][u] = k < p.k ? LoadStreaming(w[g] + at) : make_uint4(0, 0, 0, 0);
        }
      }
#pragma unroll
      for (int u = 0; u < kGemvUnroll; ++u) {
        const int k = k0 + 256 * u;
        if (k < p.k) {
#pragma unroll
          for (int i = 0; i < kGemvRows; ++i) {
            if (i < rows) {
              const uint4 av = *reinterpret_cast<const uint4*>(a[i] + k);
#pragma unroll
              for (int g = 0; g < kG; ++g) Dot8<T>(wv[g][u], av, acc[g][i]);
            }
          }
        }
      }
    }

    // Phase 2: lane sums, epilogue by lane i for row i.
#pragma unroll
    for (int i = 0; i < kGemvRows; ++i) {
      float v = WarpSumF(acc[0][i]);
      if constexpr (GATED) v = Silu(v) * WarpSumF(acc[kG - 1][i]);
      if (lane == i && i < rows) {
        const int64_t off = static_cast<int64_t>(r0 + i) * p.ldc + n;
        if (!GATED && p.out_f32) {
          static_cast<float*>(p.c)[off] = v;
        } else {
          static_cast<T*>(p.c)[off] = static_cast<T>(v);
        }
      }
    }
  }
}

}  // namespace

bool CanDecodeGemv(const GemmArgs& args) {
  return args.splits == 1 && args.tile == GemmTile::kDecode;
}

Status LaunchDecodeGemv(const GemmArgs& args, cudaStream_t stream) {
  MOE_RETURN_IF_ERROR(args.Validate());
  if (!CanDecodeGemv(args)) {
    return absl::InvalidArgumentError("DecodeGemv: needs the decode tile list and no K split");
  }
  const GemmParams p = MakeGemmParams(args);
  const dim3 grid(static_cast<unsigned>(args.grid_tiles),
                  static_cast<unsigned>((args.n + kGemvWarps - 1) / kGemvWarps));
  const int bm = ShapeOf(args.tile).bm;
  void (*fn)(GemmParams, int) = nullptr;
  const bool bf16 = args.wtype == WType::kBF16;
  if (args.b_packed) {
    if (bf16) {
      fn = args.gated ? &DecodeGemvKernel<__nv_bfloat16, true, true>
                      : &DecodeGemvKernel<__nv_bfloat16, false, true>;
    } else {
      fn = args.gated ? &DecodeGemvKernel<__half, true, true>
                      : &DecodeGemvKernel<__half, false, true>;
    }
  } else if (bf16) {
    fn = args.gated ? &DecodeGemvKernel<__nv_bfloat16, true, false>
                    : &DecodeGemvKernel<__nv_bfloat16, false, false>;
  } else {
    fn = args.gated ? &DecodeGemvKernel<__half, true, false>
                    : &DecodeGemvKernel<__half, false, false>;
  }
  CUDA_RETURN_IF_ERROR(LaunchMaybePdl(fn, grid, dim3(kGemvWarps * 32), 0, stream, args.pdl, p, bm));
  return absl::OkStatus();
}

}  // namespace moe::cuda
