// GpuSampler: NVML loaded with dlopen. Only absl and libdl are needed here, so this file also
// builds into a standalone test binary for GPU hosts (tests/metrics/gpu_sampler_test.cc).
#include <dlfcn.h>

#include <string>

#include "moe/metrics/gpu_metrics.h"

namespace moe::metrics {
namespace {

// The few NVML declarations we use (nvml.h, stable C ABI since NVML 5); declared here so that the
// build needs neither the CUDA toolkit nor the driver.
using NvmlReturn = int;  // nvmlReturn_t; 0 = NVML_SUCCESS
constexpr NvmlReturn kNvmlSuccess = 0;
constexpr NvmlReturn kNvmlErrorNotSupported = 3;
struct NvmlDeviceOpaque;
using NvmlDevice = NvmlDeviceOpaque*;  // nvmlDevice_t
struct NvmlMemory {                    // nvmlMemory_t (v1)
  unsigned long long total;
  unsigned long long free;
  unsigned long long used;
};
struct NvmlUtilization {  // nvmlUtilization_t
  unsigned int gpu;       // percent of the sample period a kernel was running
  unsigned int memory;
};

}  // namespace

struct GpuSampler::Api {
  NvmlReturn (*init)();
  NvmlReturn (*shutdown)();
  NvmlReturn (*device_count)(unsigned int*);
  NvmlReturn (*handle_by_index)(unsigned int, NvmlDevice*);
  NvmlReturn (*memory_info)(NvmlDevice, NvmlMemory*);
  NvmlReturn (*utilization)(NvmlDevice, NvmlUtilization*);
  const char* (*error_string)(NvmlReturn);

  std::string Error(NvmlReturn r) const {
    const char* s = error_string != nullptr ? error_string(r) : nullptr;
    return s != nullptr ? s : absl::StrCat("NVML error ", r);
  }
};

StatusOr<std::unique_ptr<GpuSampler>> GpuSampler::Create() {
  void* library = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
  if (library == nullptr) {
    const char* why = dlerror();
    return absl::NotFoundError(absl::StrCat(
        "GPU metrics: cannot load libnvidia-ml.so.1 (no NVIDIA driver here; in a container, "
        "NVIDIA_DRIVER_CAPABILITIES must include utility): ",
        why != nullptr ? why : "unknown"));
  }
  auto api = std::make_unique<Api>();
  struct Symbol {
    const char* name;
    void** slot;
  };
  const Symbol symbols[] = {
      {"nvmlInit_v2", reinterpret_cast<void**>(&api->init)},
      {"nvmlShutdown", reinterpret_cast<void**>(&api->shutdown)},
      {"nvmlDeviceGetCount_v2", reinterpret_cast<void**>(&api->device_count)},
      {"nvmlDeviceGetHandleByIndex_v2", reinterpret_cast<void**>(&api->handle_by_index)},
      {"nvmlDeviceGetMemoryInfo", reinterpret_cast<void**>(&api->memory_info)},
      {"nvmlDeviceGetUtilizationRates", reinterpret_cast<void**>(&api->utilization)},
      {"nvmlErrorString", reinterpret_cast<void**>(&api->error_string)},
  };
  for (const Symbol& s : symbols) {
    *s.slot = dlsym(library, s.name);
    if (*s.slot == nullptr) {
      dlclose(library);
      return absl::UnavailableError(
          absl::StrCat("GPU metrics: libnvidia-ml.so.1 has no ", s.name, " (driver too old?)"));
    }
  }
  if (NvmlReturn r = api->init(); r != kNvmlSuccess) {
    const std::string why = api->Error(r);
    dlclose(library);
    return absl::UnavailableError(absl::StrCat("GPU metrics: nvmlInit failed: ", why));
  }
  unsigned int count = 0;
  if (NvmlReturn r = api->device_count(&count); r != kNvmlSuccess || count == 0) {
    const std::string why = r != kNvmlSuccess ? api->Error(r) : "no GPU visible";
    api->shutdown();
    dlclose(library);
    return absl::UnavailableError(absl::StrCat("GPU metrics: ", why));
  }
  return std::unique_ptr<GpuSampler>(
      new GpuSampler(library, std::move(api), static_cast<int>(count)));
}

GpuSampler::GpuSampler(void* library, std::unique_ptr<Api> api, int device_count)
    : library_(library), api_(std::move(api)), device_count_(device_count) {}

GpuSampler::~GpuSampler() {
  api_->shutdown();
  dlclose(library_);
}

StatusOr<std::vector<GpuSample>> GpuSampler::Sample() {
  std::lock_guard lock(mu_);
  std::vector<GpuSample> samples;
  samples.reserve(static_cast<size_t>(device_count_));
  for (int i = 0; i < device_count_; ++i) {
    NvmlDevice device = nullptr;
    if (NvmlReturn r = api_->handle_by_index(static_cast<unsigned int>(i), &device);
        r != kNvmlSuccess) {
      return absl::UnavailableError(absl::StrCat("GPU metrics: device ", i, ": ", api_->Error(r)));
    }
    NvmlMemory memory{};
    if (NvmlReturn r = api_->memory_info(device, &memory); r != kNvmlSuccess) {
      return absl::UnavailableError(
          absl::StrCat("GPU metrics: device ", i, " memory: ", api_->Error(r)));
    }
    GpuSample sample;
    sample.device = i;
    sample.memory_used_bytes = static_cast<int64_t>(memory.used);
    sample.memory_total_bytes = static_cast<int64_t>(memory.total);
    NvmlUtilization util{};
    const NvmlReturn r = api_->utilization(device, &util);
    if (r == kNvmlSuccess) {
      sample.busy_ratio = util.gpu / 100.0;
      sample.has_busy_ratio = true;
    } else if (r != kNvmlErrorNotSupported) {
      return absl::UnavailableError(
          absl::StrCat("GPU metrics: device ", i, " utilization: ", api_->Error(r)));
    }
    samples.push_back(sample);
  }
  return samples;
}

}  // namespace moe::metrics
