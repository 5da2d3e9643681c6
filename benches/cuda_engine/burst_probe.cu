// How fast a short burst of weight reads runs when HBM was idle just before, as at 1 token: the
// decode front routes for ~7 us while HBM idles, then gate/up reads ~50 MB (Qwen3-30B-A3B) and down
// ~25 MB, each in one burst over regions no kernel read lately. stream_probe measures one 2 GiB
// pass in steady state; this probe measures bursts of 3-200 MB and fits time = ramp + size / rate.
//
// Each burst: the timer words are reset, an optional touch kernel reads one 16-byte chunk per
// 64 KiB of the burst's region (its pages' translations and a few lines, ~0.02% of the bytes), a
// one-block spin kernel idles HBM for `--idle_us`, then the burst kernel reads the region: every
// warp 16-byte loads (ld.global.nc.L1::no_allocate), `in flight` per lane, over pieces of `piece`
// bytes. Piece p of the region goes to warp p % warps (pieces of adjacent warps are adjacent, as
// in the decode experts kernels' units) or, with piece = 0, every warp reads one contiguous share.
// `dots` rows also dot every chunk with an activation chunk as the decode kernels do
// (probe_reads.cuh Use: one f32 sum, a sum a chunk, or a sum a chunk with the next batch's loads
// issued first); `bulk` rows move each warp's share by cp.async.bulk through a ring of
// shared-memory stages. The burst's time is the span from the first block's start to the last
// block's end (%globaltimer, atomicMin / atomicMax), so launch latency is not in it. Bursts walk
// fresh regions of a buffer of `--buffer_gib` GiB (2 by default; never within 64 MiB of the last),
// except the `again` rows, which reread the region of the burst just before (L2 holds what fits).
//
// Prints, per configuration and size, the median burst time and its GB/s, then the line fit over
// the sizes (ramp us, rate GB/s). Usage: burst_probe [--json=FILE] [--idle_us=8] [--buffer_gib=2]
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <string>
#include <type_traits>
#include <vector>

#include "kernels/decode_common.cuh"
#include "probe_check.h"
#include "probe_reads.cuh"

namespace {

using moe::cuda::LoadStreaming;

constexpr int kBursts = 15;  // timed bursts per point (after 2 untimed)

// Spins one thread for `ns` nanoseconds (HBM idle).
__global__ void SpinKernel(uint64_t ns) {
  const uint64_t start = GlobalTimeNs();
  while (GlobalTimeNs() - start < ns) {
  }
}

// Reads one 16-byte chunk per 64 KiB of [buf, buf + bytes).
__global__ void TouchKernel(const uint8_t* buf, int64_t bytes, uint32_t* sink) {
  const int64_t pages = bytes >> 16;
  uint32_t acc = 0;
  for (int64_t p = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; p < pages;
       p += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    acc ^= LoadStreaming(buf + (p << 16)).x;
  }
  if (acc == 0x12345678u) sink[0] = acc;
}

// t[0] = earliest block start, t[1] = latest block end (ns).
template <int IN, Use USE>
__global__ void BurstKernel(const uint8_t* buf, int64_t bytes, int piece, uint64_t* t,
                            uint32_t* sink, const uint4* x) {
  if (threadIdx.x == 0) atomicMin(reinterpret_cast<unsigned long long*>(&t[0]), GlobalTimeNs());
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x / 32);
  const int64_t w = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x & 31;
  const uint4* b = reinterpret_cast<const uint4*>(buf);
  uint32_t acc = 0;
  if (piece == 0) {
    const int64_t chunks = bytes / 16;
    acc = ReadChunks<IN, USE>(b, w * chunks / warps, (w + 1) * chunks / warps, lane, x);
  } else {
    // Piece p to warp p % warps; IN chunks per lane in flight, across the warp's pieces. Pieces
    // are powers of two, so a chunk's address takes shifts and masks: a division per chunk (as
    // the first version had) made this loop issue-bound, not DRAM-bound.
    const int lg = __ffs(piece / 16) - 1;  // log2 of the chunks per piece
    const int64_t mask = (int64_t{1} << lg) - 1;
    const int64_t pieces = bytes / piece;
    const int64_t mine = pieces > w ? (pieces - w + warps - 1) / warps : 0;
    // This warp's chunks in its pieces' order: chunk j is in its piece j >> lg.
    acc = ReadMappedChunks<IN, USE>(
        b, mine << lg, lane,
        [=](int64_t j) { return (((j >> lg) * warps + w) << lg) + (j & mask); }, x);
  }
  if (acc == 0x12345678u) sink[0] = acc;
  __syncthreads();
  if (threadIdx.x == 0) atomicMax(reinterpret_cast<unsigned long long*>(&t[1]), GlobalTimeNs());
}

// The same burst moved by the bulk copy engine (sm_90): each warp streams its contiguous share
// through a ring of kStages stages of `stage` bytes in shared memory (lane 0 issues
// cp.async.bulk, completion on the stage's mbarrier), and the lanes then read each stage (fold, or
// DOT: dot its 16-byte chunks with x as 8 bf16 products). The loads in flight are then bounded by
// the ring, not by registers.
template <int kStages, bool DOT>
__global__ void BulkBurstKernel(const uint8_t* buf, int64_t bytes, int stage, uint64_t* t,
                                uint32_t* sink, const uint4* x) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  extern __shared__ uint4 ring[];  // [warps][kStages][stage / 16]
  __shared__ uint64_t bars[32][kStages];
  if (threadIdx.x == 0) atomicMin(reinterpret_cast<unsigned long long*>(&t[0]), GlobalTimeNs());
  const int warp = threadIdx.x / 32, lane = threadIdx.x & 31;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x / 32);
  const int64_t w = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + warp;
  const int64_t begin = w * (bytes / 16) / warps * 16, end = (w + 1) * (bytes / 16) / warps * 16;
  const int64_t n = (end - begin + stage - 1) / stage;  // this warp's copies
  uint4* my = ring + static_cast<int64_t>(warp) * kStages * (stage / 16);
  uint64_t* bar = bars[warp];
  const auto issue = [&](int64_t c) {  // copy c into stage c % kStages (lane 0)
    const int64_t off = begin + c * stage;
    const uint32_t len = static_cast<uint32_t>(end - off < stage ? end - off : stage);
    uint64_t* b = &bar[c % kStages];
    moe::cuda::MbarExpectTx(b, len);
    moe::cuda::BulkCopy(my + (c % kStages) * (stage / 16), buf + off, len, b);
  };
  if (lane == 0) {
    for (int s = 0; s < kStages; ++s) moe::cuda::MbarInit(&bar[s]);
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    for (int64_t c = 0; c < n && c < kStages; ++c) issue(c);
  }
  __syncwarp();
  uint32_t acc = 0;
  float dot = 0.0f;
  for (int64_t c = 0; c < n; ++c) {
    moe::cuda::MbarWait(&bar[c % kStages], static_cast<uint32_t>((c / kStages) & 1));
    const int64_t left = end - (begin + c * stage), len = (left < stage ? left : stage) / 16;
    const uint4* st = my + (c % kStages) * (stage / 16);
    for (int64_t j = lane; j < len; j += 32) {
      const uint4 v = st[j];
      if constexpr (DOT) {
        moe::cuda::Dot8<__nv_bfloat16>(v, moe::cuda::LoadCached(x + (j & 255)), dot);
      } else {
        acc ^= v.x ^ v.w;
      }
    }
    __syncwarp();  // every lane is done with the stage before it is refilled
    if (lane == 0 && c + kStages < n) issue(c + kStages);
  }
  if (DOT) acc = __float_as_uint(dot);
  if (acc == 0x12345678u) sink[0] = acc;
  __syncthreads();
  if (threadIdx.x == 0) atomicMax(reinterpret_cast<unsigned long long*>(&t[1]), GlobalTimeNs());
#endif
}

struct Config {
  int in_flight;
  int warps;
  int blocks_per_sm;
  int piece;  // 0: contiguous share per warp
  bool touch;
  bool again;
  Use use = Use::kXor;  // what the loop does with each chunk (probe_reads.cuh)
  int bulk_stages = 0;  // > 0: BulkBurstKernel with this many stages of `piece` bytes a warp
};

std::string Describe(const Config& c) {
  if (c.bulk_stages > 0) {
    std::string s = "bulk " + std::to_string(c.bulk_stages) + " x " + std::to_string(c.piece) +
                    " B a warp, " + std::to_string(c.warps) + " warps x " +
                    std::to_string(c.blocks_per_sm) + "/SM";
    if (c.use != Use::kXor) s += ", dots";
    return s;
  }
  std::string s = std::to_string(c.in_flight) + " in flight, " + std::to_string(c.warps) +
                  " warps x " + std::to_string(c.blocks_per_sm) + "/SM, ";
  s += c.piece == 0 ? std::string("contiguous") : std::to_string(c.piece) + " B pieces";
  if (c.touch) s += ", pages touched";
  if (c.again) s += ", again (L2)";
  if (c.use == Use::kDotChain) s += ", dots, one sum";
  if (c.use == Use::kDotIlp) s += ", dots, a sum a chunk";
  if (c.use == Use::kDotPiped) s += ", dots, a sum a chunk, piped";
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  std::string json;
  double idle_us = 8.0;
  int64_t buffer_bytes = int64_t{2} << 30;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a.rfind("--json=", 0) == 0) json = a.substr(7);
    if (a.rfind("--idle_us=", 0) == 0) idle_us = std::stod(a.substr(10));
    if (a.rfind("--buffer_gib=", 0) == 0) buffer_bytes = std::stoll(a.substr(13)) << 30;
  }
  cudaDeviceProp prop{};
  PROBE_CHECK(cudaGetDeviceProperties(&prop, 0));
  const int sms = prop.multiProcessorCount;
  uint8_t* buf = nullptr;
  uint32_t* sink = nullptr;
  uint64_t* times = nullptr;  // [kBursts + 2][2]
  PROBE_CHECK(cudaMalloc(&buf, buffer_bytes));
  PROBE_CHECK(cudaMalloc(&sink, 4));
  PROBE_CHECK(cudaMalloc(&times, (kBursts + 2) * 2 * sizeof(uint64_t)));
  uint4* xs = nullptr;  // the dots' 4 KiB activation row (bf16 ones)
  PROBE_CHECK(cudaMalloc(&xs, 256 * sizeof(uint4)));
  PROBE_CHECK(cudaMemset(xs, 0x3f, 256 * sizeof(uint4)));
  PROBE_CHECK(cudaMemset(buf, 1, buffer_bytes));
  PROBE_CHECK(cudaDeviceSynchronize());
  FILE* out = json.empty() ? nullptr : std::fopen(json.c_str(), "w");
  std::printf("card: %s (%d SMs), idle %.1f us before each burst, regions of a %lld MiB buffer\n",
              prop.name, sms, idle_us, static_cast<long long>(buffer_bytes >> 20));

  int64_t cursor = 0;  // next fresh region
  const int64_t gap = int64_t{64} << 20;
  // Median span (us) of kBursts bursts of `bytes` under config c.
  auto run = [&](const Config& c, int64_t bytes) {
    const int blocks = sms * c.blocks_per_sm;
    const int threads = 32 * c.warps;
    std::vector<uint64_t> init(2 * (kBursts + 2));
    for (int i = 0; i < kBursts + 2; ++i) {
      init[2 * i] = ~uint64_t{0};
      init[2 * i + 1] = 0;
    }
    PROBE_CHECK(
        cudaMemcpy(times, init.data(), init.size() * sizeof(uint64_t), cudaMemcpyHostToDevice));
    int64_t prev = 0;
    for (int i = 0; i < kBursts + 2; ++i) {
      // `again`: odd bursts reread the region of the burst before.
      int64_t region = prev;
      if (!c.again || i % 2 == 0) {
        if (cursor + bytes > buffer_bytes) cursor = 0;
        region = cursor;
        cursor += (bytes + gap + 4095) / 4096 * 4096;
      }
      prev = region;
      if (c.touch) TouchKernel<<<sms, 256>>>(buf + region, bytes, sink);
      SpinKernel<<<1, 32>>>(static_cast<uint64_t>(idle_us * 1000));
      uint64_t* t = times + 2 * i;
      const auto launch = [&](auto kernel) {
        kernel<<<blocks, threads>>>(buf + region, bytes, c.piece, t, sink, xs);
      };
      const auto by_use = [&](auto in) {
        constexpr int kIn = decltype(in)::value;
        switch (c.use) {
          case Use::kDotChain:
            return launch(BurstKernel<kIn, Use::kDotChain>);
          case Use::kDotIlp:
            return launch(BurstKernel<kIn, Use::kDotIlp>);
          case Use::kDotPiped:
            return launch(BurstKernel<kIn, Use::kDotPiped>);
          default:
            return launch(BurstKernel<kIn, Use::kXor>);
        }
      };
      if (c.bulk_stages > 0) {
        const size_t smem = static_cast<size_t>(c.warps) * c.bulk_stages * c.piece;
        const auto bulk = [&](auto kernel) {
          PROBE_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           static_cast<int>(smem)));
          kernel<<<blocks, threads, smem>>>(buf + region, bytes, c.piece, t, sink, xs);
        };
        const bool dot = c.use != Use::kXor;
        if (c.bulk_stages == 4) {
          dot ? bulk(BulkBurstKernel<4, true>) : bulk(BulkBurstKernel<4, false>);
        } else {
          dot ? bulk(BulkBurstKernel<3, true>) : bulk(BulkBurstKernel<3, false>);
        }
      } else if (c.in_flight == 8) {
        by_use(std::integral_constant<int, 8>{});
      } else {
        by_use(std::integral_constant<int, 4>{});
      }
      PROBE_CHECK(cudaGetLastError());
    }
    PROBE_CHECK(cudaDeviceSynchronize());
    std::vector<uint64_t> got(2 * (kBursts + 2));
    PROBE_CHECK(
        cudaMemcpy(got.data(), times, got.size() * sizeof(uint64_t), cudaMemcpyDeviceToHost));
    std::vector<double> us;
    for (int i = 2; i < kBursts + 2; ++i) {
      // `again`: only the warm bursts (odd i) count.
      if (c.again && i % 2 == 0) continue;
      us.push_back(static_cast<double>(got[2 * i + 1] - got[2 * i]) * 1e-3);
    }
    std::sort(us.begin(), us.end());
    return us[us.size() / 2];
  };

  const std::vector<int64_t> sizes = {int64_t{3} << 20,  int64_t{6} << 20,  int64_t{12} << 20,
                                      int64_t{25} << 20, int64_t{50} << 20, int64_t{75} << 20,
                                      int64_t{200} << 20};
  std::vector<Config> configs;
  for (int in : {4, 8}) configs.push_back({in, 8, 2, 0, false, false});
  configs.push_back({4, 16, 1, 0, false, false});
  for (int piece : {512, 1024, 4096}) configs.push_back({4, 8, 2, piece, false, false});
  configs.push_back({8, 8, 2, 1024, false, false});
  for (Use use : {Use::kDotChain, Use::kDotIlp, Use::kDotPiped}) {
    for (int in : {4, 8}) configs.push_back({in, 8, 2, 0, false, false, use});
  }
  configs.push_back({8, 8, 2, 512, false, false, Use::kDotIlp});
  // Bulk copies: 8 warps x 1 block an SM with 3 x 8 KiB (192 KiB an SM) or 4 x 4 KiB (128 KiB).
  for (Use use : {Use::kXor, Use::kDotChain}) {
    configs.push_back({0, 8, 1, 8192, false, false, use, 3});
    configs.push_back({0, 8, 1, 4096, false, false, use, 4});
  }
  configs.push_back({4, 8, 2, 0, true, false});
  configs.push_back({4, 8, 2, 1024, true, false});
  configs.push_back({4, 8, 2, 0, false, true});
  for (const Config& c : configs) {
    if (c.bulk_stages > 0 && prop.major < 9) continue;  // cp.async.bulk: sm_90 and later
    const std::string name = Describe(c);
    // Least squares over the sizes: us = ramp + bytes / rate.
    double sx = 0, sy = 0, sxx = 0, sxy = 0;
    int n = 0;
    for (int64_t bytes : sizes) {
      if (c.again && bytes > (int64_t{40} << 20)) continue;  // must fit in L2
      const double us = run(c, bytes);
      const double mb = static_cast<double>(bytes) / 1e6;
      std::printf("%-56s %6.1f MB %8.2f us %7.0f GB/s\n", name.c_str(), mb, us, mb * 1e3 / us);
      if (out != nullptr) {
        std::fprintf(out,
                     "{\"card\": \"%s\", \"config\": \"%s\", \"mb\": %.2f, \"us\": %.3f, "
                     "\"gbs\": %.1f, \"idle_us\": %.1f, \"buffer_mib\": %lld}\n",
                     prop.name, name.c_str(), mb, us, mb * 1e3 / us, idle_us,
                     static_cast<long long>(buffer_bytes >> 20));
      }
      sx += mb;
      sy += us;
      sxx += mb * mb;
      sxy += mb * us;
      ++n;
    }
    const double slope = (n * sxy - sx * sy) / (n * sxx - sx * sx);
    const double ramp = (sy - slope * sx) / n;
    std::printf("%-56s fit: ramp %.2f us, rate %.0f GB/s\n", name.c_str(), ramp, 1e3 / slope);
    if (out != nullptr) {
      std::fprintf(out,
                   "{\"card\": \"%s\", \"config\": \"%s\", \"fit_ramp_us\": %.3f, "
                   "\"fit_gbs\": %.1f, \"idle_us\": %.1f, \"buffer_mib\": %lld}\n",
                   prop.name, name.c_str(), ramp, 1e3 / slope, idle_us,
                   static_cast<long long>(buffer_bytes >> 20));
    }
  }
  if (out != nullptr) std::fclose(out);
  return 0;
}
