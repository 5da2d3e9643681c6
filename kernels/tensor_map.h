// TMA descriptors (CUtensorMap) of weight matrices and activations, for the GEMM kernels that load
// B (and, on 2 x 2 clusters, A) with the bulk tensor copy engine (grouped_gemm_sm90_cluster.cu).
// Host code: encodes on the host, the caller copies the 128-byte descriptors to device memory
// (64-byte aligned) before any launch that reads them.
#pragma once

#include <cstdint>

#include "kernels/moe_kernels.h"
#include "moe/common/status.h"

namespace moe::cuda {

inline constexpr int kTensorMapBytes = 128;
// One TMA box: 128 weight rows x 64 elements (128 bytes, the 128-byte swizzle span), written to
// shared memory in the swizzled K-major layout the wgmma descriptors read.
inline constexpr int kTensorMapBoxRows = 128;
inline constexpr int kTensorMapBoxCols = 64;

// Boxes of activations (A) for the 2 x 2 cluster kernel: 64 rows, half of a 128-row tile.
inline constexpr int kActTensorMapBoxRows = 64;
// Boxes of GEMM outputs (C) stored by TMA: 8 rows, half of one consumer warp's 16.
inline constexpr int kStoreTensorMapBoxRows = 8;

// Encodes into `out` (kTensorMapBytes) the descriptor of the row-major [rows, cols] matrix at
// `base` with row stride `ld` elements of `wtype`, in boxes of `box_rows` x kTensorMapBoxCols.
// Rows and columns past the matrix read as zero.
Status EncodeTensorMap(const void* base, WType wtype, int64_t rows, int64_t cols, int64_t ld,
                       int box_rows, void* out);
// Encodes into `out` the descriptor of a `rank`-dimensional tensor (2..5) at `base`: dims[0] is
// the innermost (kTensorMapBoxCols elements, 128 bytes, in every box), strides_bytes[i] the stride
// of dimension i + 1, box[i] the box's extent in dimension i; with `swizzle` the 128-byte swizzle
// of EncodeTensorMap, else boxes land as they lie (data already in that order, such as the packed
// weights of kernels/weight_layout.h).
Status EncodeTensorMapNd(const void* base, WType wtype, int rank, const int64_t* dims,
                         const int64_t* strides_bytes, const int* box, bool swizzle, void* out);
// EncodeTensorMap with kTensorMapBoxRows-row boxes (weights, B).
inline Status EncodeWeightTensorMap(const void* base, WType wtype, int64_t rows, int64_t cols,
                                    int64_t ld, void* out) {
  return EncodeTensorMap(base, wtype, rows, cols, ld, kTensorMapBoxRows, out);
}

}  // namespace moe::cuda
