// The data-movement and routing kernels of the fused MoE layer.
//
// 1. Convert: input activations (f32/f16/bf16) -> the weights' dtype, plus the rounding residue for
//    the router when the dtypes differ (hi + lo carries ~16 mantissa bits).
// 2. Route: one warp per token sums the router's split-K partials in fixed order, scores (softmax
// or
//    sigmoid), adds the correction bias for selection only, keeps the best groups (group max or sum
//    of top-2), picks top-k (ties -> lower index), renormalises, scales, counts tokens per expert
//    and records each pair's rank within its expert; also the Qwen2 shared-expert sigmoid gate.
// 3. Scan: one block turns counts into expert offsets, the GEMM tile list and the permutation.
// 4. Combine: weighted sum of each token's expert outputs (k ascending, splits ascending) plus the
//    gated shared expert, written in the activation dtype. No atomics.
// 5. FillRandom: counter-based uniform weights generated on the device (benchmarks).
// 6. Front (decode batches): convert + router GEMV + route + scan in one launch; the last block
//    to finish routes (ticket counter), so the chain before the expert GEMMs is one kernel.
// Every kernel but FillRandom waits for the previous kernel first (PDL, kernels/pdl.cuh) and then
// lets the next one launch.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cfloat>
#include <climits>

#include "kernels/cuda_status.h"
#include "kernels/decode_common.cuh"
#include "kernels/moe_kernels.h"
#include "kernels/pdl.cuh"

namespace moe::cuda {
namespace {

constexpr int kScanThreads = 1024;
constexpr int kRouteScanMaxTokens = kScanThreads / 32;  // one warp per token
constexpr int kRouteScanMaxExperts = 256;               // 64 KB of scores for 32 warps
constexpr int kRouteWarps = 4;
constexpr int kFrontRowsPerBlock = 8;                                 // router rows per front block
constexpr int kFrontKSplit = kScanThreads / 32 / kFrontRowsPerBlock;  // warps per row (K quarters)
constexpr int kFrontTokenGroup = 8;                                   // tokens per GEMV pass
constexpr int kFrontMaxRouterRows = kRouteScanMaxExperts + 1;

// ---- 8-element vector loads and stores through float ----
__device__ __forceinline__ void Load8(const float* p, float (&v)[8]) {
  const float4 a = reinterpret_cast<const float4*>(p)[0];
  const float4 b = reinterpret_cast<const float4*>(p)[1];
  v[0] = a.x;
  v[1] = a.y;
  v[2] = a.z;
  v[3] = a.w;
  v[4] = b.x;
  v[5] = b.y;
  v[6] = b.z;
  v[7] = b.w;
}
__device__ __forceinline__ void Unpack8(const uint4& raw, const __nv_bfloat16*, float (&v)[8]) {
  const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&raw);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 f = __bfloat1622float2(h[i]);
    v[2 * i] = f.x;
    v[2 * i + 1] = f.y;
  }
}
__device__ __forceinline__ void Unpack8(const uint4& raw, const __half*, float (&v)[8]) {
  const __half2* h = reinterpret_cast<const __half2*>(&raw);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 f = __half22float2(h[i]);
    v[2 * i] = f.x;
    v[2 * i + 1] = f.y;
  }
}
template <typename T>
__device__ __forceinline__ void Load8(const T* p, float (&v)[8]) {
  Unpack8(*reinterpret_cast<const uint4*>(p), p, v);
}
__device__ __forceinline__ void Store8(float* p, const float (&v)[8]) {
  reinterpret_cast<float4*>(p)[0] = make_float4(v[0], v[1], v[2], v[3]);
  reinterpret_cast<float4*>(p)[1] = make_float4(v[4], v[5], v[6], v[7]);
}
__device__ __forceinline__ void Store8(__nv_bfloat16* p, const float (&v)[8]) {
  uint4 raw;
  __nv_bfloat162* h = reinterpret_cast<__nv_bfloat162*>(&raw);
#pragma unroll
  for (int i = 0; i < 4; ++i) h[i] = __floats2bfloat162_rn(v[2 * i], v[2 * i + 1]);
  *reinterpret_cast<uint4*>(p) = raw;
}
__device__ __forceinline__ void Store8(__half* p, const float (&v)[8]) {
  uint4 raw;
  __half2* h = reinterpret_cast<__half2*>(&raw);
#pragma unroll
  for (int i = 0; i < 4; ++i) h[i] = __floats2half2_rn(v[2 * i], v[2 * i + 1]);
  *reinterpret_cast<uint4*>(p) = raw;
}
template <typename W>
__device__ __forceinline__ float RoundTo(float f) {
  return static_cast<float>(static_cast<W>(f));
}

int GridFor(int64_t work, int threads) {
  const int64_t blocks = (work + threads - 1) / threads;
  return static_cast<int>(blocks < 1 ? 1 : (blocks > 65535 ? 65535 : blocks));
}

// ---- 1. Convert ----
template <typename In, typename W>
__global__ void ConvertKernel(const ForwardMeta* meta, int hidden, int split_lo, W* x) {
  GridDepWait();
  GridDepTrigger();
  const int64_t chunks_per_row = hidden / 8;
  const int64_t total = static_cast<int64_t>(meta->n_tokens) * chunks_per_row;
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
__device__ __forceinline__ void WarpArgMax(float& v, int& i) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, v, off);
    const int oi = __shfl_xor_sync(0xffffffffu, i, off);
    if (ov > v || (ov == v && oi < i)) {
      v = ov;
      i = oi;
    }
  }
}
__device__ __forceinline__ float WarpMax(float v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, off));
  return v;
}
__device__ __forceinline__ float WarpSum(float v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

// Orderable key of a selection score for the warp's max reduction: larger keys for larger scores
// (equal scores, -0 and +0 included, give equal keys), 0 for -inf and NaN, which are never picked
// (a strict `v > -inf` test on the float, as before).
__device__ __forceinline__ unsigned SelKey(float v) {
  if (!(v > -INFINITY)) return 0u;
  const unsigned b = __float_as_uint(v == 0.0f ? 0.0f : v);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

// sum_s p[s * stride] in ascending s; all loads are issued before the first add (a loop with a
// run-time trip count would wait for each load in turn).
__device__ __forceinline__ float SumSplits(const float* p, int splits, int64_t stride) {
  float v[kMaxSplits];
#pragma unroll
  for (int s = 0; s < kMaxSplits; ++s) v[s] = s < splits ? p[s * stride] : 0.0f;
  float sum = v[0];
#pragma unroll
  for (int s = 1; s < kMaxSplits; ++s) sum += v[s];
  return sum;
}

// Routes token t with one warp; `logits`: token t's row of split partials (`splits` of them,
// `split_stride` apart; global or shared memory); `score`, `sel`: [n_experts] warp-private shared
// memory; `counts`: per-expert counters (global or shared) that hand out each pair's rank.
__device__ void RouteToken(const RouteArgs& a, const float* logits, int splits,
                           int64_t split_stride, int t, float* score, float* sel, int32_t* counts) {
  const RoutingParams& rp = a.routing;
  const int n_experts = rp.n_experts;
  const int lane = threadIdx.x & 31;

  // Logits (split partials in ascending order) -> scores.
  float local_max = -FLT_MAX;
  for (int e = lane; e < n_experts; e += 32) {
    const float v = SumSplits(logits + e, splits, split_stride);
    score[e] = v;
    local_max = fmaxf(local_max, v);
  }
  if (!rp.sigmoid) {
    const float m = WarpMax(local_max);
    float local_sum = 0.0f;
    for (int e = lane; e < n_experts; e += 32) {
      const float ex = __expf(score[e] - m);
      score[e] = ex;
      local_sum += ex;
    }
    const float inv = 1.0f / WarpSum(local_sum);
    for (int e = lane; e < n_experts; e += 32) score[e] *= inv;
  } else {
    for (int e = lane; e < n_experts; e += 32) score[e] = 1.0f / (1.0f + __expf(-score[e]));
  }
  const float* bias =
      rp.has_bias ? a.bias + static_cast<int64_t>(a.meta->layer_pos) * n_experts : nullptr;
  for (int e = lane; e < n_experts; e += 32) sel[e] = score[e] + (bias ? bias[e] : 0.0f);
  __syncwarp();

  // Group-limited selection: keep the best topk_group groups (ties -> lower group).
  if (rp.topk_method != 0) {
    const int group_size = n_experts / rp.n_group;
    float gscore = -FLT_MAX;
    if (lane < rp.n_group) {
      const float* g = sel + lane * group_size;
      float best = -FLT_MAX, second = -FLT_MAX;
      for (int j = 0; j < group_size; ++j) {
        const float v = g[j];
        if (v > best) {
          second = best;
          best = v;
        } else if (v > second) {
          second = v;
        }
      }
      gscore = rp.topk_method == 1 ? best : best + (group_size > 1 ? second : 0.0f);
    }
    unsigned keep = 0;
    for (int i = 0; i < rp.topk_group; ++i) {
      float v = lane < rp.n_group ? gscore : -INFINITY;
      int idx = lane < rp.n_group ? lane : INT_MAX;
      WarpArgMax(v, idx);
      if (idx < 32) keep |= 1u << idx;
      if (lane == idx) gscore = -INFINITY;
    }
    __syncwarp();  // every lane has read its group before any lane masks
    // NOTES: DeepSeek-V2 (transformers) masks dropped experts with 0.0 and takes the weights from
    // the masked scores; DeepSeek-V3 (transformers 5.x) masks with -inf (see moe/engine/routing.h).
    for (int e = lane; e < n_experts; e += 32) {
      if (!((keep >> (e / group_size)) & 1u)) {
        if (rp.topk_method == 1) {
          sel[e] = 0.0f;
          score[e] = 0.0f;
        } else {
          sel[e] = -INFINITY;
        }
      }
    }
    __syncwarp();
  }

  // Top-k by selection score; weights are the unbiased scores. Selection scores become orderable
  // keys in place (SelKey), so each round is one max and one min reduction over the warp.
  unsigned* key = reinterpret_cast<unsigned*>(sel);
  for (int e = lane; e < n_experts; e += 32) key[e] = SelKey(sel[e]);
  __syncwarp();
  int my_id = 0;
  float my_w = 0.0f, wsum = 0.0f;
  for (int k = 0; k < rp.top_k; ++k) {
    unsigned best = 0u;
    int best_e = INT_MAX;
    for (int e = lane; e < n_experts; e += 32) {
      if (key[e] > best) {
        best = key[e];
        best_e = e;
      }
    }
    const unsigned m = __reduce_max_sync(0xffffffffu, best);
    // Ties -> lower index; no candidate (all -inf / NaN) -> expert 0, which keeps indices in range.
    const int idx = m == 0u ? 0
                            : static_cast<int>(__reduce_min_sync(
                                  0xffffffffu, best == m ? static_cast<unsigned>(best_e) : ~0u));
    const float w = score[idx];
    __syncwarp();
    if (lane == 0) key[idx] = 0u;
    __syncwarp();
    if (lane == k) {
      my_id = idx;
      my_w = w;
    }
    wsum += w;
  }
  if (lane < rp.top_k) {
    if (rp.norm_topk_prob) my_w /= wsum + 1e-20f;
    my_w *= rp.routed_scaling_factor;
    const int64_t p = static_cast<int64_t>(t) * rp.top_k + lane;
    a.topk_ids[p] = my_id;
    a.topk_weights[p] = my_w;
    a.ranks[p] = atomicAdd(&counts[my_id], 1);
  }
  if (rp.has_shared_gate && lane == 0) {
    const float v = SumSplits(logits + n_experts, splits, split_stride);
    a.shared_gate[t] = 1.0f / (1.0f + __expf(-v));
  }
}

__global__ void RouteKernel(const RouteArgs a) {
  extern __shared__ float route_smem[];
  GridDepWait();
  GridDepTrigger();
  const int wid = threadIdx.x >> 5;
  const int t = blockIdx.x * kRouteWarps + wid;
  if (t >= a.meta->n_tokens) return;  // whole warp leaves together
  float* score = route_smem + wid * 2 * a.routing.n_experts;
  RouteToken(a, a.logits + static_cast<int64_t>(t) * a.ld_logits, a.splits, a.split_stride, t,
             score, score + a.routing.n_experts, a.counts);
}

// ---- 3. Scan ----
// Block-wide (kScanThreads threads): offsets, tile list and (with `scatter`) the permutation from
// per-expert `counts`; s_count / s_tiles: [kScanThreads] shared scratch.
// Both inclusive scans run in warps (shuffles) and then over the 32 warp totals: three barriers
// instead of a 20-barrier block-wide scan.
static_assert(kScanThreads == 32 * 32, "the scan's second level is one warp of warp totals");
__device__ void ScanBody(const ScanArgs& a, const int32_t* counts, bool scatter, int* s_count,
                         int* s_tiles) {
  const int e = threadIdx.x, lane = e & 31, warp = e >> 5;
  const int count = e < a.n_experts ? counts[e] : 0;
  const int tiles = (count + a.bm - 1) / a.bm;
  int incl_count = count, incl_tiles = tiles;
#pragma unroll
  for (int off = 1; off < 32; off <<= 1) {
    const int c = __shfl_up_sync(0xffffffffu, incl_count, off);
    const int t = __shfl_up_sync(0xffffffffu, incl_tiles, off);
    if (lane >= off) {
      incl_count += c;
      incl_tiles += t;
    }
  }
  if (lane == 31) {
    s_count[warp] = incl_count;
    s_tiles[warp] = incl_tiles;
  }
  __syncthreads();
  if (warp == 0) {
    int c = s_count[lane], t = s_tiles[lane];
#pragma unroll
    for (int off = 1; off < 32; off <<= 1) {
      const int oc = __shfl_up_sync(0xffffffffu, c, off);
      const int ot = __shfl_up_sync(0xffffffffu, t, off);
      if (lane >= off) {
        c += oc;
        t += ot;
      }
    }
    s_count[lane] = c;
    s_tiles[lane] = t;
  }
  __syncthreads();
  if (warp > 0) {
    incl_count += s_count[warp - 1];
    incl_tiles += s_tiles[warp - 1];
  }
  const int row0 = incl_count - count;
  const int tile0 = incl_tiles - tiles;
  if (e < a.n_experts) {
    a.group_offsets[e] = row0;
    for (int j = 0; j < tiles; ++j) a.tiles[tile0 + j] = make_int2(e, row0 + j * a.bm);
  }
  if (e == kScanThreads - 1) {
    a.group_offsets[a.n_experts] = incl_count;
    *a.n_tiles = incl_tiles;
  }
  if (!scatter) return;
  __syncthreads();
  s_count[e] = row0;  // exclusive offsets
  __syncthreads();
  const int pairs = a.meta->n_tokens * a.top_k;
  for (int p = e; p < pairs; p += kScanThreads) {
    const int r = s_count[a.topk_ids[p]] + a.ranks[p];
    a.perm_token[r] = p / a.top_k;
    a.pair_row[p] = r;
  }
}

__global__ void __launch_bounds__(kScanThreads) ScanKernel(const ScanArgs a, bool scatter) {
  __shared__ int s_count[kScanThreads];
  __shared__ int s_tiles[kScanThreads];
  GridDepWait();
  GridDepTrigger();
  ScanBody(a, a.counts, scatter, s_count, s_tiles);
}

// Decode batches (<= 32 tokens): routing (one warp per token, counters in shared memory, so no
// memset) and the scan in one block, one launch instead of three nodes.
// One block (kScanThreads threads): routes tokens 0..n_tokens-1 (one warp each; logits row t at
// logits + t * ld_logits, `splits` partials) and scans; `route_smem`: [32][2][n_experts].
__device__ void RouteScanBody(const RouteArgs& ra, const ScanArgs& sa, const float* logits,
                              int64_t ld_logits, int splits, int64_t split_stride,
                              float* route_smem, bool scan) {
  __shared__ int s_experts[kScanThreads];
  __shared__ int s_count[kScanThreads];
  __shared__ int s_tiles[kScanThreads];
  s_experts[threadIdx.x] = 0;
  __syncthreads();
  const int wid = threadIdx.x >> 5;
  if (wid < ra.meta->n_tokens) {
    float* score = route_smem + wid * 2 * ra.routing.n_experts;
    RouteToken(ra, logits + wid * ld_logits, splits, split_stride, wid, score,
               score + ra.routing.n_experts, s_experts);
  }
  if (!scan) return;
  __syncthreads();  // ids, ranks (global) and counts (shared) are complete
  ScanBody(sa, s_experts, true, s_count, s_tiles);
}

__global__ void __launch_bounds__(kScanThreads)
    RouteScanKernel(const RouteArgs ra, const ScanArgs sa) {
  extern __shared__ float route_smem[];
  GridDepWait();
  GridDepTrigger();
  RouteScanBody(ra, sa, ra.logits, ra.ld_logits, ra.splits, ra.split_stride, route_smem,
                /*scan=*/true);
}

// ---- 6. Front ----
// 1. Every block converts a grid-stride slice of the input into x (the hi part only: the router
//    below reads the input itself, so nothing needs the rounding residue).
// 2. Block b owns router rows 8b..8b+7; warp w computes row 8b + (w % 8) over K quarter w / 8 for
//    every token (8 tokens per pass, f32 FMAs, lane-strided 16-byte chunks in ascending order, then
//    a fixed xor tree); the quarters are added in order through shared memory into `logits`.
// 3. The block that draws the last ticket copies all logits into shared memory, resets the ticket
//    and routes + scans (RouteScanBody; routes only with skip_scan).
template <typename In, typename W>
__global__ void __launch_bounds__(kScanThreads) FrontKernel(const FrontArgs f, float* logits) {
  extern __shared__ float route_smem[];  // [32][2][n_experts] route scratch, then [32][nr] logits
  __shared__ float s_part[kFrontKSplit][kFrontTokenGroup][kFrontRowsPerBlock];
  __shared__ int s_last;
  GridDepWait();
  GridDepTrigger();
  const ForwardMeta* meta = f.route.meta;
  const int n = meta->n_tokens;
  const int hidden = f.convert.hidden;
  const int nr = f.router_rows;
  const int64_t ld = f.route.ld_logits;
  const In* in = static_cast<const In*>(meta->input);

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

  // Phase 2: router rows.
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int row_local = warp % kFrontRowsPerBlock, quarter = warp / kFrontRowsPerBlock;
  const int row = blockIdx.x * kFrontRowsPerBlock + row_local;
  const int chunks = hidden / 8;
  const int c_begin = quarter * chunks / kFrontKSplit;
  const int c_end = (quarter + 1) * chunks / kFrontKSplit;
  const W* w = row < nr ? static_cast<const W*>(f.router_table[meta->layer_pos]) +
                              static_cast<int64_t>(row) * f.ld_router
                        : nullptr;
  for (int t0 = 0; t0 < n; t0 += kFrontTokenGroup) {
    float acc[kFrontTokenGroup];
#pragma unroll
    for (int j = 0; j < kFrontTokenGroup; ++j) acc[j] = 0.0f;
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
        for (int j = 0; j < kFrontTokenGroup; ++j) {
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
#pragma unroll
    for (int j = 0; j < kFrontTokenGroup; ++j) {
      const float v = WarpSum(acc[j]);
      if (lane == 0) s_part[quarter][j][row_local] = v;
    }
    __syncthreads();
    if (threadIdx.x < kFrontTokenGroup * kFrontRowsPerBlock) {
      const int j = threadIdx.x / kFrontRowsPerBlock, r = threadIdx.x % kFrontRowsPerBlock;
      const int rr = blockIdx.x * kFrontRowsPerBlock + r;
      if (t0 + j < n && rr < nr) {
        float v = s_part[0][j][r];
#pragma unroll
        for (int q = 1; q < kFrontKSplit; ++q) v += s_part[q][j][r];
        logits[static_cast<int64_t>(t0 + j) * ld + rr] = v;
      }
    }
    __syncthreads();  // s_part is reused by the next pass
  }

  // Phase 3: the last block routes and scans.
  __threadfence();  // this block's logits (and x) before its ticket
  __syncthreads();
  if (threadIdx.x == 0) s_last = atomicAdd(f.ticket, 1) == static_cast<int>(gridDim.x) - 1;
  __syncthreads();
  if (!s_last) return;
  __threadfence();
  float* s_logits = route_smem + kRouteScanMaxTokens * 2 * f.route.routing.n_experts;
  for (int i = threadIdx.x; i < n * nr; i += blockDim.x) {
    const int t = i / nr, r = i % nr;
    s_logits[i] = __ldcg(logits + static_cast<int64_t>(t) * ld + r);
  }
  if (threadIdx.x == 0) *f.ticket = 0;  // for the next forward (stream-ordered after this one)
  __syncthreads();
  RouteScanBody(f.route, f.scan, s_logits, nr, 1, 0, route_smem, !f.skip_scan);
}

// The permutation for large batches, one thread per (token, k) pair.
__global__ void ScatterKernel(const ScanArgs a) {
  GridDepWait();
  GridDepTrigger();
  const int pairs = a.meta->n_tokens * a.top_k;
  for (int p = blockIdx.x * blockDim.x + threadIdx.x; p < pairs; p += gridDim.x * blockDim.x) {
    const int r = a.group_offsets[a.topk_ids[p]] + a.ranks[p];
    a.perm_token[r] = p / a.top_k;
    a.pair_row[p] = r;
  }
}

// ---- 4. Combine ----
template <typename W, typename Out>
__global__ void CombineKernel(const CombineArgs a) {
  GridDepWait();
  GridDepTrigger();
  const int hidden = a.hidden;
  const int64_t chunks_per_row = hidden / 8;
  const int64_t total = static_cast<int64_t>(a.meta->n_tokens) * chunks_per_row;
  Out* out = static_cast<Out*>(a.meta->output);
  for (int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; c < total;
       c += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = c / chunks_per_row;
    const int h = static_cast<int>(c % chunks_per_row) * 8;
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    // Chunks of 4 experts: their rows, weights and outputs are loaded before any is summed, so the
    // dependent loads overlap (decode latency); the sum order stays k ascending.
    constexpr int kChunk = 4;
    for (int k0 = 0; k0 < a.top_k; k0 += kChunk) {
      int64_t r[kChunk];
      float w[kChunk];
#pragma unroll
      for (int j = 0; j < kChunk; ++j) {
        const bool ok = k0 + j < a.top_k;
        r[j] = ok ? a.pair_row[t * a.top_k + k0 + j] : 0;
        w[j] = ok ? a.topk_weights[t * a.top_k + k0 + j] : 0.0f;
      }
      float v[kChunk][8];
      if (a.y_f32) {
#pragma unroll
        for (int j = 0; j < kChunk; ++j) {
#pragma unroll
          for (int i = 0; i < 8; ++i) v[j][i] = 0.0f;
        }
        for (int s = 0; s < a.y_splits; ++s) {
#pragma unroll
          for (int j = 0; j < kChunk; ++j) {
            if (k0 + j < a.top_k) {
              float p[8];
              Load8(static_cast<const float*>(a.y) + s * a.y_split_stride + r[j] * hidden + h, p);
#pragma unroll
              for (int i = 0; i < 8; ++i) v[j][i] += p[i];
            }
          }
        }
      } else {
#pragma unroll
        for (int j = 0; j < kChunk; ++j) {
          if (k0 + j < a.top_k) {
            Load8(static_cast<const W*>(a.y) + r[j] * hidden + h, v[j]);
          } else {
#pragma unroll
            for (int i = 0; i < 8; ++i) v[j][i] = 0.0f;
          }
        }
      }
#pragma unroll
      for (int j = 0; j < kChunk; ++j) {
        if (k0 + j < a.top_k) {
#pragma unroll
          for (int i = 0; i < 8; ++i) acc[i] += w[j] * v[j][i];
        }
      }
    }
    if (a.ys != nullptr) {
      const float g = a.shared_gate ? a.shared_gate[t] : 1.0f;
      float sum[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      for (int s = 0; s < a.ys_splits; ++s) {
        float v[8];
        if (a.ys_f32) {
          Load8(static_cast<const float*>(a.ys) + s * a.ys_split_stride + t * hidden + h, v);
        } else {
          Load8(static_cast<const W*>(a.ys) + t * hidden + h, v);
        }
#pragma unroll
        for (int i = 0; i < 8; ++i) sum[i] += v[i];
      }
#pragma unroll
      for (int i = 0; i < 8; ++i) acc[i] += g * sum[i];
    }
    Store8(out + t * hidden + h, acc);
  }
}

// ---- 5. FillRandom ----
__device__ __forceinline__ float HashUniform(uint64_t seed, uint64_t i) {
  uint64_t z = seed + 0x9E3779B97F4A7C15ull * (i + 1);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return static_cast<float>(z >> 40) * (2.0f / 16777216.0f) - 1.0f;  // [-1, 1)
}
template <typename T>
__global__ void FillRandomKernel(T* dst, int64_t n, float scale, uint64_t seed) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    dst[i] = static_cast<T>(scale * HashUniform(seed, static_cast<uint64_t>(i)));
  }
}

}  // namespace

Status ConvertArgs::Validate() const {
  if (meta == nullptr || x == nullptr || hidden <= 0 || hidden % 8 != 0 || capacity <= 0) {
    return absl::InvalidArgumentError("ConvertArgs: null pointer or hidden not a multiple of 8");
  }
  return absl::OkStatus();
}

Status LaunchConvert(const ConvertArgs& a, cudaStream_t stream) {
  MOE_RETURN_IF_ERROR(a.Validate());
  const int threads = 256;
  const int grid = GridFor(a.capacity * a.hidden / 8, threads);
  const int lo = a.split_lo ? 1 : 0;
  cudaError_t err = cudaSuccess;
#define MOE_CONVERT_(IN, W)                                                                       \
  err = LaunchMaybePdl(ConvertKernel<IN, W>, dim3(grid), dim3(threads), 0, stream, a.pdl, a.meta, \
                       a.hidden, lo, static_cast<W*>(a.x))
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
  const int blocks = static_cast<int>((a.capacity + kRouteWarps - 1) / kRouteWarps);
  const size_t smem = static_cast<size_t>(kRouteWarps) * 2 * a.routing.n_experts * sizeof(float);
  CUDA_RETURN_IF_ERROR(
      LaunchMaybePdl(RouteKernel, dim3(blocks), dim3(kRouteWarps * 32), smem, stream, a.pdl, a));
  return absl::OkStatus();
}

// Dynamic shared memory of the front kernel: route scratch + one logits row per token.
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
using FrontFn = void (*)(FrontArgs, float*);
struct FrontEntry {
  AType atype;
  WType wtype;
  FrontFn fn;
};
#define MOE_FRONT_ENTRY_(AT, IN, WT, W) {AT, WT, &FrontKernel<IN, W>},
const FrontEntry kFrontKernels[] = {MOE_FRONT_TYPES_(MOE_FRONT_ENTRY_)};
#undef MOE_FRONT_ENTRY_

Status InitRoutingKernels() {
  CUDA_RETURN_IF_ERROR(cudaFuncSetAttribute(RouteScanKernel,
                                            cudaFuncAttributeMaxDynamicSharedMemorySize,
                                            kRouteScanMaxTokens * 2 * kRouteScanMaxExperts * 4));
  const int front_smem =
      static_cast<int>(FrontSmemBytes(kRouteScanMaxExperts, kFrontMaxRouterRows));
  for (const FrontEntry& e : kFrontKernels) {
    CUDA_RETURN_IF_ERROR(
        cudaFuncSetAttribute(e.fn, cudaFuncAttributeMaxDynamicSharedMemorySize, front_smem));
  }
  return absl::OkStatus();
}

bool CanFuseFront(int64_t capacity, int n_experts, int router_rows) {
  return CanRouteScan(capacity, n_experts) && router_rows <= kFrontMaxRouterRows;
}

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
  if (!CanFuseFront(route.capacity, route.routing.n_experts, router_rows)) {
    return absl::InvalidArgumentError("FrontArgs: too many tokens, experts or router rows");
  }
  return absl::OkStatus();
}

Status LaunchFront(const FrontArgs& f, cudaStream_t stream) {
  MOE_RETURN_IF_ERROR(f.Validate());
  FrontFn fn = nullptr;
  for (const FrontEntry& e : kFrontKernels) {
    if (e.atype == f.convert.atype && e.wtype == f.convert.wtype) fn = e.fn;
  }
  if (fn == nullptr) return absl::InternalError("no front kernel for these dtypes");
  const int blocks = (f.router_rows + kFrontRowsPerBlock - 1) / kFrontRowsPerBlock;
  // NOTES: route.logits is the workspace the blocks write and the last block reads back.
  CUDA_RETURN_IF_ERROR(LaunchMaybePdl(fn, dim3(blocks), dim3(kScanThreads),
                                      FrontSmemBytes(f.route.routing.n_experts, f.router_rows),
                                      stream, f.convert.pdl, f,
                                      const_cast<float*>(f.route.logits)));
  return absl::OkStatus();
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

Status ScanArgs::Validate() const {
  if (meta == nullptr || counts == nullptr || topk_ids == nullptr || ranks == nullptr ||
      group_offsets == nullptr || tiles == nullptr || n_tiles == nullptr || perm_token == nullptr ||
      pair_row == nullptr) {
    return absl::InvalidArgumentError("ScanArgs: null pointer");
  }
  if (n_experts <= 0 || n_experts > kScanThreads || top_k <= 0 || bm <= 0 || capacity <= 0) {
    return absl::InvalidArgumentError("ScanArgs: bad sizes");
  }
  return absl::OkStatus();
}

Status LaunchScan(const ScanArgs& a, cudaStream_t stream) {
  MOE_RETURN_IF_ERROR(a.Validate());
  // NOTES: one block scatters 4096 pairs in a few microseconds; beyond that a grid-wide kernel
  // (one more launch) is faster (39 us -> ~3 us for 32768 pairs on an H200).
  const int64_t pairs = a.capacity * a.top_k;
  const bool inline_scatter = pairs <= 4096;
  CUDA_RETURN_IF_ERROR(
      LaunchMaybePdl(ScanKernel, dim3(1), dim3(kScanThreads), 0, stream, a.pdl, a, inline_scatter));
  if (!inline_scatter) {
    CUDA_RETURN_IF_ERROR(
        LaunchMaybePdl(ScatterKernel, dim3(GridFor(pairs, 256)), dim3(256), 0, stream, a.pdl, a));
  }
  return absl::OkStatus();
}

Status CombineArgs::Validate() const {
  if (meta == nullptr || pair_row == nullptr || topk_weights == nullptr || y == nullptr ||
      hidden <= 0 || hidden % 8 != 0 || top_k <= 0 || y_splits < 1 || ys_splits < 1) {
    return absl::InvalidArgumentError("CombineArgs: null pointer or bad sizes");
  }
  return absl::OkStatus();
}

Status LaunchCombine(const CombineArgs& a, cudaStream_t stream) {
  MOE_RETURN_IF_ERROR(a.Validate());
  const int threads = 256;
  const int grid = GridFor(a.capacity * a.hidden / 8, threads);
  cudaError_t err = cudaSuccess;
#define MOE_COMBINE_(W, OUT) \
  err = LaunchMaybePdl(CombineKernel<W, OUT>, dim3(grid), dim3(threads), 0, stream, a.pdl, a)
  const bool bf = a.wtype == WType::kBF16;
  switch (a.atype) {
    case AType::kF32:
      if (bf)
        MOE_COMBINE_(__nv_bfloat16, float);
      else
        MOE_COMBINE_(__half, float);
      break;
    case AType::kF16:
      if (bf)
        MOE_COMBINE_(__nv_bfloat16, __half);
      else
        MOE_COMBINE_(__half, __half);
      break;
    case AType::kBF16:
      if (bf)
        MOE_COMBINE_(__nv_bfloat16, __nv_bfloat16);
      else
        MOE_COMBINE_(__half, __nv_bfloat16);
      break;
  }
#undef MOE_COMBINE_
  CUDA_RETURN_IF_ERROR(err);
  return absl::OkStatus();
}

Status LaunchFillRandom(void* dst, int64_t n, WType wtype, float scale, uint64_t seed,
                        cudaStream_t stream) {
  if (dst == nullptr || n <= 0) return absl::InvalidArgumentError("FillRandom: empty");
  const int grid = GridFor(n, 256 * 16);
  if (wtype == WType::kBF16) {
    FillRandomKernel<<<grid, 256, 0, stream>>>(static_cast<__nv_bfloat16*>(dst), n, scale, seed);
  } else {
    FillRandomKernel<<<grid, 256, 0, stream>>>(static_cast<__half*>(dst), n, scale, seed);
  }
  CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

Status LaunchFillRandomF32(float* dst, int64_t n, float scale, uint64_t seed, cudaStream_t stream) {
  if (dst == nullptr || n <= 0) return absl::InvalidArgumentError("FillRandom: empty");
  FillRandomKernel<<<GridFor(n, 256 * 16), 256, 0, stream>>>(dst, n, scale, seed);
  CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

}  // namespace moe::cuda
