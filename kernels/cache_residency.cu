// Device-side residency check of the GPU expert cache (see cache_residency.h for what it computes).
//
// One block: n_experts is at most a few hundred and a decode step routes a few dozen experts, so
// the kernel is latency bound (one round of reads of the mapped residency table over PCIe).
//
// Launched with PDL: the table row of the layer (every expert, routed or not) and the sequence
// number are read before the wait, so their round trip over PCIe overlaps the kernels before it
// (the front) instead of following them. That is as safe as reading after the wait: both words
// were set by the host before the launch, and the speculation protocol
// (engine/cuda/expert_cache_runtime.h, 6.) covers any read made after the launch.
#include "kernels/cache_residency.h"
#include "kernels/cuda_status.h"
#include "kernels/pdl.cuh"

namespace moe::cuda {
namespace {

constexpr int kResolveThreads = 256;
// Table entries a thread reads before the PDL wait: experts threadIdx.x + j * kResolveThreads,
// every expert of a model (the engine takes at most 1024; Validate checks).
constexpr int kResolveEarlyEntries = 4;

// The host rewrites the table while kernels run: read it uncached.
__device__ __forceinline__ int32_t LoadVolatile(const int32_t* p) {
  return *static_cast<const volatile int32_t*>(p);
}

__global__ void __launch_bounds__(kResolveThreads) ResolveResidencyKernel(const ResolveArgs a) {
  // The speculative gate/up after it may launch now (with PDL); it reads what this kernel writes
  // only after its wait, i.e. after this grid has finished.
  GridDepTrigger();
  __shared__ int s_misses;
  __shared__ int32_t s_ids[kResolveMaxPairs];
  // Before the wait, what the host set before the launch: the sequence number and this layer's
  // table row, one round trip over PCIe under the kernels before this one.
  uint64_t seq = 0;
  if (threadIdx.x == 0) {
    s_misses = 0;
    seq = *static_cast<const volatile uint64_t*>(a.seq);
  }
  const int e_count = a.n_experts;
  int32_t early[kResolveEarlyEntries];
#pragma unroll
  for (int j = 0; j < kResolveEarlyEntries; ++j) {
    const int e = threadIdx.x + j * kResolveThreads;
    early[j] = e < e_count ? LoadVolatile(a.slot_of + e) : -1;
  }
  GridDepWait();
  const ForwardMeta meta = *a.meta;
  const int64_t pairs = static_cast<int64_t>(meta.n_tokens) * a.top_k;
  // Without a scan: the routed ids, to count each expert's offsets from (pairs <=
  // kResolveMaxPairs, checked below).
  const int n_ids = a.topk_ids != nullptr ? static_cast<int>(pairs) : 0;
  if (a.topk_ids != nullptr && pairs > kResolveMaxPairs) __trap();
  for (int i = threadIdx.x; i < n_ids; i += blockDim.x) s_ids[i] = a.topk_ids[i];
  __syncthreads();
  // 1. Slots of the routed experts -> pointer tables; misses counted.
  int misses = 0;
#pragma unroll 1
  for (int j = 0, e = threadIdx.x; e < e_count; ++j, e += kResolveThreads) {
    int32_t o0 = 0, o1 = 0;
    if (a.topk_ids != nullptr) {
      // Rows of the experts below e, and of e itself (the scan's order: by expert).
      for (int i = 0; i < n_ids; ++i) {
        o0 += s_ids[i] < e;
        o1 += s_ids[i] <= e;
      }
    } else {
      o0 = a.group_offsets[e];
      o1 = a.group_offsets[e + 1];
    }
    a.host_offsets[e] = o0;
    if (e == e_count - 1) a.host_offsets[e_count] = o1;
    if (o1 <= o0) continue;
    int32_t slot = early[0];
#pragma unroll
    for (int i = 1; i < kResolveEarlyEntries; ++i) slot = j == i ? early[i] : slot;
    if (slot < 0 || slot >= a.n_slots) {
      ++misses;
      continue;
    }
    const char* base = a.slot_base + static_cast<int64_t>(slot) * a.slot_bytes;
    a.tables[e] = base + a.gate_offset;
    a.tables[e_count + e] = base + a.up_offset;
    a.tables[2 * e_count + e] = base + a.down_offset;
  }
  if (misses > 0) atomicAdd(&s_misses, misses);
  // 3. (first half) The lookahead predictions to the host.
  for (int d = 0; d < a.la_depth; ++d) {
    const int64_t base = d * a.la_stride;
    for (int64_t i = threadIdx.x; i < pairs; i += blockDim.x) {
      a.host_la_ids[base + i] = a.la_ids[base + i];
      a.host_la_weights[base + i] = a.la_weights[base + i];
    }
  }
  __syncthreads();  // s_misses is final
  if (threadIdx.x == 0) {
    // 2. The speculative meta and tile count: everything, or nothing on a miss.
    const bool all_resident = s_misses == 0;
    ForwardMeta spec = meta;
    if (!all_resident) spec.n_tokens = 0;
    *a.spec_meta = spec;
    if (a.n_tiles != nullptr) *a.spec_n_tiles = all_resident ? *a.n_tiles : 0;
    // 3. (second half) The verdict.
    volatile ResidencyReport* r = a.report;
    r->misses = s_misses;
    r->n_tokens = meta.n_tokens;
  }
  // Every thread's writes to the host before the sequence number the host spins on (one round of
  // system fences).
  __threadfence_system();
  __syncthreads();
  if (threadIdx.x == 0) static_cast<volatile ResidencyReport*>(a.report)->seq = seq;
}

}  // namespace

Status ResolveArgs::Validate() const {
  if ((group_offsets == nullptr) == (topk_ids == nullptr)) {
    return absl::InvalidArgumentError("ResolveArgs: set exactly one of group_offsets and topk_ids");
  }
  if (meta == nullptr || slot_of == nullptr || slot_base == nullptr || tables == nullptr ||
      spec_meta == nullptr || host_offsets == nullptr || report == nullptr || seq == nullptr ||
      (n_tiles != nullptr && spec_n_tiles == nullptr)) {
    return absl::InvalidArgumentError("ResolveArgs: null pointer");
  }
  if (n_experts <= 0 || n_experts > kResolveThreads * kResolveEarlyEntries || top_k <= 0 ||
      slot_bytes <= 0 || n_slots < 0 || la_depth < 0) {
    return absl::InvalidArgumentError("ResolveArgs: bad sizes");
  }
  if (la_depth > 0 && (la_ids == nullptr || la_weights == nullptr || host_la_ids == nullptr ||
                       host_la_weights == nullptr || la_stride <= 0)) {
    return absl::InvalidArgumentError("ResolveArgs: lookahead buffers missing");
  }
  return absl::OkStatus();
}

Status LaunchResolveResidency(const ResolveArgs& args, cudaStream_t stream) {
  MOE_RETURN_IF_ERROR(args.Validate());
  CUDA_RETURN_IF_ERROR(LaunchMaybePdl(ResolveResidencyKernel, dim3(1), dim3(kResolveThreads), 0,
                                      stream, args.pdl, args));
  return absl::OkStatus();
}

}  // namespace moe::cuda
