// Device-side residency check of the GPU expert cache (cache_residency.cu).
//
// The cached forward launches this kernel right after the layer's front (routing + scan) and
// before the routed experts, so that a layer whose experts are all resident needs no host round
// trip before its expert kernels start:
//   1. For every expert with rows (group_offsets, or counted from the top-k ids), look up its
//      slot in the residency table (host-written, mapped pinned memory: slot index, or -1 while
//      absent or loading; with PDL the layer's whole row is read before the wait, while the
//      front runs) and write the per-expert gate / up / down pointer tables of the layer
//      ([n_experts] each).
//   2. Write the speculative meta and tile count the routed kernels read: the forward's meta and
//      the scan's tile count when every routed expert is resident, else n_tokens = 0 and 0 tiles
//      (the routed kernels then do nothing; the host computes the layer through cache rounds).
//   3. Copy the routing result the host needs (per-expert row offsets, the gate-lookahead
//      predictions) into mapped pinned memory, then, after a system-scope fence, the number of
//      experts not resident and the sequence number the host set in `*seq`: the host spins on
//      it (a few us) instead of a stream synchronisation plus copies.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/moe_kernels.h"
#include "moe/common/status.h"

namespace moe::cuda {

// What the kernel reports to the host (mapped pinned memory; `seq` is written last).
struct ResidencyReport {
  uint64_t seq = 0;      // the sequence number of the forward that wrote the report
  int32_t misses = 0;    // routed experts without a resident slot
  int32_t n_tokens = 0;  // of that forward
};

// The most (token, k) pairs whose offsets the kernel counts from the top-k ids.
inline constexpr int kResolveMaxPairs = 64;

struct ResolveArgs {
  const ForwardMeta* meta = nullptr;  // the forward's meta (device)
  // The per-expert row offsets come from one of two places:
  //  - group_offsets: [n_experts + 1] from the scan;
  //  - topk_ids: [n_tokens * top_k] from the routing, when the front routed only (one token: the
  //    decode experts path needs no scan); the kernel then counts the offsets itself (at most
  //    kResolveMaxPairs pairs). Exactly one of the two is set.
  const int32_t* group_offsets = nullptr;
  const int32_t* topk_ids = nullptr;
  const int32_t* n_tiles = nullptr;  // the scan's tile count, or null (decode experts path)
  int n_experts = 0;
  int top_k = 0;
  // Residency table row of this layer: [n_experts] slot index or -1 (mapped host memory, read
  // with volatile loads: the host updates it while kernels run).
  const int32_t* slot_of = nullptr;
  // Slot i's matrices: slot_base + i * slot_bytes + {gate, up, down}_offset.
  const char* slot_base = nullptr;
  int64_t slot_bytes = 0;
  int64_t gate_offset = 0, up_offset = 0, down_offset = 0;
  int32_t n_slots = 0;  // entries >= n_slots count as misses (0: every expert a miss)
  // Outputs on the device.
  const void** tables = nullptr;  // [3 * n_experts]: gate, up, down pointers
  ForwardMeta* spec_meta = nullptr;
  int32_t* spec_n_tiles = nullptr;  // written when n_tiles is set
  // Gate-lookahead results to forward to the host: la_depth blocks of [n_tokens * top_k] at a
  // stride of la_stride entries (0 blocks: none).
  const int32_t* la_ids = nullptr;
  const float* la_weights = nullptr;
  int la_depth = 0;
  int64_t la_stride = 0;
  // Host outputs (mapped pinned memory, device-accessible pointers).
  int32_t* host_offsets = nullptr;  // [n_experts + 1]
  int32_t* host_la_ids = nullptr;   // [la_depth * la_stride]
  float* host_la_weights = nullptr;
  ResidencyReport* report = nullptr;
  // The sequence number to report: a mapped host word the host sets before each launch (so that
  // a CUDA graph of the forward replays with new numbers).
  const uint64_t* seq = nullptr;
  // Launch with PDL: the table row (every expert's entry) and `seq` are read before the wait for
  // the kernels before it (ExpertCacheOptions::residency_pdl).
  bool pdl = true;

  Status Validate() const;
};

Status LaunchResolveResidency(const ResolveArgs& args, cudaStream_t stream);

}  // namespace moe::cuda
