// OpenBLAS, loaded on first use with dlopen() rather than linked.
//
// NOTES: Debian's libopenblas pulls in libgfortran and libquadmath, and libquadmath's constructor
// registers a printf type with glibc. From then on every printf in the process takes glibc's
// "positional" path, which needs several KiB more stack; civetweb's workers (the side HTTP port)
// run on ~100 KiB stacks and overflowed inside vsnprintf. The daemon's default GEMM backend is our
// fixed-order kernel, so OpenBLAS is only loaded when kOpenBlas is asked for.
//
// Thread safety: Load() is safe from any thread; the returned table is immutable.
#pragma once

#include "moe/common/status.h"

namespace moe::cpu {

struct OpenBlas {
  // cblas_sgemm(order, transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc) with the
  // CBLAS enum values (row-major = 101, no-trans = 111, trans = 112).
  void (*sgemm)(int, int, int, int, int, int, float, const float*, int, const float*, int, float,
                float*, int) = nullptr;
  void (*set_num_threads)(int) = nullptr;
};

inline constexpr int kCblasRowMajor = 101;
inline constexpr int kCblasNoTrans = 111;
inline constexpr int kCblasTrans = 112;

// Loads libopenblas.so.0 once; FAILED_PRECONDITION naming the library when it is missing.
StatusOr<const OpenBlas*> LoadOpenBlas();

}  // namespace moe::cpu
