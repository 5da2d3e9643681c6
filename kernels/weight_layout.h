// Device layouts of the routed experts' weight matrices (a GEMM's B: [rows, cols] = [N, K]).
//
// kRowMajor: row n at n * cols, as the checkpoint stores it.
// kPacked: tiles of kPackedRows x kPackedCols elements (128 x 64, 16 KiB), row blocks outermost:
//   tile (n / 128, k / 64) starts at ((n / 128) * (cols / 64) + k / 64) * kPackedTileElems, and
//   inside it row r = n % 128 holds its 64 elements in 128 bytes whose 16-byte chunk c lies at
//   position c ^ (r % 8): the 128-byte swizzle in which TMA writes a box into shared memory. One
//   128-row x 64-column box of a weight panel, what a stage of the cluster GEMM reads per half
//   (kernels/grouped_gemm_sm90_cluster.cu), is then one contiguous 16 KiB block already in its
//   shared-memory order, so a 1-D bulk copy moves it (cp.async.bulk) instead of a tensor copy.
//   Only shapes with rows % 128 == 0 and cols % 64 == 0 are packed (PackableShape).
// NOTES (H200, session 24, benches/RESULTS.md): reads of a 2 GiB buffer (stream_probe) by 1-D
// bulk copies of 4-16 KiB run at 4.60-4.63 TB/s, by 2-D tensor copies of 128 x 64 boxes of a
// row-major matrix at 4.34-4.40, and by 4-D tensor copies of the same boxes of the packed layout
// (each box contiguous) at 4.30-4.41: the copy path, not the layout, sets the rate. The cluster
// GEMMs on packed weights by bulk copies: Mixtral 64 tokens 691 -> 659 us, 256 740 -> 703.
#pragma once

#include <cstdint>

#include "moe/common/host_device.h"

namespace moe::cuda {

enum class WeightLayout : uint8_t { kRowMajor, kPacked };

inline constexpr int kPackedRows = 128;
inline constexpr int kPackedCols = 64;
inline constexpr int kPackedTileElems = kPackedRows * kPackedCols;

inline constexpr bool PackableShape(int64_t rows, int64_t cols) {
  return rows > 0 && cols > 0 && rows % kPackedRows == 0 && cols % kPackedCols == 0;
}

// Element offset of (row, col) in a packed [rows, cols] matrix (PackableShape).
MOE_HD inline constexpr int64_t PackedOffset(int64_t row, int64_t col, int64_t cols) {
  return ((row >> 7) * (cols >> 6) + (col >> 6)) * kPackedTileElems + ((row & 127) << 6) +
         ((((col >> 3) & 7) ^ (row & 7)) << 3) + (col & 7);
}

}  // namespace moe::cuda
