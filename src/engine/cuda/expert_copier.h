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
#include "moe/experts/slot_pool.h"
#include "moe/model/model.h"

namespace moe::cuda {

// Byte offsets of one routed expert's matrices inside its slot: gate [inter, hidden], up
// [inter, hidden], down [hidden, inter], each 256-byte aligned; slot_bytes covers all three.
struct ExpertSlotLayout {
  int64_t gate_offset = 0;
  int64_t up_offset = 0;
  int64_t down_offset = 0;
  int64_t slot_bytes = 0;
};
ExpertSlotLayout MakeExpertSlotLayout(const MoeSpec& spec);

class ExpertCopier {
 public:
  virtual ~ExpertCopier() = default;
  virtual const ExpertSlotLayout& layout() const = 0;
  // How copies are sourced, for logs and stats ("registered-mmap", "staging-ring", "pageable").
  virtual std::string mode() const = 0;
  // Enqueues the copy of expert `key` into `dst` (device memory of layout().slot_bytes) on
  // `stream` and returns once it is enqueued.
  virtual Status CopyAsync(const experts::ExpertKey& key, void* dst, cudaStream_t stream) = 0;
};

struct ExpertCopierOptions {
  int device = 0;
  // Prefer the host tier's registered (DMA-able) mappings; false: plain copies.
  bool register_host_memory = true;
};

// The host tier of `model` (which must outlive the copier): experts::HostExpertSource when this
// build has it, else plain cudaMemcpyAsync of the three matrices from the model's host memory
// (pageable: correct, but at pageable-copy speed).
StatusOr<std::unique_ptr<ExpertCopier>> MakeExpertCopier(std::shared_ptr<const Model> model,
                                                         const ExpertCopierOptions& options);

}  // namespace moe::cuda
