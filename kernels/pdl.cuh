// Programmatic dependent launch (PDL, sm_90): a kernel launched with the attribute may start while
// the kernel before it on the stream still runs; it must call GridDepWait() before it reads what
// earlier kernels wrote or writes what they read. GridDepTrigger() lets the next kernel launch
// early. Both are no-ops on older devices and in kernels launched without the attribute.
//
// NOTES: every kernel of the fused layer waits before any global access that depends on an
// earlier kernel, in every block (also in blocks that leave early), so the completion of a kernel
// implies the completion of all kernels before it; code before the wait may read only data that
// was complete before the previous kernel started (weights, outputs of kernels two or more launches
// back; the forward's meta, which the forward's first kernel stores (LaunchStoreMeta, or at 1
// token the decode front that takes it as its argument, FrontArgs::store_meta), from the third
// kernel on: every kernel that can follow the meta kernel or that front waits before it reads the
// meta).
#pragma once

#include <cuda_runtime.h>

#include <utility>

namespace moe::cuda {

__device__ __forceinline__ void GridDepWait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void GridDepTrigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}

// Launches `kernel` on `stream`, with programmatic stream serialisation when `pdl`.
template <typename... Params, typename... Args>
cudaError_t LaunchMaybePdl(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem,
                           cudaStream_t stream, bool pdl, Args&&... args) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = pdl ? 1 : 0;
  return cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...);
}

}  // namespace moe::cuda
