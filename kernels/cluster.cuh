// Thread-block cluster helpers (sm_90+): the block's rank and the cluster's place in the grid,
// cluster barriers, and addresses in a peer block's shared memory. Used by the cluster kernels
// (grouped_gemm_sm90_cluster.cu, decode_fused.cu); device code for sm_90 and later only.
#pragma once

#include <cstdint>

namespace moe::cuda {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900

// This block's rank in its cluster.
__device__ __forceinline__ unsigned ClusterRank() {
  unsigned r;
  asm volatile("mov.u32 %0, %%cluster_ctarank;\n" : "=r"(r));
  return r;
}
// Blocks in this cluster.
__device__ __forceinline__ int ClusterBlocks() {
  unsigned n;
  asm volatile("mov.u32 %0, %%cluster_nctarank;\n" : "=r"(n));
  return static_cast<int>(n);
}
// This cluster's index in the grid (x), and the number of clusters (x).
__device__ __forceinline__ uint32_t ClusterId() {
  uint32_t r;
  asm volatile("mov.u32 %0, %%clusterid.x;\n" : "=r"(r));
  return r;
}
__device__ __forceinline__ uint32_t ClusterCount() {
  uint32_t r;
  asm volatile("mov.u32 %0, %%nclusterid.x;\n" : "=r"(r));
  return r;
}
// Cluster barrier, split (arrive, then wait) or whole. Every thread of every block takes part.
__device__ __forceinline__ void ClusterArrive() {
  asm volatile("barrier.cluster.arrive.release.aligned;\n" ::: "memory");
}
// An arrival that orders no memory (e.g. "this block has started", before a later wait).
__device__ __forceinline__ void ClusterArriveRelaxed() {
  asm volatile("barrier.cluster.arrive.relaxed.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void ClusterWait() {
  asm volatile("barrier.cluster.wait.acquire.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void ClusterSync() {
  ClusterArrive();
  ClusterWait();
}
// The shared::cluster address of this block's shared-memory address `addr` in block `rank`.
__device__ __forceinline__ uint32_t MapShared(uint32_t addr, unsigned rank) {
  uint32_t remote;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(remote) : "r"(addr), "r"(rank));
  return remote;
}

#endif  // sm_90
}  // namespace moe::cuda
