// GPU memory and busy-ratio metrics from NVML (the NVIDIA driver's management library), for any
// engine and without linking CUDA: libnvidia-ml.so.1 is loaded at run time (dlopen), so the same
// binary runs on hosts without a GPU, where Create() says why it has nothing to sample.
//
//   moe_gpu_memory_used_bytes{device}, moe_gpu_memory_total_bytes{device}: nvmlDeviceGetMemoryInfo
//     (v1: "used" includes the driver's reserved memory, ~600 MiB on an idle H200, which
//     nvidia-smi leaves out of its memory.used)
//   moe_gpu_busy_ratio{device}: nvmlDeviceGetUtilizationRates().gpu / 100, the fraction of the
//     driver's last sample period (1/6 s to 1 s by product) in which a kernel was running
// `device` is NVML's index (what nvidia-smi shows). Inside a container NVML sees only the GPUs the
// container was given, indexed from 0 like CUDA; on hosts with several GPU models CUDA's default
// order (fastest first) can differ from NVML's (PCI bus order) unless CUDA_DEVICE_ORDER=PCI_BUS_ID.
//
// Containers need NVIDIA_DRIVER_CAPABILITIES to include `utility` (Dockerfile.gpu sets
// compute,utility) for the toolkit to mount libnvidia-ml.
//
// Thread safety: Sample() and the collect hook may run from any thread (a mutex serialises NVML
// calls). GpuMetrics' destructor removes its hook; after it returns no sampling runs.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "moe/common/status.h"

namespace moe::metrics {

class Metrics;

struct GpuSample {
  int device = 0;
  int64_t memory_used_bytes = 0;
  int64_t memory_total_bytes = 0;
  double busy_ratio = 0;        // [0, 1]; meaningful only when has_busy_ratio
  bool has_busy_ratio = false;  // false where NVML cannot tell (e.g. MIG instances)
};

class GpuSampler {
 public:
  // NOT_FOUND when libnvidia-ml.so.1 cannot be loaded (no NVIDIA driver on this host or in this
  // container); UNAVAILABLE when NVML fails to initialise or sees no GPU. Messages say which.
  static StatusOr<std::unique_ptr<GpuSampler>> Create();
  ~GpuSampler();
  GpuSampler(const GpuSampler&) = delete;
  GpuSampler& operator=(const GpuSampler&) = delete;

  int device_count() const { return device_count_; }
  // One sample per device. UNAVAILABLE naming the device and NVML's error when a query fails
  // (e.g. the GPU fell off the bus).
  StatusOr<std::vector<GpuSample>> Sample();

 private:
  struct Api;
  GpuSampler(void* library, std::unique_ptr<Api> api, int device_count);

  void* const library_;  // dlopen handle
  const std::unique_ptr<Api> api_;
  const int device_count_;
  std::mutex mu_;  // NVML is thread-safe; this keeps samples of concurrent scrapes whole
};

// Copies samples into the moe_gpu_* gauges.
void PublishGpuSamples(const std::vector<GpuSample>& samples, Metrics& metrics);

// Samples at every /metrics scrape (a Metrics collect hook). Failed samples are logged (rate
// limited to one line a minute) and leave the previous values in place.
class GpuMetrics {
 public:
  // Errors as GpuSampler::Create(). `metrics` must outlive the returned object.
  static StatusOr<std::unique_ptr<GpuMetrics>> Create(Metrics* metrics);
  ~GpuMetrics();
  GpuMetrics(const GpuMetrics&) = delete;
  GpuMetrics& operator=(const GpuMetrics&) = delete;

  int device_count() const { return sampler_->device_count(); }

 private:
  GpuMetrics(Metrics* metrics, std::unique_ptr<GpuSampler> sampler);
  void Collect(Metrics& metrics);

  Metrics* const metrics_;
  const std::unique_ptr<GpuSampler> sampler_;
  int hook_id_ = -1;
  std::mutex mu_;
  int64_t last_error_log_s_ ABSL_GUARDED_BY(mu_) = -1000;
};

}  // namespace moe::metrics
