// Where the expert cache's copies come from: the host tier behind one small interface, so the
// cached forward does not care whether the bytes come from registered mmaps, a pinned staging
// ring or plain host memory.
//
// Thread safety: CopyAsync may be called from several threads (implementations say how).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>
#include <string>

#include "moe/common/status.h"
#include "moe/experts/compressed_tier.h"
#include "moe/experts/slot_pool.h"
#include "moe/model/model.h"

namespace moe::cuda {

// Byte offsets of one routed expert's matrices inside its slot: gate [inter, hidden], up
// [inter, hidden], down [hidden, inter], each 256-byte aligned, in the order the host tier chose
// (the checkpoint's: down may come first); slot_bytes covers all three (the pool's slot size).
struct ExpertSlotLayout {
  int64_t gate_offset = 0;
  int64_t up_offset = 0;
  int64_t down_offset = 0;
  int64_t slot_bytes = 0;
};

class ExpertCopier {
 public:
  virtual ~ExpertCopier() = default;
  virtual const ExpertSlotLayout& layout() const = 0;
  // How copies are sourced, for logs and stats ("registered-mmap", "staging-ring", "pageable").
  virtual std::string mode() const = 0;
  // Enqueues the copy of expert `key` into `dst` (device memory of layout().slot_bytes) on
  // `stream` and returns once it is enqueued.
  virtual Status CopyAsync(const experts::ExpertKey& key, void* dst, cudaStream_t stream) = 0;
  // The host tier's compressed copies (ExpertCopierOptions::compress), or null without them.
  virtual const experts::CompressedHostTier* compressed() const { return nullptr; }
};

struct ExpertCopierOptions {
  int device = 0;
  // Register the checkpoint's read-only mmaps for DMA where possible (HostExpertSource kAuto);
  // false: always the pinned staging ring.
  bool register_host_memory = true;
  // Also keep a losslessly compressed copy of every routed expert in pinned host memory, encoded
  // in the background (experts::CompressedHostTier), for misses to move fewer bytes. Models the
  // codec cannot take (weights other than bf16) run without it (compressed() is null).
  bool compress = false;
  int compress_threads = 8;
};

// The host tier of `model` (experts::HostExpertSource, which keeps the model alive).
StatusOr<std::unique_ptr<ExpertCopier>> MakeExpertCopier(std::shared_ptr<const Model> model,
                                                         const ExpertCopierOptions& options);

}  // namespace moe::cuda
