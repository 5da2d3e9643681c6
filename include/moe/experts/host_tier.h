// HostExpertSource: the host tier of the GPU expert cache. Copies one routed expert from the
// mmap'd checkpoint into a GPU slot on the caller's copy stream, never from pageable memory.
//
// Two ways to the device (Mode):
//   kRegisteredMmap: the read-only MAP_SHARED mappings of the checkpoint's shards are page-locked
//     in place with cudaHostRegister(cudaHostRegisterReadOnly | cudaHostRegisterPortable) (only
//     the page-aligned range that holds routed experts, per mapping). A miss is then 1-3 DMA
//     copies straight out of the page cache (HostCopyPlan) at pinned bandwidth. Registration
//     faults every page in and pins it: it needs the experts in host RAM. A private or writable
//     mapping is never registered (a MAP_PRIVATE registration was seen not to return in minutes).
//     The registrations are undone when the last source using them is destroyed.
//   kStagingRing: a ring of pinned chunks (Options::staging_bytes, cudaMallocHost). A miss is cut
//     into chunks; for each, the caller waits until the chunk's previous copy has completed
//     (its event), fills it with a parallel memcpy out of the mapping (Options::staging_threads
//     threads, the caller included), enqueues cudaMemcpyAsync and records the chunk's event.
//     Filling chunk i+1 overlaps the DMA of chunk i.
//   kAuto: kRegisteredMmap when every routed expert lies in a read-only MAP_SHARED file mapping,
//     the bytes to register fit in the host's available memory (with a reserve) and registration
//     succeeds; otherwise kStagingRing (setup().fallback_reason says why).
//
// Ownership: the source keeps `model` alive (shared_ptr); the registrations and the ring are
// owned by the source. Destroy the source before the CUDA context goes away, after the copies it
// enqueued have completed (the destructor synchronizes the ring's events, not the caller's
// streams).
//
// Thread safety: CopyAsync is thread safe (several engine slots call it at once). In the staging
// mode callers share the ring: a chunk is handed to one caller at a time and reused only after
// its copy's event has completed. All const accessors are safe from any thread.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "moe/common/status.h"
#include "moe/experts/host_tier_layout.h"
#include "moe/experts/slot_pool.h"
#include "moe/model/model.h"

namespace moe::experts {

class HostExpertSource {
 public:
  enum class Mode { kAuto, kRegisteredMmap, kStagingRing };

  struct Options {
    int device = 0;
    // kAuto: register the read-only MAP_SHARED mmaps with cudaHostRegisterReadOnly; fall back
    // to the staging ring. kRegisteredMmap / kStagingRing force one (a forced registration that
    // is impossible fails Create with FailedPrecondition, or the CUDA error).
    Mode mode = Mode::kAuto;
    int64_t staging_bytes = int64_t{256} << 20;  // pinned ring (staging mode only)
    // memcpy threads filling the ring, the caller included. The fill bounds this mode: ~4-5 GB/s
    // per thread on the H200 host (4: 13-17 GB/s, 16: ~28 GB/s; benches/RESULTS.md).
    int staging_threads = 4;
  };

  // What Create did, for logs and the time-to-ready report.
  struct Setup {
    Mode mode = Mode::kAuto;        // in effect
    int64_t registered_bytes = 0;   // page-locked mmap bytes (kRegisteredMmap)
    int32_t registered_ranges = 0;  // cudaHostRegister calls that this source owns or shares
    double register_seconds = 0;    // wall time of those registrations (page faults included)
    int64_t staging_bytes = 0;      // pinned ring bytes (kStagingRing)
    std::string fallback_reason;    // why kAuto chose kStagingRing (empty otherwise)
  };

  // Builds the copy plan (HostCopyPlan::Build errors), then sets up the mode on
  // `options.device` (the calling thread's current device is restored before returning).
  // InvalidArgument for bad options (staging_bytes < 1 MiB, staging_threads < 1, no such
  // device); FailedPrecondition when kRegisteredMmap is forced on experts outside read-only
  // MAP_SHARED file mappings or beyond available host memory; CUDA errors as statuses.
  static StatusOr<std::unique_ptr<HostExpertSource>> Create(std::shared_ptr<const Model> model,
                                                            const Options& options);

  ~HostExpertSource();
  HostExpertSource(const HostExpertSource&) = delete;
  HostExpertSource& operator=(const HostExpertSource&) = delete;

  // Same for every (layer, expert) of the model.
  const SlotLayout& layout() const { return plan_.layout(); }
  // The mode in effect after kAuto resolution.
  Mode mode() const { return setup_.mode; }
  const Setup& setup() const { return setup_; }
  const HostCopyPlan& plan() const { return plan_; }
  const Model& model() const { return *model_; }

  // Enqueues the copy of expert `key` into `dst` (device memory on options.device of at least
  // layout().slot_bytes bytes; padding bytes between matrices are not written) on `stream` (the
  // copy stream). Returns once the copy is enqueued: record an event on `stream` afterwards to
  // know when the slot is ready. The staging mode blocks the caller while it waits for free
  // chunks and fills them. InvalidArgument for an unknown key or a null `dst`; CUDA errors as
  // statuses (the slot's contents are then undefined).
  Status CopyAsync(const ExpertKey& key, void* dst, cudaStream_t stream);

 private:
  class Registrations;
  class StagingRing;

  HostExpertSource(std::shared_ptr<const Model> model, HostCopyPlan plan, int device);
  // kRegisteredMmap set-up: checks, then registers; on failure nothing stays registered.
  Status TryRegister();

  std::shared_ptr<const Model> model_;
  HostCopyPlan plan_;
  int device_ = 0;
  Setup setup_;
  std::unique_ptr<Registrations> registrations_;  // kRegisteredMmap
  std::unique_ptr<StagingRing> ring_;             // kStagingRing
};

std::string_view ModeName(HostExpertSource::Mode mode);

}  // namespace moe::experts
