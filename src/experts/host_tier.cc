// HostExpertSource: mode selection, registration of the checkpoint's mmaps, and the copy path.
#include "moe/experts/host_tier.h"

#include <unistd.h>

#include <chrono>
#include <map>
#include <mutex>
#include <span>
#include <utility>

#include "absl/strings/str_cat.h"
#include "experts/host_tier_mappings.h"
#include "experts/host_tier_staging.h"
#include "kernels/cuda_status.h"

namespace moe::experts {
namespace {

using host_tier_internal::RegisterRange;

// Restores the calling thread's current device on scope exit.
class DeviceGuard {
 public:
  static StatusOr<DeviceGuard> Set(int device) {
    DeviceGuard g;
    CUDA_RETURN_IF_ERROR(cudaGetDevice(&g.previous_));
    if (g.previous_ != device) CUDA_RETURN_IF_ERROR(cudaSetDevice(device));
    g.restore_ = g.previous_ != device;
    return g;
  }
  DeviceGuard(DeviceGuard&& o) noexcept
      : previous_(o.previous_), restore_(std::exchange(o.restore_, false)) {}
  DeviceGuard& operator=(DeviceGuard&&) = delete;
  ~DeviceGuard() {
    if (restore_) cudaSetDevice(previous_);
  }

 private:
  DeviceGuard() = default;
  int previous_ = 0;
  bool restore_ = false;
};

}  // namespace

std::string_view ModeName(HostExpertSource::Mode mode) {
  switch (mode) {
    case HostExpertSource::Mode::kAuto:
      return "auto";
    case HostExpertSource::Mode::kRegisteredMmap:
      return "registered_mmap";
    case HostExpertSource::Mode::kStagingRing:
      return "staging_ring";
  }
  return "?";
}

// ---------------------------------------------------------------------------------------------
// Registrations: cudaHostRegister'ed ranges, shared by every source of one process that registers
// the same range (e.g. one source per GPU over one Model); the last one out unregisters.
//
// NOTES: the table is process-wide because CUDA's registration is (a second cudaHostRegister of
// the same range fails with cudaErrorHostMemoryAlreadyRegistered). It holds counts only, no CUDA
// handle outlives its sources: teardown order stays the destructors' order.

class HostExpertSource::Registrations {
 public:
  // Registers (or shares) every range; on failure undoes what it did and returns the error.
  static StatusOr<std::unique_ptr<Registrations>> Acquire(std::span<const RegisterRange> ranges) {
    std::unique_ptr<Registrations> r(new Registrations());
    for (const RegisterRange& range : ranges) {
      MOE_RETURN_IF_ERROR(r->AcquireOne(range));
    }
    return r;
  }
  ~Registrations() {
    std::lock_guard<std::mutex> lock(TableMutex());
    for (const Key& k : held_) {
      auto it = Table().find(k);
      if (it != Table().end() && --it->second == 0) {
        cudaHostUnregister(const_cast<void*>(static_cast<const void*>(k.first)));
        Table().erase(it);
      }
    }
  }
  int64_t bytes() const { return bytes_; }
  int32_t count() const { return static_cast<int32_t>(held_.size()); }

 private:
  using Key = std::pair<const uint8_t*, int64_t>;
  static std::mutex& TableMutex() {
    static std::mutex* mu = new std::mutex();
    return *mu;
  }
  static std::map<Key, int>& Table() {
    static auto* table = new std::map<Key, int>();
    return *table;
  }

  Status AcquireOne(const RegisterRange& range) {
    const Key key{range.begin, range.bytes};
    std::lock_guard<std::mutex> lock(TableMutex());
    auto it = Table().find(key);
    if (it == Table().end()) {
      // ReadOnly: the mapping is PROT_READ (without it the driver refuses); Portable: every
      // device of the process may copy from it.
      const cudaError_t err =
          cudaHostRegister(const_cast<uint8_t*>(range.begin), static_cast<size_t>(range.bytes),
                           cudaHostRegisterReadOnly | cudaHostRegisterPortable);
      if (err != cudaSuccess) {
        cudaGetLastError();  // clear it: a later cudaGetLastError must not report it
        return absl::InternalError(absl::StrCat(
            "cudaHostRegister(", range.bytes, " bytes of '", range.path,
            "', ReadOnly|Portable): ", cudaGetErrorName(err), ": ", cudaGetErrorString(err)));
      }
      it = Table().emplace(key, 0).first;
    }
    ++it->second;
    held_.push_back(key);
    bytes_ += range.bytes;
    return absl::OkStatus();
  }

  Registrations() = default;
  std::vector<Key> held_;
  int64_t bytes_ = 0;
};

// ---------------------------------------------------------------------------------------------
// HostExpertSource

HostExpertSource::HostExpertSource(std::shared_ptr<const Model> model, HostCopyPlan plan,
                                   int device)
    : model_(std::move(model)), plan_(std::move(plan)), device_(device) {}

HostExpertSource::~HostExpertSource() {
  // Events, pinned memory and registrations belong to device_'s context.
  int previous = -1;
  const bool switch_device = cudaGetDevice(&previous) == cudaSuccess && previous != device_;
  if (switch_device) cudaSetDevice(device_);
  ring_.reset();
  registrations_.reset();
  if (switch_device) cudaSetDevice(previous);
}

StatusOr<std::unique_ptr<HostExpertSource>> HostExpertSource::Create(
    std::shared_ptr<const Model> model, const Options& options) {
  if (model == nullptr) return absl::InvalidArgumentError("host tier: null model");
  if (options.staging_threads < 1 || options.staging_threads > 256) {
    return absl::InvalidArgumentError(absl::StrCat(
        "host tier: staging_threads must be in [1, 256], not ", options.staging_threads));
  }
  if (options.staging_bytes < (int64_t{1} << 20)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "host tier: staging_bytes must be at least 1 MiB, not ", options.staging_bytes));
  }
  int n_devices = 0;
  CUDA_RETURN_IF_ERROR(cudaGetDeviceCount(&n_devices));
  if (options.device < 0 || options.device >= n_devices) {
    return absl::InvalidArgumentError(absl::StrCat("host tier: device ", options.device,
                                                   " does not exist (", n_devices, " devices)"));
  }
  MOE_ASSIGN_OR_RETURN(HostCopyPlan plan, HostCopyPlan::Build(*model));
  MOE_ASSIGN_OR_RETURN(DeviceGuard guard, DeviceGuard::Set(options.device));
  std::unique_ptr<HostExpertSource> source(
      new HostExpertSource(std::move(model), std::move(plan), options.device));
  Setup& setup = source->setup_;

  if (options.mode != Mode::kStagingRing) {
    const bool forced = options.mode == Mode::kRegisteredMmap;
    const Status registered = source->TryRegister();
    if (registered.ok()) {
      setup.mode = Mode::kRegisteredMmap;
      return source;
    }
    if (forced) return registered;
    setup.fallback_reason = std::string(registered.message());
  }
  MOE_ASSIGN_OR_RETURN(source->ring_,
                       StagingRing::Create(options.staging_bytes, options.staging_threads));
  setup.mode = Mode::kStagingRing;
  setup.staging_bytes = source->ring_->bytes();
  return source;
}

Status HostExpertSource::TryRegister() {
  int supported = 0;
  CUDA_RETURN_IF_ERROR(
      cudaDeviceGetAttribute(&supported, cudaDevAttrHostRegisterReadOnlySupported, device_));
  if (!supported) {
    return absl::FailedPreconditionError(
        absl::StrCat("host tier: device ", device_, " does not support cudaHostRegisterReadOnly"));
  }
  MOE_ASSIGN_OR_RETURN(
      std::vector<host_tier_internal::Mapping> mappings,
      host_tier_internal::ParseProcMaps(host_tier_internal::ReadProcFile("/proc/self/maps")));
  mappings = host_tier_internal::MergeMappings(std::move(mappings));
  MOE_ASSIGN_OR_RETURN(
      std::vector<RegisterRange> ranges,
      host_tier_internal::RangesToRegister(plan_, mappings, sysconf(_SC_PAGESIZE)));
  int64_t bytes = 0;
  for (const RegisterRange& r : ranges) bytes += r.bytes;
  MOE_ASSIGN_OR_RETURN(host_tier_internal::HostMemory memory, host_tier_internal::ReadHostMemory());
  const std::string no_room = host_tier_internal::CheckFitsInHostMemory(bytes, memory);
  if (!no_room.empty()) {
    return absl::FailedPreconditionError(absl::StrCat("host tier: ", no_room));
  }
  const auto start = std::chrono::steady_clock::now();
  MOE_ASSIGN_OR_RETURN(registrations_, Registrations::Acquire(ranges));
  setup_.register_seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  setup_.registered_bytes = registrations_->bytes();
  setup_.registered_ranges = registrations_->count();
  return absl::OkStatus();
}

Status HostExpertSource::CopyAsync(const ExpertKey& key, void* dst, cudaStream_t stream) {
  if (dst == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("host tier: null slot for ", ToString(key)));
  }
  MOE_ASSIGN_OR_RETURN(std::span<const HostCopy> copies, plan_.Copies(key));
  auto* slot = static_cast<uint8_t*>(dst);
  if (ring_ != nullptr) return ring_->Copy(copies, slot, stream);
  for (const HostCopy& c : copies) {
    CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(slot + c.dst_offset, c.src, static_cast<size_t>(c.bytes),
                                         cudaMemcpyHostToDevice, stream));
  }
  return absl::OkStatus();
}

}  // namespace moe::experts
