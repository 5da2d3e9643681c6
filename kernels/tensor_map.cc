#include "kernels/tensor_map.h"

#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_runtime_api.h>

#include <cstring>

#include "absl/strings/str_cat.h"

namespace moe::cuda {
namespace {

static_assert(sizeof(CUtensorMap) == kTensorMapBytes, "CUtensorMap is 128 bytes");

// cuTensorMapEncodeTiled from the driver the runtime loaded (no link against libcuda).
StatusOr<PFN_cuTensorMapEncodeTiled_v12000> EncodeFn() {
  void* fn = nullptr;
  cudaDriverEntryPointQueryResult found = cudaDriverEntryPointSymbolNotFound;
  const cudaError_t err = cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000,
                                                           cudaEnableDefault, &found);
  if (err != cudaSuccess || found != cudaDriverEntryPointSuccess || fn == nullptr) {
    return absl::UnavailableError(absl::StrCat(
        "cuTensorMapEncodeTiled is not available from the CUDA driver: ", cudaGetErrorString(err)));
  }
  return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(fn);
}

// Encodes the descriptor of a validated `rank`-dimensional tensor into `out` (element strides 1,
// the 128-byte swizzle or none, 256-byte L2 promotion, zeros out of bounds).
Status EncodeTiled(const void* base, WType wtype, int rank, const cuuint64_t* dims,
                   const cuuint64_t* strides, const cuuint32_t* box, bool swizzle, void* out) {
  MOE_ASSIGN_OR_RETURN(PFN_cuTensorMapEncodeTiled_v12000 encode, EncodeFn());
  CUtensorMap map;
  std::memset(&map, 0, sizeof(map));
  const cuuint32_t elem_strides[5] = {1, 1, 1, 1, 1};
  const CUresult r = encode(
      &map,
      wtype == WType::kBF16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16,
      static_cast<cuuint32_t>(rank), const_cast<void*>(base), dims, strides, box, elem_strides,
      CU_TENSOR_MAP_INTERLEAVE_NONE,
      swizzle ? CU_TENSOR_MAP_SWIZZLE_128B : CU_TENSOR_MAP_SWIZZLE_NONE,
      CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS) {
    return absl::InternalError(
        absl::StrCat("cuTensorMapEncodeTiled failed with CUresult ", static_cast<int>(r)));
  }
  std::memcpy(out, &map, sizeof(map));
  return absl::OkStatus();
}

}  // namespace

Status EncodeTensorMap(const void* base, WType wtype, int64_t rows, int64_t cols, int64_t ld,
                       int box_rows, void* out) {
  if (base == nullptr || out == nullptr || rows <= 0 || cols <= 0 || ld < cols || box_rows <= 0 ||
      box_rows > 256) {
    return absl::InvalidArgumentError("EncodeTensorMap: bad matrix or box");
  }
  if (reinterpret_cast<uintptr_t>(base) % 16 != 0 || (ld * 2) % 16 != 0) {
    return absl::InvalidArgumentError(
        "EncodeTensorMap: base and row stride must be multiples of 16 bytes");
  }
  const cuuint64_t dims[2] = {static_cast<cuuint64_t>(cols), static_cast<cuuint64_t>(rows)};
  const cuuint64_t strides[1] = {static_cast<cuuint64_t>(ld * 2)};
  const cuuint32_t box[2] = {static_cast<cuuint32_t>(kTensorMapBoxCols),
                             static_cast<cuuint32_t>(box_rows)};
  return EncodeTiled(base, wtype, 2, dims, strides, box, /*swizzle=*/true, out);
}

Status EncodeTensorMapNd(const void* base, WType wtype, int rank, const int64_t* dims,
                         const int64_t* strides_bytes, const int* box, bool swizzle, void* out) {
  if (base == nullptr || out == nullptr || rank < 2 || rank > 5 || dims[0] != kTensorMapBoxCols ||
      box[0] != kTensorMapBoxCols) {
    return absl::InvalidArgumentError("EncodeTensorMapNd: bad tensor or box");
  }
  cuuint64_t d[5];
  cuuint64_t st[4];
  cuuint32_t b[5];
  for (int i = 0; i < rank; ++i) {
    if (dims[i] <= 0 || box[i] <= 0 || box[i] > 256 || box[i] > dims[i]) {
      return absl::InvalidArgumentError("EncodeTensorMapNd: bad tensor or box");
    }
    d[i] = static_cast<cuuint64_t>(dims[i]);
    b[i] = static_cast<cuuint32_t>(box[i]);
    if (i + 1 < rank) {
      if (strides_bytes[i] <= 0 || strides_bytes[i] % 16 != 0) {
        return absl::InvalidArgumentError("EncodeTensorMapNd: strides must be multiples of 16");
      }
      st[i] = static_cast<cuuint64_t>(strides_bytes[i]);
    }
  }
  if (reinterpret_cast<uintptr_t>(base) % 16 != 0) {
    return absl::InvalidArgumentError("EncodeTensorMapNd: base must be 16-byte aligned");
  }
  return EncodeTiled(base, wtype, rank, d, st, b, swizzle, out);
}

}  // namespace moe::cuda
