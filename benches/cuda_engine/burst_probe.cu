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
// The burst's time is the span from the first block's start to the last block's end
// (%globaltimer, atomicMin / atomicMax), so launch latency is not in it. Bursts walk fresh
// regions of a buffer of `--buffer_gib` GiB (2 by default; never within 64 MiB of the last), except
// the `again` rows, which reread the region of the burst just before (L2 holds what fits of it).
//
// Prints, per configuration and size, the median burst time and its GB/s, then the line fit over
// the sizes (ramp us, rate GB/s). Usage: burst_probe [--json=FILE] [--idle_us=8] [--buffer_gib=2]
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "kernels/decode_common.cuh"
#include "probe_check.h"
#include "probe_reads.cuh"

namespace {

using moe::cuda::LoadStreaming;

constexpr int kBursts = 15;  // timed bursts per point (after 2 untimed)

__device__ __forceinline__ uint64_t GlobalTimeNs() {
  uint64_t t;
  asm volatile("mov.u64 %0, %globaltimer;" : "=l"(t));
  return t;
}

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
template <int IN>
__global__ void BurstKernel(const uint8_t* buf, int64_t bytes, int piece, uint64_t* t,
                            uint32_t* sink) {
  if (threadIdx.x == 0) atomicMin(reinterpret_cast<unsigned long long*>(&t[0]), GlobalTimeNs());
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x / 32);
  const int64_t w = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x & 31;
  const uint4* b = reinterpret_cast<const uint4*>(buf);
  uint32_t acc = 0;
  if (piece == 0) {
    const int64_t chunks = bytes / 16;
    acc = ReadChunks<IN>(b, w * chunks / warps, (w + 1) * chunks / warps, lane);
  } else {
    // Piece p to warp p % warps; IN chunks per lane in flight, across the warp's pieces.
    const int64_t per_piece = piece / 16;
    const int64_t pieces = bytes / piece;
    const int64_t mine = pieces > w ? (pieces - w + warps - 1) / warps : 0;
    // This warp's chunks in its pieces' order: chunk j is in its piece j / per_piece.
    acc = ReadMappedChunks<IN>(b, mine * per_piece, lane, [=](int64_t j) {
      return (w + (j / per_piece) * warps) * per_piece + j % per_piece;
    });
  }
  if (acc == 0x12345678u) sink[0] = acc;
  __syncthreads();
  if (threadIdx.x == 0) atomicMax(reinterpret_cast<unsigned long long*>(&t[1]), GlobalTimeNs());
}

struct Config {
  int in_flight;
  int warps;
  int blocks_per_sm;
  int piece;  // 0: contiguous share per warp
  bool touch;
  bool again;
};

std::string Describe(const Config& c) {
  std::string s = std::to_string(c.in_flight) + " in flight, " + std::to_string(c.warps) +
                  " warps x " + std::to_string(c.blocks_per_sm) + "/SM, ";
  s += c.piece == 0 ? std::string("contiguous") : std::to_string(c.piece) + " B pieces";
  if (c.touch) s += ", pages touched";
  if (c.again) s += ", again (L2)";
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
      switch (c.in_flight) {
        case 4:
          BurstKernel<4><<<blocks, threads>>>(buf + region, bytes, c.piece, t, sink);
          break;
        case 8:
          BurstKernel<8><<<blocks, threads>>>(buf + region, bytes, c.piece, t, sink);
          break;
        default:
          BurstKernel<2><<<blocks, threads>>>(buf + region, bytes, c.piece, t, sink);
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
  configs.push_back({4, 8, 2, 0, true, false});
  configs.push_back({4, 8, 2, 1024, true, false});
  configs.push_back({4, 8, 2, 0, false, true});
  for (const Config& c : configs) {
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
