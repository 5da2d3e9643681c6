// The probes' 16-byte read loop (stream_probe, burst_probe): lane `lane` of a warp reads chunks
// [begin, end) of `b` by ld.global.nc.L1::no_allocate, 32 * IN chunks a step with IN loads per
// lane in flight before the first use, and returns a fold of the words, which the caller keeps
// alive through a sink.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/decode_common.cuh"

template <int IN>
__device__ __forceinline__ uint32_t ReadChunks(const uint4* b, int64_t begin, int64_t end,
                                               int lane) {
  uint32_t acc = 0;
  for (int64_t c0 = begin + lane; c0 < end; c0 += 32 * IN) {
    uint4 v[IN];
#pragma unroll
    for (int i = 0; i < IN; ++i) {
      const int64_t c = c0 + 32 * i;
      v[i] = c < end ? moe::cuda::LoadStreaming(b + c) : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int i = 0; i < IN; ++i) acc ^= v[i].x ^ v[i].w;
  }
  return acc;
}
