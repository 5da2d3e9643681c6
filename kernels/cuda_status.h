// CUDA errors as absl::Status: CUDA_RETURN_IF_ERROR(expr) returns a status naming the error, the
// failing expression and file:line. Out-of-memory becomes RESOURCE_EXHAUSTED, anything else
// INTERNAL.
#pragma once

#include <cuda_runtime_api.h>

#include "moe/common/status.h"

namespace moe::cuda {

Status CudaErrorToStatus(cudaError_t err, const char* expr, const char* file, int line);

}  // namespace moe::cuda

#define CUDA_RETURN_IF_ERROR(expr)                                                     \
  do {                                                                                 \
    const cudaError_t moe_cuda_err_ = (expr);                                          \
    if (moe_cuda_err_ != cudaSuccess) {                                                \
      return ::moe::cuda::CudaErrorToStatus(moe_cuda_err_, #expr, __FILE__, __LINE__); \
    }                                                                                  \
  } while (0)
