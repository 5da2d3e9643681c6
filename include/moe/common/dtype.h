// Element types of weights and activations, and exact scalar conversions between them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

#include "moe/common/status.h"

namespace moe {

// Element types a checkpoint or a request may carry. The engines compute with BF16, F16 and F32;
// F8_E4M3 (with scale tensors) is recognised by the loader and refused by the engines for now.
enum class DType : uint8_t { kF32, kF16, kBF16, kF8E4M3, kF64, kI64, kI32, kI16, kI8, kU8, kBool };

// Bytes per element.
size_t DTypeSize(DType dtype);
// Safetensors spelling: "F32", "F16", "BF16", "F8_E4M3", ...
std::string_view DTypeName(DType dtype);
// Parses the safetensors spelling; INVALID_ARGUMENT for anything unknown.
StatusOr<DType> ParseSafetensorsDType(std::string_view name);
// True for the types the engines accept as activations and weights (F32, F16, BF16).
inline bool IsComputeDType(DType d) { return d == DType::kF32 || d == DType::kF16 || d == DType::kBF16; }

// ---- Scalar conversions (round to nearest even, NaN preserved). ----
inline float Bf16ToF32(uint16_t h) {
  uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}
inline uint16_t F32ToBf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40);  // quiet NaN
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}
float F16ToF32(uint16_t h);
uint16_t F32ToF16(float f);

// Converts `n` elements of `src` (of type `src_type`, one of F32/F16/BF16) to float.
void ConvertToF32(DType src_type, const void* src, float* dst, size_t n);
// Converts `n` floats to `dst_type` (one of F32/F16/BF16), rounding to nearest even.
void ConvertFromF32(const float* src, DType dst_type, void* dst, size_t n);

}  // namespace moe
