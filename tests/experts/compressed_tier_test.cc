// The compressed host tier on a GPU: the device decoder writes exactly what the CPU reference
// decodes (patches, zeros, subnormals, odd sizes, one block or many, padding between the matrices
// untouched); a tier built from a checkpoint encodes every weight-like expert and its blobs decode
// to the file's bytes; random bit patterns stay raw; f16 checkpoints are refused; destroying a
// tier while it encodes stops it. Skips without a GPU.
#include "moe/experts/compressed_tier.h"

#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <cstring>
#include <random>

#include "common/gpu_test_util.h"
#include "experts/expert_checkpoint.h"
#include "kernels/weight_codec.h"
#include "model/tiny_checkpoint.h"
#include "moe/common/dtype.h"
#include "moe/experts/host_tier.h"

namespace moe::experts {
namespace {

using testing::ExpertCheckpointOptions;
using testing::ExpertFileLayout;

#define ASSERT_CUDA(expr) ASSERT_EQ((expr), cudaSuccess) << #expr

constexpr uint8_t kPoison = 0xA5;

// Decodes `blob` on the device into a poisoned slot with the matrices at `offsets` and returns
// the slot's bytes.
std::vector<uint8_t> DecodeOnDevice(const CodecExpertLayout& l, const uint8_t* blob,
                                    const CodecExpertInfo& info,
                                    const std::array<int64_t, 3>& offsets, int64_t slot_bytes,
                                    int blocks) {
  void* d_blob = nullptr;
  void* d_slot = nullptr;
  std::vector<uint8_t> out(static_cast<size_t>(slot_bytes));
  EXPECT_EQ(cudaMalloc(&d_blob, static_cast<size_t>(info.bytes)), cudaSuccess);
  EXPECT_EQ(cudaMalloc(&d_slot, out.size()), cudaSuccess);
  EXPECT_EQ(cudaMemcpy(d_blob, blob, static_cast<size_t>(info.bytes), cudaMemcpyHostToDevice),
            cudaSuccess);
  EXPECT_EQ(cudaMemset(d_slot, kPoison, out.size()), cudaSuccess);
  cuda::DecodeExpertArgs a;
  a.blob = static_cast<const uint8_t*>(d_blob);
  a.slot = static_cast<char*>(d_slot);
  a.dst_offset = offsets;
  a.layout = l;
  a.info = info;
  a.blocks = blocks;
  const Status s = cuda::LaunchDecodeExpert(a, nullptr);
  EXPECT_TRUE(s.ok()) << s;
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  EXPECT_EQ(cudaMemcpy(out.data(), d_slot, out.size(), cudaMemcpyDeviceToHost), cudaSuccess);
  cudaFree(d_blob);
  cudaFree(d_slot);
  return out;
}

TEST(WeightCodecDevice, DecodeKernelMatchesTheSource) {
  MOE_REQUIRE_GPU();
  std::mt19937 rng(5);
  std::normal_distribution<float> gauss(0.0f, 0.02f);
  std::uniform_int_distribution<int> bits(0, 0xffff), small_exp(1, 100);
  for (const int64_t n : {int64_t{64}, int64_t{4096 + 64}, int64_t{768 * 2048}}) {
    auto l = MakeCodecLayout(n);
    ASSERT_TRUE(l.ok());
    std::array<std::vector<uint16_t>, 3> m;
    for (auto& v : m) {
      v.resize(static_cast<size_t>(n));
      for (int64_t i = 0; i < n; ++i) {
        const int r = bits(rng);
        v[i] = r % 997 == 0   ? static_cast<uint16_t>((r & 0x807f) | (small_exp(rng) << 7))
               : r % 991 == 0 ? static_cast<uint16_t>(r & 0x807f)  // zero or subnormal
                              : F32ToBf16(gauss(rng));
      }
    }
    // NaN: its group's base is 255, so the group's other 63 elements are patches (more than the
    // 3 n / 256 that the smaller matrices may have).
    if (n >= 65536) m[2][n - 1] = 0x7fc0;
    std::vector<uint8_t> blob(static_cast<size_t>(l->max_blob_bytes));
    CodecExpertInfo info;
    ASSERT_TRUE(EncodeExpert(*l, {m[0].data(), m[1].data(), m[2].data()}, blob.data(), &info))
        << "n " << n;
    // Matrices in the slot with padding between them (and a different order than the blob's
    // would be is not needed: the decoder takes any offsets).
    const int64_t mb = 2 * n, pad = 256;
    const std::array<int64_t, 3> offsets = {pad, pad + mb + pad, pad + 2 * (mb + pad)};
    const int64_t slot_bytes = offsets[2] + mb + pad;
    for (const int blocks : {0, 1, 7}) {
      const std::vector<uint8_t> slot =
          DecodeOnDevice(*l, blob.data(), info, offsets, slot_bytes, blocks);
      for (int k = 0; k < 3; ++k) {
        ASSERT_EQ(0, std::memcmp(slot.data() + offsets[k], m[k].data(), static_cast<size_t>(mb)))
            << "n " << n << " matrix " << k << " blocks " << blocks;
      }
      for (int64_t b = 0; b < slot_bytes; ++b) {
        const bool inside = (b >= offsets[0] && b < offsets[0] + mb) ||
                            (b >= offsets[1] && b < offsets[1] + mb) ||
                            (b >= offsets[2] && b < offsets[2] + mb);
        if (!inside) {
          ASSERT_EQ(slot[b], kPoison) << "padding byte " << b << " written";
        }
      }
    }
  }
}

// Codes of one symbol (a 1-bit code: every lookup of the pair table takes two) and of two
// symbols, where the table is not all pairs, over a partial last chunk.
TEST(WeightCodecDevice, DecodesCodesOfOneAndTwoSymbols) {
  MOE_REQUIRE_GPU();
  // The table built by each block, and the blob's table.
  for (const int64_t n : {int64_t{4096 + 64}, kCodecTableMinElements + 64}) {
    auto l = MakeCodecLayout(n);
    ASSERT_TRUE(l.ok());
    EXPECT_EQ(l->table_bytes, n >= kCodecTableMinElements ? kCodecQuadTableBytes : 0);
    for (const int kind : {0, 1, 2}) {
      std::array<std::vector<uint16_t>, 3> m;
      for (auto& v : m) {
        v.resize(static_cast<size_t>(n));
        for (int64_t i = 0; i < n; ++i) {
          v[i] = kind == 0   ? uint16_t{0}                                        // all zero
                 : kind == 1 ? F32ToBf16(-0.75f)                                  // one exponent
                             : (i % 3 == 0 ? F32ToBf16(0.5f) : F32ToBf16(1.0f));  // two
        }
      }
      std::vector<uint8_t> blob(static_cast<size_t>(l->max_blob_bytes));
      CodecExpertInfo info;
      ASSERT_TRUE(EncodeExpert(*l, {m[0].data(), m[1].data(), m[2].data()}, blob.data(), &info));
      int used = 0;
      for (const uint8_t b : info.code_bits) used += b > 0;
      EXPECT_EQ(used, kind == 2 ? 2 : 1) << "kind " << kind;
      const int64_t mb = 2 * n;
      const std::array<int64_t, 3> offsets = {0, mb, 2 * mb};
      const std::vector<uint8_t> slot = DecodeOnDevice(*l, blob.data(), info, offsets, 3 * mb, 0);
      for (int k = 0; k < 3; ++k) {
        ASSERT_EQ(0, std::memcmp(slot.data() + offsets[k], m[k].data(), static_cast<size_t>(mb)))
            << "n " << n << " kind " << kind << " matrix " << k;
      }
    }
  }
}

// A blob whose quad table is corrupt (entries of no symbol, too many, too long, random words)
// still decodes to an end, in bounds: the decoder checks each entry it copies. The CPU reference
// calls such a blob DataLoss.
TEST(WeightCodecDevice, CorruptQuadTableStillEndsInBounds) {
  MOE_REQUIRE_GPU();
  const int64_t n = kCodecTableMinElements;
  auto l = MakeCodecLayout(n);
  ASSERT_TRUE(l.ok());
  ASSERT_EQ(l->table_bytes, kCodecQuadTableBytes);
  std::mt19937 rng(9);
  std::normal_distribution<float> gauss(0.0f, 0.02f);
  std::array<std::vector<uint16_t>, 3> m;
  for (auto& v : m) {
    v.resize(static_cast<size_t>(n));
    for (auto& x : v) x = F32ToBf16(gauss(rng));
  }
  std::vector<uint8_t> blob(static_cast<size_t>(l->max_blob_bytes));
  CodecExpertInfo info;
  ASSERT_TRUE(EncodeExpert(*l, {m[0].data(), m[1].data(), m[2].data()}, blob.data(), &info));
  const int64_t mb = 2 * n;
  const std::array<int64_t, 3> offsets = {0, mb, 2 * mb};
  std::array<std::vector<uint16_t>, 3> cpu;
  for (auto& v : cpu) v.resize(static_cast<size_t>(n));
  const std::array<uint16_t*, 3> dst = {cpu[0].data(), cpu[1].data(), cpu[2].data()};
  ASSERT_TRUE(DecodeExpert(*l, blob.data(), info, dst).ok());
  for (const int kind : {0, 1, 2, 3}) {
    std::vector<uint8_t> bad = blob;
    auto* table = reinterpret_cast<uint32_t*>(bad.data() + l->table_offset);
    for (int j = 0; j < (1 << kCodecMaxCodeBits); ++j) {
      table[j] = kind == 0   ? 0u                                 // no symbol, no length
                 : kind == 1 ? 0xffffffffu                        // 7 symbols of 15 bits
                 : kind == 2 ? (4u << 20) | (2u << 16) | 0x1234u  // 4 symbols in 2 bits
                             : static_cast<uint32_t>(rng());      // anything
    }
    EXPECT_EQ(DecodeExpert(*l, bad.data(), info, dst).code(), absl::StatusCode::kDataLoss)
        << "kind " << kind;
    const std::vector<uint8_t> slot = DecodeOnDevice(*l, bad.data(), info, offsets, 3 * mb, 0);
    EXPECT_EQ(slot.size(), static_cast<size_t>(3 * mb)) << "kind " << kind;
  }
}

TEST(WeightCodecDevice, BadArgumentsAreInvalidArgument) {
  MOE_REQUIRE_GPU();
  auto l = MakeCodecLayout(64);
  ASSERT_TRUE(l.ok());
  std::array<std::vector<uint16_t>, 3> m;
  for (auto& v : m) v.assign(64, F32ToBf16(0.5f));
  std::vector<uint8_t> blob(static_cast<size_t>(l->max_blob_bytes));
  CodecExpertInfo info;
  ASSERT_TRUE(EncodeExpert(*l, {m[0].data(), m[1].data(), m[2].data()}, blob.data(), &info));
  cuda::DecodeExpertArgs a;
  a.layout = *l;
  a.info = info;
  EXPECT_EQ(cuda::LaunchDecodeExpert(a, nullptr).code(), absl::StatusCode::kInvalidArgument);
  a.blob = reinterpret_cast<const uint8_t*>(uintptr_t{256});
  a.slot = reinterpret_cast<char*>(uintptr_t{512});
  EXPECT_TRUE(a.Validate().ok()) << a.Validate();
  a.info.patches = {static_cast<int32_t>(l->max_patches), 1, 0};
  EXPECT_EQ(cuda::LaunchDecodeExpert(a, nullptr).code(), absl::StatusCode::kInvalidArgument);
  a.info = info;
  a.info.code_bits[1] = 1;  // two 1-bit codes besides the used one: not a prefix code
  a.info.code_bits[2] = 1;
  EXPECT_EQ(cuda::LaunchDecodeExpert(a, nullptr).code(), absl::StatusCode::kInvalidArgument);
  a.info = info;
  a.info.stream_offset[2] += 16;  // stream 2 past the patches
  EXPECT_EQ(cuda::LaunchDecodeExpert(a, nullptr).code(), absl::StatusCode::kInvalidArgument);
  a.info = info;
  a.dst_offset = {0, 8, 16};
  EXPECT_EQ(cuda::LaunchDecodeExpert(a, nullptr).code(), absl::StatusCode::kInvalidArgument);
}

std::shared_ptr<const Model> WriteAndOpen(const testing::TempDir& tmp, const std::string& name,
                                          const ExpertCheckpointOptions& o) {
  auto model = testing::WriteAndOpenExpertCheckpoint(tmp.Sub(name), o);
  EXPECT_TRUE(model.ok()) << model.status();
  return model.ok() ? *model : nullptr;
}

TEST(CompressedHostTier, EncodesEveryExpertAndItsBlobsDecodeToTheFile) {
  MOE_REQUIRE_GPU();
  testing::TempDir tmp;
  for (const ExpertFileLayout layout :
       {ExpertFileLayout::kSortedByName, ExpertFileLayout::kScattered, ExpertFileLayout::kFused}) {
    ExpertCheckpointOptions o;
    o.hidden = 256;
    o.inter = 96;
    o.n_experts = 6;
    o.n_layers = 3;
    o.layout = layout;
    o.weight_like_bf16 = true;
    auto model = WriteAndOpen(tmp, testing::ExpertFileLayoutName(layout), o);
    ASSERT_NE(model, nullptr);
    HostExpertSource::Options so;
    so.mode = HostExpertSource::Mode::kStagingRing;
    so.staging_bytes = int64_t{1} << 20;
    auto source = HostExpertSource::Create(model, so);
    ASSERT_TRUE(source.ok()) << source.status();
    CompressedHostTier::Options co;
    co.threads = 3;
    auto tier = CompressedHostTier::Start(model, (*source)->plan(), co);
    ASSERT_TRUE(tier.ok()) << tier.status();
    (*tier)->WaitDone();
    ASSERT_TRUE((*tier)->status().ok()) << (*tier)->status();
    EXPECT_EQ((*tier)->total(), o.n_layers * o.n_experts);
    EXPECT_EQ((*tier)->encoded(), (*tier)->total());
    EXPECT_EQ((*tier)->refused(), 0);
    EXPECT_GT((*tier)->seconds(), 0);
    const SlotLayout& sl = (*source)->layout();
    const double ratio = static_cast<double>((*tier)->blob_bytes()) /
                         (static_cast<double>((*tier)->encoded()) * 3 * sl.matrix_bytes);
    EXPECT_LT(ratio, 0.80);
    EXPECT_FALSE((*tier)->Find({o.n_layers, 0}).has_value());  // not a layer of the model
    EXPECT_FALSE((*tier)->Find({0, o.n_experts}).has_value());
    for (int layer = 0; layer < o.n_layers; ++layer) {
      for (int e = 0; e < o.n_experts; ++e) {
        const ExpertKey key{layer, e};
        const auto blob = (*tier)->Find(key);
        ASSERT_TRUE(blob.has_value()) << ToString(key);
        EXPECT_GT(blob->info.total_patches(), 0) << ToString(key);  // tiny values: patches
        const std::vector<uint8_t> slot = DecodeOnDevice((*tier)->layout(), blob->data, blob->info,
                                                         (*tier)->slot_offsets(), sl.slot_bytes, 0);
        const ExpertWeights& w = model->layer(layer)->experts[static_cast<size_t>(e)];
        const std::pair<int64_t, const TensorView*> parts[3] = {
            {sl.gate_offset, &w.gate}, {sl.up_offset, &w.up}, {sl.down_offset, &w.down}};
        for (const auto& [off, view] : parts) {
          ASSERT_EQ(
              0, std::memcmp(slot.data() + off, view->data, static_cast<size_t>(sl.matrix_bytes)))
              << ToString(key) << " " << view->name << " layout "
              << testing::ExpertFileLayoutName(layout);
        }
      }
    }
  }
}

TEST(CompressedHostTier, RandomBitPatternsStayRawAndF16IsRefused) {
  MOE_REQUIRE_GPU();
  testing::TempDir tmp;
  ExpertCheckpointOptions o;
  o.hidden = 128;
  o.inter = 64;
  auto model = WriteAndOpen(tmp, "random", o);
  ASSERT_NE(model, nullptr);
  auto plan = HostCopyPlan::Build(*model);
  ASSERT_TRUE(plan.ok()) << plan.status();
  auto tier = CompressedHostTier::Start(model, *plan, {});
  ASSERT_TRUE(tier.ok()) << tier.status();
  (*tier)->WaitDone();
  EXPECT_TRUE((*tier)->status().ok());
  EXPECT_EQ((*tier)->encoded(), 0);
  EXPECT_EQ((*tier)->refused(), (*tier)->total());
  EXPECT_FALSE((*tier)->Find({0, 0}).has_value());

  o.dtype = DType::kF16;
  auto f16 = WriteAndOpen(tmp, "f16", o);
  ASSERT_NE(f16, nullptr);
  auto f16_plan = HostCopyPlan::Build(*f16);
  ASSERT_TRUE(f16_plan.ok());
  auto refused = CompressedHostTier::Start(f16, *f16_plan, {});
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition) << refused.status();

  CompressedHostTier::Options bad;
  bad.threads = 0;
  EXPECT_EQ(CompressedHostTier::Start(model, *plan, bad).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(CompressedHostTier, DestroyedWhileEncoding) {
  MOE_REQUIRE_GPU();
  testing::TempDir tmp;
  ExpertCheckpointOptions o;
  o.hidden = 1024;
  o.inter = 512;
  o.n_experts = 32;
  o.n_layers = 4;
  o.weight_like_bf16 = true;
  auto model = WriteAndOpen(tmp, "big", o);
  ASSERT_NE(model, nullptr);
  auto plan = HostCopyPlan::Build(*model);
  ASSERT_TRUE(plan.ok());
  for (int i = 0; i < 3; ++i) {
    CompressedHostTier::Options co;
    co.threads = 2;
    auto tier = CompressedHostTier::Start(model, *plan, co);
    ASSERT_TRUE(tier.ok()) << tier.status();
    if (i == 1) std::this_thread::sleep_for(std::chrono::milliseconds(20));
    // Destroyed at once, after a little encoding, or (i == 2) after all of it.
    if (i == 2) (*tier)->WaitDone();
    EXPECT_LE((*tier)->encoded(), (*tier)->total());
  }
}

}  // namespace
}  // namespace moe::experts
