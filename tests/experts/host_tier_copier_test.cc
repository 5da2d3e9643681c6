// The staging ring's host side: PlanStageChunks (chunks of slot bytes, pieces gathered, gaps
// respected) and ParallelCopier (every byte lands, for sizes below, at and above the part size,
// odd lengths and gathered spans, from one caller and from several at once; a TSan target).
#include "experts/host_tier_copier.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <random>
#include <thread>
#include <vector>

namespace moe::experts {
namespace {

std::vector<uint8_t> RandomBytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint8_t> v(n);
  for (auto& b : v) b = static_cast<uint8_t>(rng());
  return v;
}

TEST(ParallelCopierTest, CopiesEveryByte) {
  for (int threads : {1, 2, 4}) {
    ParallelCopier copier(threads);
    for (int64_t n : {int64_t{0}, int64_t{1}, int64_t{4095}, ParallelCopier::kMinPartBytes,
                      ParallelCopier::kMinPartBytes * 3 + 17, ParallelCopier::kMinPartBytes * 9}) {
      const auto src = RandomBytes(static_cast<size_t>(n), static_cast<uint32_t>(n + threads));
      std::vector<uint8_t> dst(static_cast<size_t>(n) + 64, 0xEE);  // poison, with a tail
      copier.Copy(dst.data(), src.data(), n);
      EXPECT_TRUE(std::equal(src.begin(), src.end(), dst.begin()))
          << threads << " threads, " << n << " bytes";
      for (size_t i = static_cast<size_t>(n); i < dst.size(); ++i) {
        ASSERT_EQ(dst[i], 0xEE) << "wrote past the end at " << i;
      }
    }
  }
}

TEST(ParallelCopierTest, GathersSpans) {
  ParallelCopier copier(4);
  const int64_t k = ParallelCopier::kMinPartBytes;
  const std::vector<int64_t> sizes = {3 * k + 5, 1, k / 2 + 7, 2 * k};
  int64_t total = 0;
  for (int64_t n : sizes) total += n;
  const auto src = RandomBytes(static_cast<size_t>(total) + 999, 7);
  std::vector<uint8_t> dst(static_cast<size_t>(total), 0);
  // Spans in reverse order of their sources, so a misplaced segment shows.
  std::vector<CopySpan> spans;
  int64_t d = 0, from_end = total;
  for (int64_t n : sizes) {
    from_end -= n;
    spans.push_back({dst.data() + d, src.data() + from_end, n});
    d += n;
  }
  copier.Copy(spans);
  d = 0;
  from_end = total;
  for (int64_t n : sizes) {
    from_end -= n;
    EXPECT_EQ(0, std::memcmp(dst.data() + d, src.data() + from_end, static_cast<size_t>(n)));
    d += n;
  }
}

TEST(PlanStageChunksTest, ContiguousSlotBytesShareChunks) {
  std::vector<uint8_t> file(4096);
  const uint8_t* f = file.data();
  // A fused expert: gate+up (200 bytes) at slot 0 from one place, down (100) at slot 200 from
  // another; then a padded piece at slot 512.
  const std::vector<HostCopy> copies = {{f + 1000, 0, 200}, {f + 3000, 200, 100}, {f, 512, 50}};
  auto one = PlanStageChunks(copies, 1024);
  ASSERT_EQ(one.size(), 2u);  // the gap before 512 starts a second chunk
  EXPECT_EQ(one[0].dst_offset, 0);
  EXPECT_EQ(one[0].bytes, 300);
  ASSERT_EQ(one[0].pieces.size(), 2u);
  EXPECT_EQ(one[0].pieces[1].src, f + 3000);
  EXPECT_EQ(one[0].pieces[1].chunk_offset, 200);
  EXPECT_EQ(one[1].dst_offset, 512);
  EXPECT_EQ(one[1].bytes, 50);

  // Small chunks: every slot byte covered once, in order, each chunk <= 128 bytes.
  auto small = PlanStageChunks(copies, 128);
  int64_t covered = 0;
  for (const StageChunk& c : small) {
    EXPECT_LE(c.bytes, 128);
    int64_t in_chunk = 0;
    for (const auto& p : c.pieces) {
      EXPECT_EQ(p.chunk_offset, in_chunk);
      in_chunk += p.bytes;
    }
    EXPECT_EQ(in_chunk, c.bytes);
    covered += c.bytes;
  }
  EXPECT_EQ(covered, 350);
  // The chunk that straddles slot byte 200 gathers the end of gate+up and the start of down.
  ASSERT_GE(small.size(), 2u);
  EXPECT_EQ(small[1].dst_offset, 128);
  ASSERT_EQ(small[1].pieces.size(), 2u);
  EXPECT_EQ(small[1].pieces[0].src, f + 1000 + 128);
  EXPECT_EQ(small[1].pieces[0].bytes, 72);
  EXPECT_EQ(small[1].pieces[1].src, f + 3000);
  EXPECT_EQ(small[1].pieces[1].bytes, 56);
}

TEST(ParallelCopierTest, SeveralCallersShareTheWorkers) {
  ParallelCopier copier(3);
  constexpr int kCallers = 4, kRounds = 6;
  const int64_t n = ParallelCopier::kMinPartBytes * 4 + 123;
  std::vector<std::vector<uint8_t>> src, dst;
  for (int c = 0; c < kCallers; ++c) {
    src.push_back(RandomBytes(static_cast<size_t>(n), static_cast<uint32_t>(c + 1)));
    dst.emplace_back(static_cast<size_t>(n), 0);
  }
  std::vector<int> mismatches(kCallers, 0);
  std::vector<std::thread> callers;
  for (int c = 0; c < kCallers; ++c) {
    callers.emplace_back([&, c] {
      for (int r = 0; r < kRounds; ++r) {
        std::memset(dst[static_cast<size_t>(c)].data(), r, static_cast<size_t>(n));
        copier.Copy(dst[static_cast<size_t>(c)].data(), src[static_cast<size_t>(c)].data(), n);
        mismatches[static_cast<size_t>(c)] +=
            std::memcmp(dst[static_cast<size_t>(c)].data(), src[static_cast<size_t>(c)].data(),
                        static_cast<size_t>(n)) != 0;
      }
    });
  }
  for (std::thread& t : callers) t.join();
  for (int c = 0; c < kCallers; ++c) EXPECT_EQ(mismatches[static_cast<size_t>(c)], 0) << c;
}

}  // namespace
}  // namespace moe::experts
