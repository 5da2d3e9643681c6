// Shared helpers of the expert-cache GPU benchmarks (benchmark programs, not library code: a
// failed CUDA call or status ends the program with the expression and its error).
#pragma once

#include <cuda_runtime_api.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>

namespace moe::bench {

using Clock = std::chrono::steady_clock;

inline double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

}  // namespace moe::bench

#define MOE_BENCH_CHECK_CUDA(expr)                                                             \
  do {                                                                                         \
    const cudaError_t e_ = (expr);                                                             \
    if (e_ != cudaSuccess) {                                                                   \
      std::fprintf(stderr, "%s failed: %s (%s:%d)\n", #expr, cudaGetErrorString(e_), __FILE__, \
                   __LINE__);                                                                  \
      std::exit(1);                                                                            \
    }                                                                                          \
  } while (0)
#define MOE_BENCH_CHECK_OK(expr)                                                         \
  do {                                                                                   \
    const auto& s_ = (expr);                                                             \
    if (!s_.ok()) {                                                                      \
      std::fprintf(stderr, "%s failed: %s\n", #expr, std::string(s_.message()).c_str()); \
      std::exit(1);                                                                      \
    }                                                                                    \
  } while (0)
