// Combine and device-side random fill of the fused MoE layer.
//
// 1. Combine: weighted sum of each token's expert outputs (k ascending, splits ascending) plus the
//    gated shared expert, written in the activation dtype. No atomics. Waits for the previous
//    kernel first (PDL, kernels/pdl.cuh). Where it applies, a thread takes 1, 2 or 4 chunks with
//    all their loads in flight (CombineUnrolledKernel); the same sums otherwise.
// 2. FillRandom: counter-based uniform weights generated on the device (benchmarks).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>

#include "kernels/cuda_status.h"
#include "kernels/moe_kernels.h"
#include "kernels/pdl.cuh"
#include "kernels/routing_device.cuh"

namespace moe::cuda {
namespace {

// ---- 1. Combine ----
constexpr int kCombineAllK = 8;
constexpr int kCombineThreads = 256;
// Resident blocks of the combine's grid per SM (CombineArgs::sm_count), each walking tiles.
// NOTES (H200, session 22, two calls, two rounds each): against a block per tile (16384 blocks at
// Qwen3 16384 tokens), ncu 172 -> 151 us at Qwen3 16384 tokens (8 per SM); the layer at 4 per SM
// Qwen3 4096 / 16384 -1.8 / -1.2% (call 1) and -0.2 / -0.9% (call 2), DeepSeek-V2-Lite 4096 -0.5 /
// -1.0%, Mixtral within +-0.2%. 2, 6 and 8 per SM measured about the same.
constexpr int kCombineBlocksPerSm = 4;

// The rows and weights of U chunks (8 columns each) of a thread: chunk u is number
// c0 + u * kCombineThreads (c0 = base + threadIdx.x in the unrolled kernel: whole coalesced rows
// of a block per u).
template <int U>
struct CombineIndices {
  static constexpr int kK = kCombineAllK / U;
  int64_t r[U][kK];
  float w[U][kK];
  int64_t t[U];
  int h[U];
  bool live[U];
};
template <int U>
__device__ __forceinline__ void LoadCombineIndices(const CombineArgs& a, int64_t c0, int64_t total,
                                                   int64_t chunks_per_row, CombineIndices<U>& x) {
#pragma unroll
  for (int u = 0; u < U; ++u) {
    const int64_t c = c0 + u * kCombineThreads;
    x.live[u] = c < total;
    x.t[u] = x.live[u] ? c / chunks_per_row : 0;
    x.h[u] = static_cast<int>(c % chunks_per_row) * 8;
#pragma unroll
    for (int j = 0; j < CombineIndices<U>::kK; ++j) {
      const bool ok = x.live[u] && j < a.top_k;
      x.r[u][j] = ok ? a.pair_row[x.t[u] * a.top_k + j] : 0;
      x.w[u][j] = ok ? a.topk_weights[x.t[u] * a.top_k + j] : 0.0f;
    }
  }
}

// The bf16/f16 outputs of up to kCombineAllK / U experts of each of the U chunks of `x`, every one
// loaded before any is summed (U x top_k loads in flight).
template <typename W, int U>
__device__ __forceinline__ void LoadRoutedOutputs(const CombineArgs& a, const CombineIndices<U>& x,
                                                  uint4 (&raw)[U][CombineIndices<U>::kK]) {
#pragma unroll
  for (int u = 0; u < U; ++u) {
#pragma unroll
    for (int j = 0; j < CombineIndices<U>::kK; ++j) {
      if (j < a.top_k && x.live[u]) {
        raw[u][j] = __ldcs(reinterpret_cast<const uint4*>(static_cast<const W*>(a.y) +
                                                          x.r[u][j] * a.hidden + x.h[u]));
      }
    }
  }
}
// acc += w_j * output_j over chunk u's experts, j ascending (CombineKernel's loop order).
template <typename W, int U>
__device__ __forceinline__ void AddRoutedOutputs(const CombineArgs& a, const CombineIndices<U>& x,
                                                 const uint4 (&raw)[U][CombineIndices<U>::kK],
                                                 int u, float (&acc)[8]) {
#pragma unroll
  for (int j = 0; j < CombineIndices<U>::kK; ++j) {
    if (j < a.top_k) {
      float v[8];
      Unpack8(raw[u][j], static_cast<const W*>(nullptr), v);
#pragma unroll
      for (int i = 0; i < 8; ++i) acc[i] += x.w[u][j] * v[i];
    }
  }
}

// The U chunks of `x`: their experts' outputs (LoadRoutedOutputs), plus the shared expert's (one
// bf16/f16 split) when there is one; the sum order is k ascending, then the shared expert, the
// same arithmetic as CombineKernel's.
// NOTES (H200, session 10, ncu): one chunk a thread moved Mixtral's 100 MB (top-2) at 4096 tokens
// in 54 us (1.9 TB/s), Qwen3's 150 MB (top-8) in 43.
template <typename W, typename Out, int U>
__device__ __forceinline__ void CombineChunksAllK(const CombineArgs& a, const CombineIndices<U>& x,
                                                  Out* out) {
  const int hidden = a.hidden;
  uint4 raw[U][CombineIndices<U>::kK];
  LoadRoutedOutputs<W, U>(a, x, raw);
  uint4 shared_raw[U];
  float gate[U];
#pragma unroll
  for (int u = 0; u < U; ++u) {
    if (a.ys != nullptr && x.live[u]) {
      shared_raw[u] =
          *reinterpret_cast<const uint4*>(static_cast<const W*>(a.ys) + x.t[u] * hidden + x.h[u]);
      gate[u] = a.shared_gate ? a.shared_gate[x.t[u]] : 1.0f;
    }
  }
#pragma unroll
  for (int u = 0; u < U; ++u) {
    if (!x.live[u]) continue;
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    AddRoutedOutputs<W, U>(a, x, raw, u, acc);
    if (a.ys != nullptr) {
      float v[8];
      Unpack8(shared_raw[u], static_cast<const W*>(nullptr), v);
#pragma unroll
      for (int i = 0; i < 8; ++i) acc[i] += gate[u] * v[i];
    }
    Store8(out + x.t[u] * hidden + x.h[u], acc);
  }
}

// Combine of U chunks a thread for top_k <= kCombineAllK / U, bf16/f16 expert outputs and at
// most one bf16/f16 split of the shared expert (CombineChunksPerThread). With
// CombineArgs::early_indices the first tile's rows and weights load before the PDL wait: the
// scan and the route wrote them two or more launches back (kernels/pdl.cuh), so only the
// expert outputs wait for the kernel before.
template <typename W, typename Out, int U>
__global__ void __launch_bounds__(kCombineThreads) CombineUnrolledKernel(const CombineArgs a) {
  const int64_t chunks_per_row = a.hidden / 8;
  const int64_t total = static_cast<int64_t>(a.meta->n_tokens) * chunks_per_row;
  constexpr int64_t kTile = static_cast<int64_t>(U) * kCombineThreads;
  const int64_t first = blockIdx.x * kTile;
  CombineIndices<U> x;
  if (a.early_indices) LoadCombineIndices(a, first + threadIdx.x, total, chunks_per_row, x);
  GridDepWait();
  GridDepTrigger();
  Out* out = static_cast<Out*>(a.meta->output);
  for (int64_t base = first; base < total; base += gridDim.x * kTile) {
    if (base != first || !a.early_indices) {
      LoadCombineIndices(a, base + threadIdx.x, total, chunks_per_row, x);
    }
    CombineChunksAllK<W, Out, U>(a, x, out);
  }
}

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
    const bool all_k = !a.y_f32 && a.top_k <= kCombineAllK;
    if (all_k) {
      // Up to kCombineAllK experts: every row index and weight, then every expert output, are
      // loaded before anything is summed (two dependent memory round trips in all), as in the
      // unrolled kernel with one chunk a thread.
      // NOTES: the chunked loop (4 experts a round, indices inside it: four dependent round trips
      // at top-8) moved 1.8 TB/s at Qwen3 4096 tokens (ncu: 83 us for 150 MB; H200).
      CombineIndices<1> x;
      LoadCombineIndices(a, c, total, chunks_per_row, x);
      uint4 raw[1][CombineIndices<1>::kK];
      LoadRoutedOutputs<W, 1>(a, x, raw);
      AddRoutedOutputs<W, 1>(a, x, raw, 0, acc);
    }
    // Chunks of 4 experts: their rows, weights and outputs are loaded before any is summed, so the
    // dependent loads overlap (decode latency); the sum order stays k ascending.
    constexpr int kChunk = 4;
    for (int k0 = all_k ? a.top_k : 0; k0 < a.top_k; k0 += kChunk) {
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

// ---- 2. FillRandom ----
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

Status CombineArgs::Validate() const {
  if (meta == nullptr || pair_row == nullptr || topk_weights == nullptr || y == nullptr ||
      hidden <= 0 || hidden % 8 != 0 || top_k <= 0 || y_splits < 1 || ys_splits < 1) {
    return absl::InvalidArgumentError("CombineArgs: null pointer or bad sizes");
  }
  return absl::OkStatus();
}

int CombineChunksPerThread(const CombineArgs& a) {
  if (a.y_f32 || a.top_k > kCombineAllK) return 0;
  if (a.ys != nullptr && (a.ys_f32 || a.ys_splits != 1)) return 0;
  return a.top_k <= kCombineAllK / 4 ? 4 : a.top_k <= kCombineAllK / 2 ? 2 : 1;
}

Status LaunchCombine(const CombineArgs& a, cudaStream_t stream) {
  MOE_RETURN_IF_ERROR(a.Validate());
  const int threads = kCombineThreads;
  const int u = a.unrolled ? CombineChunksPerThread(a) : 0;
  int grid = GridFor(a.capacity * a.hidden / 8, threads * std::max(u, 1));
  if (a.sm_count > 0) grid = std::min(grid, a.sm_count * kCombineBlocksPerSm);
  cudaError_t err = cudaSuccess;
#define MOE_COMBINE_(W, OUT)                                                                      \
  err = u == 4   ? LaunchMaybePdl(CombineUnrolledKernel<W, OUT, 4>, dim3(grid), dim3(threads), 0, \
                                  stream, a.pdl, a)                                               \
        : u == 2 ? LaunchMaybePdl(CombineUnrolledKernel<W, OUT, 2>, dim3(grid), dim3(threads), 0, \
                                  stream, a.pdl, a)                                               \
        : u == 1 ? LaunchMaybePdl(CombineUnrolledKernel<W, OUT, 1>, dim3(grid), dim3(threads), 0, \
                                  stream, a.pdl, a)                                               \
                 : LaunchMaybePdl(CombineKernel<W, OUT>, dim3(grid), dim3(threads), 0, stream,    \
                                  a.pdl, a)
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
