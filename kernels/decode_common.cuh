// Device helpers of the CUDA-core decode kernels (decode_gemv.cu, decode_experts.cu): 16-byte
// weight and activation loads and 8-element dot products with f32 accumulation.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

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

__device__ __forceinline__ float WarpSumF(float v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

}  // namespace moe::cuda
