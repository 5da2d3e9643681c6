// Fixed-order fp32 GEMM micro-kernels (see fixed_gemm.h for why and how).
#include "engine/cpu/fixed_gemm.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

namespace moe::cpu {
namespace {

// Every kernel computes c[m][v] for m < kRows rows and kPanels panels of 32 columns (panel i at
// panel0 + i * panel_stride), continuing each element's FMA chain over kk in [k0, k1): from 0 when
// !accumulate, else from the value already in c (stored as float, so the chain is unchanged).

// ---- Portable: std::fma per element, the reference the vector kernels must equal bit for bit.
// ----
template <int kRows, int kPanels>
void KernelPortable(const float* const* x, int64_t k0, int64_t k1, const float* panel0,
                    int64_t panel_stride, float* c, int64_t ldc, bool accumulate) {
  float acc[kRows][kPanels * kPanel];
#pragma GCC unroll 64
  for (int m = 0; m < kRows; ++m) {
#pragma GCC unroll 64
    for (int j = 0; j < kPanels * kPanel; ++j) acc[m][j] = accumulate ? c[m * ldc + j] : 0.0f;
  }
  for (int64_t kk = k0; kk < k1; ++kk) {
#pragma GCC unroll 64
    for (int m = 0; m < kRows; ++m) {
      const float xv = x[m][kk];
#pragma GCC unroll 64
      for (int i = 0; i < kPanels; ++i) {
        const float* w = panel0 + i * panel_stride + kk * kPanel;
#pragma GCC unroll 64
        for (int j = 0; j < kPanel; ++j)
          acc[m][i * kPanel + j] = std::fma(xv, w[j], acc[m][i * kPanel + j]);
      }
    }
  }
#pragma GCC unroll 64
  for (int m = 0; m < kRows; ++m) std::memcpy(c + m * ldc, acc[m], sizeof(acc[m]));
}

// ---- AVX2 + FMA: 3 rows x 32 columns = 12 ymm accumulators (one panel at a time). ----
template <int kRows, int kPanels>
__attribute__((target("avx2,fma"))) void KernelAvx2(const float* const* x, int64_t k0, int64_t k1,
                                                    const float* panel0, int64_t panel_stride,
                                                    float* c, int64_t ldc, bool accumulate) {
  static_assert(kPanels == 1);
  __m256 acc[kRows][4];
#pragma GCC unroll 64
  for (int m = 0; m < kRows; ++m) {
#pragma GCC unroll 64
    for (int v = 0; v < 4; ++v) {
      acc[m][v] = accumulate ? _mm256_loadu_ps(c + m * ldc + 8 * v) : _mm256_setzero_ps();
    }
  }
  for (int64_t kk = k0; kk < k1; ++kk) {
    const float* w = panel0 + kk * kPanel;
#pragma GCC unroll 64
    for (int m = 0; m < kRows; ++m) {
      const __m256 xv = _mm256_broadcast_ss(x[m] + kk);
#pragma GCC unroll 64
      for (int v = 0; v < 4; ++v)
        acc[m][v] = _mm256_fmadd_ps(xv, _mm256_load_ps(w + 8 * v), acc[m][v]);
    }
  }
#pragma GCC unroll 64
  for (int m = 0; m < kRows; ++m) {
#pragma GCC unroll 64
    for (int v = 0; v < 4; ++v) _mm256_storeu_ps(c + m * ldc + 8 * v, acc[m][v]);
  }
}

// ---- AVX-512: 6 rows x 64 columns (two panels) = 24 zmm accumulators. ----
template <int kRows, int kPanels>
__attribute__((target("avx512f"))) void KernelAvx512(const float* const* x, int64_t k0, int64_t k1,
                                                     const float* panel0, int64_t panel_stride,
                                                     float* c, int64_t ldc, bool accumulate) {
  constexpr int kVecs = 2 * kPanels;
  __m512 acc[kRows][kVecs];
#pragma GCC unroll 64
  for (int m = 0; m < kRows; ++m) {
#pragma GCC unroll 64
    for (int v = 0; v < kVecs; ++v) {
      acc[m][v] = accumulate ? _mm512_loadu_ps(c + m * ldc + 16 * v) : _mm512_setzero_ps();
    }
  }
  const float* xr[kRows];
#pragma GCC unroll 64
  for (int m = 0; m < kRows; ++m) xr[m] = x[m];
  for (int64_t kk = k0; kk < k1; ++kk) {
    __m512 w[kVecs];
#pragma GCC unroll 64
    for (int v = 0; v < kVecs; ++v) {
      w[v] = _mm512_load_ps(panel0 + (v / 2) * panel_stride + kk * kPanel + 16 * (v % 2));
    }
#pragma GCC unroll 64
    for (int m = 0; m < kRows; ++m) {
      const __m512 xv = _mm512_set1_ps(xr[m][kk]);
#pragma GCC unroll 64
      for (int v = 0; v < kVecs; ++v) acc[m][v] = _mm512_fmadd_ps(xv, w[v], acc[m][v]);
    }
  }
#pragma GCC unroll 64
  for (int m = 0; m < kRows; ++m) {
#pragma GCC unroll 64
    for (int v = 0; v < kVecs; ++v) _mm512_storeu_ps(c + m * ldc + 16 * v, acc[m][v]);
  }
}

using KernelFn = void (*)(const float* const*, int64_t, int64_t, const float*, int64_t, float*,
                          int64_t, bool);

// Kernels of one instruction set: [panels - 1][rows - 1], panels in {1, max_panels}.
struct KernelSet {
  int max_rows;
  int max_panels;
  KernelFn fn[2][6];
};

#define MOE_KERNEL_ROW(F, P) \
  { F<1, P>, F<2, P>, F<3, P>, F<4, P>, F<5, P>, F<6, P> }
constexpr KernelSet kPortableSet = {
    4, 2, {MOE_KERNEL_ROW(KernelPortable, 1), MOE_KERNEL_ROW(KernelPortable, 2)}};
constexpr KernelSet kAvx2Set = {
    3, 1, {MOE_KERNEL_ROW(KernelAvx2, 1), MOE_KERNEL_ROW(KernelAvx2, 1)}};
constexpr KernelSet kAvx512Set = {
    6, 2, {MOE_KERNEL_ROW(KernelAvx512, 1), MOE_KERNEL_ROW(KernelAvx512, 2)}};
#undef MOE_KERNEL_ROW

// K block: a panel pair's W rows [kb, kb + kKBlock) are 128 x 64 floats = 32 KB, which stay in L1
// while every row block of X passes over them (X rows stream from L2).
constexpr int64_t kKBlock = 128;

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

void GemmPanels(const float* const* x_rows, int64_t rows, const PackedMatrix& w, int64_t p0,
                int64_t n_panels, float* c, int64_t ldc, GemmKernel kernel) {
  const KernelSet& set = kernel == GemmKernel::kAvx512 ? kAvx512Set
                         : kernel == GemmKernel::kAvx2 ? kAvx2Set
                                                       : kPortableSet;
  const int64_t stride = w.k * kPanel;
  for (int64_t kb = 0; kb < w.k; kb += kKBlock) {
    const int64_t ke = std::min(w.k, kb + kKBlock);
    for (int64_t p = 0; p < n_panels; p += set.max_panels) {
      const int np = static_cast<int>(std::min<int64_t>(set.max_panels, n_panels - p));
      for (int64_t r = 0; r < rows; r += set.max_rows) {
        const int here = static_cast<int>(std::min<int64_t>(set.max_rows, rows - r));
        set.fn[np - 1][here - 1](x_rows + r, kb, ke, w.panel(p0 + p), stride,
                                 c + r * ldc + p * kPanel, ldc, kb > 0);
      }
    }
  }
}

}  // namespace moe::cpu
