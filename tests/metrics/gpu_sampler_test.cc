// GpuSampler on a real GPU host: NVML loads, every device reports plausible memory and busy
// figures. Skips with the reason where there is no NVIDIA driver. Uses only gpu_sampler.cc, so it
// also builds standalone (absl + gtest, static) for GPU machines without our Debian packages.
#include <gtest/gtest.h>

#include "moe/metrics/gpu_metrics.h"

namespace moe::metrics {
namespace {

TEST(GpuSamplerTest, SamplesEveryDevice) {
  auto sampler = GpuSampler::Create();
  if (!sampler.ok()) GTEST_SKIP() << "no GPU to sample: " << sampler.status();
  ASSERT_GE((*sampler)->device_count(), 1);
  for (int round = 0; round < 3; ++round) {
    auto samples = (*sampler)->Sample();
    ASSERT_TRUE(samples.ok()) << samples.status();
    ASSERT_EQ(static_cast<int>(samples->size()), (*sampler)->device_count());
    for (size_t i = 0; i < samples->size(); ++i) {
      const GpuSample& s = (*samples)[i];
      EXPECT_EQ(s.device, static_cast<int>(i));
      EXPECT_GT(s.memory_total_bytes, int64_t{1} << 30) << "device " << i;  // any datacenter GPU
      EXPECT_GE(s.memory_used_bytes, 0);
      EXPECT_LE(s.memory_used_bytes, s.memory_total_bytes);
      if (s.has_busy_ratio) {
        EXPECT_GE(s.busy_ratio, 0.0);
        EXPECT_LE(s.busy_ratio, 1.0);
      }
      std::printf("device %d: %lld / %lld MiB used, busy %s%.2f\n", s.device,
                  static_cast<long long>(s.memory_used_bytes >> 20),
                  static_cast<long long>(s.memory_total_bytes >> 20),
                  s.has_busy_ratio ? "" : "(n/a) ", s.busy_ratio);
    }
  }
}

TEST(GpuSamplerTest, CreateAndDestroyRepeatedly) {
  // nvmlInit/nvmlShutdown are reference counted; several samplers may live at once.
  auto first = GpuSampler::Create();
  if (!first.ok()) GTEST_SKIP() << "no GPU to sample: " << first.status();
  for (int i = 0; i < 3; ++i) {
    auto another = GpuSampler::Create();
    ASSERT_TRUE(another.ok()) << another.status();
    EXPECT_EQ((*another)->device_count(), (*first)->device_count());
  }
  EXPECT_TRUE((*first)->Sample().ok());
}

}  // namespace
}  // namespace moe::metrics
