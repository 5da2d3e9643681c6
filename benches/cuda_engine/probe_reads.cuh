// The probes' 16-byte read loop (stream_probe, burst_probe): lane `lane` of a warp reads its chunks
// of `b` by ld.global.nc.L1::no_allocate, 32 * IN chunks a step with IN loads per lane in flight
// before the first use, and returns a fold of the words, which the caller keeps alive through a
// sink. ReadChunks reads chunks [begin, end); ReadMappedChunks any order of chunks.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/decode_common.cuh"

// What the read loop does with each chunk (ReadMappedChunks).
enum class Use {
  kXor,       // folds two words (no arithmetic to speak of)
  kDotChain,  // dots it with a 16-byte chunk of x (read through L1) as 8 bf16 products into ONE
              // f32 sum, as the decode kernels do: 8 dependent FMAs a chunk, IN * 8 a batch
  kDotIlp,    // the same products, a separate sum per chunk of the batch (IN chains of 8)
  kDotPiped,  // kDotIlp with the next batch's loads issued before this batch's dots
};

// Chunks chunk(j) of `b` for j in [0, n), in that order, IN loads a lane in flight (twice that at
// a batch boundary with kDotPiped). The dots measure how the arithmetic between a warp's batches
// of loads slows the stream (x: 256 chunks read through L1).
template <int IN, Use USE = Use::kXor, typename Map>
__device__ __forceinline__ uint32_t ReadMappedChunks(const uint4* b, int64_t n, int lane, Map chunk,
                                                     const uint4* x = nullptr) {
  constexpr bool kDot = USE != Use::kXor;
  uint32_t acc = 0;
  float dot[IN] = {};
  uint4 v[IN], xv[IN];
  const auto load = [&](int64_t j0) {
#pragma unroll
    for (int i = 0; i < IN; ++i) {
      const int64_t j = j0 + 32 * i;
      v[i] = j < n ? moe::cuda::LoadStreaming(b + chunk(j)) : make_uint4(0, 0, 0, 0);
      if constexpr (kDot) xv[i] = moe::cuda::LoadCached(x + (j & 255));
    }
  };
  if constexpr (USE == Use::kDotPiped) {
    if (lane < n) load(lane);
    for (int64_t j0 = lane; j0 < n; j0 += 32 * IN) {
      uint4 w[IN], xw[IN];
#pragma unroll
      for (int i = 0; i < IN; ++i) {
        w[i] = v[i];
        xw[i] = xv[i];
      }
      if (j0 + 32 * IN < n) load(j0 + 32 * IN);
#pragma unroll
      for (int i = 0; i < IN; ++i) moe::cuda::Dot8<__nv_bfloat16>(w[i], xw[i], dot[i]);
    }
  } else {
    for (int64_t j0 = lane; j0 < n; j0 += 32 * IN) {
      load(j0);
#pragma unroll
      for (int i = 0; i < IN; ++i) {
        if constexpr (USE == Use::kDotChain) {
          moe::cuda::Dot8<__nv_bfloat16>(v[i], xv[i], dot[0]);
        } else if constexpr (USE == Use::kDotIlp) {
          moe::cuda::Dot8<__nv_bfloat16>(v[i], xv[i], dot[i]);
        } else {
          acc ^= v[i].x ^ v[i].w;
        }
      }
    }
  }
  if constexpr (kDot) {
    float sum = 0.0f;
#pragma unroll
    for (int i = 0; i < IN; ++i) sum += dot[i];
    acc = __float_as_uint(sum);
  }
  return acc;
}

template <int IN, Use USE = Use::kXor>
__device__ __forceinline__ uint32_t ReadChunks(const uint4* b, int64_t begin, int64_t end, int lane,
                                               const uint4* x = nullptr) {
  return ReadMappedChunks<IN, USE>(
      b, end - begin, lane, [begin](int64_t j) { return begin + j; }, x);
}
