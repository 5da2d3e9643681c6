// Decode experts: the routed experts of a decode batch per (token, k) pair on CUDA cores.
//
// 1. Both kernels run a persistent grid (kBlocksPerSm blocks of kWarps warps per SM). Units of
//    work are (output column, h row) for gate/up and (output column, token) for down + combine,
//    column-major, and each warp takes one contiguous range of units, so every SM streams the same
//    number of weight bytes and no block resolves a tile list. h rows are the pairs in the scan's
//    expert-sorted order (or in pair order at 1 token, where the front skips the scan), so pairs of
//    one expert are neighbouring units: their weight row is loaded once into registers (one-pass
//    K) or read back from L2.
// 2. Each block stages the per-row / per-pair data in shared memory: the expert's weight matrices
//    (gate/up: from the layer's pointer tables, copied before the PDL wait) and the routing weight.
// 3. Gate/up: a warp streams the unit's gate and up rows (lane l reads 16 bytes at elements
//    8l + 256c, kChunks per row in flight), dots them with the token's activation row (L1) in
//    ascending k per lane, sums the lanes with a fixed xor tree and stores silu(g) * u to
//    h[row, column] in wtype.
// 4. Down + combine: a warp streams the down rows of the token's top_k experts as one run of
//    16-byte chunks (32 * kC per batch, so several experts' rows are in flight at once; h comes
//    from shared memory when it fits), adds w_k * (h[row(pair)] . down[e][column]) per chunk
//    (k ascending per lane), sums the lanes, adds the gated shared-expert output and stores the
//    token's output element in the activation dtype.
//    At 1 token DecodeDownGroupsKernel (DecodeDownOptions::groups, the engine's default) takes
//    its place: a block per 8 output columns, its warps splitting those rows' contiguous pieces.
// 5. PDL: gate/up waits before reading the routing; down + combine stages the routing (two or more
//    launches back) and prefetches its first weights into L2 (the groups kernel: loads its first
//    register buffer) before it waits for h.
// 6. Packed weights (DecodeExpertsArgs::packed, kernels/weight_layout.h): gate/up in units of
//    four columns whose warp loads are 512 contiguous bytes of a tile (GateUpQuadUnits); down +
//    combine reads the same chunks in the same order as on row-major weights, each from its tile
//    (a row's 64 columns of a tile are 128 contiguous bytes), so its sums are the same bits.
// NOTES: rounds differently from the tensor-core tiles + combine (no bf16 rounding of the down
// outputs), so deterministic (batch-invariant) mode never uses it (PlanMoe).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <iterator>

#include "kernels/cuda_status.h"
#include "kernels/decode_common.cuh"
#include "kernels/decode_fused.h"
#include "kernels/gemm_common.cuh"
#include "kernels/moe_kernels.h"
#include "kernels/pdl.cuh"

namespace moe::cuda {
namespace {
#ifdef MOE_GEMM_TRACE
__device__ uint64_t* g_decode_trace = nullptr;  // SetDecodeTraceBuffer
#endif

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kBlocksPerSm = 2;
// 16-byte weight loads in flight per lane and weight row (gate/up: 2 rows, so 8 KiB per warp).
constexpr int kChunks = 8;
// Down + combine's batch sizes with h from global memory (16-byte weight loads per lane and batch;
// DecodeDownChunks picks one).
constexpr int kDownChunks[] = {8, 10, 12};
// DecodeDownGroupsKernel's items per register buffer (DecodeDownOptions::groups_batch), and its
// largest h in shared memory (two blocks an SM fit on sm_80 and sm_90; Mixtral's top-2 of inter
// 14336 take 56 KiB).
constexpr int kDownGroupsBatch[] = {4, 6};
constexpr int kDownGroupsMaxHBytes = 96 * 1024;
constexpr int kMaxPairs = static_cast<int>(kDecodeExpertsMaxPairs);
// Gate/up copies the layer's pointer tables into shared memory up to this many experts.
constexpr int kMaxStagedExperts = 512;
// Down + combine stages h in shared memory up to this size (no opt-in attribute needed) when asked
// to (DecodeDownOptions::h_smem). NOTES: a 96 KiB limit (opt-in), with L2 eviction hints, made
// Mixtral's 1-token forward (57 KiB of h) 7% slower on an H200 (benches/RESULTS.md "v8c"); staging
// h at all was 3 us slower than reading it through L1 at 1 token of the Qwen3 and DeepSeek-V2-Lite
// shapes (ncu: 15-17 us against 13-14 us; "v9"), so it is off by default. The per-lane chunk order
// and arithmetic are the same either way.
constexpr int64_t kHSmemMaxBytes = 48 * 1024;
// The bulk-copy down kernel's shared-memory buffer per warp (8 warps, 2 blocks per SM: 192 KiB).
// NOTES: measured no faster than the 16-byte loads at Qwen3 / DeepSeek-V2-Lite 1 token and 9%
// slower at Mixtral (H200, RESULTS.md "v9"); off by default.
constexpr int kTmaWarpBytes = 12 * 1024;

// TMA: the weights move by the bulk copy engine (GateUpUnitsTma; sm_90 builds only).
template <typename T, bool TMA>
__global__ void __launch_bounds__(kThreads, kBlocksPerSm)
    DecodeGateUpKernel(const DecodeExpertsArgs a, int prefetch_units) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  extern __shared__ uint4 s_gbuf[];   // TMA: [kWarps][kGateUpTmaWarpBytes / 16]
  __shared__ uint64_t s_bar[kWarps];  // TMA: one mbarrier per warp
  const int warp = threadIdx.x >> 5;
#endif
  __shared__ const T* s_gate[kMaxPairs];  // by h row
  __shared__ const T* s_up[kMaxPairs];
  __shared__ int s_token[kMaxPairs];
  __shared__ const void* s_table[2][kMaxStagedExperts];
#ifdef MOE_GEMM_TRACE
  const uint64_t trace_entry = TraceGlobalTime();
#endif
  // Phase 0: the layer's gate/up tables (fixed) before the wait, so that after it the experts (from
  // the previous kernel) are one dependent load away from their weights. layer_after_wait: the
  // layer comes from the previous kernel too, so the experts' table entries load after the wait.
  int64_t layer_base = a.layer_after_wait ? 0 : static_cast<int64_t>(*a.layer_dev) * a.n_experts;
  const bool staged = !a.layer_after_wait && a.n_experts <= kMaxStagedExperts;
  if (staged) {
    for (int e = threadIdx.x; e < a.n_experts; e += kThreads) {
      s_table[0][e] = a.gate_table[layer_base + e];
      s_table[1][e] = a.up_table[layer_base + e];
    }
  }
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if constexpr (TMA) {
    if ((threadIdx.x & 31) == 0) MbarInit(&s_bar[warp]);
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
#endif
  __syncthreads();
  GridDepWait();
  GridDepTrigger();
#ifdef MOE_GEMM_TRACE
  // The ring entry after the wait (the front may count the forward: DecodeTraceBlock).
  uint64_t* trace = DecodeTraceBlock(g_decode_trace, 2);
  if (threadIdx.x == 0 && trace != nullptr) {
    trace[DecodeTraceLayout::kEntry] = trace_entry;
    DecodeTraceMark(trace, DecodeTraceLayout::kWaited);
  }
#else
  uint64_t* trace = nullptr;
#endif
  if (a.layer_after_wait) layer_base = static_cast<int64_t>(*a.layer_dev) * a.n_experts;
  const int pairs = a.meta->n_tokens * a.top_k;
  for (int p = threadIdx.x; p < pairs; p += kThreads) {
    const int e = a.topk_ids[p];
    const int j = a.pair_row != nullptr ? a.pair_row[p] : p;
    s_gate[j] = static_cast<const T*>(staged ? s_table[0][e] : a.gate_table[layer_base + e]);
    s_up[j] = static_cast<const T*>(staged ? s_table[1][e] : a.up_table[layer_base + e]);
    s_token[j] = p / a.top_k;
  }
  __syncthreads();
#ifdef MOE_GEMM_TRACE
  if (threadIdx.x == 0) DecodeTraceMark(trace, DecodeTraceLayout::kSetUp);
#endif

  // Phase 1: units (column, h row), column-major. With sorted rows, consecutive units of one warp
  // often share (expert, column): a one-pass K keeps that weight row in registers.
  int64_t u_begin, u_end;  // packed: units of four columns (GateUpQuadUnits)
  WarpUnits<kWarps>(static_cast<int64_t>(a.packed ? a.inter / 4 : a.inter) * pairs, u_begin, u_end);
  if constexpr (TMA) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    uint32_t parity = 0;
    GateUpUnitsTma<T, kGateUpTmaWarpBytes, /*X_SHARED=*/false>(
        u_begin, u_end, pairs, a.hidden, a.inter, s_gate, s_up, s_token, static_cast<const T*>(a.x),
        a.ldx, static_cast<T*>(a.h), prefetch_units, s_gbuf + warp * (kGateUpTmaWarpBytes / 16),
        &s_bar[warp], parity);
#endif
  } else if (a.packed) {
    GateUpQuadUnits<T, kChunks>(u_begin, u_end, pairs, a.hidden, a.inter, s_gate, s_up, s_token,
                                static_cast<const T*>(a.x), a.ldx, static_cast<T*>(a.h), trace);
  } else {
    GateUpUnits<T, kChunks, /*X_SHARED=*/false, /*EVICT_FIRST=*/false>(
        u_begin, u_end, pairs, a.hidden, a.inter, s_gate, s_up, s_token, static_cast<const T*>(a.x),
        a.ldx, static_cast<T*>(a.h), prefetch_units, trace);
  }
#ifdef MOE_GEMM_TRACE
  DecodeTraceWarpMark(trace, DecodeTraceLayout::kWarpDone);
#endif
}

template <typename Out>
__device__ __forceinline__ Out FromFloat(float v);
template <>
__device__ __forceinline__ float FromFloat<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ __half FromFloat<__half>(float v) {
  return __float2half_rn(v);
}
template <>
__device__ __forceinline__ __nv_bfloat16 FromFloat<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// out[t, col] = v + gate(t) * sum_s ys[s][t, col] in the activation dtype (lane 0 of a unit).
template <typename T, typename Out>
__device__ __forceinline__ void StoreCombined(const DecodeExpertsArgs& a, int t, int col, float v,
                                              Out* out) {
  if (a.ys != nullptr) {
    const float gate = a.shared_gate ? a.shared_gate[t] : 1.0f;
    const int64_t off = static_cast<int64_t>(t) * a.hidden + col;
    float sum = 0.0f;
    if (a.ys_f32) {
      for (int s = 0; s < a.ys_splits; ++s) {
        sum += static_cast<const float*>(a.ys)[s * a.ys_split_stride + off];
      }
    } else {
      sum = static_cast<float>(static_cast<const T*>(a.ys)[off]);
    }
    v += gate * sum;
  }
  out[static_cast<int64_t>(t) * a.hidden + col] = FromFloat<Out>(v);
}

// Steps chunk position (kk, r) (chunk r of row kk, rows of `per_row` chunks) forward by 32 chunks.
__device__ __forceinline__ void Advance32(int per_row, int& kk, int& r) {
  r += 32;
  while (r >= per_row) {
    r -= per_row;
    ++kk;
  }
}

// Down + combine kernels: each (token, k) pair's down matrix, combine weight and h row, from the
// routing, into shared memory (the block's threads, strided; the caller synchronises).
template <typename T>
__device__ __forceinline__ void StageDownPairs(const DecodeExpertsArgs& a, int pairs,
                                               const T** s_down, float* s_w, int* s_hrow) {
  const int64_t layer_base = static_cast<int64_t>(*a.layer_dev) * a.n_experts;
  for (int p = threadIdx.x; p < pairs; p += kThreads) {
    s_down[p] = static_cast<const T*>(a.down_table[layer_base + a.topk_ids[p]]);
    s_w[p] = a.topk_weights[p];
    s_hrow[p] = a.pair_row != nullptr ? a.pair_row[p] : p;
  }
}

// H_SMEM: h of every pair is copied into shared memory first (when it fits, kHSmemMaxBytes), so the
// registers hold only weights: 24 16-byte loads per lane in flight (12 KiB per warp), against 8
// weight + 8 h loads when h is read from global memory.
// routing_after_wait: the routing comes from the previous kernel (the fused decode kernel,
// decode_fused.cu), so everything waits for it and the L2 prefetch (done there) is skipped.
// kCW: 16-byte weight loads per lane in a batch when h comes from global memory (a batch is 32 *
// kCW chunks of the unit's run; kDownChunks lists the instantiated values, DecodeDownChunks picks).
template <typename T, typename Out, bool H_SMEM, int kCW = kChunks>
__global__ void __launch_bounds__(kThreads, kBlocksPerSm)
    DecodeDownCombineKernel(const DecodeExpertsArgs a, int routing_after_wait) {
  constexpr int kC = H_SMEM ? 24 : kCW;
  extern __shared__ uint4 s_h[];  // H_SMEM: [pairs][inter] wtype (h rows)
  __shared__ const T* s_down[kMaxPairs];
  __shared__ float s_w[kMaxPairs];
  __shared__ int s_hrow[kMaxPairs];
#ifdef MOE_GEMM_TRACE
  uint64_t* trace = DecodeTraceBlock(g_decode_trace, 3);  // the counting kernel: 2+ launches back
  if (threadIdx.x == 0) DecodeTraceMark(trace, DecodeTraceLayout::kEntry);
#endif
  // Phase 0: the routing (two or more launches back) before the wait, h (the previous kernels')
  // after it. Each warp prefetches its first unit's first batch of weights into L2 meanwhile.
  if (routing_after_wait) GridDepWait();
  const int n_tokens = a.meta->n_tokens;
  const int top_k = a.top_k;
  const int pairs = n_tokens * top_k;
  StageDownPairs(a, pairs, s_down, s_w, s_hrow);
  __syncthreads();
#ifdef MOE_GEMM_TRACE
  if (threadIdx.x == 0) DecodeTraceMark(trace, DecodeTraceLayout::kSetUp);
#endif
  const int lane = threadIdx.x & 31;
  const int K = a.inter;
  const int chunks_per_row = K / 8;
  const int chunks = top_k * chunks_per_row;
  int64_t u_begin, u_end;
  WarpUnits<kWarps>(static_cast<int64_t>(a.hidden) * n_tokens, u_begin, u_end);
  if (!routing_after_wait && u_begin < u_end && lane < top_k) {
    const int col = static_cast<int>(u_begin / n_tokens);
    const int t = static_cast<int>(u_begin - static_cast<int64_t>(col) * n_tokens);
    const int first = lane * chunks_per_row;
    const int last = min(first + chunks_per_row, 32 * kC);  // chunks of the first batch
    const T* w = s_down[t * top_k + lane];
    if (first < last && !a.packed) {
      PrefetchL2(w + static_cast<int64_t>(col) * K, static_cast<uint32_t>(last - first) * 16u);
    } else if (first < last) {
      // Packed: the same chunks, 128 bytes in each tile. NOTES (H200, session 24): prefetching
      // the 1 KiB of rows col & ~7 .. + 7 in each tile instead made Qwen3's 1-token layer 20%
      // slower (35.1 -> 41.0 us; eight times the prefetches, 8 warps asking for each block).
      for (int kb = 0; kb * 8 < last - first; ++kb) {
        PrefetchL2(w + PackedOffset(col, kb * kPackedCols, K) - (col & 7) * 8, 128u);
      }
    }
  }
  GridDepWait();
  GridDepTrigger();
#ifdef MOE_GEMM_TRACE
  if (threadIdx.x == 0) DecodeTraceMark(trace, DecodeTraceLayout::kWaited);
#endif
  if constexpr (H_SMEM) {
    const uint4* src = static_cast<const uint4*>(a.h);
    const int n16 = pairs * chunks_per_row;
    for (int i = threadIdx.x; i < n16; i += kThreads) s_h[i] = src[i];
    __syncthreads();
  }

  // Phase 1: units (column, token), column-major; a unit's top_k down rows are one run of chunks.
  const T* h = static_cast<const T*>(a.h);
  Out* out = static_cast<Out*>(a.meta->output);
  for (int64_t u = u_begin; u < u_end; ++u) {
    const int col = static_cast<int>(u / n_tokens);
    const int t = static_cast<int>(u - static_cast<int64_t>(col) * n_tokens);
    const int p0 = t * top_k;
    // Row col's chunk r of a down matrix lies at w_row + chunk_off(r).
    const int64_t w_row =
        a.packed ? PackedOffset(col, 0, K) - (col & 7) * 8 : static_cast<int64_t>(col) * K;
    const int x7 = col & 7;
    const auto chunk_off = [&](int r) -> int64_t {
      return a.packed ? static_cast<int64_t>(r >> 3) * kPackedTileElems + (((r & 7) ^ x7) << 3)
                      : r * 8;
    };
    float acc = 0.0f;
    for (int q0 = lane; q0 < chunks; q0 += 32 * kC) {
      // Chunk q0 + 32c is chunk r of expert kk's row; (kk, r) advance without dividing.
      const int kk0 = q0 / chunks_per_row;
      const int r0 = q0 - kk0 * chunks_per_row;
      uint4 wv[kC], hv[kC];
      {
        int kk = kk0, r = r0;
#pragma unroll
        for (int c = 0; c < kC; ++c) {
          if (c > 0) Advance32(chunks_per_row, kk, r);
          if (q0 + 32 * c < chunks) {
            const int p = p0 + kk;
            wv[c] = LoadStreaming(s_down[p] + w_row + chunk_off(r));
            if constexpr (!H_SMEM) {
              hv[c] = LoadCached(h + static_cast<int64_t>(s_hrow[p]) * K + r * 8);
            }
          } else {
            wv[c] = make_uint4(0, 0, 0, 0);
            if constexpr (!H_SMEM) hv[c] = make_uint4(0, 0, 0, 0);
          }
        }
      }
      int kk = kk0, r = r0;
#pragma unroll
      for (int c = 0; c < kC; ++c) {
        if (c > 0) Advance32(chunks_per_row, kk, r);
        if (q0 + 32 * c < chunks) {
          const int p = p0 + kk;
          uint4 hc;
          if constexpr (H_SMEM) {
            hc = s_h[s_hrow[p] * chunks_per_row + r];
          } else {
            hc = hv[c];
          }
          float d = 0.0f;
          Dot8<T>(wv[c], hc, d);
          acc = fmaf(s_w[p], d, acc);
        }
      }
    }
    const float v = WarpSumF(acc);
    if (lane == 0) StoreCombined<T, Out>(a, t, col, v, out);
#ifdef MOE_GEMM_TRACE
    if (u == u_begin) DecodeTraceWarpMark(trace, DecodeTraceLayout::kFirstUnit);
#endif
  }
#ifdef MOE_GEMM_TRACE
  DecodeTraceWarpMark(trace, DecodeTraceLayout::kWarpDone);
#endif
}

// Down + combine at one token by groups of 8 output columns (DecodeDownOptions::groups). Block g
// owns columns [8g, 8g + 8) (a persistent loop over groups); its 8 warps split the (pair, 64-column
// tile of K) items of those rows, pair-major, in contiguous ranges. An item is 8 rows x 64 columns
// of one expert's down matrix: 1 KiB contiguous in the packed layout (two 512-byte warp loads,
// lane l at bytes 16l and 512 + 16l: rows l / 8 and l / 8 + 4 of the group), or 8 row pieces of
// 128 bytes row-major. Each lane keeps two sums (its two rows) of w_k * (chunk . h chunk); h of
// every pair sits in shared memory (copied after the wait while the first weights are on their
// way), the weights run through two register buffers of kB items (the next batch's loads are
// issued before the current one's dots). At the end of a group the warp sums its lanes by xor
// over the 8 lanes of a row, and the block adds the warps' row sums in warp order (a fixed order:
// the same bits from run to run, not those of DecodeDownCombineKernel).
// Why: DecodeDownCombineKernel's unit is one output column across all top_k experts (96-176
// chunks of 128 bytes at 1 token, a shared-memory pointer and index lookup per chunk); this one
// reads whole contiguous pieces with one address step per item.
// preload (0-2): the first group's first `preload` batches of weight loads go out before the PDL
// wait (the routing comes two launches back), so blocks that start during gate/up's tail use it.
// After the wait, h goes into shared memory by cp.async and, with preload 1, the second batch's
// loads follow those copies before the block waits for them.
// NOTES (H200, session 32, three rounds, 1 token): against h staged through registers and the
// second batch issued after the block barrier, this order took Qwen3 from 33.0 to 32.0 us,
// DeepSeek-V2-Lite 39.0 -> 37.9, Mixtral 176.4 -> 173.9. Session 29 issued both batches before
// staging h through registers, which was slower: h's loads queued behind the weights'.
template <typename T, typename Out, bool PACKED, int kB>
__global__ void __launch_bounds__(kThreads, kBlocksPerSm)
    DecodeDownGroupsKernel(const DecodeExpertsArgs a, int preload) {
  extern __shared__ uint4 s_h4[];  // [top_k][inter / 8] chunks of h
  __shared__ const T* s_down[kMaxPairs];
  __shared__ float s_w[kMaxPairs];
  __shared__ int s_hrow[kMaxPairs];
  __shared__ float s_part[kWarps][8];
#ifdef MOE_GEMM_TRACE
  uint64_t* trace = DecodeTraceBlock(g_decode_trace, 3);  // as DecodeDownCombineKernel's marks
  if (threadIdx.x == 0) DecodeTraceMark(trace, DecodeTraceLayout::kEntry);
#endif
  // The pairs of the one token; none where the forward has no token (the expert cache's
  // speculative launches carry an empty meta when an expert is missing: their tables may then
  // point nowhere, so nothing is read through them).
  const int top_k = a.meta->n_tokens > 0 ? a.top_k : 0;
  if (top_k == 0) {
    GridDepWait();  // as every block of the layer's kernels (kernels/pdl.cuh)
    GridDepTrigger();
    return;
  }
  StageDownPairs(a, top_k, s_down, s_w, s_hrow);
  __syncthreads();
#ifdef MOE_GEMM_TRACE
  if (threadIdx.x == 0) DecodeTraceMark(trace, DecodeTraceLayout::kSetUp);
#endif
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int K = a.inter, kbs = K / kPackedCols, cpr = K / 8;
  const int items = top_k * kbs;
  const int i_begin = warp * items / kWarps, i_end = (warp + 1) * items / kWarps;
  const int groups = a.hidden / 8;
  const int lr = lane >> 3;  // this lane's rows of a group: lr and lr + 4
  const int c0 = PACKED ? (lane & 7) ^ lr : lane & 7;
  const int c1 = PACKED ? c0 ^ 4 : c0;  // row lr + 4's chunk (swizzled by 4 more when packed)
  // The two chunks of item (p, kb) for this lane in group col0.
  const auto load_item = [&](int p, int kb, int col0, uint4& w0, uint4& w1) {
    const T* base = s_down[p];
    if constexpr (PACKED) {
      const T* q = base + (static_cast<int64_t>(col0 >> 7) * kbs + kb) * kPackedTileElems +
                   ((col0 & 127) << 6) + lane * 8;
      w0 = LoadStreaming(q);
      w1 = LoadStreaming(q + 256);
    } else {
      const T* q = base + static_cast<int64_t>(col0 + lr) * K + kb * kPackedCols + (lane & 7) * 8;
      w0 = LoadStreaming(q);
      w1 = LoadStreaming(q + static_cast<int64_t>(4) * K);
    }
  };
  // Items i .. i + kB - 1 (those before i_end) into buf; (p, kb) is item i's.
  const auto load_batch = [&](int i, int p, int kb, int col0, uint4(&buf)[2 * kB]) {
#pragma unroll
    for (int j = 0; j < kB; ++j) {
      if (i + j < i_end) load_item(p, kb, col0, buf[2 * j], buf[2 * j + 1]);
      if (++kb == kbs) {
        kb = 0;
        ++p;
      }
    }
  };
  const auto dot_batch = [&](int i, int p, int kb, const uint4(&buf)[2 * kB], float& acc0,
                             float& acc1) {
#pragma unroll
    for (int j = 0; j < kB; ++j) {
      if (i + j < i_end) {
        const uint4* hp = s_h4 + p * cpr + kb * (kPackedCols / 8);
        float d0 = 0.0f, d1 = 0.0f;
        Dot8<T>(buf[2 * j], hp[c0], d0);
        Dot8<T>(buf[2 * j + 1], hp[c1], d1);
        acc0 = fmaf(s_w[p], d0, acc0);
        acc1 = fmaf(s_w[p], d1, acc1);
      }
      if (++kb == kbs) {
        kb = 0;
        ++p;
      }
    }
  };
  // Steps (p, kb) forward by n items.
  const auto advance = [kbs](int n, int& p, int& kb) {
    kb += n;
    while (kb >= kbs) {
      kb -= kbs;
      ++p;
    }
  };
  const int p_begin = i_begin / kbs, kb_begin = i_begin - p_begin * kbs;
  uint4 buf0[2 * kB], buf1[2 * kB];
  int g = blockIdx.x;
  // Batches of the first group loaded ahead of the loop: 0, 1 (buf0) or 2 (buf0, buf1).
  int preloaded = 0;
  // The first group's second batch into buf1 (when it has one): preloaded 1 -> 2.
  const auto load_second = [&]() {
    if (i_begin + kB < i_end) {
      int p1 = p_begin, kb1 = kb_begin;
      advance(kB, p1, kb1);
      load_batch(i_begin + kB, p1, kb1, 8 * g, buf1);
      preloaded = 2;
    }
  };
  if (preload > 0 && g < groups && i_begin < i_end) {
    load_batch(i_begin, p_begin, kb_begin, 8 * g, buf0);
    preloaded = 1;
    if (preload > 1) load_second();
  }
  GridDepWait();
  GridDepTrigger();
#ifdef MOE_GEMM_TRACE
  if (threadIdx.x == 0) DecodeTraceMark(trace, DecodeTraceLayout::kWaited);
#endif
  // h of the pairs (the previous kernel's) into shared memory by asynchronous copies, and, while
  // they land, the first group's second batch of weights after them (its loads queue behind h's
  // requests, not ahead of them).
  {
    const uint4* h = static_cast<const uint4*>(a.h);
    for (int c = threadIdx.x; c < top_k * cpr; c += kThreads) {
      const int p = c / cpr;
      CpAsync16(SmemAddr(&s_h4[c]), h + static_cast<int64_t>(s_hrow[p]) * cpr + (c - p * cpr),
                true);
    }
    CpAsyncCommit();
  }
  if (preloaded == 1) load_second();  // preloaded 1 implies g < groups
  CpAsyncWait<0>();
  __syncthreads();
  Out* out = static_cast<Out*>(a.meta->output);
  for (; g < groups; g += gridDim.x, preloaded = 0) {
    const int col0 = 8 * g;
    float acc0 = 0.0f, acc1 = 0.0f;
    if (preloaded == 0 && i_begin < i_end) load_batch(i_begin, p_begin, kb_begin, col0, buf0);
    int p = p_begin, kb = kb_begin;
    for (int i = i_begin; i < i_end; i += 2 * kB) {
      int p1 = p, kb1 = kb;
      advance(kB, p1, kb1);
      if (i + kB < i_end && !(i == i_begin && preloaded == 2)) {
        load_batch(i + kB, p1, kb1, col0, buf1);
      }
      dot_batch(i, p, kb, buf0, acc0, acc1);
      int p2 = p1, kb2 = kb1;
      advance(kB, p2, kb2);
      if (i + 2 * kB < i_end) load_batch(i + 2 * kB, p2, kb2, col0, buf0);
      if (i + kB < i_end) dot_batch(i + kB, p1, kb1, buf1, acc0, acc1);
      p = p2;
      kb = kb2;
    }
#pragma unroll
    for (int m = 1; m < 8; m <<= 1) {
      acc0 += __shfl_xor_sync(0xffffffffu, acc0, m);
      acc1 += __shfl_xor_sync(0xffffffffu, acc1, m);
    }
    if ((lane & 7) == 0) {
      s_part[warp][lr] = acc0;
      s_part[warp][lr + 4] = acc1;
    }
    __syncthreads();
    if (threadIdx.x < 8) {
      float v = 0.0f;
#pragma unroll
      for (int w = 0; w < kWarps; ++w) v += s_part[w][threadIdx.x];
      StoreCombined<T, Out>(a, 0, col0 + threadIdx.x, v, out);
    }
#ifdef MOE_GEMM_TRACE
    if (g == static_cast<int>(blockIdx.x))
      DecodeTraceWarpMark(trace, DecodeTraceLayout::kFirstUnit);
#endif
    __syncthreads();  // s_part is free for the next group
  }
#ifdef MOE_GEMM_TRACE
  DecodeTraceWarpMark(trace, DecodeTraceLayout::kWarpDone);
#endif
}

// Down + combine with the weights moved by the bulk copy engine (sm_90): each warp copies a batch
// of its unit's run of chunks (kTmaWarpBytes) into its own shared-memory buffer (one copy per
// expert row segment, completion on the warp's mbarrier), then dots it with h (global memory,
// through L1) as DecodeDownCombineKernel does. The loads bypass the SM's outstanding-load limit.
template <typename T, typename Out>
__global__ void __launch_bounds__(kThreads, kBlocksPerSm)
    DecodeDownTmaKernel(const DecodeExpertsArgs a, int routing_after_wait) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  extern __shared__ uint4 s_buf[];  // [kWarps][kTmaWarpBytes / 16]
  __shared__ const T* s_down[kMaxPairs];
  __shared__ float s_w[kMaxPairs];
  __shared__ int s_hrow[kMaxPairs];
  __shared__ uint64_t s_bar[kWarps];
  // Phase 0: as DecodeDownCombineKernel (no L2 prefetch), plus one mbarrier per warp.
  if (routing_after_wait) GridDepWait();
  const int n_tokens = a.meta->n_tokens;
  const int top_k = a.top_k;
  const int pairs = n_tokens * top_k;
  StageDownPairs(a, pairs, s_down, s_w, s_hrow);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) MbarInit(&s_bar[warp]);
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  __syncthreads();
  GridDepWait();
  GridDepTrigger();

  // Phase 1: units (column, token); each unit's run of top_k rows in batches of kTmaChunks chunks.
  constexpr int kTmaChunks = kTmaWarpBytes / 16;
  uint4* buf = s_buf + warp * kTmaChunks;
  uint64_t* bar = &s_bar[warp];
  uint32_t parity = 0;
  const int K = a.inter;
  const int cpr = K / 8;  // chunks per row
  const int chunks = top_k * cpr;
  const T* h = static_cast<const T*>(a.h);
  Out* out = static_cast<Out*>(a.meta->output);
  int64_t u_begin, u_end;
  WarpUnits<kWarps>(static_cast<int64_t>(a.hidden) * n_tokens, u_begin, u_end);
  for (int64_t u = u_begin; u < u_end; ++u) {
    const int col = static_cast<int>(u / n_tokens);
    const int t = static_cast<int>(u - static_cast<int64_t>(col) * n_tokens);
    const int p0 = t * top_k;
    float acc = 0.0f;
    for (int q0 = 0; q0 < chunks; q0 += kTmaChunks) {
      const int q1 = min(q0 + kTmaChunks, chunks);
      // Row segments of the batch: row kk covers chunks [kk * cpr, (kk + 1) * cpr).
      const int kk_first = q0 / cpr, kk_last = (q1 - 1) / cpr;
      if (lane == 0) MbarExpectTx(bar, static_cast<uint32_t>(q1 - q0) * 16u);
      __syncwarp();
      for (int kk = kk_first + lane; kk <= kk_last; kk += 32) {
        const int lo = max(q0, kk * cpr), hi = min(q1, (kk + 1) * cpr);
        BulkCopy(buf + (lo - q0),
                 s_down[p0 + kk] + static_cast<int64_t>(col) * K + (lo - kk * cpr) * 8,
                 static_cast<uint32_t>(hi - lo) * 16u, bar);
      }
      MbarWait(bar, parity);
      parity ^= 1u;
#pragma unroll 4
      for (int q = q0 + lane; q < q1; q += 32) {
        const int kk = q / cpr, r = q - kk * cpr;
        const int p = p0 + kk;
        const uint4 hc = LoadCached(h + static_cast<int64_t>(s_hrow[p]) * K + r * 8);
        float d = 0.0f;
        Dot8<T>(buf[q - q0], hc, d);
        acc = fmaf(s_w[p], d, acc);
      }
      __syncwarp();  // every lane is done with the buffer before the next batch's copies
    }
    const float v = WarpSumF(acc);
    if (lane == 0) StoreCombined<T, Out>(a, t, col, v, out);
  }
#endif
}

// One instantiation per weight dtype (gate/up) and per (weight, activation) dtype pair (down).
#define MOE_DECODE_DOWN_TYPES_(X)                             \
  X(WType::kBF16, __nv_bfloat16, AType::kF32, float)          \
  X(WType::kBF16, __nv_bfloat16, AType::kF16, __half)         \
  X(WType::kBF16, __nv_bfloat16, AType::kBF16, __nv_bfloat16) \
  X(WType::kF16, __half, AType::kF32, float)                  \
  X(WType::kF16, __half, AType::kF16, __half)                 \
  X(WType::kF16, __half, AType::kBF16, __nv_bfloat16)
using DownFn = void (*)(DecodeExpertsArgs, int);
struct DownEntry {
  WType wtype;
  AType atype;
  DownFn fn[3];      // h read from global memory, kCW = kDownChunks[i] (the macro below)
  DownFn fn_h_smem;  // h staged in shared memory
  DownFn fn_tma;     // weights by the bulk copy engine (sm_90)
  DownFn fn_groups[2][std::size(kDownGroupsBatch)];  // by column groups: [packed][batch size]
};
#define MOE_DECODE_DOWN_ENTRY_(WT, W, AT, OUT)                     \
  {WT,                                                             \
   AT,                                                             \
   {&DecodeDownCombineKernel<W, OUT, false, kDownChunks[0]>,       \
    &DecodeDownCombineKernel<W, OUT, false, kDownChunks[1]>,       \
    &DecodeDownCombineKernel<W, OUT, false, kDownChunks[2]>},      \
   &DecodeDownCombineKernel<W, OUT, true>,                         \
   &DecodeDownTmaKernel<W, OUT>,                                   \
   {{&DecodeDownGroupsKernel<W, OUT, false, kDownGroupsBatch[0]>,  \
     &DecodeDownGroupsKernel<W, OUT, false, kDownGroupsBatch[1]>}, \
    {&DecodeDownGroupsKernel<W, OUT, true, kDownGroupsBatch[0]>,   \
     &DecodeDownGroupsKernel<W, OUT, true, kDownGroupsBatch[1]>}}},
static_assert(std::size(kDownChunks) == std::size(DownEntry{}.fn),
              "one down kernel per batch size of kDownChunks");
const DownEntry kDownKernels[] = {MOE_DECODE_DOWN_TYPES_(MOE_DECODE_DOWN_ENTRY_)};
#undef MOE_DECODE_DOWN_ENTRY_

dim3 PersistentGrid(int sm_count) { return dim3(static_cast<unsigned>(sm_count * kBlocksPerSm)); }

}  // namespace

#ifdef MOE_GEMM_TRACE
Status SetDecodeTraceBuffer(uint64_t* buf) {
  CUDA_RETURN_IF_ERROR(cudaMemcpyToSymbol(g_decode_trace, &buf, sizeof(buf)));
  MOE_RETURN_IF_ERROR(SetDecodeTraceBufferMeta(buf));
  return SetDecodeTraceBufferFront(buf);
}
#endif

bool CanDecodeExperts(int64_t capacity, int top_k) {
  return capacity >= 1 && capacity <= kDecodeExpertsMaxTokens &&
         capacity * top_k <= kDecodeExpertsMaxPairs;
}

Status DecodeExpertsArgs::Validate() const {
  if (meta == nullptr || x == nullptr || topk_ids == nullptr || topk_weights == nullptr ||
      gate_table == nullptr || up_table == nullptr || down_table == nullptr ||
      layer_dev == nullptr || h == nullptr) {
    return absl::InvalidArgumentError("DecodeExpertsArgs: null pointer");
  }
  if (hidden <= 0 || hidden % 8 != 0 || inter <= 0 || inter % 8 != 0 || ldx < hidden ||
      ldx % 8 != 0 || n_experts <= 0 || top_k <= 0 || top_k > n_experts || sm_count <= 0) {
    return absl::InvalidArgumentError(
        "DecodeExpertsArgs: need hidden, inter, ldx multiples of 8 and 0 < top_k <= n_experts");
  }
  if (ys != nullptr && (ys_splits < 1 || (!ys_f32 && ys_splits != 1))) {
    return absl::InvalidArgumentError("DecodeExpertsArgs: bad shared-expert splits");
  }
  if (!CanDecodeExperts(capacity, top_k)) {
    return absl::InvalidArgumentError("DecodeExpertsArgs: too many tokens or pairs");
  }
  if (packed && (!PackableShape(inter, hidden) || !PackableShape(hidden, inter))) {
    return absl::InvalidArgumentError(
        "DecodeExpertsArgs: packed weights need hidden and inter multiples of 128");
  }
  return absl::OkStatus();
}

using GateUpFn = void (*)(DecodeExpertsArgs, int);
GateUpFn GateUpKernel(WType wtype, bool tma) {
  if (wtype == WType::kBF16) {
    return tma ? &DecodeGateUpKernel<__nv_bfloat16, true>
               : &DecodeGateUpKernel<__nv_bfloat16, false>;
  }
  return tma ? &DecodeGateUpKernel<__half, true> : &DecodeGateUpKernel<__half, false>;
}

Status LaunchDecodeGateUp(const DecodeExpertsArgs& a, cudaStream_t stream) {
  return LaunchDecodeGateUpWith(a, DecodeGateUpOptions{}, stream);
}

Status LaunchDecodeGateUpWith(const DecodeExpertsArgs& a, const DecodeGateUpOptions& o,
                              cudaStream_t stream) {
  MOE_RETURN_IF_ERROR(a.Validate());
  if (o.prefetch_units < 0 || o.prefetch_units > 16) {
    return absl::InvalidArgumentError("LaunchDecodeGateUpWith: prefetch_units in [0, 16]");
  }
  if (a.packed && (o.tma || o.prefetch_units > 0)) {
    return absl::InvalidArgumentError(
        "LaunchDecodeGateUpWith: packed weights take neither bulk copies nor unit prefetches");
  }
  const size_t smem = o.tma ? static_cast<size_t>(kWarps) * kGateUpTmaWarpBytes : 0;
  CUDA_RETURN_IF_ERROR(LaunchMaybePdl(GateUpKernel(a.wtype, o.tma), PersistentGrid(a.sm_count),
                                      dim3(kThreads), smem, stream, a.pdl, a, o.prefetch_units));
  return absl::OkStatus();
}

Status LaunchDecodeDownCombine(const DecodeExpertsArgs& a, cudaStream_t stream) {
  return LaunchDecodeDownCombineWith(a, DecodeDownOptions{}, stream);
}

StatusOr<bool> InitDecodeTma() {
  MOE_ASSIGN_OR_RETURN(const bool sm90,
                       RunsSm90Image(reinterpret_cast<const void*>(kDownKernels[0].fn_tma)));
  if (!sm90) return false;
  for (const DownEntry& e : kDownKernels) {
    CUDA_RETURN_IF_ERROR(cudaFuncSetAttribute(e.fn_tma, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                              kWarps * kTmaWarpBytes));
    CUDA_RETURN_IF_ERROR(cudaFuncSetAttribute(
        e.fn_tma, cudaFuncAttributePreferredSharedMemoryCarveout, cudaSharedmemCarveoutMaxShared));
  }
  for (WType w : {WType::kBF16, WType::kF16}) {
    CUDA_RETURN_IF_ERROR(cudaFuncSetAttribute(GateUpKernel(w, true),
                                              cudaFuncAttributeMaxDynamicSharedMemorySize,
                                              kWarps * kGateUpTmaWarpBytes));
  }
  return true;
}

bool DecodeDownGroupsApply(const DecodeExpertsArgs& a) {
  return a.capacity == 1 && a.inter % kPackedCols == 0 &&
         static_cast<int64_t>(a.top_k) * a.inter * 2 <= kDownGroupsMaxHBytes;
}

Status InitDecodeDownGroups() {
  for (const DownEntry& e : kDownKernels) {
    for (const auto& by_batch : e.fn_groups) {
      for (DownFn fn : by_batch) {
        CUDA_RETURN_IF_ERROR(cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                  kDownGroupsMaxHBytes));
      }
    }
  }
  return absl::OkStatus();
}

int DecodeDownChunks(int top_k, int inter, int requested) {
  for (const int c : kDownChunks) {
    if (c == requested) return c;
  }
  // A unit's run is top_k * inter / 8 chunks, per_lane of them for each lane, in batches that are
  // each a round trip to DRAM. Short runs (at most kDownShortRunBatches batches of 10) take the
  // fewest batches, then the fewest registers; long ones take 10.
  // NOTES (H200, session 21, three rounds, 1 token, us for 8 / 10 / 12): DeepSeek-V2-Lite (33 a
  // lane: 5 / 4 / 3 batches) 42.6-42.8 / 42.1 / 41.9-42.0, Qwen3 (24: 3 / 3 / 2) 34.8-34.9 /
  // 34.9-35.0 / 34.6-34.7, Mixtral (112: 14 / 12 / 10) 193.6-194.6 / 191.1-191.5 / 193.6-194.6,
  // the embedded model (4: one batch) 21.8-22.0 / 22.2-22.3 / 22.5-22.8. So the batch count
  // matters where it is small; past that more loads in flight did not stream faster (as session
  // 16's 24 loads a lane).
  constexpr int kDownShortRunBatches = 4;
  const int per_lane = (top_k * (inter / 8) + 31) / 32;
  const auto batches = [per_lane](int c) { return (per_lane + c - 1) / c; };
  if (batches(10) > kDownShortRunBatches) return 10;
  int best = kDownChunks[0];
  for (const int c : kDownChunks) {
    if (batches(c) < batches(best)) best = c;
  }
  return best;
}

Status LaunchDecodeDownCombineWith(const DecodeExpertsArgs& a, const DecodeDownOptions& o,
                                   cudaStream_t stream) {
  MOE_RETURN_IF_ERROR(a.Validate());
  if (a.packed && (o.tma || o.routing_after_wait)) {
    return absl::InvalidArgumentError(
        "LaunchDecodeDownCombineWith: packed weights take neither bulk copies nor the fused "
        "decode kernel");
  }
  const DownEntry* entry = nullptr;
  for (const DownEntry& e : kDownKernels) {
    if (e.wtype == a.wtype && e.atype == a.atype) entry = &e;
  }
  if (entry == nullptr) return absl::InternalError("no decode down kernel for these dtypes");
  // h of every pair the launch may hold (2-byte elements).
  const int64_t h_bytes = a.capacity * a.top_k * a.inter * 2;
  if (o.groups && DecodeDownGroupsApply(a) && !o.tma && !o.routing_after_wait) {
    int bi = -1;
    for (int i = 0; i < static_cast<int>(std::size(kDownGroupsBatch)); ++i) {
      if (kDownGroupsBatch[i] == o.groups_batch) bi = i;
    }
    if (bi < 0) {
      return absl::InvalidArgumentError("LaunchDecodeDownCombineWith: groups_batch is 4 or 6");
    }
    CUDA_RETURN_IF_ERROR(LaunchMaybePdl(
        entry->fn_groups[a.packed ? 1 : 0][bi], PersistentGrid(a.sm_count), dim3(kThreads),
        static_cast<size_t>(h_bytes), stream, a.pdl, a, o.groups_preload));
    return absl::OkStatus();
  }
  const bool h_smem = !o.tma && o.h_smem && h_bytes <= kHSmemMaxBytes;
  const int chunks = DecodeDownChunks(a.top_k, a.inter, o.chunks);
  int ci = 0;
  while (kDownChunks[ci] != chunks) ++ci;
  const DownFn fn = o.tma ? entry->fn_tma : h_smem ? entry->fn_h_smem : entry->fn[ci];
  const size_t smem = o.tma    ? static_cast<size_t>(kWarps) * kTmaWarpBytes
                      : h_smem ? static_cast<size_t>(h_bytes)
                               : 0;
  CUDA_RETURN_IF_ERROR(LaunchMaybePdl(fn, PersistentGrid(a.sm_count), dim3(kThreads), smem, stream,
                                      a.pdl, a, o.routing_after_wait ? 1 : 0));
  return absl::OkStatus();
}

}  // namespace moe::cuda
