// The compressed host tier's codec alone (moe/experts/weight_codec.h, kernels/weight_codec.cu):
// for experts of the Qwen3-30B-A3B, DeepSeek-V2-Lite and Mixtral-8x7B shapes filled with uniform
// (+-sqrt(3 / fan_in), the synthetic checkpoints') and Gaussian (sigma 0.02) bf16 weights, prints
// the blob's size against the raw bytes, the encoder's time on one CPU thread, and the device
// decoder's time per expert alone on the GPU (the median of --reps launches timed by events; the
// slot checked bit for bit against the source once). With the GPU busy with other kernels (the
// cache's misses at batch 1), a decode takes longer: tools/device/cache_copy_timeline.py.
//
// Usage: codec_bench [--reps 50] [--shapes qwen3,dsv2lite,mixtral]
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "expert_cache/bench_check.h"
#include "kernels/weight_codec.h"
#include "moe/common/dtype.h"
#include "moe/experts/weight_codec.h"

namespace moe {
namespace {

using bench::Clock;
using bench::Seconds;

#define CHECK_CUDA(expr) MOE_BENCH_CHECK_CUDA(expr)
#define CHECK_OK(expr) MOE_BENCH_CHECK_OK(expr)

struct Shape {
  std::string name;
  int64_t hidden, inter;
};

int Main(int argc, char** argv) {
  int reps = 50;
  std::vector<std::string> want = {"qwen3", "dsv2lite", "mixtral"};
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--reps" && i + 1 < argc) {
      reps = std::max(1, std::stoi(argv[++i]));
    } else if (a == "--shapes" && i + 1 < argc) {
      want.clear();
      std::stringstream list(argv[++i]);
      std::string item;
      while (std::getline(list, item, ',')) want.push_back(item);
    } else {
      std::fprintf(stderr, "usage: %s [--reps N] [--shapes qwen3,dsv2lite,mixtral]\n", argv[0]);
      return 2;
    }
  }
  int devices = 0;
  const bool gpu = cudaGetDeviceCount(&devices) == cudaSuccess && devices > 0;
  if (gpu) {
    cudaDeviceProp prop{};
    CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
    std::printf("card: %s (%d SMs)\n", prop.name, prop.multiProcessorCount);
  } else {
    std::printf("no CUDA device: encoder only\n");
  }
  std::printf("%-9s %-8s %10s %7s %8s %9s %9s %9s %s\n", "shape", "weights", "raw MiB", "ratio",
              "patches", "enc ms", "dec us", "dec GB/s", "bitwise");
  const std::vector<Shape> shapes = {
      {"qwen3", 2048, 768}, {"dsv2lite", 2048, 1408}, {"mixtral", 4096, 14336}};
  for (const Shape& sh : shapes) {
    if (std::find(want.begin(), want.end(), sh.name) == want.end()) continue;
    const int64_t n = sh.hidden * sh.inter;
    auto layout = experts::MakeCodecLayout(n);
    CHECK_OK(layout.status());
    for (const bool gaussian : {false, true}) {
      std::mt19937 rng(gaussian ? 2 : 1);
      const float bound = std::sqrt(3.0f / static_cast<float>(sh.hidden));
      std::uniform_real_distribution<float> uni(-bound, bound);
      std::normal_distribution<float> gauss(0.0f, 0.02f);
      std::array<std::vector<uint16_t>, 3> m;
      for (auto& v : m) {
        v.resize(static_cast<size_t>(n));
        for (auto& x : v) x = F32ToBf16(gaussian ? gauss(rng) : uni(rng));
      }
      std::vector<uint8_t> blob(static_cast<size_t>(layout->max_blob_bytes));
      experts::CodecExpertInfo info;
      const auto t0 = Clock::now();
      if (!experts::EncodeExpert(*layout, {m[0].data(), m[1].data(), m[2].data()}, blob.data(),
                                 &info)) {
        std::printf("%-9s %-8s refused by the encoder\n", sh.name.c_str(),
                    gaussian ? "gauss" : "uniform");
        continue;
      }
      const double enc_ms = Seconds(t0, Clock::now()) * 1e3;
      const double raw = 3.0 * static_cast<double>(n) * 2;
      double dec_us = 0;
      const char* bitwise = "-";
      if (gpu) {
        void* d_blob = nullptr;
        void* d_slot = nullptr;
        CHECK_CUDA(cudaMalloc(&d_blob, static_cast<size_t>(info.bytes)));
        CHECK_CUDA(cudaMalloc(&d_slot, static_cast<size_t>(raw)));
        CHECK_CUDA(cudaMemcpy(d_blob, blob.data(), static_cast<size_t>(info.bytes),
                              cudaMemcpyHostToDevice));
        CHECK_CUDA(cudaMemset(d_slot, 0xA5, static_cast<size_t>(raw)));
        cuda::DecodeExpertArgs a;
        a.blob = static_cast<const uint8_t*>(d_blob);
        a.slot = static_cast<char*>(d_slot);
        a.dst_offset = {0, 2 * n, 4 * n};
        a.layout = *layout;
        a.info = info;
        cudaEvent_t e0, e1;
        CHECK_CUDA(cudaEventCreate(&e0));
        CHECK_CUDA(cudaEventCreate(&e1));
        std::vector<float> times;
        for (int r = 0; r < reps + 3; ++r) {
          CHECK_CUDA(cudaEventRecord(e0));
          CHECK_OK(cuda::LaunchDecodeExpert(a, nullptr));
          CHECK_CUDA(cudaEventRecord(e1));
          CHECK_CUDA(cudaEventSynchronize(e1));
          float ms = 0;
          CHECK_CUDA(cudaEventElapsedTime(&ms, e0, e1));
          if (r >= 3) times.push_back(ms);
        }
        std::sort(times.begin(), times.end());
        dec_us = 1e3 * times[times.size() / 2];
        std::vector<uint16_t> out(static_cast<size_t>(3 * n));
        CHECK_CUDA(
            cudaMemcpy(out.data(), d_slot, static_cast<size_t>(raw), cudaMemcpyDeviceToHost));
        bool same = true;
        for (int k = 0; k < 3; ++k) {
          same =
              same && std::memcmp(out.data() + k * n, m[k].data(), static_cast<size_t>(2 * n)) == 0;
        }
        bitwise = same ? "yes" : "NO";
        cudaEventDestroy(e0);
        cudaEventDestroy(e1);
        cudaFree(d_blob);
        cudaFree(d_slot);
      }
      std::printf("%-9s %-8s %10.2f %7.4f %8lld %9.1f %9.2f %9.1f %s\n", sh.name.c_str(),
                  gaussian ? "gauss" : "uniform", raw / 1048576.0,
                  static_cast<double>(info.bytes) / raw,
                  static_cast<long long>(info.total_patches()), enc_ms, dec_us,
                  dec_us > 0 ? raw / dec_us / 1e3 : 0.0, bitwise);
    }
  }
  return 0;
}

}  // namespace
}  // namespace moe

int main(int argc, char** argv) { return moe::Main(argc, argv); }
