// Packing of weight matrices into kernels/weight_layout.h's kPacked layout (at load time).
#include <cuda_runtime.h>

#include "kernels/cuda_status.h"
#include "kernels/moe_kernels.h"
#include "kernels/routing_device.cuh"  // GridFor
#include "kernels/weight_layout.h"

namespace moe::cuda {
namespace {

// Thread i writes 16-byte chunk i of the packed matrix: chunk position i % 8 of row (i / 8) % 128
// of tile i / 1024, which holds the row-major chunk (i % 8) ^ (row % 8).
__global__ void PackWeightsKernel(const uint4* src, uint4* dst, int64_t chunks, int64_t cols) {
  const int64_t col_blocks = cols / kPackedCols;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < chunks;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = (i >> 3) & (kPackedRows - 1), tile = i >> 10;
    const int64_t c = (i & 7) ^ (r & 7);
    const int64_t row = (tile / col_blocks) * kPackedRows + r;
    const int64_t col = (tile % col_blocks) * kPackedCols + c * 8;
    dst[i] = src[(row * cols + col) / 8];
  }
}

}  // namespace

Status LaunchPackWeights(const void* src, void* dst, int64_t rows, int64_t cols,
                         cudaStream_t stream) {
  if (src == nullptr || dst == nullptr || src == dst || !PackableShape(rows, cols)) {
    return absl::InvalidArgumentError(
        "PackWeights: needs distinct buffers, rows % 128 == 0 and cols % 64 == 0");
  }
  const int64_t chunks = rows * cols / 8;
  PackWeightsKernel<<<GridFor(chunks, 256), 256, 0, stream>>>(
      static_cast<const uint4*>(src), static_cast<uint4*>(dst), chunks, cols);
  CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

}  // namespace moe::cuda
