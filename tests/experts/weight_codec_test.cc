// The host tier's lossless bf16 codec (moe/experts/weight_codec.h): every bit pattern round
// trips, patches land where the codes say, codes stay within the decoder's table, corrupt blobs
// are DataLoss, and weight-like values shrink to ~0.66-0.68.
#include "moe/experts/weight_codec.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "moe/common/dtype.h"

namespace moe::experts {
namespace {

struct Expert {
  std::array<std::vector<uint16_t>, 3> m;
  std::array<const uint16_t*, 3> src() const { return {m[0].data(), m[1].data(), m[2].data()}; }
};

// Three matrices of n weight-like values, N(0, 0.02^2) in bf16.
Expert GaussianExpert(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> gauss(0.0f, 0.02f);
  Expert x;
  for (auto& m : x.m) {
    m.resize(static_cast<size_t>(n));
    for (auto& v : m) v = F32ToBf16(gauss(rng));
  }
  return x;
}

// Encodes, checks the blob's size, decodes into poisoned buffers and compares every bit.
CodecExpertInfo RoundTrip(const CodecExpertLayout& l, const Expert& x) {
  std::vector<uint8_t> blob(static_cast<size_t>(l.max_blob_bytes), 0xcd);
  CodecExpertInfo info;
  EXPECT_TRUE(EncodeExpert(l, x.src(), blob.data(), &info));
  EXPECT_EQ(info.bytes % 16, 0);
  EXPECT_LE(info.bytes, l.max_blob_bytes);
  EXPECT_EQ(info.bytes, (info.patch_offset + 5 * info.total_patches() + 15) / 16 * 16);
  EXPECT_TRUE(ValidateCodecInfo(l, info).ok()) << ValidateCodecInfo(l, info);
  for (const uint8_t b : info.code_bits) EXPECT_LE(b, kCodecMaxCodeBits);
  std::array<std::vector<uint16_t>, 3> out;
  for (auto& o : out) o.assign(static_cast<size_t>(l.n), 0xdead);
  EXPECT_TRUE(
      DecodeExpert(l, blob.data(), info, {out[0].data(), out[1].data(), out[2].data()}).ok());
  for (int m = 0; m < 3; ++m) {
    for (int64_t i = 0; i < l.n; ++i) {
      if (out[m][i] != x.m[m][i]) {
        ADD_FAILURE() << "matrix " << m << " element " << i << ": " << out[m][i]
                      << " != " << x.m[m][i];
        return info;
      }
    }
  }
  return info;
}

TEST(WeightCodec, LayoutNeedsWholeGroups) {
  EXPECT_FALSE(MakeCodecLayout(0).ok());
  EXPECT_FALSE(MakeCodecLayout(100).ok());
  EXPECT_FALSE(MakeCodecLayout(-64).ok());
  auto l = MakeCodecLayout(64);
  ASSERT_TRUE(l.ok());
  EXPECT_EQ(l->chunks, 1);
  EXPECT_EQ(l->supers, 1);
  EXPECT_EQ(l->base_offset, 64);
  EXPECT_EQ(l->chunk_start_offset, 80);
  EXPECT_EQ(l->super_start_offset, 96);
  EXPECT_EQ(l->matrix_bytes, 112);
  EXPECT_EQ(l->max_stream_bytes, 48);  // 3.5 bits an element and two words, rounded up
  EXPECT_GE(l->max_patches, 16);
  EXPECT_EQ(l->table_offset, 3 * 112);
  EXPECT_EQ(l->table_bytes, 0);           // small experts: the device builds the table
  auto big = MakeCodecLayout(64 * 4097);  // a partial last chunk and super chunk
  ASSERT_TRUE(big.ok());
  EXPECT_EQ(big->chunks, 2049);
  EXPECT_EQ(big->supers, 65);
  EXPECT_EQ(MakeCodecLayout(kCodecTableMinElements - 64)->table_bytes, 0);
  auto tabled = MakeCodecLayout(kCodecTableMinElements);
  ASSERT_TRUE(tabled.ok());
  EXPECT_EQ(tabled->table_offset, 3 * tabled->matrix_bytes);
  EXPECT_EQ(tabled->table_bytes, kCodecQuadTableBytes);
  EXPECT_EQ(tabled->max_blob_bytes, (tabled->table_offset + kCodecQuadTableBytes +
                                     3 * tabled->max_stream_bytes + 5 * tabled->max_patches + 15) /
                                        16 * 16);
}

// The quad table of a small code by hand, and of random codes against a symbol-by-symbol walk of
// the canonical ranges.
TEST(WeightCodec, QuadTableFollowsTheCode) {
  using Table = std::array<uint32_t, size_t{1} << kCodecMaxCodeBits>;
  auto entry = [](std::initializer_list<uint32_t> symbols, uint32_t used) {
    uint32_t e = 0, k = 0;
    for (const uint32_t s : symbols) e |= s << (4 * k++);
    return e | (used << 16) | (k << 20);
  };
  std::array<uint8_t, kCodecSymbols> bits = {};
  bits[2] = 1;  // 0
  bits[0] = 2;  // 10
  bits[5] = 3;  // 110
  bits[9] = 3;  // 111
  Table q;
  ASSERT_TRUE(CodecQuadTable(bits, &q).ok());
  EXPECT_EQ(q[0b000000000000], entry({2, 2, 2, 2}, 4));
  EXPECT_EQ(q[0b111111111111], entry({9, 9, 9, 9}, 12));
  EXPECT_EQ(q[0b100110111000], entry({0, 2, 5, 9}, 9));   // 10 0 110 111
  EXPECT_EQ(q[0b111111111011], entry({9, 9, 9, 2}, 10));  // at most four symbols
  // An incomplete code: "0" and "10" only; 11... starts no code.
  bits = {};
  bits[4] = 1;
  bits[7] = 2;
  ASSERT_TRUE(CodecQuadTable(bits, &q).ok());
  EXPECT_EQ(q[0b110000000000], entry({0}, 12));
  EXPECT_EQ(q[0b010110000000], entry({4, 7}, 3));  // then 11: no code
  bits[3] = kCodecMaxCodeBits + 1;
  EXPECT_EQ(CodecQuadTable(bits, &q).code(), absl::StatusCode::kInvalidArgument);

  std::mt19937 rng(11);
  for (int trial = 0; trial < 50; ++trial) {
    // Random lengths made to fit (Kraft) by lengthening codes.
    std::array<uint8_t, kCodecSymbols> b = {};
    for (auto& x : b) x = static_cast<uint8_t>(rng() % 3 == 0 ? 0 : 1 + rng() % kCodecMaxCodeBits);
    std::array<uint32_t, kCodecSymbols> starts, ends;
    while (!CodecTableRanges(b, &starts, &ends).ok()) {
      for (auto& x : b) {
        if (x > 0 && x < kCodecMaxCodeBits) ++x;
      }
    }
    ASSERT_TRUE(CodecQuadTable(b, &q).ok());
    for (uint32_t j = 0; j < q.size(); ++j) {
      uint32_t used = 0, want = 0, k = 0;
      while (k < 4) {
        const uint32_t idx = (j << used) & (q.size() - 1);
        int s = 0;
        while (s < kCodecSymbols && !(idx >= starts[s] && idx < ends[s])) ++s;
        if (s == kCodecSymbols || used + b[s] > kCodecMaxCodeBits) break;
        want |= static_cast<uint32_t>(s) << (4 * k++);
        used += b[s];
      }
      if (k == 0) used = kCodecMaxCodeBits, k = 1;
      ASSERT_EQ(q[j], want | (used << 16) | (k << 20)) << "trial " << trial << " index " << j;
    }
  }
}

// Experts from kCodecTableMinElements carry the table: they round trip, the table costs ~1% of
// the bytes, and a blob whose table is not its code's is DataLoss.
TEST(WeightCodec, LargeExpertsCarryTheTable) {
  const int64_t n = kCodecTableMinElements;
  auto l = MakeCodecLayout(n);
  ASSERT_TRUE(l.ok());
  const Expert x = GaussianExpert(n, 12);
  const CodecExpertInfo info = RoundTrip(*l, x);
  EXPECT_EQ(info.stream_offset[0], l->table_offset + kCodecQuadTableBytes);
  const double ratio = static_cast<double>(info.bytes) / (3.0 * n * 2);
  EXPECT_LT(ratio, 0.70);
  EXPECT_GT(ratio, 0.65);
  std::vector<uint8_t> blob(static_cast<size_t>(l->max_blob_bytes));
  CodecExpertInfo again;
  ASSERT_TRUE(EncodeExpert(*l, x.src(), blob.data(), &again));
  std::array<std::vector<uint16_t>, 3> out;
  for (auto& o : out) o.assign(static_cast<size_t>(n), 0);
  const std::array<uint16_t*, 3> dst = {out[0].data(), out[1].data(), out[2].data()};
  blob[static_cast<size_t>(l->table_offset + 4 * 100)] ^= 1;
  EXPECT_EQ(DecodeExpert(*l, blob.data(), again, dst).code(), absl::StatusCode::kDataLoss);
}

TEST(WeightCodec, CanonicalTableRanges) {
  std::array<uint8_t, kCodecSymbols> bits = {};
  bits[5] = 3;
  bits[2] = 1;
  bits[9] = 3;
  bits[0] = 2;
  std::array<uint32_t, kCodecSymbols> starts, ends;
  ASSERT_TRUE(CodecTableRanges(bits, &starts, &ends).ok());
  // Order (length, symbol): 2 (1 bit), 0 (2), 5 (3), 9 (3).
  EXPECT_EQ(starts[2], 0u);
  EXPECT_EQ(ends[2], 2048u);
  EXPECT_EQ(starts[0], 2048u);
  EXPECT_EQ(ends[0], 3072u);
  EXPECT_EQ(starts[5], 3072u);
  EXPECT_EQ(ends[5], 3584u);
  EXPECT_EQ(starts[9], 3584u);
  EXPECT_EQ(ends[9], 4096u);
  EXPECT_EQ(starts[1], ends[1]);
  bits[7] = 1;  // a second 1-bit code: over the table
  EXPECT_EQ(CodecTableRanges(bits, &starts, &ends).code(), absl::StatusCode::kInvalidArgument);
  bits = {};
  bits[3] = kCodecMaxCodeBits + 1;
  EXPECT_EQ(CodecTableRanges(bits, &starts, &ends).code(), absl::StatusCode::kInvalidArgument);
}

TEST(WeightCodec, UniformAndGaussianWeightsRoundTripAndShrink) {
  const int64_t n = 768 * 256;
  auto l = MakeCodecLayout(n);
  ASSERT_TRUE(l.ok());
  std::mt19937 rng(3);
  const float a = std::sqrt(3.0f / 2048);
  std::uniform_real_distribution<float> uni(-a, a);
  std::normal_distribution<float> gauss(0.0f, 0.02f);
  for (int kind = 0; kind < 2; ++kind) {
    Expert x;
    for (auto& m : x.m) {
      m.resize(static_cast<size_t>(n));
      for (auto& v : m) v = F32ToBf16(kind == 0 ? uni(rng) : gauss(rng));
    }
    const CodecExpertInfo info = RoundTrip(*l, x);
    const double ratio = static_cast<double>(info.bytes) / (3.0 * n * 2);
    // Exponent information against the group's base: ~2.3 bits (uniform), ~2.6 (Gaussian).
    EXPECT_LT(ratio, kind == 0 ? 0.67 : 0.69) << "kind " << kind;
    EXPECT_GT(ratio, 0.64) << "kind " << kind;
    // Gaussian weights need a few patches (elements 2^14 below their group's largest); the codes
    // must place them all.
    if (kind == 1) {
      EXPECT_GT(info.total_patches(), 0);
    }
  }
}

TEST(WeightCodec, EveryBitPatternRoundTrips) {
  // All 65536 bf16 patterns (zeros, subnormals, infinities, NaNs), in an order that puts each
  // next to neighbours of every size, in each matrix position.
  const int64_t n = 65536;
  auto l = MakeCodecLayout(n);
  ASSERT_TRUE(l.ok());
  Expert x;
  for (int m = 0; m < 3; ++m) {
    x.m[m].resize(n);
    for (int64_t i = 0; i < n; ++i)
      x.m[m][i] = static_cast<uint16_t>((i * 40503 + m * 977) & 0xffff);
  }
  // Max patches for this many wide-range values: more than the layout allows, so encoding is
  // refused; a layout of a larger n (more patches allowed) is not the point. Check both: the
  // refusal, and a round trip of a sparser mix.
  std::vector<uint8_t> blob(static_cast<size_t>(l->max_blob_bytes));
  CodecExpertInfo info;
  EXPECT_FALSE(EncodeExpert(*l, x.src(), blob.data(), &info));

  // A sparser mix: normal values, one element in 1024 with a random sign, mantissa and a small
  // exponent (a patch where it lies 2^14 below its group's largest), and the special values.
  std::mt19937 rng(11);
  std::uniform_int_distribution<int> bits(0, 0xffff), small_exp(1, 100);
  std::normal_distribution<float> gauss(0.0f, 1.0f);
  for (int m = 0; m < 3; ++m) {
    for (int64_t i = 0; i < n; ++i) {
      x.m[m][i] = (i % 1024 == 7)
                      ? static_cast<uint16_t>((bits(rng) & 0x807f) | (small_exp(rng) << 7))
                      : F32ToBf16(gauss(rng));
    }
    x.m[m][100] = 0x0000;  // +0
    x.m[m][101] = 0x8000;  // -0
    x.m[m][102] = 0x0001;  // smallest subnormal
    x.m[m][103] = 0x7f80;  // +inf: its group's base is 255, so its neighbours are patches
    x.m[m][104] = 0xffc1;  // NaN with payload
    x.m[m][200] = 0x0080;  // smallest normal: a patch next to values ~1
  }
  const CodecExpertInfo mixed = RoundTrip(*l, x);
  EXPECT_GT(mixed.total_patches(), 3);
}

TEST(WeightCodec, AllZeroAndConstantGroups) {
  const int64_t n = 128;
  auto l = MakeCodecLayout(n);
  ASSERT_TRUE(l.ok());
  Expert x;
  x.m[0].assign(n, 0);
  x.m[1].assign(n, F32ToBf16(-1.5f));
  x.m[2].assign(n, 0x8000);
  const CodecExpertInfo info = RoundTrip(*l, x);
  EXPECT_EQ(info.total_patches(), 0);
  // One symbol in the whole expert: a 1-bit code.
  for (auto& m : x.m) m.assign(n, F32ToBf16(0.25f));
  const CodecExpertInfo one = RoundTrip(*l, x);
  int used = 0;
  for (const uint8_t b : one.code_bits) used += b > 0;
  EXPECT_EQ(used, 1);
  EXPECT_EQ(one.code_bits[0], 1);
}

TEST(WeightCodec, SkewedSymbolsGetCodesWithinTheTable) {
  // Offsets from the group's base with P(s) ~ 3^-s, and every symbol present: an optimal code
  // would be ~19 bits long for the rarest; the encoder limits it to kCodecMaxCodeBits.
  const int64_t n = 64 * 4096;
  auto l = MakeCodecLayout(n);
  ASSERT_TRUE(l.ok());
  std::mt19937 rng(9);
  std::geometric_distribution<int> offset(2.0 / 3.0);
  std::uniform_int_distribution<int> mantissa(0, 0xff);
  Expert x;
  for (auto& m : x.m) {
    m.resize(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
      const int s = i % kCodecGroup == 0 ? 0 : std::min(offset(rng), kCodecMaxOffset);
      const int r = mantissa(rng);
      m[i] = static_cast<uint16_t>(((r & 0x80) << 8) | ((120 - s) << 7) | (r & 0x7f));
    }
    for (int s = 0; s <= kCodecMaxOffset; ++s) m[1 + s] = static_cast<uint16_t>((120 - s) << 7);
    m[20] = 0;  // a zero
  }
  const CodecExpertInfo info = RoundTrip(*l, x);
  const int longest = *std::max_element(info.code_bits.begin(), info.code_bits.end());
  EXPECT_LE(longest, kCodecMaxCodeBits);
  EXPECT_GE(longest, 8);
}

TEST(WeightCodec, CorruptBlobsAreDataLossOrInvalid) {
  const int64_t n = 64 * 70;  // 35 chunks: two super chunks
  auto l = MakeCodecLayout(n);
  ASSERT_TRUE(l.ok());
  const Expert x = GaussianExpert(n, 4);
  std::vector<uint8_t> blob(static_cast<size_t>(l->max_blob_bytes));
  CodecExpertInfo info;
  ASSERT_TRUE(EncodeExpert(*l, x.src(), blob.data(), &info));
  std::array<std::vector<uint16_t>, 3> out;
  for (auto& o : out) o.assign(n, 0);
  const std::array<uint16_t*, 3> dst = {out[0].data(), out[1].data(), out[2].data()};
  ASSERT_TRUE(DecodeExpert(*l, blob.data(), info, dst).ok());
  // The last chunk of matrix 1 starts past its stream.
  std::vector<uint8_t> bad = blob;
  const int64_t at = l->matrix_bytes + l->chunk_start_offset + 2 * (l->chunks - 1);
  bad[at] = 0xff;
  bad[at + 1] = 0xff;
  EXPECT_EQ(DecodeExpert(*l, bad.data(), info, dst).code(), absl::StatusCode::kDataLoss);
  // Infos that do not fit the layout.
  CodecExpertInfo wrong = info;
  wrong.stream_offset[1] += 8;
  EXPECT_EQ(DecodeExpert(*l, blob.data(), wrong, dst).code(), absl::StatusCode::kInvalidArgument);
  wrong = info;
  wrong.code_bits[3] = kCodecMaxCodeBits + 1;
  EXPECT_EQ(DecodeExpert(*l, blob.data(), wrong, dst).code(), absl::StatusCode::kInvalidArgument);
  wrong = info;
  wrong.bytes += 16;
  EXPECT_EQ(DecodeExpert(*l, blob.data(), wrong, dst).code(), absl::StatusCode::kInvalidArgument);
  wrong = info;
  wrong.patches[0] = -1;
  EXPECT_EQ(DecodeExpert(*l, blob.data(), wrong, dst).code(), absl::StatusCode::kInvalidArgument);
}

TEST(WeightCodec, TooManyPatchesRefusedAndMissingPatchIsDataLoss) {
  const int64_t n = 64 * 16;
  auto l = MakeCodecLayout(n);
  ASSERT_TRUE(l.ok());
  Expert x;
  for (auto& m : x.m) {
    m.assign(n, F32ToBf16(1.0f));
    for (int64_t i = 0; i < n; i += 2) m[i] = 0x0080;  // tiny normals: a patch each
  }
  std::vector<uint8_t> blob(static_cast<size_t>(l->max_blob_bytes));
  CodecExpertInfo info;
  EXPECT_FALSE(EncodeExpert(*l, x.src(), blob.data(), &info));

  // Exactly one patch, then a blob whose patch list claims none: DataLoss.
  for (auto& m : x.m) m.assign(n, F32ToBf16(1.0f));
  x.m[1][77] = 0x0080;
  ASSERT_TRUE(EncodeExpert(*l, x.src(), blob.data(), &info));
  EXPECT_EQ(info.patches[0], 0);
  EXPECT_EQ(info.patches[1], 1);
  EXPECT_EQ(info.patches[2], 0);
  std::array<std::vector<uint16_t>, 3> out;
  for (auto& o : out) o.assign(n, 0);
  CodecExpertInfo wrong = info;
  wrong.patches[1] = 0;
  wrong.bytes = (wrong.patch_offset + 15) / 16 * 16;
  const Status s =
      DecodeExpert(*l, blob.data(), wrong, {out[0].data(), out[1].data(), out[2].data()});
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
}

}  // namespace
}  // namespace moe::experts
