// GpuMetrics glue on any host: samples land in the moe_gpu_* gauges; without an NVIDIA driver
// Create() explains why instead of failing the daemon.
#include "moe/metrics/gpu_metrics.h"

#include <gtest/gtest.h>

#include "metrics/collect.h"
#include "moe/metrics/metrics.h"

namespace moe::metrics {
namespace {

using testing::Collected;

TEST(GpuMetricsTest, PublishSetsTheGauges) {
  auto metrics = std::move(Metrics::Create({})).value();
  PublishGpuSamples({{.device = 0,
                      .memory_used_bytes = int64_t{3} << 30,
                      .memory_total_bytes = int64_t{80} << 30,
                      .busy_ratio = 0.25,
                      .has_busy_ratio = true},
                     {.device = 1,
                      .memory_used_bytes = 1024,
                      .memory_total_bytes = int64_t{80} << 30,
                      .busy_ratio = 0,
                      .has_busy_ratio = false}},
                    *metrics);
  Collected c(*metrics);
  EXPECT_EQ(c.Gauge("moe_gpu_memory_used_bytes", {{"device", "0"}}),
            static_cast<double>(int64_t{3} << 30));
  EXPECT_EQ(c.Gauge("moe_gpu_memory_total_bytes", {{"device", "1"}}),
            static_cast<double>(int64_t{80} << 30));
  EXPECT_EQ(c.Gauge("moe_gpu_busy_ratio", {{"device", "0"}}), 0.25);
  // Device 1 has no busy figure: its gauge stays at its initial 0, never a made-up value.
  EXPECT_EQ(c.Gauge("moe_gpu_busy_ratio", {{"device", "1"}}), 0.0);
}

TEST(GpuMetricsTest, CreateSamplesAtScrapeOrSaysWhyNot) {
  auto metrics = std::move(Metrics::Create({})).value();
  auto gpu = GpuMetrics::Create(metrics.get());
  if (!gpu.ok()) {
    EXPECT_TRUE(gpu.status().code() == absl::StatusCode::kNotFound ||
                gpu.status().code() == absl::StatusCode::kUnavailable)
        << gpu.status();
    EXPECT_NE(gpu.status().message().find("GPU metrics"), std::string::npos);
    return;
  }
  const std::string text = metrics->Serialize();
  EXPECT_NE(text.find("moe_gpu_memory_total_bytes{device=\"0\"}"), std::string::npos) << text;
  gpu->reset();
  (void)metrics->Serialize();  // the hook is gone
}

}  // namespace
}  // namespace moe::metrics
