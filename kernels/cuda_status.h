// CUDA errors as absl::Status: CUDA_RETURN_IF_ERROR(expr) returns a status naming the error, the
// failing expression and file:line. Out-of-memory becomes RESOURCE_EXHAUSTED, anything else
// INTERNAL. Also the start-up check of kernels whose body exists for sm_90 only.
#pragma once

#include <cuda_runtime_api.h>

#include "moe/common/status.h"

namespace moe::cuda {

Status CudaErrorToStatus(cudaError_t err, const char* expr, const char* file, int line);

// True when the current device is sm_90 or newer and `kernel` runs there from an sm_90 image: a
// body guarded by __CUDA_ARCH__ >= 900 is empty in an sm_80 image (or compute_80 PTX JIT-compiled
// for the device), so such kernels must not be launched then.
StatusOr<bool> RunsSm90Image(const void* kernel);

}  // namespace moe::cuda

#define CUDA_RETURN_IF_ERROR(expr)                                                     \
  do {                                                                                 \
    const cudaError_t moe_cuda_err_ = (expr);                                          \
    if (moe_cuda_err_ != cudaSuccess) {                                                \
      return ::moe::cuda::CudaErrorToStatus(moe_cuda_err_, #expr, __FILE__, __LINE__); \
    }                                                                                  \
  } while (0)
