// Device pieces shared by the routing kernels (routing.cu), the fused decode front
// (decode_front.cu) and combine (combine.cu): 8-element vector loads and stores through float, warp
// reductions, one token's routing (RouteToken), the block-wide scan (ScanBody) and routing + scan
// of a decode batch in one block (RouteScanBody).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cfloat>
#include <climits>
#include <cstdint>
#include <type_traits>

#include "kernels/gemm_trace.cuh"
#include "kernels/moe_kernels.h"

namespace moe::cuda {

inline constexpr int kScanThreads = 1024;
inline constexpr int kRouteScanMaxTokens = kScanThreads / 32;  // one warp per token
inline constexpr int kRouteScanMaxExperts = 256;               // 64 KB of scores for 32 warps
// RouteToken's top-k keeps each lane's selection keys in registers up to 32 x this many experts.
inline constexpr int kRouteRegKeys = 8;

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

inline int GridFor(int64_t work, int threads) {
  const int64_t blocks = (work + threads - 1) / threads;
  return static_cast<int>(blocks < 1 ? 1 : (blocks > 65535 ? 65535 : blocks));
}

// ---- Route ----
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

// The split partials p[s * stride], s < splits <= N (0 past them, and everywhere when !valid): a
// fixed number of loads, so all are issued before the first add (a loop with a run-time trip count
// would wait for each load in turn). N = 1 for callers whose logits are never split (the decode
// front): one load instead of kMaxSplits predicated ones.
template <int N>
__device__ __forceinline__ void LoadSplits(const float* p, int splits, int64_t stride, bool valid,
                                           float (&v)[N]) {
#pragma unroll
  for (int s = 0; s < N; ++s) v[s] = valid && s < splits ? p[s * stride] : 0.0f;
}
// Their sum in ascending s: the one summation order of every split-K reader of the logits (the
// zeros past `splits` change no value but a -0 to +0, which scores and keys treat alike).
template <int N>
__device__ __forceinline__ float SumLoadedSplits(const float (&v)[N]) {
  float sum = v[0];
#pragma unroll
  for (int s = 1; s < N; ++s) sum += v[s];
  return sum;
}
// sum_s p[s * stride] in ascending s.
template <int N = kMaxSplits>
__device__ __forceinline__ float SumSplits(const float* p, int splits, int64_t stride) {
  float v[N];
  LoadSplits(p, splits, stride, true, v);
  return SumLoadedSplits(v);
}

// f(e) for e = lane, lane + 32, ... < n. kRolled: a loop the compiler may not unroll (the decode
// front's routing runs once per forward from a cold instruction cache, where code bytes cost more
// than the overlap of unrolled iterations: RESULTS.md "Session 39").
template <bool kRolled, typename F>
__device__ __forceinline__ void ForLaneStrided(int lane, int n, F&& f) {
  if constexpr (kRolled) {
#pragma unroll 1
    for (int e = lane; e < n; e += 32) f(e);
  } else {
    for (int e = lane; e < n; e += 32) f(e);
  }
}

// Top-k rounds over keys held in registers: lane l holds the keys of experts e[j] (l, l + 32, ...;
// key 0: none). Each lane sorts its keys once (descending, ties to the lower expert), so a round
// reads the lane's best at the head of its list and only the winning lane pops it: the rounds'
// chain is the two warp reductions in pick(k, key, expert) -> the picked expert, not a scan of
// every key. kRolled: the rounds stay a loop (ForLaneStrided's reason).
template <int N, bool kRolled, typename Pick>
__device__ __forceinline__ void SortedKeyRounds(unsigned (&key)[N], int (&e)[N], int top_k,
                                                Pick&& pick) {
  // Odd-even transposition sort: N rounds of neighbour compare-exchanges.
#pragma unroll
  for (int r = 0; r < N; ++r) {
#pragma unroll
    for (int j = r & 1; j + 1 < N; j += 2) {
      if (key[j + 1] > key[j] || (key[j + 1] == key[j] && e[j + 1] < e[j])) {
        const unsigned tk = key[j];
        key[j] = key[j + 1];
        key[j + 1] = tk;
        const int te = e[j];
        e[j] = e[j + 1];
        e[j + 1] = te;
      }
    }
  }
  const auto round = [&](int k) {
    const int idx = pick(k, key[0], e[0]);
    if (key[0] != 0u && e[0] == idx) {
#pragma unroll
      for (int j = 0; j + 1 < N; ++j) {
        key[j] = key[j + 1];
        e[j] = e[j + 1];
      }
      key[N - 1] = 0u;
    }
  };
  if constexpr (kRolled) {
#pragma unroll 1
    for (int k = 0; k < top_k; ++k) round(k);
  } else {
    for (int k = 0; k < top_k; ++k) round(k);
  }
}

// What RouteToken hands lane k < top_k: its pair's expert and rank (from `counts`).
struct RoutedPair {
  int expert = 0;
  int rank = 0;
};

// Diagnostic builds: lane 0 records the time at trace[i] (RouteToken's steps).
__device__ __forceinline__ void RouteMark([[maybe_unused]] uint64_t* trace,
                                          [[maybe_unused]] int i) {
#ifdef MOE_GEMM_TRACE
  if (trace != nullptr && (threadIdx.x & 31) == 0) trace[i] = TraceGlobalTime();
#endif
}

// RouteToken's last step: lane k < top_k holds pick k (my_id, its score my_w; wsum: the picks'
// sum in pick order) and stores it, weighted as the family asks, with its rank from `counts`; lane
// 0 stores the shared expert's gate.
template <int kSplits>
__device__ __forceinline__ RoutedPair FinishToken(const RouteArgs& a, int my_id, float my_w,
                                                  float wsum, const float* logits, int splits,
                                                  int64_t split_stride, int t, int32_t* counts,
                                                  bool store_rank, uint64_t* trace) {
  const RoutingParams& rp = a.routing;
  const int lane = threadIdx.x & 31;
  RoutedPair out;
  if (lane < rp.top_k) {
    if (rp.norm_topk_prob) my_w /= wsum + 1e-20f;
    my_w *= rp.routed_scaling_factor;
    const int64_t p = static_cast<int64_t>(t) * rp.top_k + lane;
    a.topk_ids[p] = my_id;
    a.topk_weights[p] = my_w;
    out.expert = my_id;
    out.rank = atomicAdd(&counts[my_id], 1);
    if (store_rank) a.ranks[p] = out.rank;
  }
  if (rp.has_shared_gate && lane == 0) {
    const float v = SumSplits<kSplits>(logits + rp.n_experts, splits, split_stride);
    a.shared_gate[t] = 1.0f / (1.0f + __expf(-v));
  }
  RouteMark(trace, 4);
  return out;
}

// RouteToken of at most 128 experts without groups, with every score in registers (lane l: experts
// l, l + 32, l + 64, l + 96): the same operations in the same order per expert as RouteToken's
// shared-memory steps, so the same picks and bits, without a shared-memory round trip per expert
// and step (the decode front: kRolled).
template <int kSplits>
__device__ __forceinline__ RoutedPair RouteTokenInRegisters(const RouteArgs& a, const float* logits,
                                                            int splits, int64_t split_stride, int t,
                                                            int32_t* counts, bool store_rank,
                                                            uint64_t* trace) {
  constexpr int N = 4;
  const RoutingParams& rp = a.routing;
  const int n_experts = rp.n_experts;
  const int lane = threadIdx.x & 31;
  float s[N];
  float local_max = -FLT_MAX;
#pragma unroll
  for (int j = 0; j < N; ++j) {
    const int e = lane + 32 * j;
    float v[kSplits];
    LoadSplits(logits + e, splits, split_stride, e < n_experts, v);
    s[j] = SumLoadedSplits(v);
    if (e < n_experts) local_max = fmaxf(local_max, s[j]);
  }
  if (!rp.sigmoid) {
    const float m = WarpMax(local_max);
    float local_sum = 0.0f;
#pragma unroll
    for (int j = 0; j < N; ++j) {
      if (lane + 32 * j < n_experts) {
        s[j] = __expf(s[j] - m);
        local_sum += s[j];
      }
    }
    const float inv = 1.0f / WarpSum(local_sum);
#pragma unroll
    for (int j = 0; j < N; ++j) s[j] *= inv;
  } else {
#pragma unroll
    for (int j = 0; j < N; ++j) s[j] = 1.0f / (1.0f + __expf(-s[j]));
  }
  RouteMark(trace, 0);
  const float* bias =
      rp.has_bias ? a.bias + static_cast<int64_t>(a.meta->layer_pos) * n_experts : nullptr;
  unsigned key[N];
  int e[N];
#pragma unroll
  for (int j = 0; j < N; ++j) {
    e[j] = lane + 32 * j;
    key[j] = e[j] < n_experts ? SelKey(s[j] + (bias ? bias[e[j]] : 0.0f)) : 0u;
  }
  RouteMark(trace, 1);
  RouteMark(trace, 2);
  int my_id = 0;
  float my_w = 0.0f, wsum = 0.0f;
  // RouteToken's pick, the weight shuffled from the lane that holds it.
  const auto pick = [&](int k, unsigned best, int best_e) {
    const unsigned m = __reduce_max_sync(0xffffffffu, best);
    const int idx = m == 0u ? 0
                            : static_cast<int>(__reduce_min_sync(
                                  0xffffffffu, best == m ? static_cast<unsigned>(best_e) : ~0u));
    const int jj = idx >> 5;
    const float held = jj == 0 ? s[0] : jj == 1 ? s[1] : jj == 2 ? s[2] : s[3];
    const float w = __shfl_sync(0xffffffffu, held, idx & 31);
    if (lane == k) {
      my_id = idx;
      my_w = w;
    }
    wsum += w;
    return idx;
  };
  SortedKeyRounds<N, /*kRolled=*/true>(key, e, rp.top_k, pick);
  RouteMark(trace, 3);
  return FinishToken<kSplits>(a, my_id, my_w, wsum, logits, splits, split_stride, t, counts,
                              store_rank, trace);
}

// Routes token t with one warp; `logits`: token t's row of split partials (`splits` of them,
// `split_stride` apart; global or shared memory); `score`, `sel`: [n_experts] warp-private shared
// memory; `counts`: per-expert counters (global or shared) that hand out each pair's rank, stored
// to a.ranks unless store_rank is false (the caller then stores it). kBatch: experts per lane whose
// split partials are loaded before the first add (logits in global memory: one round trip for up
// to 32 * kBatch experts instead of one per 32). trace (diagnostic builds): lane 0 records the
// end of each step at words trace[0..4] (scores, selection scores, groups, top-k, stores;
// RouteScanBody adds its start at trace[5] and the SM clock at its start and end at trace[6, 7]).
// kRolled (kBatch 1): the loops over experts and the top-k rounds stay loops (ForLaneStrided).
template <int kBatch = 1, int kSplits = kMaxSplits, bool kRolled = false>
__device__ RoutedPair RouteToken(const RouteArgs& a, const float* logits, int splits,
                                 int64_t split_stride, int t, float* score, float* sel,
                                 int32_t* counts, bool store_rank = true,
                                 [[maybe_unused]] uint64_t* trace = nullptr) {
  const RoutingParams& rp = a.routing;
  const int n_experts = rp.n_experts;
  const int lane = threadIdx.x & 31;
  const auto mark = [trace](int i) { RouteMark(trace, i); };
  static_assert(!kRolled || kBatch == 1, "rolled loops take one expert a lane at a time");
  if constexpr (kRolled) {
    if (n_experts <= 32 * 4 && rp.topk_method == 0) {
      return RouteTokenInRegisters<kSplits>(a, logits, splits, split_stride, t, counts, store_rank,
                                            trace);
    }
  }
  // Logits (split partials summed in ascending order) -> scores.
  float local_max = -FLT_MAX;
  if constexpr (kRolled) {
    ForLaneStrided<true>(lane, n_experts, [&](int e) {
      float v[kSplits];
      LoadSplits(logits + e, splits, split_stride, true, v);
      const float sum = SumLoadedSplits(v);
      score[e] = sum;
      local_max = fmaxf(local_max, sum);
    });
  } else {
    for (int e0 = lane; e0 < n_experts; e0 += 32 * kBatch) {
      float v[kBatch][kSplits];
#pragma unroll
      for (int b = 0; b < kBatch; ++b) {
        const int e = e0 + 32 * b;
        LoadSplits(logits + e, splits, split_stride, e < n_experts, v[b]);
      }
#pragma unroll
      for (int b = 0; b < kBatch; ++b) {
        const int e = e0 + 32 * b;
        if (e < n_experts) {
          const float sum = SumLoadedSplits(v[b]);
          score[e] = sum;
          local_max = fmaxf(local_max, sum);
        }
      }
    }
  }  // !kRolled
  if (!rp.sigmoid) {
    const float m = WarpMax(local_max);
    float local_sum = 0.0f;
    ForLaneStrided<kRolled>(lane, n_experts, [&](int e) {
      const float ex = __expf(score[e] - m);
      score[e] = ex;
      local_sum += ex;
    });
    const float inv = 1.0f / WarpSum(local_sum);
    ForLaneStrided<kRolled>(lane, n_experts, [&](int e) { score[e] *= inv; });
  } else {
    ForLaneStrided<kRolled>(lane, n_experts,
                            [&](int e) { score[e] = 1.0f / (1.0f + __expf(-score[e])); });
  }
  mark(0);
  const float* bias =
      rp.has_bias ? a.bias + static_cast<int64_t>(a.meta->layer_pos) * n_experts : nullptr;
  ForLaneStrided<kRolled>(lane, n_experts,
                          [&](int e) { sel[e] = score[e] + (bias ? bias[e] : 0.0f); });
  __syncwarp();
  mark(1);

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
    ForLaneStrided<kRolled>(lane, n_experts, [&](int e) {
      if (!((keep >> (e / group_size)) & 1u)) {
        if (rp.topk_method == 1) {
          sel[e] = 0.0f;
          score[e] = 0.0f;
        } else {
          sel[e] = -INFINITY;
        }
      }
    });
    __syncwarp();
  }

  mark(2);
  // Top-k by selection score; weights are the unbiased scores. Selection scores become orderable
  // keys (SelKey), so each round is one max and one min reduction over the warp. Up to
  // kRouteRegKeys * 32 experts a lane keeps its experts' keys (lane, lane + 32, ...) in registers;
  // past that they stay in place in shared memory. The same choices either way.
  // NOTES (H200, session 14): with the keys in shared memory RouteKernel issued ~1500 warp
  // instructions per token at Qwen3 16384 tokens and was issue-bound (0.55 instructions per cycle
  // and scheduler, one block of 16 warps per SM; ncu 44 us on that card); with them in registers
  // and two blocks per SM it took 30.3-30.9 us (another card, where the old kernel's layer time was
  // the same), and the decode front's shorter top-k took 1 us off the 1-token forward (Qwen3 37.8
  // -> 36.7 us, DeepSeek-V2-Lite 45.6 -> 44.8).
  int my_id = 0;
  float my_w = 0.0f, wsum = 0.0f;
  // Round k: each lane's best candidate (best > 0, expert best_e) -> the warp's pick, ties to the
  // lower index; no candidate (all -inf / NaN) -> expert 0, which keeps indices in range. Lane k
  // keeps the pick. Returns the picked expert.
  auto pick = [&](int k, unsigned best, int best_e) {
    const unsigned m = __reduce_max_sync(0xffffffffu, best);
    const int idx = m == 0u ? 0
                            : static_cast<int>(__reduce_min_sync(
                                  0xffffffffu, best == m ? static_cast<unsigned>(best_e) : ~0u));
    const float w = score[idx];
    if (lane == k) {
      my_id = idx;
      my_w = w;
    }
    wsum += w;
    return idx;
  };
  // Keys in registers (SortedKeyRounds).
  const auto top_k_sorted = [&](auto n_keys) {
    constexpr int N = decltype(n_keys)::value;
    unsigned key[N];
    int e[N];
#pragma unroll
    for (int j = 0; j < N; ++j) {
      e[j] = lane + 32 * j;
      key[j] = e[j] < n_experts ? SelKey(sel[e[j]]) : 0u;
    }
    SortedKeyRounds<N, kRolled>(key, e, rp.top_k, pick);
  };
  if (n_experts <= 32 * 4) {
    top_k_sorted(std::integral_constant<int, 4>{});
  } else if (n_experts <= 32 * kRouteRegKeys) {
    top_k_sorted(std::integral_constant<int, kRouteRegKeys>{});
  } else {
    unsigned* key = reinterpret_cast<unsigned*>(sel);
    for (int e = lane; e < n_experts; e += 32) key[e] = SelKey(sel[e]);
    __syncwarp();
    for (int k = 0; k < rp.top_k; ++k) {
      unsigned best = 0u;
      int best_e = INT_MAX;
      for (int e = lane; e < n_experts; e += 32) {
        if (key[e] > best) {
          best = key[e];
          best_e = e;
        }
      }
      const int idx = pick(k, best, best_e);
      __syncwarp();
      if (lane == 0) key[idx] = 0u;
      __syncwarp();
    }
  }
  mark(3);
  return FinishToken<kSplits>(a, my_id, my_w, wsum, logits, splits, split_stride, t, counts,
                              store_rank, trace);
}

// ---- Scan ----
// Pair p (token p / top_k) is row r of the permuted order: the permutation's two index maps.
__device__ __forceinline__ void RecordPairRow(const ScanArgs& a, int p, int r) {
  a.perm_token[r] = p / a.top_k;
  a.pair_row[p] = r;
}

// Block-wide (kScanThreads threads): offsets and tile list from per-expert `counts` (global or
// shared); s_count / s_tiles: [kScanThreads] shared scratch. Returns the first row of thread e's
// expert (its exclusive offset). Both inclusive scans run in warps (shuffles) and then over the
// 32 warp totals: three barriers instead of a 20-barrier block-wide scan.
static_assert(kScanThreads == 32 * 32, "the scan's second level is one warp of warp totals");
inline __device__ int ScanOffsets(const ScanArgs& a, const int32_t* counts, int* s_count,
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
  return row0;
}

// ScanOffsets, then (with `scatter`) the permutation.
inline __device__ void ScanBody(const ScanArgs& a, const int32_t* counts, bool scatter,
                                int* s_count, int* s_tiles) {
  const int e = threadIdx.x;
  const int row0 = ScanOffsets(a, counts, s_count, s_tiles);
  if (!scatter) return;
  __syncthreads();
  s_count[e] = row0;  // exclusive offsets
  __syncthreads();
  const int pairs = a.meta->n_tokens * a.top_k;
  for (int p = e; p < pairs; p += kScanThreads) {
    RecordPairRow(a, p, s_count[a.topk_ids[p]] + a.ranks[p]);
  }
}

// Decode batches (<= 32 tokens): routing (one warp per token, counters in shared memory, so no
// memset) and the scan in one block, one launch instead of three nodes.
// One block (kScanThreads threads): routes tokens 0..n_tokens-1 (one warp each; logits row t at
// logits + t * ld_logits, `splits` partials) and scans; `route_smem`: [32][2][n_experts].
// n_tokens < 0: the meta's count (else the caller's, which it has read already). kSplits: the
// most logits splits (1: never split, the decode front); kRolled: RouteToken's.
template <int kSplits = kMaxSplits, bool kRolled = false>
inline __device__ void RouteScanBody(const RouteArgs& ra, const ScanArgs& sa, const float* logits,
                                     int64_t ld_logits, int splits, int64_t split_stride,
                                     float* route_smem, bool scan, int n_tokens = -1,
                                     [[maybe_unused]] uint64_t* trace = nullptr) {
  __shared__ int s_experts[kScanThreads];
  __shared__ int s_count[kScanThreads];
  __shared__ int s_tiles[kScanThreads];
  s_experts[threadIdx.x] = 0;
  __syncthreads();
  const int wid = threadIdx.x >> 5;
  if (wid < (n_tokens >= 0 ? n_tokens : ra.meta->n_tokens)) {
#ifdef MOE_GEMM_TRACE
    if (trace != nullptr && threadIdx.x == 0) {  // routing starts (timer and SM clock)
      trace[5] = TraceGlobalTime();
      trace[6] = TraceClock();
    }
#endif
    float* score = route_smem + wid * 2 * ra.routing.n_experts;
    RouteToken<1, kSplits, kRolled>(ra, logits + wid * ld_logits, splits, split_stride, wid, score,
                                    score + ra.routing.n_experts, s_experts, true,
                                    wid == 0 ? trace : nullptr);
#ifdef MOE_GEMM_TRACE
    if (trace != nullptr && threadIdx.x == 0) trace[7] = TraceClock();  // routing done
#endif
  }
  if (!scan) return;
  __syncthreads();  // ids, ranks (global) and counts (shared) are complete
  ScanBody(sa, s_experts, true, s_count, s_tiles);
}

// Raises the fused decode front's shared-memory limit (decode_front.cu; InitRoutingKernels calls
// it).
Status InitFrontKernels();

}  // namespace moe::cuda
