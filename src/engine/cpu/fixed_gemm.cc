// Fixed-order fp32 GEMM micro-kernels (see fixed_gemm.h for why and how).
#include "engine/cpu/fixed_gemm.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

namespace moe::cpu {
namespace {

// ---- Portable: std::fma per element, the reference the vector kernels must equal bit for bit.
// ----
template <int kRows>
void KernelPortable(const float* const* x, int64_t k, const float* panel, float* c, int64_t ldc) {
  float acc[kRows][kPanel] = {};
  for (int64_t kk = 0; kk < k; ++kk) {
    const float* w = panel + kk * kPanel;
    for (int m = 0; m < kRows; ++m) {
      const float xv = x[m][kk];
      for (int j = 0; j < kPanel; ++j) acc[m][j] = std::fma(xv, w[j], acc[m][j]);
    }
  }
  for (int m = 0; m < kRows; ++m) std::memcpy(c + m * ldc, acc[m], sizeof(acc[m]));
}

// ---- AVX2 + FMA: 3 rows x 32 columns = 12 ymm accumulators. ----
template <int kRows>
__attribute__((target("avx2,fma"))) void KernelAvx2(const float* const* x, int64_t k,
                                                    const float* panel, float* c, int64_t ldc) {
  __m256 acc[kRows][4];
  for (int m = 0; m < kRows; ++m) {
    for (int v = 0; v < 4; ++v) acc[m][v] = _mm256_setzero_ps();
  }
  for (int64_t kk = 0; kk < k; ++kk) {
    const float* w = panel + kk * kPanel;
    for (int m = 0; m < kRows; ++m) {
      const __m256 xv = _mm256_broadcast_ss(x[m] + kk);
      for (int v = 0; v < 4; ++v)
        acc[m][v] = _mm256_fmadd_ps(xv, _mm256_load_ps(w + 8 * v), acc[m][v]);
    }
  }
  for (int m = 0; m < kRows; ++m) {
    for (int v = 0; v < 4; ++v) _mm256_storeu_ps(c + m * ldc + 8 * v, acc[m][v]);
  }
}

// ---- AVX-512: 8 rows x 32 columns = 16 zmm accumulators. ----
template <int kRows>
__attribute__((target("avx512f"))) void KernelAvx512(const float* const* x, int64_t k,
                                                     const float* panel, float* c, int64_t ldc) {
  __m512 acc[kRows][2];
  for (int m = 0; m < kRows; ++m) {
    acc[m][0] = _mm512_setzero_ps();
    acc[m][1] = _mm512_setzero_ps();
  }
  for (int64_t kk = 0; kk < k; ++kk) {
    const float* w = panel + kk * kPanel;
    const __m512 w0 = _mm512_load_ps(w);
    const __m512 w1 = _mm512_load_ps(w + 16);
    for (int m = 0; m < kRows; ++m) {
      const __m512 xv = _mm512_set1_ps(x[m][kk]);
      acc[m][0] = _mm512_fmadd_ps(xv, w0, acc[m][0]);
      acc[m][1] = _mm512_fmadd_ps(xv, w1, acc[m][1]);
    }
  }
  for (int m = 0; m < kRows; ++m) {
    _mm512_storeu_ps(c + m * ldc, acc[m][0]);
    _mm512_storeu_ps(c + m * ldc + 16, acc[m][1]);
  }
}

using KernelFn = void (*)(const float* const*, int64_t, const float*, float*, int64_t);

// One table per instruction set: entry r-1 computes r rows.
constexpr KernelFn kPortableTable[] = {KernelPortable<1>, KernelPortable<2>, KernelPortable<3>,
                                       KernelPortable<4>};
constexpr KernelFn kAvx2Table[] = {KernelAvx2<1>, KernelAvx2<2>, KernelAvx2<3>};
constexpr KernelFn kAvx512Table[] = {KernelAvx512<1>, KernelAvx512<2>, KernelAvx512<3>,
                                     KernelAvx512<4>, KernelAvx512<5>, KernelAvx512<6>,
                                     KernelAvx512<7>, KernelAvx512<8>};

}  // namespace

AlignedFloats AllocateFloats(int64_t n) {
  const size_t bytes =
      (static_cast<size_t>(std::max<int64_t>(n, 1)) * sizeof(float) + 63) / 64 * 64;
  auto* p = static_cast<float*>(std::aligned_alloc(64, bytes));
  std::memset(p, 0, bytes);
  return AlignedFloats(p);
}

PackedMatrix PackMatrix(const void* w, DType dtype, int64_t n, int64_t k) {
  PackedMatrix out;
  out.n = n;
  out.k = k;
  out.n_panels = (n + kPanel - 1) / kPanel;
  out.data = AllocateFloats(out.n_panels * k * kPanel);
  std::vector<float> row(static_cast<size_t>(k));
  const size_t elem = DTypeSize(dtype);
  for (int64_t r = 0; r < n; ++r) {
    ConvertToF32(dtype, static_cast<const char*>(w) + static_cast<size_t>(r * k) * elem, row.data(),
                 static_cast<size_t>(k));
    float* dst = out.data.get() + (r / kPanel) * k * kPanel + (r % kPanel);
    for (int64_t kk = 0; kk < k; ++kk) dst[kk * kPanel] = row[static_cast<size_t>(kk)];
  }
  return out;
}

bool GemmKernelSupported(GemmKernel kernel) {
  switch (kernel) {
    case GemmKernel::kPortable:
      return true;
    case GemmKernel::kAvx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case GemmKernel::kAvx512:
      return __builtin_cpu_supports("avx512f");
  }
  return false;
}

GemmKernel BestGemmKernel() {
  static const GemmKernel best = GemmKernelSupported(GemmKernel::kAvx512) ? GemmKernel::kAvx512
                                 : GemmKernelSupported(GemmKernel::kAvx2) ? GemmKernel::kAvx2
                                                                          : GemmKernel::kPortable;
  return best;
}

const char* GemmKernelName(GemmKernel kernel) {
  switch (kernel) {
    case GemmKernel::kPortable:
      return "portable";
    case GemmKernel::kAvx2:
      return "avx2";
    case GemmKernel::kAvx512:
      return "avx512";
  }
  return "?";
}

void GemmPanel(const float* const* x_rows, int64_t rows, const PackedMatrix& w, int64_t p,
               float* tile, int64_t ld_tile, GemmKernel kernel) {
  const KernelFn* table = kPortableTable;
  int max_rows = 4;
  if (kernel == GemmKernel::kAvx512) {
    table = kAvx512Table;
    max_rows = 8;
  } else if (kernel == GemmKernel::kAvx2) {
    table = kAvx2Table;
    max_rows = 3;
  }
  const float* panel = w.panel(p);
  for (int64_t r = 0; r < rows; r += max_rows) {
    const int here = static_cast<int>(std::min<int64_t>(max_rows, rows - r));
    table[here - 1](x_rows + r, w.k, panel, tile + r * ld_tile, ld_tile);
  }
}

}  // namespace moe::cpu
