// MOE_HD marks a function that both the host compiler and nvcc's device pass compile (plain C++
// without nvcc), for the few computations the CPU and a kernel must do identically.
#pragma once

#if defined(__CUDACC__)
#define MOE_HD __host__ __device__
#else
#define MOE_HD
#endif
