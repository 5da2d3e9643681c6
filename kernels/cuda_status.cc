#include "kernels/cuda_status.h"

namespace moe::cuda {

Status CudaErrorToStatus(cudaError_t err, const char* expr, const char* file, int line) {
  std::string message =
      absl::StrCat("CUDA error ", cudaGetErrorName(err), " (", cudaGetErrorString(err), ") in `",
                   expr, "` at ", file, ":", line);
  if (err == cudaErrorMemoryAllocation) return absl::ResourceExhaustedError(message);
  return absl::InternalError(message);
}

}  // namespace moe::cuda
