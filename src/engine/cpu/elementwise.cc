#include "engine/cpu/elementwise.h"

#include <algorithm>
#include <cstdint>
#include <cstring>

namespace moe::cpu {
namespace {

// Cody-Waite range reduction x = n ln2 + r, |r| <= ln2 / 2, then a degree-7 Taylor polynomial
// (truncation error r^8 / 8! < 5e-9 relative) and a 2^n scale built from the exponent bits.
inline float Exp(float x) {
  x = std::min(std::max(x, -87.3f), 88.3f);
  const float t = x * 1.44269504088896341f;
  const float n = (t + 12582912.0f) - 12582912.0f;  // round to nearest integer (|t| < 2^22)
  float r = x - n * 0.693145751953125f;             // ln2 high part: n * hi is exact
  r = r - n * 1.4286068202862268e-06f;              // ln2 low part
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

}  // namespace

float FastExp(float x) { return Exp(x); }

__attribute__((target_clones("avx512f", "avx2", "default"))) void SiluMul(const float* g,
                                                                          const float* u,
                                                                          float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = g[i] / (1.0f + Exp(-g[i])) * u[i];
}

__attribute__((target_clones("avx512f", "avx2", "default"))) void AddScaled(float* acc, float w,
                                                                            const float* y,
                                                                            int64_t n) {
  for (int64_t i = 0; i < n; ++i) acc[i] += w * y[i];
}

}  // namespace moe::cpu
