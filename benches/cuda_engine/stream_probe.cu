// How fast one pass over a large weight buffer streams from HBM into the SMs, by the three ways the
// engine's kernels load weights, so that a kernel design can start from the card's numbers:
//
//   ldg    16-byte loads (ld.global.nc.L1::no_allocate) into registers, `in_flight` per lane
//          issued before the first use (the decode experts kernels, kernels/decode_experts.cu);
//   bulk   1-D bulk copies (cp.async.bulk, `copy` bytes each) into a ring of shared-memory stages
//          by one producer thread per block, consumer warps releasing stages (the bulk-copy decode
//          variants and session 11's one-launch ring, benches/RESULTS.md);
//   tma2d  2-D tensor copies of 128 x 64-element boxes (16 KiB, 128-byte swizzle; the cluster
//          GEMM's weight loads, kernels/grouped_gemm_sm90_cluster.cu) or 256 x 64 ones into such a
//          ring, one box a stage or 2-4 side by side along the columns (longer reads per row);
//   tma3d / tma4d  tma2d's 128 x 64 boxes over a weight layout whose boxes are contiguous
//          16 KiB blocks, walked in the same order (a block's row block across K): K-blocked
//          (3-D: 64-column blocks of all rows, one after another) or tile-major (4-D: row blocks
//          of 64-column tiles, kernels/weight_layout.h's order).
//   bulk+dot  bulk, the consumer warps dotting every 16-byte chunk with an activation piece in
//          registers (8 bf16 products, f32 accumulation), as a decode GEMV does.
//   bulk+mma  bulk, each stage taken as 8 weight rows of K = stage_bytes / 16 and multiplied by
//          its consumer warp with 16 activation rows from a shared-memory slot by mma.sync
//          m16n8k16, as the weight-streaming GEMM of benches/RESULTS.md session 12 does (per 32
//          columns of K: a 16-byte load of the stage and of the slot per lane, two mmas).
//
// Each configuration reads a 2 GiB bf16 buffer once per pass (every block a contiguous share) and
// prints GB/s of reads, the median of 5 passes after a warm-up; the device-to-device copy of the
// same buffer (reads + writes, the bench's HBM ceiling) is printed first. sm_90 only for bulk and
// tma2d (skipped elsewhere). Usage: stream_probe [--json=FILE]
#include <cuda.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "kernels/decode_common.cuh"
#include "kernels/tensor_map.h"
#include "probe_check.h"
#include "probe_reads.cuh"

namespace {

using moe::cuda::SmemAddr32;

constexpr int64_t kBufferBytes = int64_t{2} << 30;
constexpr int kMaxStages = 32;
[[maybe_unused]] constexpr int kMaxConsumers = 16;  // bulk+mma warps a block, at most

// Every warp streams a contiguous share, IN 16-byte loads per lane in flight per batch.
template <int IN>
__global__ void LdgKernel(const uint4* buf, int64_t chunks, uint32_t* sink) {
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x / 32);
  const int64_t w = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x & 31;
  const int64_t begin = w * chunks / warps, end = (w + 1) * chunks / warps;
  const uint32_t acc = ReadChunks<IN>(buf, begin, end, lane);
  if (acc == 0x12345678u) sink[0] = acc;  // keeps the loads
}

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
using moe::cuda::BulkCopy;
using moe::cuda::MbarArrive;
using moe::cuda::MbarExpectTx;
using moe::cuda::MbarInit;
using moe::cuda::NamedBarrierSync;
// Spins on decode_common.cuh's MbarTryWait until phase `parity` of `bar` has completed. NOTES:
// that header's MbarWait also reads clock64 (its ~2 s trap); with it the rows of small copies or
// stages read 7-12% lower (H200, session 11 call 18), and 3-9% lower with a clock read every 1024
// polls only (session 12 call 13; benches/RESULTS.md), so the probe polls bare.
__device__ __forceinline__ void BarWait(uint64_t* bar, uint32_t parity) {
  while (!moe::cuda::MbarTryWait(bar, parity)) {
  }
}
__device__ __forceinline__ void Tma3d(void* dst, const void* tmap, int c0, int c1, int c2,
                                      uint64_t* bar) {
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, "
      "%3, %4}], [%5];\n" ::"r"(SmemAddr32(dst)),
      "l"(reinterpret_cast<uint64_t>(tmap)), "r"(c0), "r"(c1), "r"(c2), "r"(SmemAddr32(bar))
      : "memory");
}
__device__ __forceinline__ void Tma4d(void* dst, const void* tmap, int c0, int c1, int c2, int c3,
                                      uint64_t* bar) {
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, "
      "%3, %4, %5}], [%6];\n" ::"r"(SmemAddr32(dst)),
      "l"(reinterpret_cast<uint64_t>(tmap)), "r"(c0), "r"(c1), "r"(c2), "r"(c3),
      "r"(SmemAddr32(bar))
      : "memory");
}
__device__ __forceinline__ void Tma2d(void* dst, const void* tmap, int col, int row,
                                      uint64_t* bar) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, "
      "%3}], [%4];\n" ::"r"(SmemAddr32(dst)),
      "l"(reinterpret_cast<uint64_t>(tmap)), "r"(col), "r"(row), "r"(SmemAddr32(bar))
      : "memory");
}
#endif

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
// The bulk+mma consumers: each stage is 8 weight rows of K = stage_bytes / 16, multiplied with 16
// activation rows from the slot after the stages by mma.sync m16n8k16 (per 32 columns of K, a
// 16-byte load of the stage and of the slot per lane, two mmas), as the weight-streaming GEMM of
// benches/RESULTS.md session 12 does. `mode` adds that GEMM's other work, bit by bit: 1, only the
// lanes of activation rows 0-1 load theirs (a 2-row tile: divergent loads); 2, warp pairs per
// stage (each half the steps, a named barrier, the second's sums added by the first through
// shared memory); 4, the results stored to global memory (`out`).
__device__ void MmaConsumers(uint8_t* ring, int stages, int stage_bytes, int n, uint64_t* full,
                             uint64_t* empty, int mode, float* out, uint32_t* sink) {
  __shared__ float4 partial[2][kMaxConsumers][32];
  const int consumers = static_cast<int>(blockDim.x / 32) - 1;
  const int warp = threadIdx.x / 32, lane = threadIdx.x & 31;
  const int split = (mode & 2) ? 2 : 1;
  const int groups = consumers / split, grp = warp / split, part = warp % split;
  const int g = lane >> 2, t = lane & 3;
  const int k_len = stage_bytes / 16;  // 8 rows of 2-byte elements
  const __nv_bfloat16* a =
      reinterpret_cast<const __nv_bfloat16*>(ring + static_cast<int64_t>(stages) * stage_bytes) +
      g * k_len;
  const bool a_row = !(mode & 1) || g < 2;
  uint32_t acc = 0, parity = 0;
  for (int i = grp; grp < groups && i < n; i += groups, parity ^= 1) {
    const int s = i % stages;
    BarWait(&full[s], static_cast<uint32_t>(i / stages) & 1u);
    const __nv_bfloat16* b =
        reinterpret_cast<const __nv_bfloat16*>(ring + static_cast<int64_t>(s) * stage_bytes) +
        g * k_len;
    float c[2][2][4] = {};
    auto step = [&](int k, float(&d)[2][4]) {
      const uint4 bv = *reinterpret_cast<const uint4*>(b + k);
      const uint4 av = a_row ? *reinterpret_cast<const uint4*>(a + k) : make_uint4(0, 0, 0, 0);
      const uint32_t a0[4] = {av.x, 0u, av.y, 0u};
      const uint32_t a1[4] = {av.z, 0u, av.w, 0u};
      moe::cuda::MmaOp<__nv_bfloat16>::Run(d[0], a0, bv.x, bv.y);
      moe::cuda::MmaOp<__nv_bfloat16>::Run(d[1], a1, bv.z, bv.w);
    };
    const int stride = 32 * split;
    for (int k = t * 8 + 32 * part; k < k_len; k += 2 * stride) {
      step(k, c[0]);
      if (k + stride < k_len) step(k + stride, c[1]);
    }
    float v[4];
#pragma unroll
    for (int e = 0; e < 4; ++e) v[e] = (c[0][0][e] + c[0][1][e]) + (c[1][0][e] + c[1][1][e]);
    if (split > 1) {
      if (part > 0) partial[parity][warp][lane] = make_float4(v[0], v[1], v[2], v[3]);
      NamedBarrierSync(1 + grp, 64);
      if (part > 0) continue;
      const float4 o = partial[parity][warp + 1][lane];
      v[0] += o.x;
      v[1] += o.y;
      v[2] += o.z;
      v[3] += o.w;
    }
    if (mode & 4) {
      if (t < 2) {
        float* o = out + ((static_cast<int64_t>(blockIdx.x) * 256 + (i & 255)) * 32 + lane) * 2;
        *reinterpret_cast<float2*>(o) = make_float2(v[0], v[1]);
      }
    } else {
      acc ^= __float_as_uint(v[0] + v[1] + v[2] + v[3]);
    }
    __syncwarp();
    if (lane == 0) MbarArrive(&empty[s]);
  }
  if (acc == 0x12345678u) sink[0] = acc;
}
#endif

// A ring of `stages` stages of `stage_bytes` per block: thread 0 of the last warp fills stage
// i % stages for the block's i-th piece (bulk: stage_bytes / copy copies; tma2d: one 128 x 64 box
// of the [rows, 4096] view at rows 128 j, columns 64 k); consumer warp (i % stages) % consumers
// reads one word per lane and releases it (MMA: MmaConsumers, whose activation slot is one more
// stage_bytes after the stages). `stages` is a multiple of the consumer warps (of the warp pairs,
// bulk+mma mode 2), so each stage has one consumer and its waits never run a phase ahead.
template <bool TMA, bool DOT, bool MMA = false>
__global__ void RingKernel(const uint8_t* buf, int64_t bytes, int copy, int stage_bytes, int stages,
                           const void* tmap, uint32_t* sink, int mma_mode, float* out,
                           int layout = 0) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  extern __shared__ uint8_t raw[];
  // 1024-byte aligned (the 128-byte swizzle of the boxes repeats every 1024 bytes).
  uint8_t* ring = raw + ((1024u - (SmemAddr32(raw) & 1023u)) & 1023u);
  __shared__ uint64_t full[kMaxStages], empty[kMaxStages];
  const int consumers = static_cast<int>(blockDim.x / 32) - 1;
  const int warp = threadIdx.x / 32, lane = threadIdx.x & 31;
  if (threadIdx.x < stages) {
    MbarInit(&full[threadIdx.x]);
    MbarInit(&empty[threadIdx.x]);
  }
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  __syncthreads();
  const int64_t pieces = bytes / stage_bytes;
  const int64_t begin = blockIdx.x * pieces / gridDim.x;
  const int64_t end = (blockIdx.x + 1) * pieces / gridDim.x;
  const int n = static_cast<int>(end - begin);
  if (warp == consumers) {
    if (lane == 0) {
      for (int i = 0; i < n; ++i) {
        const int s = i % stages;
        if (i >= stages) BarWait(&empty[s], static_cast<uint32_t>(i / stages - 1) & 1u);
        MbarExpectTx(&full[s], static_cast<uint32_t>(stage_bytes));
        uint8_t* dst = ring + static_cast<int64_t>(s) * stage_bytes;
        const int64_t piece = begin + i;
        if constexpr (TMA) {
          // Boxes of `copy` bytes (copy / 128 rows x 64 columns), stage_bytes / copy of them side
          // by side along the columns: piece p is row block p / groups, column group p % groups
          // of the [rows, 4096] view (64 column blocks in groups of nb).
          const int box_rows = copy / 128, nb = stage_bytes / copy, col_groups = 64 / nb;
          const int64_t rb = piece / col_groups, cg = piece % col_groups;
          for (int b = 0; b < nb; ++b) {
            const int kb = static_cast<int>(cg * nb + b);
            if (layout == 1) {
              Tma3d(dst + b * copy, tmap, 0, static_cast<int>(rb * box_rows), kb, &full[s]);
            } else if (layout == 2) {
              Tma4d(dst + b * copy, tmap, 0, 0, kb, static_cast<int>(rb), &full[s]);
            } else {
              Tma2d(dst + b * copy, tmap, kb * 64, static_cast<int>(rb * box_rows), &full[s]);
            }
          }
        } else {
          for (int off = 0; off < stage_bytes; off += copy) {
            BulkCopy(dst + off, buf + piece * stage_bytes + off, static_cast<uint32_t>(copy),
                     &full[s]);
          }
        }
      }
    }
    return;
  }
  if constexpr (MMA) {
    MmaConsumers(ring, stages, stage_bytes, n, full, empty, mma_mode, out, sink);
    return;
  }
  uint32_t acc = 0;
  const float2 x = make_float2(1.0f + lane, 0.5f * lane);
  for (int i = warp; i < n; i += consumers) {
    const int s = i % stages;
    BarWait(&full[s], static_cast<uint32_t>(i / stages) & 1u);
    const uint4* st = reinterpret_cast<const uint4*>(ring + static_cast<int64_t>(s) * stage_bytes);
    if constexpr (DOT) {
      // As a decode GEMV does: every 16-byte chunk of the stage dotted (8 bf16 products, f32
      // accumulation) with this lane's piece of an activation row held in registers.
      float d = 0.0f;
      for (int c = lane; c < stage_bytes / 16; c += 32) {
        const uint4 w = st[c];
        const __nv_bfloat162* wp = reinterpret_cast<const __nv_bfloat162*>(&w);
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          const float2 f = __bfloat1622float2(wp[k]);
          d = fmaf(f.x, x.x, fmaf(f.y, x.y, d));
        }
      }
      acc ^= __float_as_uint(d);
    } else {
      acc ^= reinterpret_cast<const uint32_t*>(st)[lane];
    }
    __syncwarp();
    if (lane == 0) MbarArrive(&empty[s]);
  }
  if (acc == 0x12345678u) sink[0] = acc;
#endif
}

struct Timer {
  cudaEvent_t a, b;
  Timer() {
    PROBE_CHECK(cudaEventCreate(&a));
    PROBE_CHECK(cudaEventCreate(&b));
  }
  ~Timer() {
    cudaEventDestroy(a);
    cudaEventDestroy(b);
  }
};

// Median GB/s of 5 timed passes of `launch` (after one warm-up) moving `bytes`.
template <typename F>
double MedianGbs(F launch, int64_t bytes) {
  Timer t;
  launch();
  PROBE_CHECK(cudaGetLastError());
  std::vector<double> v;
  for (int r = 0; r < 5; ++r) {
    PROBE_CHECK(cudaEventRecord(t.a));
    launch();
    PROBE_CHECK(cudaEventRecord(t.b));
    PROBE_CHECK(cudaEventSynchronize(t.b));
    float ms = 0;
    PROBE_CHECK(cudaEventElapsedTime(&ms, t.a, t.b));
    v.push_back(static_cast<double>(bytes) / (ms * 1e6));
  }
  std::sort(v.begin(), v.end());
  return v[2];
}

}  // namespace

int main(int argc, char** argv) {
  std::string json;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a.rfind("--json=", 0) == 0) json = a.substr(7);
  }
  cudaDeviceProp prop{};
  PROBE_CHECK(cudaGetDeviceProperties(&prop, 0));
  const int sms = prop.multiProcessorCount;
  uint8_t* buf = nullptr;
  uint8_t* dst = nullptr;
  uint32_t* sink = nullptr;
  float* mma_out = nullptr;  // bulk+mma mode 4's results
  PROBE_CHECK(cudaMalloc(&buf, kBufferBytes));
  PROBE_CHECK(cudaMalloc(&dst, kBufferBytes));
  PROBE_CHECK(cudaMalloc(&sink, 4));
  PROBE_CHECK(cudaMalloc(&mma_out, static_cast<size_t>(sms) * 256 * 32 * 2 * sizeof(float)));
  PROBE_CHECK(cudaMemset(buf, 1, kBufferBytes));
  FILE* out = json.empty() ? nullptr : std::fopen(json.c_str(), "w");
  auto report = [&](const char* method, const std::string& config, double gbs) {
    std::printf("%-6s %-44s %8.0f GB/s\n", method, config.c_str(), gbs);
    if (out != nullptr) {
      std::fprintf(out,
                   "{\"card\": \"%s\", \"method\": \"%s\", \"config\": \"%s\", \"gbs\": %.1f}\n",
                   prop.name, method, config.c_str(), gbs);
    }
  };
  std::printf("card: %s (%d SMs)\n", prop.name, sms);
  report(
      "copy", "d2d 2 GiB, read + write",
      MedianGbs(
          [&] { PROBE_CHECK(cudaMemcpyAsync(dst, buf, kBufferBytes, cudaMemcpyDeviceToDevice)); },
          2 * kBufferBytes));

  const int64_t chunks = kBufferBytes / 16;
  auto ldg = [&](auto kernel, int in, int threads, int blocks_per_sm) {
    const int blocks = sms * blocks_per_sm;
    const double gbs = MedianGbs(
        [&] { kernel<<<blocks, threads>>>(reinterpret_cast<const uint4*>(buf), chunks, sink); },
        kBufferBytes);
    report("ldg",
           std::to_string(in) + " in flight/lane, " + std::to_string(threads / 32) + " warps x " +
               std::to_string(blocks_per_sm) + " blocks/SM",
           gbs);
  };
  for (int bps : {1, 2, 4}) {
    ldg(LdgKernel<4>, 4, 256, bps);
    ldg(LdgKernel<8>, 8, 256, bps);
    ldg(LdgKernel<16>, 16, 256, bps);
  }
  ldg(LdgKernel<8>, 8, 512, 1);

  if (prop.major < 9) {
    std::printf("bulk / tma2d: sm_90 only\n");
    return 0;
  }
  int optin = 0;
  PROBE_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, 0));
  optin -= 1024;  // the ring's barriers (static shared memory)
  for (auto* fn : {&RingKernel<false, false>, &RingKernel<true, false>, &RingKernel<false, true>}) {
    PROBE_CHECK(cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, optin));
  }
  // bulk+mma also holds the warp pairs' partial sums in static shared memory.
  const int optin_mma = optin - static_cast<int>(2 * kMaxConsumers * 32 * sizeof(float4));
  PROBE_CHECK(cudaFuncSetAttribute(&RingKernel<false, false, true>,
                                   cudaFuncAttributeMaxDynamicSharedMemorySize, optin_mma));
  // The [rows, 4096] bf16 view of the buffer for tma2d.
  const int64_t cols = 4096, rows = kBufferBytes / 2 / cols;
  // Descriptors of 128-row and 256-row boxes (64 columns: the 128-byte swizzle span).
  uint8_t* dev_maps = nullptr;
  PROBE_CHECK(cudaMalloc(&dev_maps, 4 * moe::cuda::kTensorMapBytes));
  for (int m = 0; m < 2; ++m) {
    std::vector<uint8_t> host_map(moe::cuda::kTensorMapBytes);
    const moe::Status st = moe::cuda::EncodeTensorMap(buf, moe::cuda::WType::kBF16, rows, cols,
                                                      cols, 128 << m, host_map.data());
    if (!st.ok()) {
      std::fprintf(stderr, "EncodeTensorMap: %s\n", std::string(st.message()).c_str());
      return 1;
    }
    PROBE_CHECK(cudaMemcpy(dev_maps + m * moe::cuda::kTensorMapBytes, host_map.data(),
                           host_map.size(), cudaMemcpyHostToDevice));
  }
  // Maps 2 and 3: the same bytes as a K-blocked [64][rows][64] and a tile-major
  // [rows / 128][64][128][64] weight layout (128 x 64 boxes that are contiguous 16 KiB blocks).
  {
    const int64_t kb_dims[3] = {64, rows, cols / 64};
    const int64_t kb_strides[2] = {128, rows * 128};
    const int kb_box[3] = {64, 128, 1};
    const int64_t tm_dims[4] = {64, 128, cols / 64, rows / 128};
    const int64_t tm_strides[3] = {128, 128 * 128, 128 * 128 * (cols / 64)};
    const int tm_box[4] = {64, 128, 1, 1};
    for (int m = 2; m < 4; ++m) {
      std::vector<uint8_t> host_map(moe::cuda::kTensorMapBytes);
      const moe::Status st =
          m == 2 ? moe::cuda::EncodeTensorMapNd(buf, moe::cuda::WType::kBF16, 3, kb_dims,
                                                kb_strides, kb_box, true, host_map.data())
                 : moe::cuda::EncodeTensorMapNd(buf, moe::cuda::WType::kBF16, 4, tm_dims,
                                                tm_strides, tm_box, true, host_map.data());
      if (!st.ok()) {
        std::fprintf(stderr, "EncodeTensorMapNd: %s\n", std::string(st.message()).c_str());
        return 1;
      }
      PROBE_CHECK(cudaMemcpy(dev_maps + m * moe::cuda::kTensorMapBytes, host_map.data(),
                             host_map.size(), cudaMemcpyHostToDevice));
    }
  }
  auto ring = [&](bool tma, int copy, int stage_bytes, int stages, int consumers, int blocks_per_sm,
                  bool dot = false, int mma_mode = -1, int layout = 0) {
    const int blocks = sms * blocks_per_sm;
    const size_t smem =
        static_cast<size_t>(stage_bytes) * (stages + (mma_mode >= 0 ? 1 : 0)) + 1024;
    if (stages > kMaxStages ||
        static_cast<int64_t>(smem) * blocks_per_sm > (mma_mode >= 0 ? optin_mma : optin)) {
      return;
    }
    const double gbs = MedianGbs(
        [&] {
          if (tma) {
            const int map = layout > 0 ? layout + 1 : copy == 32768 ? 1 : 0;
            RingKernel<true, false><<<blocks, 32 * (consumers + 1), smem>>>(
                buf, kBufferBytes, copy, stage_bytes, stages,
                dev_maps + map * moe::cuda::kTensorMapBytes, sink, 0, nullptr, layout);
          } else if (mma_mode >= 0) {
            RingKernel<false, false, true><<<blocks, 32 * (consumers + 1), smem>>>(
                buf, kBufferBytes, copy, stage_bytes, stages, nullptr, sink, mma_mode, mma_out);
          } else if (dot) {
            RingKernel<false, true><<<blocks, 32 * (consumers + 1), smem>>>(
                buf, kBufferBytes, copy, stage_bytes, stages, nullptr, sink, 0, nullptr);
          } else {
            RingKernel<false, false><<<blocks, 32 * (consumers + 1), smem>>>(
                buf, kBufferBytes, copy, stage_bytes, stages, nullptr, sink, 0, nullptr);
          }
        },
        kBufferBytes);
    std::string config = std::to_string(copy / 1024) + " KiB copies, " + std::to_string(stages) +
                         " x " + std::to_string(stage_bytes / 1024) + " KiB stages, " +
                         std::to_string(blocks_per_sm) + " block/SM";
    if (dot || mma_mode >= 0) config += ", " + std::to_string(consumers) + " consumer warps";
    if (mma_mode > 0) config += ", mode " + std::to_string(mma_mode);
    report(tma             ? (layout == 1   ? "tma3d"
                              : layout == 2 ? "tma4d"
                                            : "tma2d")
           : mma_mode >= 0 ? "bulk+mma"
           : dot           ? "bulk+dot"
                           : "bulk",
           config, gbs);
  };
  for (int copy : {1024, 2048, 4096, 8192, 16384}) {
    ring(false, copy, 16384, 8, 4, 1);
    ring(false, copy, 16384, 12, 4, 1);
  }
  ring(false, 2048, 32768, 6, 2, 1);
  for (int consumers : {4, 8}) {
    ring(false, 4096, 16384, 8, consumers, 1, true);
    ring(false, 16384, 16384, 8, consumers, 1, true);
    ring(false, 16384, 32768, 6, consumers == 4 ? 2 : 3, 1, true);
  }
  // The weight-streaming GEMM's gate/up and down rings (K = 2048 and 1024), with mma consumers, and
  // the same rings with dot or no consumer work.
  for (int cons : {5, 1}) {
    ring(false, 16384, 32768, 5, cons, 1, false, 0);
    ring(false, 16384, 32768, 5, cons, 1, true);
    ring(false, 16384, 32768, 5, cons, 1);
  }
  ring(false, 16384, 16384, 10, 10, 1, false, 0);
  ring(false, 16384, 16384, 10, 5, 1, false, 0);
  // The GEMM's other consumer work, one kind at a time, then all (mode bits: MmaConsumers).
  ring(false, 16384, 32768, 5, 5, 1, false, 1);
  ring(false, 16384, 32768, 5, 10, 1, false, 2);
  ring(false, 16384, 32768, 5, 5, 1, false, 4);
  ring(false, 16384, 32768, 5, 10, 1, false, 7);
  ring(false, 4096, 8192, 24, 4, 1);
  ring(false, 16384, 32768, 6, 2, 1);
  ring(false, 4096, 16384, 6, 2, 2);
  ring(true, 16384, 16384, 4, 4, 1);
  ring(true, 16384, 16384, 8, 4, 1);
  ring(true, 16384, 16384, 12, 4, 1);
  // The same boxes from the blocked layouts (contiguous 16 KiB each), then natural again.
  for (int layout : {1, 2, 0}) {
    for (int stages : {4, 8}) {
      for (int bps : {1, 2}) {
        if (bps == 2 && stages == 8) continue;
        ring(true, 16384, 16384, stages, 4, bps, false, -1, layout);
      }
    }
    ring(true, 16384, 32768, 4, 4, 1, false, -1, layout);
  }
  // Wider reads per row (two or four 64-column boxes a stage) and 256-row boxes.
  ring(true, 16384, 32768, 4, 4, 1);
  ring(true, 16384, 32768, 6, 2, 1);
  ring(true, 16384, 65536, 3, 3, 1);
  ring(true, 32768, 32768, 4, 4, 1);
  ring(true, 32768, 32768, 6, 2, 1);
  ring(true, 32768, 65536, 3, 3, 1);
  if (out != nullptr) std::fclose(out);
  return 0;
}
