// Lossless compression of bf16 routed experts for the host tier ("exponent nibbles"), so that a
// miss moves ~24% fewer bytes over PCIe and the slot still receives the checkpoint's exact bits.
//
// A bf16 value is sign (1 bit), exponent (8) and mantissa (7). Sign and mantissa are one byte and
// stay as they are; the exponents of trained (and randomly initialised) weights sit within a few
// binades of their neighbourhood's largest one, so each exponent is coded in 4 bits against the
// largest exponent of its group of kCodecGroup consecutive elements (the group's "base"):
//   code c in 0..13: exponent = base - c      (the value is within 2^-13 of the group's largest)
//   code 14:         exponent = 0             (zero or subnormal; the mantissa byte says which)
//   code 15:         a patch                  (the exponent is stored in the blob's patch list)
// 1 + 1/2 + 1/64 bytes an element instead of 2 (0.758 of the raw size), plus 5 bytes per patch.
// Patches are rare (an element 2^14 times smaller than its group's largest but not zero: ~1e-4 of
// Gaussian weights); an expert with more than CodecExpertLayout::max_patches is not encoded (its
// misses copy the raw matrices, as without the codec).
//
// One expert is one blob (its three matrices in slot order, each of n elements):
//   [matrix 0: sm | codes | base][matrix 1: ...][matrix 2: ...][patch_idx][patch_exp]
//   sm:        n bytes, sign << 7 | mantissa
//   codes:     n / 2 bytes, element 2i in the low nibble of byte i, 2i + 1 in the high one
//   base:      n / kCodecGroup bytes, each group's largest exponent
//   patch_idx: uint32 element index within its matrix, matrix 0's patches first, each matrix's
//              ascending; patch_exp: the patched elements' exponents, in the same order.
// The device decoder is kernels/weight_codec.cu; this file's DecodeExpert is its reference.
//
// Thread safety: pure functions.
#pragma once

#include <array>
#include <cstdint>

#include "moe/common/status.h"

namespace moe::experts {

inline constexpr int64_t kCodecGroup = 64;  // elements that share one base exponent
inline constexpr int kCodecPatchCode = 15;
inline constexpr int kCodecZeroCode = 14;
inline constexpr int kCodecMaxOffset = 13;  // codes 0..13: base - code

// The blob layout of every expert of a model (all matrices have n elements).
struct CodecExpertLayout {
  int64_t n = 0;             // elements of each of the three matrices
  int64_t codes_offset = 0;  // within a matrix block: sm at 0, codes, base
  int64_t base_offset = 0;
  int64_t matrix_bytes = 0;    // one matrix block (16-byte multiple)
  int64_t max_patches = 0;     // per expert; more: the expert is not encoded
  int64_t max_blob_bytes = 0;  // 3 blocks + the most patches, rounded up to 16 bytes
};

// What encoding one expert produced (the blob's used bytes and its patches per matrix).
struct CodecExpertInfo {
  int64_t bytes = 0;
  std::array<int32_t, 3> patches = {0, 0, 0};
  int64_t total_patches() const { return int64_t{patches[0]} + patches[1] + patches[2]; }
  // Byte offsets of the patch lists inside the blob.
  int64_t patch_idx_offset(const CodecExpertLayout& l) const { return 3 * l.matrix_bytes; }
  int64_t patch_exp_offset(const CodecExpertLayout& l) const {
    return 3 * l.matrix_bytes + 4 * total_patches();
  }
};

// The layout for matrices of n elements. InvalidArgument unless n > 0 and n % kCodecGroup == 0
// (and the blob fits in 2^31 bytes, the device decoder's offsets).
StatusOr<CodecExpertLayout> MakeCodecLayout(int64_t n);

// Encodes the three matrices `src` (raw bf16 bits, n each, in slot order) into `blob`
// (layout.max_blob_bytes bytes). Returns false, with `blob` undefined, when the expert needs more
// than layout.max_patches patches; `info` is then unspecified.
bool EncodeExpert(const CodecExpertLayout& layout, const std::array<const uint16_t*, 3>& src,
                  uint8_t* blob, CodecExpertInfo* info);

// Decodes a blob that EncodeExpert wrote with `info` into `dst` (n bf16 values each), finding
// each patch as the device decoder does (a binary search of its matrix's patch list). DataLoss
// when a patch code has no patch (a corrupt blob).
Status DecodeExpert(const CodecExpertLayout& layout, const uint8_t* blob,
                    const CodecExpertInfo& info, const std::array<uint16_t*, 3>& dst);

}  // namespace moe::experts
