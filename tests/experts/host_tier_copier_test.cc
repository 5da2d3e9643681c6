// ParallelCopier (the staging ring's fill): every byte lands, for sizes below, at and above the
// part size and odd lengths, from one caller and from several callers at once (TSan target).
#include "experts/host_tier_copier.h"

#include <gtest/gtest.h>

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
      EXPECT_EQ(0, std::memcmp(dst.data(), src.data(), static_cast<size_t>(n)))
          << threads << " threads, " << n << " bytes";
      for (size_t i = static_cast<size_t>(n); i < dst.size(); ++i) {
        ASSERT_EQ(dst[i], 0xEE) << "wrote past the end at " << i;
      }
    }
  }
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
