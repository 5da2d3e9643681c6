// Helpers shared by the GPU test binaries: whether a CUDA device is present, and the skip every
// GPU test opens with (ctest label `gpu`; without a device the test skips with a reason).
#pragma once

#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

namespace moe::testing {

// True when the CUDA runtime sees at least one device. Clears the runtime's sticky error, so a
// machine without a driver leaves no error behind for the next CUDA call.
inline bool HaveGpu() {
  int n = 0;
  const bool ok = cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
  cudaGetLastError();
  return ok;
}

}  // namespace moe::testing

// Skips the current test (GTEST_SKIP) where there is no CUDA device.
#define MOE_REQUIRE_GPU() \
  if (!::moe::testing::HaveGpu()) GTEST_SKIP() << "no CUDA device on this machine"
