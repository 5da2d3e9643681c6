// The probes' 16-byte read loop (stream_probe, burst_probe): lane `lane` of a warp reads its chunks
// of `b` by ld.global.nc.L1::no_allocate, 32 * IN chunks a step with IN loads per lane in flight
// before the first use, and returns a fold of the words, which the caller keeps alive through a
// sink. ReadChunks reads chunks [begin, end); ReadMappedChunks any order of chunks.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/decode_common.cuh"

// Chunks chunk(j) of `b` for j in [0, n), in that order.
template <int IN, typename Map>
__device__ __forceinline__ uint32_t ReadMappedChunks(const uint4* b, int64_t n, int lane,
                                                     Map chunk) {
  uint32_t acc = 0;
  for (int64_t j0 = lane; j0 < n; j0 += 32 * IN) {
    uint4 v[IN];
#pragma unroll
    for (int i = 0; i < IN; ++i) {
      const int64_t j = j0 + 32 * i;
      v[i] = j < n ? moe::cuda::LoadStreaming(b + chunk(j)) : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int i = 0; i < IN; ++i) acc ^= v[i].x ^ v[i].w;
  }
  return acc;
}

template <int IN>
__device__ __forceinline__ uint32_t ReadChunks(const uint4* b, int64_t begin, int64_t end,
                                               int lane) {
  return ReadMappedChunks<IN>(b, end - begin, lane, [begin](int64_t j) { return begin + j; });
}
