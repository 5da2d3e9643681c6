// The fused decode front (<= 32 tokens, outside deterministic mode): input conversion, router
// GEMV, routing and scan in ONE launch, so the chain before the expert GEMMs is one kernel.
//
// 1. Every block converts a grid-stride slice of the input into x (the hi part only: the router
//    reads the input itself, so nothing needs the rounding residue).
// 2. Each block computes kFrontRowsPerBlock router rows for every token (f32 FMAs on the input as
//    given, fixed reduction order) into the logits workspace.
// 3. The block that draws the last ticket routes (and, unless skip_scan, scans) like RouteScan.
//    With FrontArgs::cluster the grid is one cluster: blocks write their logits into block 0's
//    shared memory and block 0 routes after a cluster barrier.
// Launches of a one-token capacity take the kernel compiled for one token slot per router pass
// (FrontArgs::one_token_kernel; the same sums in less code, which is what the front's cold
// instruction fetches cost: RESULTS.md "Session 39"). For the same reason the front routes with
// one logits load per expert (its logits are never split) and rolled loops (RouteScanBody<1,
// true>: 23% less code, 0.1-0.5 us at 1 token; "Session 40").
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>

#include "kernels/cluster.cuh"
#include "kernels/cuda_status.h"
#include "kernels/decode_common.cuh"
#include "kernels/gemm_trace.cuh"
#include "kernels/moe_kernels.h"
#include "kernels/pdl.cuh"
#include "kernels/routing_device.cuh"

namespace moe::cuda {
namespace {
#ifdef MOE_GEMM_TRACE
__device__ uint64_t* g_decode_trace = nullptr;  // SetDecodeTraceBufferFront
#endif

constexpr int kFrontRowsPerBlock = 8;                                 // router rows per front block
constexpr int kFrontKSplit = kScanThreads / 32 / kFrontRowsPerBlock;  // warps per row (K quarters)
constexpr int kFrontTokenGroup = 8;                                   // tokens per GEMV pass
constexpr int kFrontMaxRouterRows = kRouteScanMaxExperts + 1;
constexpr int kFrontMaxClusterBlocks = 16;  // non-portable cluster size (sm_90)

__host__ __device__ inline int FrontBlocks(int router_rows) {
  return (router_rows + kFrontRowsPerBlock - 1) / kFrontRowsPerBlock;
}
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
// Stores v at `local` (an address in this block's shared memory) in the shared memory of cluster
// block `rank`.
__device__ __forceinline__ void StoreClusterF32(float* local, unsigned rank, float v) {
  const uint32_t remote = MapShared(static_cast<uint32_t>(__cvta_generic_to_shared(local)), rank);
  asm volatile("st.shared::cluster.f32 [%0], %1;\n" ::"r"(remote), "f"(v) : "memory");
}
#endif

// 1. Every block converts a grid-stride slice of the input into x (the hi part only: the router
//    below reads the input itself, so nothing needs the rounding residue).
// 2. Block b owns router rows 8b..8b+7; warp w computes row 8b + (w % 8) over K quarter w / 8 for
//    every token (8 tokens per pass, f32 FMAs, lane-strided 16-byte chunks in ascending order, then
//    a fixed xor tree); the quarters are added in order through shared memory into `logits`.
//    Cluster of few row blocks: K is also cut into parts (FrontKSplits), block b taking row block
//    b % row_blocks over part b / row_blocks; block 0 adds the parts in order.
// 3. The block that draws the last ticket copies all logits into shared memory, resets the ticket
//    and routes + scans (RouteScanBody; routes only with skip_scan). Cluster: the quarters' sums
//    go straight into block 0's shared memory, and block 0 routes after the cluster barrier.
// f.store_meta: `meta_arg` is the forward's meta (the front is the forward's first kernel): the
// block reads it from its argument and block 0 stores it for the kernels after it.
// kOne: the launches of a one-token capacity (n_tokens <= 1): one token slot per router pass, so
// the pass's code is an eighth of the general one's (the same sums).
template <typename In, typename W, bool kOne>
__global__ void __launch_bounds__(kScanThreads)
    FrontKernel(const FrontArgs f, float* logits, const ForwardMeta meta_arg) {
  constexpr int kGroup = kOne ? 1 : kFrontTokenGroup;  // token slots per router pass
  // [32][2][n_experts] route scratch, then [32][nr] logits per K part (cluster) or in all
  extern __shared__ float route_smem[];
  __shared__ float s_part[kFrontKSplit][kFrontTokenGroup][kFrontRowsPerBlock];
  __shared__ int s_last;
#ifdef MOE_GEMM_TRACE
  const uint64_t trace_entry = TraceGlobalTime();
#endif
  GridDepWait();
  GridDepTrigger();
  const bool own_meta = f.store_meta != nullptr;
#ifdef MOE_GEMM_TRACE
  // The ring entry after the wait: the meta kernel is the one before this one (or, own_meta, the
  // routing block counts this forward below).
  uint64_t* trace = DecodeTraceBlock(g_decode_trace, 1, own_meta ? 1 : 0);
  if (threadIdx.x == 0 && trace != nullptr) {
    trace[DecodeTraceLayout::kEntry] = trace_entry;
    DecodeTraceMark(trace, DecodeTraceLayout::kWaited);
  }
  // own_meta: the routing block counts the forward once every block has read the count.
  const auto count_forward = [&]() {
    if (own_meta && g_decode_trace != nullptr && threadIdx.x == 0) g_decode_trace[0] += 1;
  };
#else
  [[maybe_unused]] uint64_t* trace = nullptr;
  const auto count_forward = []() {};
#endif
  if (own_meta && blockIdx.x == 0 && threadIdx.x == 0) *f.store_meta = meta_arg;
  const ForwardMeta* meta = f.route.meta;
  const int n = own_meta ? meta_arg.n_tokens : meta->n_tokens;
  const int layer_pos = own_meta ? meta_arg.layer_pos : meta->layer_pos;
  const int hidden = f.convert.hidden;
  const int nr = f.router_rows;
  const int64_t ld = f.route.ld_logits;
  const In* in = static_cast<const In*>(own_meta ? meta_arg.input : meta->input);
  // Cluster: the logits rows in block 0's shared memory (the same offset in every block).
  float* s_logits = route_smem + kRouteScanMaxTokens * 2 * f.route.routing.n_experts;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  const bool cluster = f.cluster;
  // Cluster phase 1 of 2: this block has started (block 0's shared memory exists before any block
  // writes to it; waited for after the router rows).
  if (cluster) ClusterArriveRelaxed();
#else
  constexpr bool cluster = false;  // never set for pre-sm_90 devices (FrontClusterBlocks)
#endif

  // Phase 1: convert.
  {
    W* x = static_cast<W*>(f.convert.x);
    const int64_t chunks_per_row = hidden / 8;
    const int64_t total = static_cast<int64_t>(n) * chunks_per_row;
    for (int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; c < total;
         c += static_cast<int64_t>(gridDim.x) * blockDim.x) {
      const int64_t t = c / chunks_per_row;
      const int h = static_cast<int>(c % chunks_per_row) * 8;
      float v[8];
      Load8(in + t * hidden + h, v);
      Store8(x + t * 2 * hidden + h, v);
    }
  }
#ifdef MOE_GEMM_TRACE
  // Diagnostic marks of thread 0 (DecodeTraceLayout: the front's per-warp words hold them):
  // kFirstUnit + 0 convert done, + 1 first router pass summed, + 2 its partial sums in shared
  // memory, + 3 cluster phase 1 passed, + 4 the pass's rows stored; + 8 .. + 12 the routing's
  // steps.
  const auto mark = [&](int i) {
    if (threadIdx.x == 0) DecodeTraceMark(trace, DecodeTraceLayout::kFirstUnit + i);
  };
#else
  const auto mark = [](int) {};
#endif
  mark(0);

  // Phase 2: router rows (cluster: into block 0's shared memory).
  // Block b: row block b % row_blocks, K part b / row_blocks (one part without a cluster).
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int row_blocks = FrontBlocks(nr);
  const int k_parts = static_cast<int>(gridDim.x) / row_blocks;
  const int rb = static_cast<int>(blockIdx.x) % row_blocks;
  const int part = static_cast<int>(blockIdx.x) / row_blocks;
  const int row_local = warp % kFrontRowsPerBlock, quarter = warp / kFrontRowsPerBlock;
  const int row = rb * kFrontRowsPerBlock + row_local;
  const int chunks = hidden / 8;
  const int q = part * kFrontKSplit + quarter;  // K piece of the block's warp, of k_parts x 4
  const int c_begin = q * chunks / (k_parts * kFrontKSplit);
  const int c_end = (q + 1) * chunks / (k_parts * kFrontKSplit);
  const W* w = row < nr ? static_cast<const W*>(f.router_table[layer_pos]) +
                              static_cast<int64_t>(row) * f.ld_router
                        : nullptr;
  for (int t0 = 0; t0 < n; t0 += kGroup) {
    float acc[kGroup];
#pragma unroll
    for (int j = 0; j < kGroup; ++j) acc[j] = 0.0f;
    if (w != nullptr) {
      // Two 16-byte weight loads in flight per lane before the first use.
      for (int c0 = c_begin + lane; c0 < c_end; c0 += 64) {
        float wv[2][8];
#pragma unroll
        for (int u = 0; u < 2; ++u) {
          const int c = c0 + 32 * u;
          if (c < c_end) {
            Unpack8(LoadKept(w + c * 8), w, wv[u]);  // the router stays in L2
          } else {
#pragma unroll
            for (int i = 0; i < 8; ++i) wv[u][i] = 0.0f;
          }
        }
#pragma unroll
        for (int j = 0; j < kGroup; ++j) {
          if (t0 + j < n) {
#pragma unroll
            for (int u = 0; u < 2; ++u) {
              const int c = c0 + 32 * u;
              if (c < c_end) {
                float xv[8];
                Load8(in + static_cast<int64_t>(t0 + j) * hidden + c * 8, xv);
#pragma unroll
                for (int i = 0; i < 8; ++i) acc[j] = fmaf(wv[u][i], xv[i], acc[j]);
              }
            }
          }
        }
      }
    }
    if (t0 == 0) mark(1);
      // Only the pass's tokens: each sum is 5 shuffles, which every warp of the block issues.
#pragma unroll
    for (int j = 0; j < kGroup; ++j) {
      if (t0 + j < n) {
        const float v = WarpSum(acc[j]);
        if (lane == 0) s_part[quarter][j][row_local] = v;
      }
    }
    __syncthreads();
    if (t0 == 0) mark(2);
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    if (cluster && t0 == 0) ClusterWait();  // every block of the cluster has started
#endif
    if (t0 == 0) mark(3);
    if (threadIdx.x < kGroup * kFrontRowsPerBlock) {
      const int j = threadIdx.x / kFrontRowsPerBlock, r = threadIdx.x % kFrontRowsPerBlock;
      const int rr = rb * kFrontRowsPerBlock + r;
      if (t0 + j < n && rr < nr) {
        float v = s_part[0][j][r];
#pragma unroll
        for (int q = 1; q < kFrontKSplit; ++q) v += s_part[q][j][r];
        if (cluster) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
          StoreClusterF32(s_logits + (part * kRouteScanMaxTokens + t0 + j) * nr + rr, 0, v);
#endif
        } else {
          logits[static_cast<int64_t>(t0 + j) * ld + rr] = v;
        }
      }
    }
    __syncthreads();  // s_part is reused by the next pass
    if (t0 == 0) mark(4);
  }

  // Phase 3: the last block (cluster: block 0, once every block's rows are in) routes and scans.
  if (cluster) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    if (n == 0) ClusterWait();  // phase 1 of 2, when the router loop did not run
    ClusterArrive();            // release: this block's logits in block 0
    ClusterWait();
#ifdef MOE_GEMM_TRACE
    if (threadIdx.x == 0) DecodeTraceMark(trace, DecodeTraceLayout::kSetUp);
    if (ClusterRank() != 0) DecodeTraceWarpMark(trace, DecodeTraceLayout::kWarpDone);
#endif
    if (ClusterRank() != 0) return;
    count_forward();
    if (k_parts > 1) {
      // The K parts' sums in part order (fixed: the same bits every time).
      for (int i = threadIdx.x; i < n * nr; i += blockDim.x) {
        float v = s_logits[i];
        for (int pt = 1; pt < k_parts; ++pt) v += s_logits[pt * kRouteScanMaxTokens * nr + i];
        s_logits[i] = v;
      }
      __syncthreads();
    }
    RouteScanBody</*kSplits=*/1, /*kRolled=*/true>(
        f.route, f.scan, s_logits, nr, 1, 0, route_smem, !f.skip_scan, n,
        trace != nullptr ? trace + DecodeTraceLayout::kFirstUnit + 8 : nullptr);
#ifdef MOE_GEMM_TRACE
    DecodeTraceWarpMark(trace, DecodeTraceLayout::kWarpDone);
#endif
#endif
    return;
  }
  __threadfence();  // this block's logits (and x) before its ticket
  __syncthreads();
  if (threadIdx.x == 0) s_last = atomicAdd(f.ticket, 1) == static_cast<int>(gridDim.x) - 1;
  __syncthreads();
  if (!s_last) return;
  count_forward();
  __threadfence();
  for (int i = threadIdx.x; i < n * nr; i += blockDim.x) {
    const int t = i / nr, r = i % nr;
    s_logits[i] = __ldcg(logits + static_cast<int64_t>(t) * ld + r);
  }
  if (threadIdx.x == 0) *f.ticket = 0;  // for the next forward (stream-ordered after this one)
  __syncthreads();
  RouteScanBody</*kSplits=*/1, /*kRolled=*/true>(f.route, f.scan, s_logits, nr, 1, 0, route_smem,
                                                 !f.skip_scan, n);
}

// Dynamic shared memory of the front kernel: route scratch + one logits row per token.
// `router_rows` counts every K part's rows (k parts x rows).
size_t FrontSmemBytes(int n_experts, int router_rows) {
  return static_cast<size_t>(kRouteScanMaxTokens) * (2 * n_experts + router_rows) * sizeof(float);
}

// The front kernel of each (input, weight) dtype pair, generated from one list.
#define MOE_FRONT_TYPES_(X)                                   \
  X(AType::kF32, float, WType::kBF16, __nv_bfloat16)          \
  X(AType::kF32, float, WType::kF16, __half)                  \
  X(AType::kF16, __half, WType::kBF16, __nv_bfloat16)         \
  X(AType::kF16, __half, WType::kF16, __half)                 \
  X(AType::kBF16, __nv_bfloat16, WType::kBF16, __nv_bfloat16) \
  X(AType::kBF16, __nv_bfloat16, WType::kF16, __half)
using FrontFn = void (*)(FrontArgs, float*, ForwardMeta);
struct FrontEntry {
  AType atype;
  WType wtype;
  bool one;
  FrontFn fn;
};
#define MOE_FRONT_ENTRY_(AT, IN, WT, W) \
  {AT, WT, false, &FrontKernel<IN, W, false>}, {AT, WT, true, &FrontKernel<IN, W, true>},
const FrontEntry kFrontKernels[] = {MOE_FRONT_TYPES_(MOE_FRONT_ENTRY_)};
#undef MOE_FRONT_ENTRY_

// The front kernel of these dtypes (`one`: of a one-token capacity), or null.
FrontFn FindFrontKernel(AType atype, WType wtype, bool one) {
  for (const FrontEntry& e : kFrontKernels) {
    if (e.atype == atype && e.wtype == wtype && e.one == one) return e.fn;
  }
  return nullptr;
}
// The front kernel that launches of `f` run (LaunchFront, FrontKernelFunction), or null.
FrontFn FrontKernelFor(const FrontArgs& f) {
  return FindFrontKernel(f.convert.atype, f.convert.wtype,
                         f.one_token_kernel && f.route.capacity == 1);
}

// True when the front kernels have an sm_90 image on an sm_90 device (cluster code compiled in).
StatusOr<bool> FrontClustersCompiled() {
  return RunsSm90Image(reinterpret_cast<const void*>(kFrontKernels[0].fn));
}

cudaLaunchConfig_t FrontConfig(int blocks, size_t smem, cudaStream_t stream, bool cluster, bool pdl,
                               cudaLaunchAttribute* attr) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(static_cast<unsigned>(blocks));
  cfg.blockDim = dim3(kScanThreads);
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  int n = 0;
  if (cluster) {
    attr[n].id = cudaLaunchAttributeClusterDimension;
    attr[n].val.clusterDim.x = static_cast<unsigned>(blocks);
    attr[n].val.clusterDim.y = 1;
    attr[n].val.clusterDim.z = 1;
    ++n;
  }
  if (pdl) {
    attr[n].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[n].val.programmaticStreamSerializationAllowed = 1;
    ++n;
  }
  cfg.attrs = attr;
  cfg.numAttrs = n;
  return cfg;
}
}  // namespace

#ifdef MOE_GEMM_TRACE
Status SetDecodeTraceBufferFront(uint64_t* buf) {
  CUDA_RETURN_IF_ERROR(cudaMemcpyToSymbol(g_decode_trace, &buf, sizeof(buf)));
  return absl::OkStatus();
}
#endif

Status InitFrontKernels() {
  const int front_smem =
      static_cast<int>(FrontSmemBytes(kRouteScanMaxExperts, kFrontMaxRouterRows));
  MOE_ASSIGN_OR_RETURN(const bool clusters, FrontClustersCompiled());
  for (const FrontEntry& e : kFrontKernels) {
    CUDA_RETURN_IF_ERROR(
        cudaFuncSetAttribute(e.fn, cudaFuncAttributeMaxDynamicSharedMemorySize, front_smem));
    if (clusters) {
      CUDA_RETURN_IF_ERROR(
          cudaFuncSetAttribute(e.fn, cudaFuncAttributeNonPortableClusterSizeAllowed, 1));
    }
  }
  return absl::OkStatus();
}

// Cluster front: K parts per row block, so that routers of few row blocks (Mixtral's 8 experts:
// one block) still spread their rows and the input copy over up to kFrontMaxClusterBlocks blocks,
// each lane keeping at least one 16-byte chunk of every pass.
// NOTES (H200, session 8, ncu): with one block, Mixtral's front took 19.3 us at 8 tokens with its
// SM busy throughout.
int FrontKSplits(int router_rows, int hidden) {
  const int row_blocks = FrontBlocks(router_rows);
  return std::max(1,
                  std::min(kFrontMaxClusterBlocks / row_blocks, hidden / 8 / (32 * kFrontKSplit)));
}

StatusOr<int> FrontClusterBlocks(int router_rows) {
  const int blocks = FrontBlocks(router_rows);
  if (router_rows > kFrontMaxRouterRows || blocks > kFrontMaxClusterBlocks) return 0;
  MOE_ASSIGN_OR_RETURN(const bool compiled, FrontClustersCompiled());
  if (!compiled) return 0;
  // The largest cluster a launch may use (FrontKSplits: up to kFrontMaxClusterBlocks blocks).
  const int parts = kFrontMaxClusterBlocks / blocks;
  cudaLaunchAttribute attr[2];
  const cudaLaunchConfig_t cfg =
      FrontConfig(blocks * parts, FrontSmemBytes(kRouteScanMaxExperts, router_rows * parts),
                  nullptr, /*cluster=*/true, /*pdl=*/false, attr);
  for (const FrontEntry& e : kFrontKernels) {
    int clusters = 0;
    CUDA_RETURN_IF_ERROR(cudaOccupancyMaxActiveClusters(&clusters, e.fn, &cfg));
    if (clusters < 1) return 0;
  }
  return blocks;
}

bool CanFuseFront(int64_t capacity, int n_experts, int router_rows) {
  return CanRouteScan(capacity, n_experts) && router_rows <= kFrontMaxRouterRows;
}

int64_t FrontMaxTokens() { return kRouteScanMaxTokens; }

Status FrontArgs::Validate() const {
  MOE_RETURN_IF_ERROR(convert.Validate());
  MOE_RETURN_IF_ERROR(route.Validate());
  MOE_RETURN_IF_ERROR(scan.Validate());
  if (router_table == nullptr || ticket == nullptr || ld_router < convert.hidden ||
      ld_router % 8 != 0 || router_rows < route.routing.n_experts ||
      route.ld_logits < router_rows) {
    return absl::InvalidArgumentError("FrontArgs: null router table / ticket or bad router layout");
  }
  if (route.splits != 1 || route.meta != convert.meta || scan.meta != convert.meta) {
    return absl::InvalidArgumentError("FrontArgs: one meta, unsplit logits");
  }
  if (store_meta != nullptr && (store_meta != route.meta || convert.pdl)) {
    return absl::InvalidArgumentError(
        "FrontArgs: a front that takes the meta stores it at route.meta and launches without PDL");
  }
  if (!CanFuseFront(route.capacity, route.routing.n_experts, router_rows)) {
    return absl::InvalidArgumentError("FrontArgs: too many tokens, experts or router rows");
  }
  return absl::OkStatus();
}

Status LaunchFront(const FrontArgs& f, cudaStream_t stream, const ForwardMeta& meta) {
  MOE_RETURN_IF_ERROR(f.Validate());
  const FrontFn fn = FrontKernelFor(f);
  if (fn == nullptr) return absl::InternalError("no front kernel for these dtypes");
  const int row_blocks = FrontBlocks(f.router_rows);
  if (f.cluster && row_blocks > kFrontMaxClusterBlocks) {
    return absl::InvalidArgumentError("FrontArgs: too many router rows for one cluster");
  }
  const int parts = f.cluster ? FrontKSplits(f.router_rows, f.convert.hidden) : 1;
  // NOTES: route.logits is the workspace the blocks write and the last block reads back (ticket).
  cudaLaunchAttribute attr[2];
  const cudaLaunchConfig_t cfg = FrontConfig(
      row_blocks * parts, FrontSmemBytes(f.route.routing.n_experts, f.router_rows * parts), stream,
      f.cluster, f.convert.pdl, attr);
  CUDA_RETURN_IF_ERROR(cudaLaunchKernelEx(&cfg, fn, f, const_cast<float*>(f.route.logits), meta));
  return absl::OkStatus();
}

const void* FrontKernelFunction(const FrontArgs& f) {
  return reinterpret_cast<const void*>(FrontKernelFor(f));
}

}  // namespace moe::cuda
