// The fused decode kernel (decode_fused.cu): router, routing and the routed gate/up of a decode
// batch in ONE launch on sm_90, ahead of the decode experts' down + combine (decode_experts.cu).
//
// The grid is made of thread-block clusters (2, 4 or 8 blocks). Every cluster computes the whole
// router (each block its share of the rows, the partial logits shared through distributed shared
// memory at a cluster barrier), routes every token itself (the same function on the same logits in
// every block, so every block holds the same experts) and goes straight on to its share of the
// gate/up units. No block waits for another cluster, so nothing can deadlock when clusters are not
// co-resident. Replaces the fused decode front (decode_front.cu) + LaunchDecodeGateUp of the decode
// experts path: one launch, no ticket, no logits round trip through global memory, and the routed
// experts' ids never leave the block before their weights are requested. Measured slower on an H200
// (each cluster re-reads the router; decode_fused.cu NOTES), so the engine runs it only on request
// (CudaEngineOptions::decode_fused_route).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/moe_kernels.h"
#include "moe/common/status.h"

namespace moe::cuda {

// Limits of the fused kernel: tokens of the launch capacity, (token, k) pairs, the converted input
// rows it keeps in shared memory ([capacity, hidden] in the weight dtype) and router rows.
inline constexpr int kDecodeFusedMaxTokens = 8;
inline constexpr int kDecodeFusedMaxPairs = 64;
inline constexpr int64_t kDecodeFusedMaxXBytes = 32 * 1024;
inline constexpr int kDecodeFusedMaxRouterRows = 257;  // 256 experts + the shared-expert gate

enum class DownPrefetch : uint8_t { kNone, kEarly, kLate };

struct DecodeFusedArgs {
  // Routing (route.routing, bias, the global topk_ids / topk_weights / shared_gate it writes for
  // later kernels and Forward()), the router (router_table, ld_router, router_rows) and the input
  // conversion (convert.x, written for the shared expert's GEMV: the hi part only).
  FrontArgs front;
  // The routed experts: tables, h (pair order: pair_row must be null), wtype / atype.
  DecodeExpertsArgs experts;
  int cluster_size = 8;  // blocks per cluster: 2, 4 or 8
  int grid_blocks = 0;   // DecodeFusedGridBlocks(): a multiple of the cluster size
  // Prefetch the down rows of every (token, k) pair into L2 (cp.async.bulk.prefetch.L2) so that
  // down + combine reads L2: kEarly before the gate/up units (whose weights then stream with the
  // evict_first policy), kLate once the warp's gate/up units are done.
  DownPrefetch prefetch_down = DownPrefetch::kNone;
  // Without kEarly: each warp keeps its next prefetch_units gate/up units' rows on their way
  // into L2 (more bytes in flight than the SM's outstanding loads allow; 0: none; at most 16).
  int prefetch_units = 0;
  // The gate/up weights move by the bulk copy engine (GateUpUnitsTma; InitDecodeTma() true).
  bool tma = false;
  Status Validate() const;
};

// True when a launch of `capacity` tokens fits the fused kernel's limits.
bool CanDecodeFused(int64_t capacity, int top_k, int hidden, int n_experts, int router_rows);
// Raises the kernel's shared-memory limit; false (OK status) when this build or device cannot run
// it (no sm_90 image of the kernel, or a device below sm_90). Call once per device.
StatusOr<bool> InitDecodeFused();
// Blocks of the fused grid on the current device for launches of `capacity` tokens of this shape
// (tma: with the bulk-copy gate/up buffers): the clusters of `cluster_size` blocks that fit at once
// (cudaOccupancyMaxActiveClusters; at most `max_clusters` when > 0) times the cluster size; 0 when
// the shape does not fit.
StatusOr<int> DecodeFusedGridBlocks(WType wtype, AType atype, int64_t capacity, int top_k,
                                    int hidden, int n_experts, int router_rows, int cluster_size,
                                    int max_clusters, bool tma);
Status LaunchDecodeFused(const DecodeFusedArgs& args, cudaStream_t stream);
// LaunchDecodeGateUp with options: each warp's next prefetch_units units prefetched into L2 (0 to
// 16); tma: the weights move by the bulk copy engine into per-warp shared-memory buffers (sm_90,
// InitDecodeTma() true).
struct DecodeGateUpOptions {
  int prefetch_units = 0;
  bool tma = false;
};
Status LaunchDecodeGateUpWith(const DecodeExpertsArgs& args, const DecodeGateUpOptions& options,
                              cudaStream_t stream);
// LaunchDecodeDownCombine with options. routing_after_wait: for a launch right after
// LaunchDecodeFused (or any kernel that writes the routing): every block waits for the previous
// kernel before it reads the routing, and skips its L2 prefetch. h_smem: stage h in shared memory
// when it fits (else every warp reads it from global memory). tma: the weights move by the bulk
// copy engine into per-warp shared-memory buffers (sm_90, InitDecodeTma() true; h from global
// memory).
struct DecodeDownOptions {
  bool routing_after_wait = false;
  bool h_smem = false;
  bool tma = false;
  // 16-byte weight loads per lane and batch with h from global memory: 8, 10 or 12; anything else
  // picks by DecodeDownChunks's rule.
  int chunks = 0;
  // At one token (DecodeDownGroupsApply), DecodeDownGroupsKernel: blocks of 8 output columns whose
  // warps split the (pair, 64-column) pieces of those rows; groups_batch pieces (4 or 6) a
  // register buffer; groups_preload: that many buffers (0-2) loaded before the PDL wait. Not with
  // tma or routing_after_wait (the old kernel runs then).
  bool groups = false;
  int groups_batch = 4;
  int groups_preload = 0;
};
// Whether DecodeDownOptions::groups applies: one token, inter a multiple of 64, h of the top_k
// pairs within 96 KiB.
bool DecodeDownGroupsApply(const DecodeExpertsArgs& args);
// Raises the groups kernels' shared-memory limit to that size. Call once per device.
Status InitDecodeDownGroups();
// The batch size the down + combine kernel runs with h from global memory: `requested` when it is
// one of the built sizes, else by the rule in decode_experts.cu (a unit's run of top_k * inter / 8
// chunks in the fewest batches while they are few, else 10).
int DecodeDownChunks(int top_k, int inter, int requested);
Status LaunchDecodeDownCombineWith(const DecodeExpertsArgs& args, const DecodeDownOptions& options,
                                   cudaStream_t stream);
// Raises the shared-memory limits of the bulk-copy gate/up and down kernels; false when this build
// or device cannot run them. Call once per device.
StatusOr<bool> InitDecodeTma();

}  // namespace moe::cuda
