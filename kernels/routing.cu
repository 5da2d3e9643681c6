// The routing kernels of the fused MoE layer (the fused decode front is in decode_front.cu, the
// combine in combine.cu, the shared device pieces in routing_device.cuh).
//
// 1. Convert: input activations (f32/f16/bf16) -> the weights' dtype, plus the rounding residue for
//    the router when the dtypes differ (hi + lo carries ~16 mantissa bits).
// 2. Route: one warp per token sums the router's split-K partials in fixed order, scores (softmax
//    or sigmoid), adds the correction bias for selection only, keeps the best groups (group max or
//    sum of top-2), picks top-k (ties -> lower index), renormalises, scales, counts tokens per
//    expert (in the block's shared memory, then once per block and expert in global memory) and
//    records each pair's rank within its expert; also the Qwen2 shared-expert gate.
// 3. Scan: one block turns counts into expert offsets, the GEMM tile list and the permutation
//    (a grid-wide scatter kernel for large batches); for <= 32 tokens routing and scan run as one
//    block (RouteScan).
// Every kernel waits for the previous kernel first (PDL, kernels/pdl.cuh) and then lets the next
// one launch.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "absl/strings/str_cat.h"
#include "kernels/cuda_status.h"
#include "kernels/gemm_trace.cuh"
#include "kernels/moe_kernels.h"
#include "kernels/pdl.cuh"
#include "kernels/routing_device.cuh"

namespace moe::cuda {
namespace {
#ifdef MOE_GEMM_TRACE
__device__ uint64_t* g_decode_trace = nullptr;  // SetDecodeTraceBufferMeta
#endif

// ---- 0. The forward's meta ----
__global__ void StoreMetaKernel(const ForwardMeta meta, ForwardMeta* dst) {
#ifdef MOE_GEMM_TRACE
  if (g_decode_trace != nullptr) {  // counts the forward, then its start in the new ring entry
    const uint64_t t = TraceGlobalTime();
    g_decode_trace[0] += 1;
    DecodeTraceBlock(g_decode_trace, 0)[DecodeTraceLayout::kEntry] = t;
  }
#endif
  *dst = meta;
}

// ---- 1. Convert ----
template <typename In, typename W>
__global__ void ConvertKernel(const ForwardMeta* meta, int hidden, int split_lo, int copy, W* x,
                              int32_t* zero, int n_zero) {
  GridDepWait();
  GridDepTrigger();
  if (blockIdx.x == 0) {
    for (int i = threadIdx.x; i < n_zero; i += blockDim.x) zero[i] = 0;
  }
  const int64_t chunks_per_row = hidden / 8;
  const int64_t total = copy ? static_cast<int64_t>(meta->n_tokens) * chunks_per_row : 0;
  const In* in = static_cast<const In*>(meta->input);
  for (int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; c < total;
       c += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = c / chunks_per_row;
    const int h = static_cast<int>(c % chunks_per_row) * 8;
    float v[8], lo[8];
    Load8(in + t * hidden + h, v);
#pragma unroll
    for (int i = 0; i < 8; ++i) lo[i] = v[i] - RoundTo<W>(v[i]);
    W* row = x + t * 2 * hidden;
    Store8(row + h, v);
    if (split_lo) Store8(row + hidden + h, lo);
  }
}

// ---- 2. Route ----
// The tokens of one block (one warp each; blockDim.x / 32 of them from blockIdx.x on): routes
// them, counts pairs per expert in the shared memory past the warps' scratch, then reserves the
// block's range of each expert's rows with one global atomic per (block, expert) and stores each
// pair's rank (the block's first row of its expert + its rank in the block).
__device__ __forceinline__ void RouteBlockTokens(const RouteArgs& a, float* route_smem) {
  const int n_experts = a.routing.n_experts;
  const int warps = static_cast<int>(blockDim.x >> 5);
  int* s_count = reinterpret_cast<int*>(route_smem + warps * 2 * n_experts);
  for (int e = threadIdx.x; e < n_experts; e += blockDim.x) s_count[e] = 0;
  __syncthreads();
  const int wid = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int t = blockIdx.x * warps + wid;
  const bool active = t < a.meta->n_tokens;
  RoutedPair pair;
  if (active) {
    float* score = route_smem + wid * 2 * n_experts;
    pair =
        RouteToken<4>(a, a.logits + static_cast<int64_t>(t) * a.ld_logits, a.splits, a.split_stride,
                      t, score, score + n_experts, s_count, /*store_rank=*/false);
  }
  __syncthreads();
  for (int e = threadIdx.x; e < n_experts; e += blockDim.x) {
    const int c = s_count[e];
    s_count[e] = c > 0 ? atomicAdd(&a.counts[e], c) : 0;  // the block's first row of expert e
  }
  __syncthreads();
  if (active && lane < a.routing.top_k) {
    a.ranks[static_cast<int64_t>(t) * a.routing.top_k + lane] = s_count[pair.expert] + pair.rank;
  }
}

// One warp per token, blockDim.x / 32 tokens per block. Ranks come from the block's counters in
// shared memory; then one global atomic per (block, expert) reserves the block's range of each
// expert's rows, so the global counters see a few atomics per block instead of one per pair.
// NOTES: with one global atomic per pair (32768 on the same 4 cache lines at 4096 tokens of top-8
// of 128 experts), the kernel took 18 us on an H200 (RESULTS.md, session 4 ncu). Two blocks of 16
// warps per SM (<= 64 registers; InitRoutingKernels asks for the shared-memory carveout that holds
// them): at one block per SM the route was issue-bound on 4 warps per scheduler (session 14).
__global__ void __launch_bounds__(512, 2) RouteKernel(const RouteArgs a) {
  extern __shared__ float route_smem[];  // [warps][2][n_experts] scratch, then [n_experts] counts
  GridDepWait();
  GridDepTrigger();
  RouteBlockTokens(a, route_smem);
}

// ---- 2'. Route with the scan in its last block ----
// RouteKernel with kScanThreads threads (32 tokens a block); then every block draws a ticket, and
// the one that draws the last scans (offsets, tile list), writes the permutation when `scatter`
// (batches of kTailScatterBatch pairs a thread, all their loads first), and leaves the counters
// and the ticket at zero for the next forward (stream order): one launch instead of the counters'
// memset, RouteKernel, ScanKernel and (for up to kTailScatterMaxPairs pairs) ScatterKernel.
// What other blocks wrote is read through L2 (__ldcg) after the ticket.
constexpr int kTailScatterBatch = 4;
constexpr int64_t kTailScatterMaxPairs = 2 * kTailScatterBatch * kScanThreads;

__global__ void __launch_bounds__(kScanThreads)
    RouteScanTailKernel(const RouteArgs ra, const ScanArgs sa, int32_t* ticket, bool scatter) {
  extern __shared__ float route_smem[];  // [32][2][n_experts] scratch, then [n_experts] counts
  __shared__ int s_scan_count[kScanThreads];
  __shared__ int s_scan_tiles[kScanThreads];
  __shared__ int s_counts[kScanThreads];
  __shared__ bool s_last;
  GridDepWait();
  GridDepTrigger();
  const int n_experts = ra.routing.n_experts;
  RouteBlockTokens(ra, route_smem);
  __threadfence();  // this block's ids, ranks and counter atomics before its ticket
  __syncthreads();
  if (threadIdx.x == 0) s_last = atomicAdd(ticket, 1) == static_cast<int>(gridDim.x) - 1;
  __syncthreads();
  if (!s_last) return;
  __threadfence();
  const int e = threadIdx.x;
  s_counts[e] = e < n_experts ? __ldcg(ra.counts + e) : 0;
  if (e < n_experts) ra.counts[e] = 0;  // for the next forward
  if (e == 0) *ticket = 0;
  __syncthreads();
  const int row0 = ScanOffsets(sa, s_counts, s_scan_count, s_scan_tiles);
  if (!scatter) return;
  __syncthreads();
  s_scan_count[e] = row0;  // exclusive offsets
  __syncthreads();
  const int pairs = sa.meta->n_tokens * sa.top_k;
  for (int p0 = e; p0 < pairs; p0 += kTailScatterBatch * kScanThreads) {
    int id[kTailScatterBatch], rank[kTailScatterBatch];
#pragma unroll
    for (int b = 0; b < kTailScatterBatch; ++b) {
      const int p = p0 + b * kScanThreads;
      id[b] = p < pairs ? __ldcg(sa.topk_ids + p) : 0;
      rank[b] = p < pairs ? __ldcg(sa.ranks + p) : 0;
    }
#pragma unroll
    for (int b = 0; b < kTailScatterBatch; ++b) {
      const int p = p0 + b * kScanThreads;
      if (p < pairs) RecordPairRow(sa, p, s_scan_count[id[b]] + rank[b]);
    }
  }
}

// Tokens (warps) per route block: 16 while the scratch fits 48 KiB, else 4.
int RouteWarps(int n_experts) { return n_experts <= 256 ? 16 : 4; }
size_t RouteSmemBytes(int warps, int n_experts) {
  return static_cast<size_t>(warps) * 2 * n_experts * sizeof(float) + n_experts * sizeof(int);
}

// ---- 3. Scan ----
__global__ void __launch_bounds__(kScanThreads) ScanKernel(const ScanArgs a, bool scatter) {
  __shared__ int s_count[kScanThreads];
  __shared__ int s_tiles[kScanThreads];
  GridDepWait();
  GridDepTrigger();
  ScanBody(a, a.counts, scatter, s_count, s_tiles);
}

__global__ void __launch_bounds__(kScanThreads)
    RouteScanKernel(const RouteArgs ra, const ScanArgs sa) {
  extern __shared__ float route_smem[];
  GridDepWait();
  GridDepTrigger();
  RouteScanBody(ra, sa, ra.logits, ra.ld_logits, ra.splits, ra.split_stride, route_smem,
                /*scan=*/true);
}

// The permutation for large batches, one thread per (token, k) pair. With
// ScanArgs::early_indices the first pair's expert and rank load before the PDL wait (the route
// wrote them two launches back, kernels/pdl.cuh); the offsets (the scan's) after it.
__global__ void ScatterKernel(const ScanArgs a) {
  const int pairs = a.meta->n_tokens * a.top_k;
  const int first = blockIdx.x * blockDim.x + threadIdx.x;
  int id = 0, rank = 0;
  if (a.early_indices && first < pairs) {
    id = a.topk_ids[first];
    rank = a.ranks[first];
  }
  GridDepWait();
  GridDepTrigger();
  for (int p = first; p < pairs; p += gridDim.x * blockDim.x) {
    if (p != first || !a.early_indices) {
      id = a.topk_ids[p];
      rank = a.ranks[p];
    }
    RecordPairRow(a, p, a.group_offsets[id] + rank);
  }
}

// The same with the activation rows copied into the permuted order. A warp copies one segment of
// a pair's row (kScatterSegChunks 16-byte chunks, all loads before the stores).
// NOTES (H200, ncu, Mixtral 64 tokens): one warp per whole row, one chunk in flight per lane,
// took 10.2 us for 128 pairs (1 MiB: 16 blocks, 16 dependent round trips a lane).
constexpr int kScatterSegLaneChunks = 4;
constexpr int kScatterSegChunks = 32 * kScatterSegLaneChunks;
__host__ __device__ inline int ScatterSegments(int hidden) {
  return (hidden / 8 + kScatterSegChunks - 1) / kScatterSegChunks;
}

__global__ void ScatterRowsKernel(const ScanArgs a) {
  GridDepWait();
  GridDepTrigger();
  const int pairs = a.meta->n_tokens * a.top_k;
  const void* x = a.x_from_meta ? a.meta->input : a.x;
  const int64_t ld_x = a.x_from_meta ? a.hidden : a.ld_x;
  const int lane = threadIdx.x & 31;
  const int chunks = a.hidden / 8;
  const int segs = ScatterSegments(a.hidden);
  const int64_t units = static_cast<int64_t>(pairs) * segs;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * blockDim.x / 32;
  for (int64_t w = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / 32; w < units;
       w += warps) {
    const int p = static_cast<int>(w / segs), seg = static_cast<int>(w % segs);
    const int r = a.group_offsets[a.topk_ids[p]] + a.ranks[p];
    const int t = p / a.top_k;
    if (seg == 0 && lane == 0) RecordPairRow(a, p, r);
    const uint4* src = reinterpret_cast<const uint4*>(static_cast<const uint16_t*>(x) + t * ld_x);
    uint4* dst = reinterpret_cast<uint4*>(static_cast<uint16_t*>(a.x_perm) +
                                          static_cast<int64_t>(r) * a.hidden);
    const int c0 = seg * kScatterSegChunks + lane;
    uint4 v[kScatterSegLaneChunks];
#pragma unroll
    for (int u = 0; u < kScatterSegLaneChunks; ++u) {
      if (c0 + 32 * u < chunks) v[u] = src[c0 + 32 * u];
    }
#pragma unroll
    for (int u = 0; u < kScatterSegLaneChunks; ++u) {
      if (c0 + 32 * u < chunks) dst[c0 + 32 * u] = v[u];
    }
  }
}

}  // namespace

#ifdef MOE_GEMM_TRACE
Status SetDecodeTraceBufferMeta(uint64_t* buf) {
  CUDA_RETURN_IF_ERROR(cudaMemcpyToSymbol(g_decode_trace, &buf, sizeof(buf)));
  return absl::OkStatus();
}
#endif

Status LaunchStoreMeta(const ForwardMeta& meta, ForwardMeta* dst, cudaStream_t stream) {
  if (dst == nullptr) return absl::InvalidArgumentError("LaunchStoreMeta: null destination");
  StoreMetaKernel<<<1, 1, 0, stream>>>(meta, dst);
  CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

const void* StoreMetaKernelFunction() { return reinterpret_cast<const void*>(&StoreMetaKernel); }

Status ConvertArgs::Validate() const {
  if (meta == nullptr || x == nullptr || hidden <= 0 || hidden % 8 != 0 || capacity <= 0 ||
      n_zero < 0 || (n_zero > 0 && zero == nullptr)) {
    return absl::InvalidArgumentError(
        "ConvertArgs: null pointer, hidden not a multiple of 8 or no counters to zero");
  }
  return absl::OkStatus();
}

Status LaunchConvert(const ConvertArgs& a, cudaStream_t stream) {
  MOE_RETURN_IF_ERROR(a.Validate());
  const int threads = 256;
  const int grid = a.copy ? GridFor(a.capacity * a.hidden / 8, threads) : 1;
  const int lo = a.split_lo ? 1 : 0;
  cudaError_t err = cudaSuccess;
#define MOE_CONVERT_(IN, W)                                                                       \
  err = LaunchMaybePdl(ConvertKernel<IN, W>, dim3(grid), dim3(threads), 0, stream, a.pdl, a.meta, \
                       a.hidden, lo, a.copy ? 1 : 0, static_cast<W*>(a.x), a.zero, a.n_zero)
  const bool bf = a.wtype == WType::kBF16;
  switch (a.atype) {
    case AType::kF32:
      if (bf)
        MOE_CONVERT_(float, __nv_bfloat16);
      else
        MOE_CONVERT_(float, __half);
      break;
    case AType::kF16:
      if (bf)
        MOE_CONVERT_(__half, __nv_bfloat16);
      else
        MOE_CONVERT_(__half, __half);
      break;
    case AType::kBF16:
      if (bf)
        MOE_CONVERT_(__nv_bfloat16, __nv_bfloat16);
      else
        MOE_CONVERT_(__nv_bfloat16, __half);
      break;
  }
#undef MOE_CONVERT_
  CUDA_RETURN_IF_ERROR(err);
  return absl::OkStatus();
}

Status RouteArgs::Validate() const {
  const RoutingParams& r = routing;
  if (meta == nullptr || logits == nullptr || topk_ids == nullptr || topk_weights == nullptr ||
      ranks == nullptr || counts == nullptr || (r.has_shared_gate && shared_gate == nullptr) ||
      (r.has_bias && bias == nullptr)) {
    return absl::InvalidArgumentError("RouteArgs: null pointer");
  }
  if (r.n_experts <= 0 || r.n_experts > kScanThreads || r.top_k <= 0 || r.top_k > 32 ||
      r.top_k > r.n_experts) {
    return absl::InvalidArgumentError(
        absl::StrCat("RouteArgs: need 0 < top_k <= min(32, n_experts) "
                     "and n_experts <= ",
                     kScanThreads));
  }
  if (r.topk_method != 0 &&
      (r.n_group <= 0 || r.n_group > 32 || r.n_experts % r.n_group != 0 || r.topk_group <= 0 ||
       r.topk_group > r.n_group || r.top_k > r.topk_group * (r.n_experts / r.n_group))) {
    return absl::InvalidArgumentError("RouteArgs: bad group-limited routing parameters");
  }
  if (splits < 1 || ld_logits < r.n_experts + (r.has_shared_gate ? 1 : 0)) {
    return absl::InvalidArgumentError("RouteArgs: bad logits layout");
  }
  return absl::OkStatus();
}

Status LaunchRoute(const RouteArgs& a, cudaStream_t stream) {
  MOE_RETURN_IF_ERROR(a.Validate());
  const int warps = RouteWarps(a.routing.n_experts);
  const int blocks = static_cast<int>((a.capacity + warps - 1) / warps);
  CUDA_RETURN_IF_ERROR(LaunchMaybePdl(RouteKernel, dim3(blocks), dim3(warps * 32),
                                      RouteSmemBytes(warps, a.routing.n_experts), stream, a.pdl,
                                      a));
  return absl::OkStatus();
}

size_t RouteScanTailSmemBytes(int n_experts) {
  return RouteSmemBytes(kScanThreads / 32, n_experts);
}

Status InitRoutingKernels() {
  CUDA_RETURN_IF_ERROR(cudaFuncSetAttribute(
      RouteKernel, cudaFuncAttributePreferredSharedMemoryCarveout, cudaSharedmemCarveoutMaxShared));
  CUDA_RETURN_IF_ERROR(cudaFuncSetAttribute(RouteScanKernel,
                                            cudaFuncAttributeMaxDynamicSharedMemorySize,
                                            kRouteScanMaxTokens * 2 * kRouteScanMaxExperts * 4));
  CUDA_RETURN_IF_ERROR(
      cudaFuncSetAttribute(RouteScanTailKernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                           static_cast<int>(RouteScanTailSmemBytes(kRouteScanMaxExperts))));
  return InitFrontKernels();
}

bool CanRouteScan(int64_t capacity, int n_experts) {
  return capacity <= kRouteScanMaxTokens && n_experts <= kRouteScanMaxExperts;
}

Status LaunchRouteScan(const RouteArgs& ra, const ScanArgs& sa, cudaStream_t stream) {
  MOE_RETURN_IF_ERROR(ra.Validate());
  MOE_RETURN_IF_ERROR(sa.Validate());
  if (!CanRouteScan(ra.capacity, ra.routing.n_experts)) {
    return absl::InvalidArgumentError("RouteScan: too many tokens or experts for one block");
  }
  const size_t smem = static_cast<size_t>(kRouteScanMaxTokens) * 2 * ra.routing.n_experts * 4;
  CUDA_RETURN_IF_ERROR(
      LaunchMaybePdl(RouteScanKernel, dim3(1), dim3(kScanThreads), smem, stream, ra.pdl, ra, sa));
  return absl::OkStatus();
}

bool CanRouteScanTail(int n_experts) { return n_experts <= kRouteScanMaxExperts; }

Status LaunchRouteScanTail(const RouteArgs& ra, const ScanArgs& sa, int32_t* ticket,
                           cudaStream_t stream) {
  MOE_RETURN_IF_ERROR(ra.Validate());
  MOE_RETURN_IF_ERROR(sa.Validate());
  if (ticket == nullptr || !CanRouteScanTail(ra.routing.n_experts) || ra.counts != sa.counts ||
      ra.capacity != sa.capacity) {
    return absl::InvalidArgumentError(
        absl::StrCat("RouteScanTail: need a ticket, at most ", kRouteScanMaxExperts,
                     " experts and the route's counters and capacity in the scan; n_experts=",
                     ra.routing.n_experts));
  }
  const int64_t pairs = sa.capacity * sa.top_k;
  const bool inline_scatter = pairs <= kTailScatterMaxPairs && sa.x_perm == nullptr;
  const int blocks = static_cast<int>((ra.capacity + kScanThreads / 32 - 1) / (kScanThreads / 32));
  CUDA_RETURN_IF_ERROR(LaunchMaybePdl(RouteScanTailKernel, dim3(blocks), dim3(kScanThreads),
                                      RouteScanTailSmemBytes(ra.routing.n_experts), stream, ra.pdl,
                                      ra, sa, ticket, inline_scatter));
  if (sa.x_perm != nullptr) {
    CUDA_RETURN_IF_ERROR(LaunchMaybePdl(ScatterRowsKernel,
                                        dim3(GridFor(pairs * ScatterSegments(sa.hidden) * 32, 256)),
                                        dim3(256), 0, stream, sa.pdl, sa));
  } else if (!inline_scatter) {
    ScanArgs late = sa;
    late.early_indices = false;  // the route ran in the kernel just before
    CUDA_RETURN_IF_ERROR(LaunchMaybePdl(ScatterKernel, dim3(GridFor(pairs, 256)), dim3(256), 0,
                                        stream, sa.pdl, late));
  }
  return absl::OkStatus();
}

Status ScanArgs::Validate() const {
  if (meta == nullptr || counts == nullptr || topk_ids == nullptr || ranks == nullptr ||
      group_offsets == nullptr || tiles == nullptr || n_tiles == nullptr || perm_token == nullptr ||
      pair_row == nullptr) {
    return absl::InvalidArgumentError("ScanArgs: null pointer");
  }
  if (n_experts <= 0 || n_experts > kScanThreads || top_k <= 0 || bm <= 0 || capacity <= 0) {
    return absl::InvalidArgumentError("ScanArgs: bad sizes");
  }
  if (x_perm != nullptr && (hidden <= 0 || hidden % 8 != 0 ||
                            (!x_from_meta && (x == nullptr || ld_x < hidden || ld_x % 8 != 0)))) {
    return absl::InvalidArgumentError(
        "ScanArgs: x_perm needs hidden a multiple of 8 and x (or x_from_meta) with ld_x >= hidden, "
        "a multiple of 8");
  }
  return absl::OkStatus();
}

Status LaunchScan(const ScanArgs& a, cudaStream_t stream) {
  MOE_RETURN_IF_ERROR(a.Validate());
  // NOTES: past one pair per thread a grid-wide kernel (one more launch) is faster: 39 us -> ~3 us
  // for 32768 pairs on an H200; at 4096 pairs (Qwen3 512 tokens) the layer was 3 us faster with
  // it (session 5).
  const int64_t pairs = a.capacity * a.top_k;
  const bool inline_scatter = pairs <= kScanThreads && a.x_perm == nullptr;
  CUDA_RETURN_IF_ERROR(
      LaunchMaybePdl(ScanKernel, dim3(1), dim3(kScanThreads), 0, stream, a.pdl, a, inline_scatter));
  if (a.x_perm != nullptr) {
    CUDA_RETURN_IF_ERROR(LaunchMaybePdl(ScatterRowsKernel,
                                        dim3(GridFor(pairs * ScatterSegments(a.hidden) * 32, 256)),
                                        dim3(256), 0, stream, a.pdl, a));
  } else if (!inline_scatter) {
    CUDA_RETURN_IF_ERROR(
        LaunchMaybePdl(ScatterKernel, dim3(GridFor(pairs, 256)), dim3(256), 0, stream, a.pdl, a));
  }
  return absl::OkStatus();
}

}  // namespace moe::cuda
