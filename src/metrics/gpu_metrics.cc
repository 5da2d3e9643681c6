// GpuMetrics: GpuSampler (gpu_sampler.cc) sampled at every scrape into the moe_gpu_* gauges.
#include "moe/metrics/gpu_metrics.h"

#include <chrono>

#include "moe/common/logging.h"
#include "moe/metrics/metrics.h"
#include "spdlog/logger.h"

namespace moe::metrics {

void PublishGpuSamples(const std::vector<GpuSample>& samples, Metrics& metrics) {
  for (const GpuSample& s : samples) {
    metrics.SetGpuMemory(s.device, s.memory_used_bytes, s.memory_total_bytes);
    if (s.has_busy_ratio) metrics.SetGpuBusyRatio(s.device, s.busy_ratio);
  }
}

StatusOr<std::unique_ptr<GpuMetrics>> GpuMetrics::Create(Metrics* metrics) {
  if (metrics == nullptr) return absl::InvalidArgumentError("GpuMetrics: metrics is null");
  MOE_ASSIGN_OR_RETURN(std::unique_ptr<GpuSampler> sampler, GpuSampler::Create());
  return std::unique_ptr<GpuMetrics>(new GpuMetrics(metrics, std::move(sampler)));
}

GpuMetrics::GpuMetrics(Metrics* metrics, std::unique_ptr<GpuSampler> sampler)
    : metrics_(metrics), sampler_(std::move(sampler)) {
  hook_id_ = metrics_->AddCollectHook([this](Metrics& m) { Collect(m); });
}

GpuMetrics::~GpuMetrics() { metrics_->RemoveCollectHook(hook_id_); }

void GpuMetrics::Collect(Metrics& metrics) {
  StatusOr<std::vector<GpuSample>> samples = sampler_->Sample();
  if (samples.ok()) {
    PublishGpuSamples(*samples, metrics);
    return;
  }
  const int64_t now_s = std::chrono::duration_cast<std::chrono::seconds>(
                            std::chrono::steady_clock::now().time_since_epoch())
                            .count();
  std::lock_guard lock(mu_);
  if (now_s - last_error_log_s_ < 60) return;
  last_error_log_s_ = now_s;
  log::Get("metrics")->warn("{}", std::string(samples.status().message()));
}

}  // namespace moe::metrics
