// A fixed-order fp32 GEMM for C = X · Wᵀ with W in torch Linear layout [n, k], used where results
// must be bitwise identical whatever the number of rows M and a row's position (batch invariance).
//
// Why not OpenBLAS sgemm: on this machine (OpenBLAS 0.3.21, Haswell kernels on AMD Zen) a row of
// C differs in its last bits between calls with different M, and even with the same M at a
// different row offset (tests/engine_cpu/fixed_gemm_test.cc measures it), because its edge kernels
// and K splits accumulate in different orders.
//
// How this one is fixed-order:
//   1. W is packed once into panels of kPanel = 32 columns: panel p holds W[p*32 + j, kk] at
//      [kk * 32 + j] (columns past n are zero).
//   2. Every C element is ONE chain of fused multiply-adds over kk = 0, 1, ..., k-1 starting from
//   0:
//      c = fma(x[kk], w[kk], c). No K split, no horizontal reduction, no dependence on M, on the
//      row block a row falls in, or on the instruction set: the AVX-512, AVX2 and portable kernels
//      compute the same single-rounded FMAs, so they agree bit for bit.
//   3. A micro-kernel computes a block of rows x panels in registers (AVX-512: 6 rows x 64
//      columns); tails use the same template with fewer rows or one panel. K is split into blocks
//      for cache reuse; between blocks an element's running sum waits in C as a float, which
//      leaves its FMA chain unchanged.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <memory>

#include "moe/common/dtype.h"

namespace moe::cpu {

inline constexpr int kPanel = 32;

struct AlignedFree {
  void operator()(float* p) const { std::free(p); }
};
using AlignedFloats = std::unique_ptr<float[], AlignedFree>;
// 64-byte aligned, zero-filled buffer of `n` floats (n may be 0).
AlignedFloats AllocateFloats(int64_t n);

// W [n, k] (torch Linear [out, in]) converted to fp32 and packed into panels.
struct PackedMatrix {
  int64_t n = 0;         // output columns (rows of W)
  int64_t k = 0;         // reduction length (columns of W)
  int64_t n_panels = 0;  // ceil(n / kPanel)
  AlignedFloats data;    // [n_panels][k][kPanel]

  const float* panel(int64_t p) const { return data.get() + p * k * kPanel; }
  int64_t bytes() const { return n_panels * k * kPanel * static_cast<int64_t>(sizeof(float)); }
};

// Packs rows [0, n) of `w` ([n, k] row-major, dtype F32/F16/BF16) into panels.
PackedMatrix PackMatrix(const void* w, DType dtype, int64_t n, int64_t k);

// Instruction sets the micro-kernel is compiled for; all give bitwise-identical results.
enum class GemmKernel : uint8_t { kPortable, kAvx2, kAvx512 };
// The fastest kernel this CPU supports (decided once).
GemmKernel BestGemmKernel();
bool GemmKernelSupported(GemmKernel kernel);
// "portable", "avx2" or "avx512".
const char* GemmKernelName(GemmKernel kernel);

// Computes panels [p0, p0 + n_panels) of C = X · Wᵀ: c[m][j] = sum_kk x_rows[m][kk] *
// W[p0*32 + j, kk] for m < rows, j < n_panels * 32 (columns past w.n come out 0), written with row
// stride `ldc` (>= n_panels * 32). `x_rows[m]` points at a row of w.k floats. Any rows >= 1.
// The value of each element depends only on its own x row and W column (see the file comment):
// not on rows, on the row's index, on p0 / n_panels, or on `kernel` (which must be supported).
void GemmPanels(const float* const* x_rows, int64_t rows, const PackedMatrix& w, int64_t p0,
                int64_t n_panels, float* c, int64_t ldc, GemmKernel kernel = BestGemmKernel());

}  // namespace moe::cpu
