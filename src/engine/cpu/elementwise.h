// Element-wise loops of the CPU engine (SwiGLU activation, weighted accumulation), vectorised for
// the best instruction set at run time yet bitwise identical on every code path: each element goes
// through the same IEEE operations in the same order (no FMA contraction, see -ffp-contract=off in
// CMakeLists.txt), so vector body, scalar tail and instruction set agree.
#pragma once

#include <cstdint>

namespace moe::cpu {

// exp(x) for x in float range, within ~2 ulp; fixed sequence of IEEE operations (no libm call,
// so it vectorises). Below -87.3 it returns exp(-87.3); above 88.3, exp(88.3).
float FastExp(float x);

// out[i] = silu(g[i]) * u[i] = g[i] / (1 + exp(-g[i])) * u[i] for i < n.
void SiluMul(const float* g, const float* u, float* out, int64_t n);

// acc[i] += w * y[i] for i < n (a multiply, then an add: two roundings).
void AddScaled(float* acc, float w, const float* y, int64_t n);

}  // namespace moe::cpu
