#include "moe/experts/weight_codec.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"

namespace moe::experts {
namespace {

int64_t RoundUp16(int64_t v) { return (v + 15) / 16 * 16; }

int Exponent(uint16_t v) { return (v >> 7) & 0xff; }

}  // namespace

StatusOr<CodecExpertLayout> MakeCodecLayout(int64_t n) {
  if (n <= 0 || n % kCodecGroup != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "weight codec: a matrix of ", n, " elements is not a positive multiple of ", kCodecGroup));
  }
  CodecExpertLayout l;
  l.n = n;
  l.codes_offset = RoundUp16(n);
  l.base_offset = l.codes_offset + RoundUp16(n / 2);
  l.matrix_bytes = l.base_offset + RoundUp16(n / kCodecGroup);
  // One patch in 256 elements: ~25x what Gaussian weights need; beyond it the codec saves little.
  l.max_patches = std::max<int64_t>(16, 3 * n / 256);
  l.max_blob_bytes = RoundUp16(3 * l.matrix_bytes + 5 * l.max_patches);
  if (l.max_blob_bytes >= (int64_t{1} << 31)) {
    return absl::InvalidArgumentError(
        absl::StrCat("weight codec: matrices of ", n, " elements are too large"));
  }
  return l;
}

bool EncodeExpert(const CodecExpertLayout& layout, const std::array<const uint16_t*, 3>& src,
                  uint8_t* blob, CodecExpertInfo* info) {
  const int64_t n = layout.n;
  // Patches are collected first, then placed after the three blocks (their count is not known
  // before the last matrix).
  std::vector<uint32_t> patch_idx;
  std::vector<uint8_t> patch_exp;
  for (int m = 0; m < 3; ++m) {
    const uint16_t* s = src[m];
    uint8_t* sm = blob + m * layout.matrix_bytes;
    uint8_t* codes = sm + layout.codes_offset;
    uint8_t* base = sm + layout.base_offset;
    const size_t patches_before = patch_idx.size();
    for (int64_t g = 0; g < n / kCodecGroup; ++g) {
      const uint16_t* v = s + g * kCodecGroup;
      int b = 0;
      for (int i = 0; i < kCodecGroup; ++i) b = std::max(b, Exponent(v[i]));
      base[g] = static_cast<uint8_t>(b);
      for (int i = 0; i < kCodecGroup; i += 2) {
        int c[2];
        for (int u = 0; u < 2; ++u) {
          const int64_t idx = g * kCodecGroup + i + u;
          const int e = Exponent(v[i + u]);
          sm[idx] = static_cast<uint8_t>(((v[i + u] >> 8) & 0x80) | (v[i + u] & 0x7f));
          if (e == 0) {
            c[u] = kCodecZeroCode;
          } else if (b - e <= kCodecMaxOffset) {
            c[u] = b - e;
          } else {
            c[u] = kCodecPatchCode;
            patch_idx.push_back(static_cast<uint32_t>(idx));
            patch_exp.push_back(static_cast<uint8_t>(e));
          }
        }
        codes[(g * kCodecGroup + i) / 2] = static_cast<uint8_t>(c[0] | (c[1] << 4));
      }
    }
    // Zero the alignment padding so that blobs are deterministic.
    std::memset(sm + n, 0, static_cast<size_t>(layout.codes_offset - n));
    std::memset(codes + n / 2, 0,
                static_cast<size_t>(layout.base_offset - layout.codes_offset - n / 2));
    std::memset(base + n / kCodecGroup, 0,
                static_cast<size_t>(layout.matrix_bytes - layout.base_offset - n / kCodecGroup));
    if (static_cast<int64_t>(patch_idx.size()) > layout.max_patches) return false;
    info->patches[m] = static_cast<int32_t>(patch_idx.size() - patches_before);
  }
  const int64_t p = static_cast<int64_t>(patch_idx.size());
  uint8_t* tail = blob + 3 * layout.matrix_bytes;
  if (p > 0) {
    std::memcpy(tail, patch_idx.data(), static_cast<size_t>(4 * p));
    std::memcpy(tail + 4 * p, patch_exp.data(), static_cast<size_t>(p));
  }
  info->bytes = RoundUp16(3 * layout.matrix_bytes + 5 * p);
  std::memset(tail + 5 * p, 0, static_cast<size_t>(info->bytes - 3 * layout.matrix_bytes - 5 * p));
  return true;
}

Status DecodeExpert(const CodecExpertLayout& layout, const uint8_t* blob,
                    const CodecExpertInfo& info, const std::array<uint16_t*, 3>& dst) {
  const int64_t n = layout.n;
  const uint8_t* patch_idx_bytes = blob + info.patch_idx_offset(layout);
  const uint8_t* patch_exp = blob + info.patch_exp_offset(layout);
  std::vector<uint32_t> patch_idx(static_cast<size_t>(info.total_patches()));
  if (!patch_idx.empty()) std::memcpy(patch_idx.data(), patch_idx_bytes, 4 * patch_idx.size());
  int64_t first = 0;
  for (int m = 0; m < 3; ++m) {
    const uint8_t* sm = blob + m * layout.matrix_bytes;
    const uint8_t* codes = sm + layout.codes_offset;
    const uint8_t* base = sm + layout.base_offset;
    const auto begin = patch_idx.begin() + first, end = begin + info.patches[m];
    for (int64_t i = 0; i < n; ++i) {
      const int c = (codes[i / 2] >> (4 * (i % 2))) & 0xf;
      int e;
      if (c == kCodecZeroCode) {
        e = 0;
      } else if (c == kCodecPatchCode) {
        // As the device decoder: a binary search of the matrix's patches.
        const auto it = std::lower_bound(begin, end, static_cast<uint32_t>(i));
        if (it == end || *it != static_cast<uint32_t>(i)) {
          return absl::DataLossError(
              absl::StrCat("weight codec: no patch for element ", i, " of matrix ", m));
        }
        e = patch_exp[it - patch_idx.begin()];
      } else {
        e = base[i / kCodecGroup] - c;
      }
      dst[m][i] = static_cast<uint16_t>(((sm[i] & 0x80) << 8) | (e << 7) | (sm[i] & 0x7f));
    }
    first += info.patches[m];
  }
  return absl::OkStatus();
}

}  // namespace moe::experts
