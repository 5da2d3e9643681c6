// What a combine inside the down GEMM's epilogue could cost on the card, against the engine's
// separate combine (kernels/combine.cu), before anyone writes it. The routed down GEMM writes each
// (token, k) pair's output row in the permuted (by expert) order into y, and the combine reads a
// token's top-k rows back and sums them; an epilogue that adds weight x row into an f32 row of its
// token instead needs no y and no combine read, but a reduction in L2 per element and a pass that
// converts (and re-zeroes) the f32 sums. Kernels, on a random top-k routing of `tokens` tokens:
//
//   store     y rows (bf16, the permuted order) by 16-byte stores: the epilogue's writes today;
//   combine   per token, its top-k rows of y (all loads in flight) weighted and summed in f32,
//             bf16 out: the engine's combine;
//   red.v4    per pair row, red.global.add.v4.f32 of weight x row into its token's f32 row;
//   bulk      per pair row, 256-byte pieces staged in shared memory and added by
//             cp.reduce.async.bulk .add.f32 (one lane issues, two buffers a warp);
//   finish    f32 sums -> bf16 out, sums zeroed for the next forward.
//
// Prints the median of 9 timed runs of each (us) and its bytes over time (GB/s: store writes,
// combine reads + writes, red / bulk the f32 bytes added, finish reads + writes). sm_90 only for
// red.v4 and bulk. Usage: combine_probe [--tokens=N] [--top-k=K] [--hidden=H] [--experts=E]
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "probe_check.h"

namespace {

constexpr int kThreads = 256;

// A value of row r, column c (what an epilogue would hold in registers).
__device__ __forceinline__ float ValueAt(int64_t r, int c) {
  return static_cast<float>(((r * 131 + c * 7) & 255) - 128) * (1.0f / 256.0f);
}

// Thread i writes 8 columns (16 bytes) of y row i / (hidden / 8).
__global__ void StoreKernel(__nv_bfloat16* y, int64_t rows, int hidden) {
  const int64_t chunks = rows * (hidden / 8);
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < chunks;
       i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t r = i / (hidden / 8);
    const int c = static_cast<int>(i % (hidden / 8)) * 8;
    alignas(16) __nv_bfloat16 v[8];
    for (int j = 0; j < 8; ++j) v[j] = __float2bfloat16(ValueAt(r, c + j));
    *reinterpret_cast<uint4*>(y + r * hidden + c) = *reinterpret_cast<const uint4*>(v);
  }
}

// Thread i sums 8 columns of token i / (hidden / 8) over its top_k rows (loads first).
template <int K>
__global__ void CombineKernel(const __nv_bfloat16* y, const int32_t* pair_row, const float* weight,
                              __nv_bfloat16* out, int64_t tokens, int hidden) {
  const int64_t chunks = tokens * (hidden / 8);
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < chunks;
       i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t t = i / (hidden / 8);
    const int c = static_cast<int>(i % (hidden / 8)) * 8;
    uint4 raw[K];
    float w[K];
#pragma unroll
    for (int j = 0; j < K; ++j) {
      raw[j] = *reinterpret_cast<const uint4*>(y + int64_t{pair_row[t * K + j]} * hidden + c);
      w[j] = weight[t * K + j];
    }
    float s[8] = {};
#pragma unroll
    for (int j = 0; j < K; ++j) {
      const __nv_bfloat16* v = reinterpret_cast<const __nv_bfloat16*>(&raw[j]);
#pragma unroll
      for (int e = 0; e < 8; ++e) s[e] += w[j] * __bfloat162float(v[e]);
    }
    alignas(16) __nv_bfloat16 o[8];
    for (int e = 0; e < 8; ++e) o[e] = __float2bfloat16(s[e]);
    *reinterpret_cast<uint4*>(out + t * hidden + c) = *reinterpret_cast<const uint4*>(o);
  }
}

// Thread i adds 4 columns of pair row i / (hidden / 4), weighted, into its token's f32 row.
__global__ void RedV4Kernel(float* acc, const int32_t* row_token, const float* row_weight,
                            int64_t rows, int hidden) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  const int64_t chunks = rows * (hidden / 4);
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < chunks;
       i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t r = i / (hidden / 4);
    const int c = static_cast<int>(i % (hidden / 4)) * 4;
    const float w = row_weight[r];
    float* dst = acc + int64_t{row_token[r]} * hidden + c;
    asm volatile("red.global.add.v4.f32 [%0], {%1, %2, %3, %4};\n" ::"l"(dst),
                 "f"(w * ValueAt(r, c)), "f"(w * ValueAt(r, c + 1)), "f"(w * ValueAt(r, c + 2)),
                 "f"(w * ValueAt(r, c + 3))
                 : "memory");
  }
#endif
}

// Warp w takes pieces of 64 columns (256 bytes of f32) of pair rows; each piece is written into
// one of the warp's two shared-memory buffers and added to its token's row by one bulk reduction.
__global__ void BulkReduceKernel(float* acc, const int32_t* row_token, const float* row_weight,
                                 int64_t rows, int hidden) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  __shared__ __align__(128) float buf[kThreads / 32][2][64];
  const int lane = threadIdx.x & 31, warp = threadIdx.x / 32;
  const int64_t pieces = rows * (hidden / 64);
  const int64_t warps = int64_t{gridDim.x} * (blockDim.x / 32);
  int n = 0;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x / 32} + warp; i < pieces; i += warps, ++n) {
    const int64_t r = i / (hidden / 64);
    const int c = static_cast<int>(i % (hidden / 64)) * 64;
    float* b = buf[warp][n & 1];
    if (lane == 0) asm volatile("cp.async.bulk.wait_group.read 1;\n" ::: "memory");
    __syncwarp();
    const float w = row_weight[r];
    b[lane] = w * ValueAt(r, c + lane);
    b[lane + 32] = w * ValueAt(r, c + lane + 32);
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
    __syncwarp();
    if (lane == 0) {
      float* dst = acc + int64_t{row_token[r]} * hidden + c;
      const uint32_t src = static_cast<uint32_t>(__cvta_generic_to_shared(b));
      asm volatile(
          "cp.reduce.async.bulk.global.shared::cta.bulk_group.add.f32 [%0], [%1], 256;\n"
          "cp.async.bulk.commit_group;\n" ::"l"(dst),
          "r"(src)
          : "memory");
    }
  }
  if (lane == 0) asm volatile("cp.async.bulk.wait_group 0;\n" ::: "memory");
#endif
}

// Thread i converts 8 f32 sums to bf16 and zeroes them.
__global__ void FinishKernel(float* acc, __nv_bfloat16* out, int64_t tokens, int hidden) {
  const int64_t chunks = tokens * (hidden / 8);
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < chunks;
       i += int64_t{gridDim.x} * blockDim.x) {
    float4* a = reinterpret_cast<float4*>(acc + i * 8);
    const float4 lo = a[0], hi = a[1];
    alignas(16) __nv_bfloat16 o[8] = {__float2bfloat16(lo.x), __float2bfloat16(lo.y),
                                      __float2bfloat16(lo.z), __float2bfloat16(lo.w),
                                      __float2bfloat16(hi.x), __float2bfloat16(hi.y),
                                      __float2bfloat16(hi.z), __float2bfloat16(hi.w)};
    *reinterpret_cast<uint4*>(out + i * 8) = *reinterpret_cast<const uint4*>(o);
    a[0] = make_float4(0, 0, 0, 0);
    a[1] = make_float4(0, 0, 0, 0);
  }
}

template <typename Launch>
double MedianUs(Launch launch) {
  cudaEvent_t a, b;
  PROBE_CHECK(cudaEventCreate(&a));
  PROBE_CHECK(cudaEventCreate(&b));
  launch();  // warm-up
  std::vector<double> us;
  for (int i = 0; i < 9; ++i) {
    PROBE_CHECK(cudaEventRecord(a));
    launch();
    PROBE_CHECK(cudaEventRecord(b));
    PROBE_CHECK(cudaEventSynchronize(b));
    float ms = 0;
    PROBE_CHECK(cudaEventElapsedTime(&ms, a, b));
    us.push_back(ms * 1e3);
  }
  PROBE_CHECK(cudaGetLastError());
  std::sort(us.begin(), us.end());
  PROBE_CHECK(cudaEventDestroy(a));
  PROBE_CHECK(cudaEventDestroy(b));
  return us[us.size() / 2];
}

int IntFlag(int argc, char** argv, const char* name, int def) {
  const size_t len = std::strlen(name);
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], name, len) == 0) return std::atoi(argv[i] + len);
  }
  return def;
}

}  // namespace

int main(int argc, char** argv) {
  const int tokens = IntFlag(argc, argv, "--tokens=", 4096);
  const int top_k = IntFlag(argc, argv, "--top-k=", 8);
  const int hidden = IntFlag(argc, argv, "--hidden=", 2048);
  const int experts = IntFlag(argc, argv, "--experts=", 128);
  if (top_k != 2 && top_k != 6 && top_k != 8) {
    std::fprintf(stderr, "--top-k: 2, 6 or 8\n");
    return 2;
  }
  if (hidden % 64 != 0 || experts < top_k) {
    std::fprintf(stderr, "--hidden: a multiple of 64; --experts >= --top-k\n");
    return 2;
  }
  // A random top-k routing; pair rows ordered by expert (stable), as the engine's permutation.
  const int64_t pairs = int64_t{tokens} * top_k;
  std::mt19937 rng(1);
  std::vector<int> pick(pairs);
  std::vector<int> all(experts);
  std::iota(all.begin(), all.end(), 0);
  for (int t = 0; t < tokens; ++t) {
    std::shuffle(all.begin(), all.end(), rng);
    for (int j = 0; j < top_k; ++j) pick[int64_t{t} * top_k + j] = all[j];
  }
  std::vector<int64_t> order(pairs);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return pick[a] < pick[b]; });
  std::vector<int32_t> pair_row(pairs), row_token(pairs);
  std::vector<float> weight(pairs), row_weight(pairs);
  std::uniform_real_distribution<float> u(0.05f, 0.3f);
  for (int64_t i = 0; i < pairs; ++i) weight[i] = u(rng);
  for (int64_t r = 0; r < pairs; ++r) {
    pair_row[order[r]] = static_cast<int32_t>(r);
    row_token[r] = static_cast<int32_t>(order[r] / top_k);
    row_weight[r] = weight[order[r]];
  }
  auto upload = [](const auto& v) {
    void* d = nullptr;
    const size_t bytes = v.size() * sizeof(v[0]);
    PROBE_CHECK(cudaMalloc(&d, bytes));
    PROBE_CHECK(cudaMemcpy(d, v.data(), bytes, cudaMemcpyHostToDevice));
    return d;
  };
  auto* d_pair_row = static_cast<int32_t*>(upload(pair_row));
  auto* d_row_token = static_cast<int32_t*>(upload(row_token));
  auto* d_weight = static_cast<float*>(upload(weight));
  auto* d_row_weight = static_cast<float*>(upload(row_weight));
  __nv_bfloat16 *y = nullptr, *out = nullptr;
  float* acc = nullptr;
  PROBE_CHECK(cudaMalloc(&y, pairs * hidden * 2));
  PROBE_CHECK(cudaMalloc(&out, int64_t{tokens} * hidden * 2));
  PROBE_CHECK(cudaMalloc(&acc, int64_t{tokens} * hidden * 4));
  PROBE_CHECK(cudaMemset(acc, 0, int64_t{tokens} * hidden * 4));
  int device = 0, sms = 0, major = 0;
  PROBE_CHECK(cudaGetDevice(&device));
  PROBE_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  PROBE_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  cudaDeviceProp prop{};
  PROBE_CHECK(cudaGetDeviceProperties(&prop, device));
  const unsigned grid = static_cast<unsigned>(sms) * 8;
  const double y_bytes = static_cast<double>(pairs) * hidden * 2;
  const double out_bytes = static_cast<double>(tokens) * hidden * 2;
  const double acc_bytes = static_cast<double>(tokens) * hidden * 4;
  std::printf(
      "%s, %d SMs; tokens %d, top-k %d, hidden %d, experts %d (%.1f MB of y, %.1f MB f32)\n",
      prop.name, sms, tokens, top_k, hidden, experts, y_bytes / 1e6, acc_bytes / 1e6);
  auto row = [](const char* name, double us, double bytes) {
    std::printf("%-8s %9.1f us %8.0f GB/s\n", name, us, bytes / us / 1e3);
  };
  row("store", MedianUs([&] { StoreKernel<<<grid, kThreads>>>(y, pairs, hidden); }), y_bytes);
  const double comb = MedianUs([&] {
    if (top_k == 8) {
      CombineKernel<8><<<grid, kThreads>>>(y, d_pair_row, d_weight, out, tokens, hidden);
    } else if (top_k == 6) {
      CombineKernel<6><<<grid, kThreads>>>(y, d_pair_row, d_weight, out, tokens, hidden);
    } else {
      CombineKernel<2><<<grid, kThreads>>>(y, d_pair_row, d_weight, out, tokens, hidden);
    }
  });
  row("combine", comb, y_bytes + out_bytes);
  if (major >= 9) {
    // The sums grow with every run; only the time matters here (finish zeroes them after).
    row("red.v4", MedianUs([&] {
          RedV4Kernel<<<grid, kThreads>>>(acc, d_row_token, d_row_weight, pairs, hidden);
        }),
        2 * y_bytes);
    row("bulk", MedianUs([&] {
          BulkReduceKernel<<<grid, kThreads>>>(acc, d_row_token, d_row_weight, pairs, hidden);
        }),
        2 * y_bytes);
  }
  row("finish", MedianUs([&] { FinishKernel<<<grid, kThreads>>>(acc, out, tokens, hidden); }),
      2 * acc_bytes + out_bytes);
  PROBE_CHECK(cudaDeviceSynchronize());
  return 0;
}
