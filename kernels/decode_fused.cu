// The fused decode kernel: router, routing and routed gate/up of a decode batch in one launch
// (sm_90 thread-block clusters; see decode_fused.h).
//
// 1. Every block stages the layer's gate/up/down pointer tables and zeroes its expert counters;
//    the loads are issued before the router's so that they overlap.
// 2. Router: block rank r of its cluster (cs = 2, 4 or 8 blocks) computes router rows
//    [r*nr/cs, (r+1)*nr/cs) for every token (f32 FMAs on the input as given; per row 2048-element
//    segments, lane-strided 16-byte chunks in ascending k, a fixed xor tree, segments added in
//    order) into its shared memory. Every block converts the input into its shared memory (x in the
//    weight dtype) and writes a slice of it to global memory (the shared expert's GEMV reads it
//    there).
// 3. Cluster barrier; every block copies all router rows from the cluster's shared memory
//    (distributed shared memory) and routes every token (one warp per token, RouteToken: the
//    routing kernels' function), so all blocks of the grid hold the same experts. Block 0 writes
//    the routing to global memory (down + combine, Forward()'s expert ids and weights).
// 4. With prefetch_down, every warp prefetches its slice of the pairs' down matrices into L2
//    (kEarly: here, with the gate/up weights then loaded evict_first; kLate: after its gate/up).
// 5. Gate/up units (column, pair) as in decode_experts.cu, x from shared memory, over the whole
//    grid (with prefetch_units, each warp's next units are prefetched into L2 meanwhile); a block
//    leaves after its cluster's second barrier (nobody reads its shared memory later).
// NOTES: each cluster depends on nothing outside itself (no grid-wide wait), so the grid may be
// larger than what fits at once; it is sized to the clusters that fit (DecodeFusedGridBlocks) so
// that every warp streams once. Rounds like the decode experts path (not batch invariant), so
// deterministic mode never uses it.
// NOTES (H200, RESULTS.md "v9"): measured SLOWER than the front + gate/up it replaces (Qwen3 1
// token 41.5 -> 50.5 us with 8-block clusters, 57 us with 4; ncu: this kernel 41-55 us against
// 10 + 20 us), so CudaEngineOptions::decode_fused_route is off. Every cluster reads the whole
// router (Qwen3: 0.5 MB, 64 KiB per block with 8-block clusters, 128 KiB with 4) through the same
// per-SM load path as the expert weights before any expert weight is requested; the unfused front
// spreads it over 16 blocks once. The grid was not the cause (240-248 blocks, one wave).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>

#include "kernels/cluster.cuh"
#include "kernels/cuda_status.h"
#include "kernels/decode_common.cuh"
#include "kernels/decode_fused.h"
#include "kernels/pdl.cuh"
#include "kernels/routing_device.cuh"

namespace moe::cuda {
namespace {

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kBlocksPerSm = 2;
constexpr int kRouterChunks = 8;                 // router: 16-byte loads per lane in flight
constexpr int kRouterSeg = 256 * kRouterChunks;  // router elements per (row, segment) unit
constexpr int kMaxExperts = kRouteScanMaxExperts;
constexpr int kMaxBaseSmem = 64 * 1024;  // dynamic shared memory without the bulk-copy buffers
constexpr int kTmaBufBytes = kWarps * kGateUpTmaWarpBytes;
constexpr int kMaxDynamicSmem = kMaxBaseSmem + kTmaBufBytes;

static_assert(kDecodeFusedMaxTokens <= kWarps, "one routing warp per token");
static_assert(kMaxExperts <= kThreads, "one thread per expert stages the tables");

// Dynamic shared memory, in floats: x [cap][hidden] (2-byte elements), route scratch
// [cap][2][n_experts], logits [cap][nr], this block's router rows [rows_max][cap], segment partials
// [rows_max * segs][cap] (cs: blocks per cluster), then with tma the warps' bulk-copy buffers.
struct FusedSmem {
  int64_t x, route, logits, rlog, part, buf, total;
  __host__ __device__ FusedSmem(int64_t cap, int hidden, int n_experts, int nr, int cs, bool tma) {
    const int64_t rows_max = (nr + cs - 1) / cs;
    const int64_t segs = (hidden + kRouterSeg - 1) / kRouterSeg;
    x = 0;
    route = (cap * hidden * 2 + 15) / 16 * 4;
    logits = route + cap * 2 * n_experts;
    rlog = logits + cap * nr;
    part = rlog + rows_max * cap;
    buf = (part + rows_max * segs * cap + 3) / 4 * 4;
    total = buf + (tma ? kTmaBufBytes / 4 : 0);
  }
};

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
constexpr int kChunks = 8;                     // gate/up: 16-byte loads per lane and row
constexpr int64_t kPrefetchChunk = 16 * 1024;  // bytes per L2 prefetch

// The float at `local` (this block's shared memory) in the shared memory of cluster block `rank`.
__device__ __forceinline__ float LoadClusterF32(const float* local, unsigned rank) {
  const uint32_t remote = MapShared(static_cast<uint32_t>(__cvta_generic_to_shared(local)), rank);
  float v;
  asm volatile("ld.shared::cluster.f32 %0, [%1];\n" : "=f"(v) : "r"(remote) : "memory");
  return v;
}
// First router row of cluster block r of cs.
__device__ __forceinline__ int RowBegin(int r, int nr, int cs) { return r * nr / cs; }
#endif  // sm_90

template <typename In, typename T>
__global__ void __launch_bounds__(kThreads, kBlocksPerSm)
    DecodeFusedKernel(const DecodeFusedArgs f) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  extern __shared__ __align__(16) float fused_smem[];
  __shared__ const void* s_tab[3][kMaxExperts];  // gate, up, down of this layer's experts
  __shared__ const T* s_gate[kDecodeFusedMaxPairs];
  __shared__ const T* s_up[kDecodeFusedMaxPairs];
  __shared__ int s_token[kDecodeFusedMaxPairs];
  __shared__ int s_ids[kDecodeFusedMaxPairs];
  __shared__ float s_wts[kDecodeFusedMaxPairs];
  __shared__ int s_ranks[kDecodeFusedMaxPairs];
  __shared__ float s_sgate[kDecodeFusedMaxTokens];
  __shared__ int s_counts[kMaxExperts];
  __shared__ uint64_t s_bar[kWarps];  // tma: one mbarrier per warp
  const DecodeExpertsArgs& a = f.experts;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  GridDepWait();  // no-op when launched first in the forward (after the meta copy)
  GridDepTrigger();
  const int n = a.meta->n_tokens;
  const int layer = a.meta->layer_pos;
  const In* in = static_cast<const In*>(a.meta->input);
  const int hidden = a.hidden, n_experts = a.n_experts, top_k = a.top_k;
  const int nr = f.front.router_rows;
  const int cap = static_cast<int>(a.capacity);
  const int cs = ClusterBlocks();
  const FusedSmem lay(cap, hidden, n_experts, nr, cs, f.tma);
  T* s_x = reinterpret_cast<T*>(fused_smem + lay.x);
  float* s_route = fused_smem + lay.route;
  float* s_logits = fused_smem + lay.logits;
  float* s_rlog = fused_smem + lay.rlog;
  float* s_part = fused_smem + lay.part;

  // Phase 1: this layer's expert tables (into registers now, shared memory after the router).
  const int64_t layer_base = static_cast<int64_t>(layer) * n_experts;
  const void* tab[3] = {nullptr, nullptr, nullptr};
  if (f.tma && lane == 0) {
    MbarInit(&s_bar[warp]);  // visible to the copies after the barriers below
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  if (tid < n_experts) {
    tab[0] = a.gate_table[layer_base + tid];
    tab[1] = a.up_table[layer_base + tid];
    tab[2] = a.down_table[layer_base + tid];
    s_counts[tid] = 0;
  }

  // Phase 2: router rows [row0, row1) of this block, in units (row, segment of kRouterSeg), two
  // units per warp in flight.
  const unsigned rank = ClusterRank();
  const int row0 = RowBegin(static_cast<int>(rank), nr, cs);
  const int rows = RowBegin(static_cast<int>(rank) + 1, nr, cs) - row0;
  const int segs = (hidden + kRouterSeg - 1) / kRouterSeg;
  const int units = rows * segs;
  const T* router = static_cast<const T*>(f.front.router_table[layer]);
  for (int u0 = warp; u0 < units; u0 += 2 * kWarps) {
    uint4 wv[2][kRouterChunks];
#pragma unroll
    for (int b = 0; b < 2; ++b) {
      const int unit = u0 + b * kWarps;
      const int i = unit / segs, s = unit - i * segs;
      const T* w = router + static_cast<int64_t>(row0 + i) * f.front.ld_router;
#pragma unroll
      for (int c = 0; c < kRouterChunks; ++c) {
        const int k = s * kRouterSeg + lane * 8 + 256 * c;
        wv[b][c] = unit < units && k < hidden ? LoadKept(w + k) : make_uint4(0, 0, 0, 0);
      }
    }
#pragma unroll
    for (int b = 0; b < 2; ++b) {
      const int unit = u0 + b * kWarps;
      if (unit >= units) break;
      const int s = unit % segs;
      float acc[kDecodeFusedMaxTokens];
#pragma unroll
      for (int j = 0; j < kDecodeFusedMaxTokens; ++j) acc[j] = 0.0f;
#pragma unroll
      for (int c = 0; c < kRouterChunks; ++c) {
        const int k = s * kRouterSeg + lane * 8 + 256 * c;
        if (k < hidden) {
          float wf[8];
          Unpack8(wv[b][c], router, wf);
#pragma unroll
          for (int j = 0; j < kDecodeFusedMaxTokens; ++j) {
            if (j < n) {
              float xv[8];
              Load8(in + static_cast<int64_t>(j) * hidden + k, xv);
#pragma unroll
              for (int e = 0; e < 8; ++e) acc[j] = fmaf(wf[e], xv[e], acc[j]);
            }
          }
        }
      }
#pragma unroll
      for (int j = 0; j < kDecodeFusedMaxTokens; ++j) {
        if (j < n) {
          const float v = WarpSum(acc[j]);
          if (lane == 0) s_part[unit * cap + j] = v;
        }
      }
    }
  }
  // The input in the weight dtype (all of it here, a slice of it in global memory).
  {
    T* xg = static_cast<T*>(f.front.convert.x);
    const int cpr = hidden / 8;
    for (int c = tid; c < n * cpr; c += kThreads) {
      const int t = c / cpr, k = (c - t * cpr) * 8;
      float v[8];
      Load8(in + static_cast<int64_t>(t) * hidden + k, v);
      Store8(s_x + t * hidden + k, v);
      if (c % static_cast<int>(gridDim.x) == static_cast<int>(blockIdx.x)) {
        Store8(xg + static_cast<int64_t>(t) * 2 * hidden + k, v);
      }
    }
  }
  __syncthreads();
  for (int idx = tid; idx < rows * n; idx += kThreads) {
    const int i = idx / n, j = idx - i * n;
    float v = s_part[i * segs * cap + j];
    for (int s = 1; s < segs; ++s) v += s_part[(i * segs + s) * cap + j];
    s_rlog[i * cap + j] = v;
  }

  // Phase 3: every router row of the cluster into this block, then routing.
  ClusterArrive();
  ClusterWait();  // every block's rows are complete (and every block of the cluster has started)
  for (int idx = tid; idx < nr * n; idx += kThreads) {
    const int row = idx / n, j = idx - row * n;
    int r = row * cs / nr;
    while (r + 1 < cs && RowBegin(r + 1, nr, cs) <= row) ++r;
    while (RowBegin(r, nr, cs) > row) --r;
    s_logits[j * nr + row] =
        LoadClusterF32(s_rlog + (row - RowBegin(r, nr, cs)) * cap + j, static_cast<unsigned>(r));
  }
  ClusterArrive();  // this block is done with the others' shared memory (waited for at exit)
  if (tid < n_experts) {
    s_tab[0][tid] = tab[0];
    s_tab[1][tid] = tab[1];
    s_tab[2][tid] = tab[2];
  }
  __syncthreads();
  if (warp < n) {
    RouteArgs ra = f.front.route;
    ra.topk_ids = s_ids;
    ra.topk_weights = s_wts;
    ra.ranks = s_ranks;
    ra.shared_gate = s_sgate;
    float* score = s_route + warp * 2 * n_experts;
    RouteToken(ra, s_logits + warp * nr, 1, 0, warp, score, score + n_experts, s_counts);
  }
  __syncthreads();
  const int pairs = n * top_k;
  if (blockIdx.x == 0) {
    for (int p = tid; p < pairs; p += kThreads) {
      f.front.route.topk_ids[p] = s_ids[p];
      f.front.route.topk_weights[p] = s_wts[p];
    }
    if (f.front.route.routing.has_shared_gate && tid < n) {
      f.front.route.shared_gate[tid] = s_sgate[tid];
    }
  }
  for (int p = tid; p < pairs; p += kThreads) {
    const int e = s_ids[p];
    s_gate[p] = static_cast<const T*>(s_tab[0][e]);
    s_up[p] = static_cast<const T*>(s_tab[1][e]);
    s_token[p] = p / top_k;
  }

  // Phase 4: the pairs' down matrices into L2, in kPrefetchChunk pieces spread over every warp
  // (before the gate/up units with kEarly, after them with kLate).
  auto prefetch_down = [&]() {
    if (lane != 0) return;
    const int64_t per_pair = static_cast<int64_t>(hidden) * a.inter * 2;
    const int64_t per_pair_chunks = (per_pair + kPrefetchChunk - 1) / kPrefetchChunk;
    const int64_t warps = static_cast<int64_t>(gridDim.x) * kWarps;
    for (int64_t c = static_cast<int64_t>(blockIdx.x) * kWarps + warp; c < pairs * per_pair_chunks;
         c += warps) {
      const int p = static_cast<int>(c / per_pair_chunks);
      const int64_t off = (c - p * per_pair_chunks) * kPrefetchChunk;
      const int64_t bytes = per_pair - off < kPrefetchChunk ? per_pair - off : kPrefetchChunk;
      PrefetchL2(static_cast<const char*>(s_tab[2][s_ids[p]]) + off, static_cast<uint32_t>(bytes));
    }
  };
  const bool early = f.prefetch_down == DownPrefetch::kEarly;
  if (early) prefetch_down();
  __syncthreads();

  // Phase 5: gate/up units (column, pair), column-major, over the whole grid.
  int64_t u_begin, u_end;
  WarpUnits<kWarps>(static_cast<int64_t>(a.inter) * pairs, u_begin, u_end);
  T* h = static_cast<T*>(a.h);
  if (early) {
    GateUpUnits<T, kChunks, /*X_SHARED=*/true, /*EVICT_FIRST=*/true>(
        u_begin, u_end, pairs, hidden, a.inter, s_gate, s_up, s_token, s_x, hidden, h);
  } else if (f.tma) {
    uint32_t parity = 0;
    GateUpUnitsTma<T, kGateUpTmaWarpBytes, /*X_SHARED=*/true>(
        u_begin, u_end, pairs, hidden, a.inter, s_gate, s_up, s_token, s_x, hidden, h,
        f.prefetch_units,
        reinterpret_cast<uint4*>(fused_smem + lay.buf) + warp * (kGateUpTmaWarpBytes / 16),
        &s_bar[warp], parity);
  } else {
    GateUpUnits<T, kChunks, /*X_SHARED=*/true, /*EVICT_FIRST=*/false>(
        u_begin, u_end, pairs, hidden, a.inter, s_gate, s_up, s_token, s_x, hidden, h,
        f.prefetch_units);
  }
  if (f.prefetch_down == DownPrefetch::kLate) prefetch_down();
  ClusterWait();
#endif
}

// One instantiation per (input, weight) dtype pair, generated from one list.
#define MOE_FUSED_TYPES_(X)                                   \
  X(AType::kF32, float, WType::kBF16, __nv_bfloat16)          \
  X(AType::kF32, float, WType::kF16, __half)                  \
  X(AType::kF16, __half, WType::kBF16, __nv_bfloat16)         \
  X(AType::kF16, __half, WType::kF16, __half)                 \
  X(AType::kBF16, __nv_bfloat16, WType::kBF16, __nv_bfloat16) \
  X(AType::kBF16, __nv_bfloat16, WType::kF16, __half)
using FusedFn = void (*)(DecodeFusedArgs);
struct FusedEntry {
  AType atype;
  WType wtype;
  FusedFn fn;
};
#define MOE_FUSED_ENTRY_(AT, IN, WT, W) {AT, WT, &DecodeFusedKernel<IN, W>},
const FusedEntry kFusedKernels[] = {MOE_FUSED_TYPES_(MOE_FUSED_ENTRY_)};
#undef MOE_FUSED_ENTRY_

FusedFn FindFused(AType atype, WType wtype) {
  for (const FusedEntry& e : kFusedKernels) {
    if (e.atype == atype && e.wtype == wtype) return e.fn;
  }
  return nullptr;
}

// Smallest cluster (the most router rows per block, so the most shared memory) a launch may use.
constexpr int kMinCluster = 2;

size_t SmemBytes(int64_t cap, int hidden, int n_experts, int nr, int cs, bool tma) {
  return static_cast<size_t>(FusedSmem(cap, hidden, n_experts, nr, cs, tma).total) * sizeof(float);
}

bool ValidClusterSize(int cs) { return cs == 2 || cs == 4 || cs == 8; }

cudaLaunchConfig_t FusedConfig(int grid_blocks, int cs, size_t smem, cudaStream_t stream,
                               cudaLaunchAttribute* attr, bool pdl) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(static_cast<unsigned>(grid_blocks));
  cfg.blockDim = dim3(kThreads);
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = static_cast<unsigned>(cs);
  attr[0].val.clusterDim.y = 1;
  attr[0].val.clusterDim.z = 1;
  attr[1].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[1].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = pdl ? 2 : 1;
  return cfg;
}

}  // namespace

bool CanDecodeFused(int64_t capacity, int top_k, int hidden, int n_experts, int router_rows) {
  return capacity >= 1 && capacity <= kDecodeFusedMaxTokens &&
         capacity * top_k <= kDecodeFusedMaxPairs &&
         capacity * hidden * 2 <= kDecodeFusedMaxXBytes && n_experts <= kMaxExperts &&
         router_rows <= kDecodeFusedMaxRouterRows && hidden % 8 == 0 &&
         SmemBytes(capacity, hidden, n_experts, router_rows, kMinCluster, false) <= kMaxBaseSmem;
}

Status DecodeFusedArgs::Validate() const {
  MOE_RETURN_IF_ERROR(front.Validate());
  MOE_RETURN_IF_ERROR(experts.Validate());
  if (experts.packed) {
    return absl::InvalidArgumentError("DecodeFusedArgs: packed weights are not supported");
  }
  if (experts.pair_row != nullptr || front.route.meta != experts.meta ||
      front.convert.wtype != experts.wtype || front.convert.atype != experts.atype ||
      front.convert.hidden != experts.hidden ||
      front.route.routing.n_experts != experts.n_experts ||
      front.route.routing.top_k != experts.top_k || front.convert.x == nullptr) {
    return absl::InvalidArgumentError(
        "DecodeFusedArgs: front and experts must describe one forward (h in pair order)");
  }
  if (prefetch_units < 0 || prefetch_units > 16) {
    return absl::InvalidArgumentError("DecodeFusedArgs: prefetch_units in [0, 16]");
  }
  if (!ValidClusterSize(cluster_size) || grid_blocks < cluster_size ||
      grid_blocks % cluster_size != 0) {
    return absl::InvalidArgumentError(
        "DecodeFusedArgs: clusters of 2, 4 or 8 blocks, a grid of whole clusters");
  }
  if (!CanDecodeFused(experts.capacity, experts.top_k, experts.hidden, experts.n_experts,
                      front.router_rows)) {
    return absl::InvalidArgumentError("DecodeFusedArgs: too many tokens, pairs or experts");
  }
  return absl::OkStatus();
}

StatusOr<bool> InitDecodeFused() {
  MOE_ASSIGN_OR_RETURN(const bool sm90,
                       RunsSm90Image(reinterpret_cast<const void*>(kFusedKernels[0].fn)));
  if (!sm90) return false;
  for (const FusedEntry& e : kFusedKernels) {
    CUDA_RETURN_IF_ERROR(
        cudaFuncSetAttribute(e.fn, cudaFuncAttributeMaxDynamicSharedMemorySize, kMaxDynamicSmem));
  }
  return true;
}

StatusOr<int> DecodeFusedGridBlocks(WType wtype, AType atype, int64_t capacity, int top_k,
                                    int hidden, int n_experts, int router_rows, int cluster_size,
                                    int max_clusters, bool tma) {
  if (!ValidClusterSize(cluster_size)) {
    return absl::InvalidArgumentError("DecodeFusedGridBlocks: clusters of 2, 4 or 8 blocks");
  }
  if (!CanDecodeFused(capacity, top_k, hidden, n_experts, router_rows)) return 0;
  const FusedFn fn = FindFused(atype, wtype);
  if (fn == nullptr) return absl::InternalError("no fused decode kernel for these dtypes");
  int device = 0, sms = 0;
  CUDA_RETURN_IF_ERROR(cudaGetDevice(&device));
  CUDA_RETURN_IF_ERROR(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  const int cs = cluster_size;
  const int max_blocks = sms * kBlocksPerSm / cs * cs;
  if (max_blocks < cs) return 0;
  cudaLaunchAttribute attr[2];
  const cudaLaunchConfig_t cfg =
      FusedConfig(max_blocks, cs, SmemBytes(capacity, hidden, n_experts, router_rows, cs, tma),
                  nullptr, attr, false);
  int clusters = 0;
  CUDA_RETURN_IF_ERROR(cudaOccupancyMaxActiveClusters(&clusters, fn, &cfg));
  if (max_clusters > 0) clusters = std::min(clusters, max_clusters);
  return std::min(clusters * cs, max_blocks);
}

Status LaunchDecodeFused(const DecodeFusedArgs& f, cudaStream_t stream) {
  MOE_RETURN_IF_ERROR(f.Validate());
  const FusedFn fn = FindFused(f.experts.atype, f.experts.wtype);
  if (fn == nullptr) return absl::InternalError("no fused decode kernel for these dtypes");
  cudaLaunchAttribute attr[2];
  const cudaLaunchConfig_t cfg =
      FusedConfig(f.grid_blocks, f.cluster_size,
                  SmemBytes(f.experts.capacity, f.experts.hidden, f.experts.n_experts,
                            f.front.router_rows, f.cluster_size, f.tma),
                  stream, attr, f.front.convert.pdl);
  CUDA_RETURN_IF_ERROR(cudaLaunchKernelEx(&cfg, fn, f));
  return absl::OkStatus();
}

}  // namespace moe::cuda
