// Device helpers of the CUDA-core decode kernels (decode_gemv.cu, decode_experts.cu,
// decode_fused.cu): 16-byte weight and activation loads, L2 prefetch, 8-element dot products with
// f32 accumulation and the gate/up unit loop.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "kernels/gemm_common.cuh"  // Silu
#include "kernels/gemm_trace.cuh"

namespace moe::cuda {

// acc += sum_i w[i] * a[i] over the 8 elements of two 16-byte chunks (i ascending).
template <typename T>
__device__ __forceinline__ void Dot8(const uint4& w, const uint4& a, float& acc);
template <>
__device__ __forceinline__ void Dot8<__nv_bfloat16>(const uint4& w, const uint4& a, float& acc) {
  const __nv_bfloat162* wp = reinterpret_cast<const __nv_bfloat162*>(&w);
  const __nv_bfloat162* ap = reinterpret_cast<const __nv_bfloat162*>(&a);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 wf = __bfloat1622float2(wp[i]);
    const float2 af = __bfloat1622float2(ap[i]);
    acc = fmaf(wf.x, af.x, acc);
    acc = fmaf(wf.y, af.y, acc);
  }
}
template <>
__device__ __forceinline__ void Dot8<__half>(const uint4& w, const uint4& a, float& acc) {
  const __half2* wp = reinterpret_cast<const __half2*>(&w);
  const __half2* ap = reinterpret_cast<const __half2*>(&a);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 wf = __half22float2(wp[i]);
    const float2 af = __half22float2(ap[i]);
    acc = fmaf(wf.x, af.x, acc);
    acc = fmaf(wf.y, af.y, acc);
  }
}

// Weights: read once, so they bypass L1 (read-only path, no L1 allocation). NOTES: L2 eviction
// hints (evict_first here, evict_last for the router) together with a 96 KiB h stage in
// decode_experts.cu measured no gain at 1 token on the Qwen3 / DeepSeek-V2-Lite shapes and 7% loss
// on Mixtral (H200, benches/RESULTS.md "v8c"; the two were not measured apart), so loads carry
// none.
__device__ __forceinline__ uint4 LoadStreaming(const void* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

// Small weights that every forward reads again (the router): read-only path, cached in L1.
__device__ __forceinline__ uint4 LoadKept(const void* p) {
  uint4 v;
  asm volatile("ld.global.nc.v4.u32 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

// Activations: re-read by many warps of an SM, so they stay in L1. Only for data that no kernel
// still running writes (the read-only path is not coherent with writes during the kernel).
__device__ __forceinline__ uint4 LoadCached(const void* p) {
  return __ldg(reinterpret_cast<const uint4*>(p));
}

// Streamed weights that should leave L2 before anything else (sm_80+): the fused decode kernel
// (decode_fused.cu) uses it while the down weights it prefetched into L2 wait there.
__device__ __forceinline__ uint64_t L2EvictFirstPolicy() {
  uint64_t policy;
  asm("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;\n" : "=l"(policy));
  return policy;
}
__device__ __forceinline__ uint4 LoadStreamingHinted(const void* p, uint64_t policy) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.L2::cache_hint.v4.u32 {%0,%1,%2,%3}, [%4], %5;\n"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p), "l"(policy));
  return v;
}

// Prefetches `bytes` (a multiple of 16) at `p` (16-byte aligned) into L2 (sm_90; no-op before).
__device__ __forceinline__ void PrefetchL2(const void* p, uint32_t bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;\n" ::"l"(p), "r"(bytes) : "memory");
#endif
}

__device__ __forceinline__ float WarpSumF(float v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

// Shared-memory buffer per warp of the bulk-copy gate/up loop (GateUpUnitsTma): 2048 elements of
// the gate and of the up row.
inline constexpr int kGateUpTmaWarpBytes = 8 * 1024;

__device__ __forceinline__ uint32_t SmemAddr32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// mbarrier and bulk copy (sm_90) for the kernels that move weights by the bulk copy engine.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
__device__ __forceinline__ void MbarExpectTx(uint64_t* bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared.b64 _, [%0], %1;\n" ::"r"(SmemAddr32(bar)),
               "r"(bytes)
               : "memory");
}
// One poll: true once phase `parity` of `bar` has completed.
__device__ __forceinline__ bool MbarTryWait(uint64_t* bar, uint32_t parity) {
  uint32_t done;
  asm volatile(
      "{\n .reg .pred p;\n mbarrier.try_wait.parity.shared.b64 p, [%1], %2;\n"
      " selp.u32 %0, 1, 0, p;\n}\n"
      : "=r"(done)
      : "r"(SmemAddr32(bar)), "r"(parity)
      : "memory");
  return done != 0;
}
// Waits for phase `parity` of `bar`; traps after ~2 s (a wrong byte count must not hang the GPU).
__device__ __forceinline__ void MbarWait(uint64_t* bar, uint32_t parity) {
  const long long t0 = clock64();
  while (!MbarTryWait(bar, parity)) {
    if (clock64() - t0 > (1LL << 32)) __trap();
  }
}
// Copies `bytes` (a multiple of 16) from global `src` to shared `dst` (both 16-byte aligned) on the
// bulk copy engine; completion is counted on `bar`.
__device__ __forceinline__ void BulkCopy(void* dst, const void* src, uint32_t bytes,
                                         uint64_t* bar) {
  asm volatile(
      "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::
          "r"(SmemAddr32(dst)),
      "l"(src), "r"(bytes), "r"(SmemAddr32(bar))
      : "memory");
}
#endif  // sm_90

// The contiguous range [begin, end) of `units` that this warp owns in a grid of kWarpsPerBlock-warp
// blocks (every warp the same count, +-1).
template <int kWarpsPerBlock>
__device__ __forceinline__ void WarpUnits(int64_t units, int64_t& begin, int64_t& end) {
  const int64_t warps = static_cast<int64_t>(gridDim.x) * kWarpsPerBlock;
  const int64_t gw = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
  begin = gw * units / warps;
  end = (gw + 1) * units / warps;
}

// Keeps the warp's next `prefetch_units` gate/up units on their way into L2 (GateUpUnits,
// GateUpUnitsTma): at its first unit u_begin the warp prefetches units u_begin + 1 .. + count, then
// one unit further per unit. Lane i < 2 * count prefetches row i % 2 (gate, up) of unit
// first + i / 2.
template <typename T>
__device__ __forceinline__ void PrefetchNextUnits(int64_t u, int64_t u_begin, int64_t u_end,
                                                  int prefetch_units, int pairs, int K,
                                                  const T* const* s_gate, const T* const* s_up,
                                                  int lane) {
  const int64_t first = u == u_begin ? u + 1 : u + prefetch_units;
  const int count = u == u_begin ? prefetch_units : 1;
  const int64_t pu = first + lane / 2;
  if (lane < 2 * count && pu < u_end) {
    const int pcol = static_cast<int>(pu / pairs);
    const int pj = static_cast<int>(pu - static_cast<int64_t>(pcol) * pairs);
    const T* base = lane & 1 ? s_up[pj] : s_gate[pj];
    if (base != nullptr)
      PrefetchL2(base + static_cast<int64_t>(pcol) * K, static_cast<uint32_t>(K) * 2u);
  }
}

// The gate/up units [u_begin, u_end) of one warp (decode_experts.cu, decode_fused.cu). Unit u is
// (output column u / pairs, h row j = u % pairs): h[j, column] = silu(x[token(j)] . gate_j[column])
// * (x[token(j)] . up_j[column]) in T; a unit whose gate_j is null is skipped (so are those of
// GateUpQuadUnits and GateUpUnitsTma: DecodeExpertsArgs::gate_table). Lane l reads 16 bytes at
// elements 8l + 256c, kChunks per row in flight, dots them with the token's row of x (global memory
// through L1, or shared memory with X_SHARED) in ascending k per lane, then a fixed xor tree sums
// the lanes. When K fits one pass, consecutive units of one weight row (sorted h rows) keep it in
// registers. EVICT_FIRST: weights carry the L2 evict_first policy. prefetch_units > 0: the warp
// keeps the rows of its next prefetch_units units on their way into L2 (bulk prefetches, issued
// before the loads of the first unit and then one unit per unit), so more bytes are in flight than
// the SM's outstanding loads allow and the later units' loads hit L2. trace (diagnostic builds):
// the block's decode timeline record, which gets the time the warp's first unit is stored.
template <typename T, int kChunks, bool X_SHARED, bool EVICT_FIRST>
__device__ __forceinline__ void GateUpUnits(int64_t u_begin, int64_t u_end, int pairs, int K,
                                            int inter, const T* const* s_gate, const T* const* s_up,
                                            const int* s_token, const T* x, int64_t ldx, T* h,
                                            int prefetch_units = 0,
                                            [[maybe_unused]] uint64_t* trace = nullptr) {
  const int lane = threadIdx.x & 31;
  const bool one_pass = K <= 256 * kChunks;
  const uint64_t policy = EVICT_FIRST ? L2EvictFirstPolicy() : 0;
  const T* held = nullptr;  // the gate row whose pass is in vg / vu
  uint4 vg[kChunks], vu[kChunks];
  for (int64_t u = u_begin; u < u_end; ++u) {
    const int col = static_cast<int>(u / pairs);
    const int j = static_cast<int>(u - static_cast<int64_t>(col) * pairs);
    if (s_gate[j] == nullptr) continue;  // a pair left for another launch
    const T* wg = s_gate[j] + static_cast<int64_t>(col) * K;
    const T* wu = s_up[j] + static_cast<int64_t>(col) * K;
    const T* xr = x + static_cast<int64_t>(s_token[j]) * ldx;
    const bool reuse = one_pass && wg == held;
    held = one_pass ? wg : nullptr;
    if (prefetch_units > 0) {
      PrefetchNextUnits(u, u_begin, u_end, prefetch_units, pairs, K, s_gate, s_up, lane);
    }
    float g = 0.0f, up = 0.0f;
    for (int k0 = lane * 8; k0 < K; k0 += 256 * kChunks) {
      // Every load of the pass is issued before the first use (chunks past K read as zeros).
      uint4 vx[kChunks];
#pragma unroll
      for (int c = 0; c < kChunks; ++c) {
        const int k = k0 + 256 * c;
        const bool ok = k < K;
        if (!reuse) {
          if constexpr (EVICT_FIRST) {
            vg[c] = ok ? LoadStreamingHinted(wg + k, policy) : make_uint4(0, 0, 0, 0);
            vu[c] = ok ? LoadStreamingHinted(wu + k, policy) : make_uint4(0, 0, 0, 0);
          } else {
            vg[c] = ok ? LoadStreaming(wg + k) : make_uint4(0, 0, 0, 0);
            vu[c] = ok ? LoadStreaming(wu + k) : make_uint4(0, 0, 0, 0);
          }
        }
        if constexpr (X_SHARED) {
          vx[c] = ok ? *reinterpret_cast<const uint4*>(xr + k) : make_uint4(0, 0, 0, 0);
        } else {
          vx[c] = ok ? LoadCached(xr + k) : make_uint4(0, 0, 0, 0);
        }
      }
#pragma unroll
      for (int c = 0; c < kChunks; ++c) {
        Dot8<T>(vg[c], vx[c], g);
        Dot8<T>(vu[c], vx[c], up);
      }
    }
    g = WarpSumF(g);
    up = WarpSumF(up);
    if (lane == 0) h[static_cast<int64_t>(j) * inter + col] = static_cast<T>(Silu(g) * up);
#ifdef MOE_GEMM_TRACE
    if (u == u_begin) DecodeTraceWarpMark(trace, DecodeTraceLayout::kFirstUnit);
#endif
  }
}

// GateUpUnits for packed weights (kernels/weight_layout.h), in units of four output columns: unit
// u is (columns 4 (u / pairs) .. + 3, h row u % pairs). Lane l takes row 4 (u / pairs) + l / 8 and
// the 16-byte chunk at position l % 8 of each of that row's 128-byte pieces (in ascending k), so
// one load of the warp is 512 contiguous bytes of a tile (four rows) and its kChunks loads in
// flight span kChunks tiles.
// Its sums are GateUpUnits's bits on row-major weights (an expert cache's slots hold those): there
// lane v sums chunks v, v + 32, ... of the row in ascending order, then a xor tree over offsets
// 16, 8, 4, 2, 1. Here the lane holding logical chunk c of each piece keeps one sum per piece
// index mod 4 (GateUpUnits's lanes c, c + 8, c + 16, c + 24), adds them as offsets 16 and 8 would,
// then shuffles over offsets 4, 2, 1 within the row's 8 lanes (a xor of the position is a xor of
// the chunk: both lanes swizzle by the same row).
// NOTES (H200, session 24, 1 token): reading packed weights row by row as GateUpUnits does (each
// warp load four 128-byte pieces of four tiles) made gate/up 4% slower than on row-major weights
// (Mixtral 118.3 -> 122.8 us); with these units the 1-token layer is 1.2 / 2.2 / 0.7% faster than
// on row-major weights at Qwen3 / DeepSeek-V2-Lite / the embedded model, 0.6% slower at Mixtral.
template <typename T, int kChunks>
__device__ __forceinline__ void GateUpQuadUnits(int64_t u_begin, int64_t u_end, int pairs, int K,
                                                int inter, const T* const* s_gate,
                                                const T* const* s_up, const int* s_token,
                                                const T* x, int64_t ldx, T* h,
                                                [[maybe_unused]] uint64_t* trace = nullptr) {
  static_assert(kChunks % 4 == 0, "each batch of pieces starts at a piece index of 0 mod 4");
  const int lane = threadIdx.x & 31;
  const int rr = lane >> 3, pc = lane & 7;
  const int kbs = K / kPackedCols;
  for (int64_t u = u_begin; u < u_end; ++u) {
    const int q = static_cast<int>(u / pairs);
    const int j = static_cast<int>(u - static_cast<int64_t>(q) * pairs);
    if (s_gate[j] == nullptr) continue;  // a pair left for another launch
    const int row = 4 * q + rr;
    const int c = pc ^ (row & 7);  // the logical chunk at position pc
    const int64_t w_off = PackedOffset(row, c * 8, K);
    const T* wg = s_gate[j] + w_off;
    const T* wu = s_up[j] + w_off;
    const T* xr = x + static_cast<int64_t>(s_token[j]) * ldx + c * 8;
    float g[4] = {0.0f, 0.0f, 0.0f, 0.0f}, up[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int kb0 = 0; kb0 < kbs; kb0 += kChunks) {
      uint4 vg[kChunks], vu[kChunks], vx[kChunks];
#pragma unroll
      for (int i = 0; i < kChunks; ++i) {
        const int kb = kb0 + i;
        const bool ok = kb < kbs;
        const int64_t wk = static_cast<int64_t>(kb) * kPackedTileElems;
        vg[i] = ok ? LoadStreaming(wg + wk) : make_uint4(0, 0, 0, 0);
        vu[i] = ok ? LoadStreaming(wu + wk) : make_uint4(0, 0, 0, 0);
        vx[i] = ok ? LoadCached(xr + kb * kPackedCols) : make_uint4(0, 0, 0, 0);
      }
#pragma unroll
      for (int i = 0; i < kChunks; ++i) {  // kb0 % 4 == 0: piece kb's sum is i % 4
        Dot8<T>(vg[i], vx[i], g[i % 4]);
        Dot8<T>(vu[i], vx[i], up[i % 4]);
      }
    }
    float gs = (g[0] + g[2]) + (g[1] + g[3]);  // offsets 16, then 8
    float us = (up[0] + up[2]) + (up[1] + up[3]);
#pragma unroll
    for (int o = 4; o > 0; o >>= 1) {
      gs += __shfl_xor_sync(0xffffffffu, gs, o);
      us += __shfl_xor_sync(0xffffffffu, us, o);
    }
    if (pc == 0) h[static_cast<int64_t>(j) * inter + row] = static_cast<T>(Silu(gs) * us);
#ifdef MOE_GEMM_TRACE
    if (u == u_begin) DecodeTraceWarpMark(trace, DecodeTraceLayout::kFirstUnit);
#endif
  }
}

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
// GateUpUnits with the weights moved by the bulk copy engine (sm_90): per unit, segments of up to
// kBufBytes / 4 elements of the gate and the up row go into the warp's buffer `buf` (kBufBytes,
// 16-byte aligned; completion on the warp's mbarrier `bar`, phase `parity`), then the lanes dot
// them with x (chunk c of a segment by lane c % 32, ascending). No L1 outstanding-load limit.
template <typename T, int kBufBytes, bool X_SHARED>
__device__ __forceinline__ void GateUpUnitsTma(int64_t u_begin, int64_t u_end, int pairs, int K,
                                               int inter, const T* const* s_gate,
                                               const T* const* s_up, const int* s_token, const T* x,
                                               int64_t ldx, T* h, int prefetch_units, uint4* buf,
                                               uint64_t* bar, uint32_t& parity) {
  constexpr int kSeg = kBufBytes / 4;  // elements of each row per batch
  const int lane = threadIdx.x & 31;
  uint4* bg = buf;
  uint4* bu = buf + kSeg / 8;
  for (int64_t u = u_begin; u < u_end; ++u) {
    const int col = static_cast<int>(u / pairs);
    const int j = static_cast<int>(u - static_cast<int64_t>(col) * pairs);
    if (s_gate[j] == nullptr) continue;  // a pair left for another launch
    const T* wg = s_gate[j] + static_cast<int64_t>(col) * K;
    const T* wu = s_up[j] + static_cast<int64_t>(col) * K;
    const T* xr = x + static_cast<int64_t>(s_token[j]) * ldx;
    if (prefetch_units > 0) {
      PrefetchNextUnits(u, u_begin, u_end, prefetch_units, pairs, K, s_gate, s_up, lane);
    }
    float g = 0.0f, up = 0.0f;
    for (int k0 = 0; k0 < K; k0 += kSeg) {
      const int n = min(kSeg, K - k0);  // a multiple of 8
      if (lane == 0) {
        MbarExpectTx(bar, static_cast<uint32_t>(n) * 4u);
        BulkCopy(bg, wg + k0, static_cast<uint32_t>(n) * 2u, bar);
        BulkCopy(bu, wu + k0, static_cast<uint32_t>(n) * 2u, bar);
      }
      MbarWait(bar, parity);
      parity ^= 1u;
#pragma unroll 4
      for (int c = lane; c < n / 8; c += 32) {
        uint4 xv;
        if constexpr (X_SHARED) {
          xv = *reinterpret_cast<const uint4*>(xr + k0 + 8 * c);
        } else {
          xv = LoadCached(xr + k0 + 8 * c);
        }
        Dot8<T>(bg[c], xv, g);
        Dot8<T>(bu[c], xv, up);
      }
      __syncwarp();  // every lane is done with the buffer before the next copies
    }
    g = WarpSumF(g);
    up = WarpSumF(up);
    if (lane == 0) h[static_cast<int64_t>(j) * inter + col] = static_cast<T>(Silu(g) * up);
  }
}
#endif  // sm_90

}  // namespace moe::cuda
