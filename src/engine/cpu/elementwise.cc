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

// The loops, inlined into one function per instruction set below (each element sees the same IEEE
// operations whichever is chosen).
__attribute__((always_inline)) inline void SiluMulLoop(const float* g, const float* u, float* out,
                                                       int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = g[i] / (1.0f + Exp(-g[i])) * u[i];
}
__attribute__((always_inline)) inline void AddScaledLoop(float* acc, float w, const float* y,
                                                         int64_t n) {
  for (int64_t i = 0; i < n; ++i) acc[i] += w * y[i];
}

// NOTES: dispatch through a function pointer picked on first use, not GCC's target_clones: an
// ifunc resolver runs during relocation, before ThreadSanitizer's runtime is up, and crashes TSan
// builds.
__attribute__((target("avx512f"))) void SiluMulAvx512(const float* g, const float* u, float* out,
                                                      int64_t n) {
  SiluMulLoop(g, u, out, n);
}
__attribute__((target("avx2"))) void SiluMulAvx2(const float* g, const float* u, float* out,
                                                 int64_t n) {
  SiluMulLoop(g, u, out, n);
}
void SiluMulDefault(const float* g, const float* u, float* out, int64_t n) {
  SiluMulLoop(g, u, out, n);
}
__attribute__((target("avx512f"))) void AddScaledAvx512(float* acc, float w, const float* y,
                                                        int64_t n) {
  AddScaledLoop(acc, w, y, n);
}
__attribute__((target("avx2"))) void AddScaledAvx2(float* acc, float w, const float* y, int64_t n) {
  AddScaledLoop(acc, w, y, n);
}
void AddScaledDefault(float* acc, float w, const float* y, int64_t n) {
  AddScaledLoop(acc, w, y, n);
}

template <typename Fn>
Fn Pick(Fn avx512, Fn avx2, Fn fallback) {
  if (__builtin_cpu_supports("avx512f")) return avx512;
  if (__builtin_cpu_supports("avx2")) return avx2;
  return fallback;
}

}  // namespace

float FastExp(float x) { return Exp(x); }

void SiluMul(const float* g, const float* u, float* out, int64_t n) {
  static const auto fn = Pick(&SiluMulAvx512, &SiluMulAvx2, &SiluMulDefault);
  fn(g, u, out, n);
}

void AddScaled(float* acc, float w, const float* y, int64_t n) {
  static const auto fn = Pick(&AddScaledAvx512, &AddScaledAvx2, &AddScaledDefault);
  fn(acc, w, y, n);
}

}  // namespace moe::cpu
