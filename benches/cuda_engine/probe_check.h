// What the standalone probes of this folder share: PROBE_CHECK(call) stops with the file, line,
// call and CUDA error when a runtime call fails; GlobalTimeNs() reads the GPU's global timer.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>

#define PROBE_CHECK(x)                                                                        \
  do {                                                                                        \
    const cudaError_t e_ = (x);                                                               \
    if (e_ != cudaSuccess) {                                                                  \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
      std::exit(1);                                                                           \
    }                                                                                         \
  } while (0)

#ifdef __CUDACC__
// %globaltimer in nanoseconds (comparable across the SMs, unlike clock64).
__device__ __forceinline__ uint64_t GlobalTimeNs() {
  uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}
#endif
