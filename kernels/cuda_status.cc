#include "kernels/cuda_status.h"

namespace moe::cuda {

Status CudaErrorToStatus(cudaError_t err, const char* expr, const char* file, int line) {
  std::string message =
      absl::StrCat("CUDA error ", cudaGetErrorName(err), " (", cudaGetErrorString(err), ") in `",
                   expr, "` at ", file, ":", line);
  if (err == cudaErrorMemoryAllocation) return absl::ResourceExhaustedError(message);
  return absl::InternalError(message);
}

StatusOr<bool> RunsSm90Image(const void* kernel) {
  int device = 0, major = 0;
  CUDA_RETURN_IF_ERROR(cudaGetDevice(&device));
  CUDA_RETURN_IF_ERROR(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  if (major < 9) return false;
  cudaFuncAttributes attr{};
  CUDA_RETURN_IF_ERROR(cudaFuncGetAttributes(&attr, kernel));
  return attr.ptxVersion >= 90 && attr.binaryVersion >= 90;
}

}  // namespace moe::cuda
