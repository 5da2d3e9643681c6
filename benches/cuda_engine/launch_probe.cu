// What a forward's launches cost on the card, apart from its kernels' work: a forward shaped like
// the 1-token decode path (a root kernel, then two kernels of 264 blocks launched with PDL, each
// waiting for the one before it) whose kernels only spin for fixed times after their wait, replayed
// back to back. Time per forward minus the spins = the launch and hand-over cost that the bench's
// 1-token points pay (benches/RESULTS.md: ~3.6 us between the end of one forward's last kernel
// and the start of the next forward's first, in nsys timelines of the engine).
//
// Rows vary one thing at a time:
//   root     1 block of 32 threads; 16 blocks of 1024 in one non-portable cluster of 16 (the
//            decode front); the same 16 blocks without a cluster; 132 blocks of 256;
//   launch   a CUDA graph replayed per forward, with or without the root's parameters set before
//            each replay (the engine sets the meta there); plain stream launches, the root without
//            or with PDL (then it waits for the previous forward's last kernel programmatically);
//            a graph of two forwards whose second root waits for the first forward by PDL;
//   spins    the kernels' spin times (0 = empty kernels);
//   full     --full: the two 264-block kernels take 110 KiB of shared memory a block and the root
//            16 KiB, so (as the engine's register-heavy expert kernels do) the root's blocks fit
//            on an SM only once the previous forward's blocks there have left.
// Usage: launch_probe [--replays=N] [--full]
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "kernels/pdl.cuh"
#include "probe_check.h"

namespace {

using moe::cuda::GridDepTrigger;
using moe::cuda::GridDepWait;
using moe::cuda::LaunchMaybePdl;

// Waits for the kernel before it (a no-op without PDL), lets the next one launch, then spins for
// `ns` nanoseconds of the global timer. `arg` stands for the meta that the engine passes by value.
__global__ void SpinKernel(int64_t ns, int64_t arg, int* sink) {
  GridDepWait();
  GridDepTrigger();
  const uint64_t t0 = GlobalTimeNs();
  if (ns > 0) {
    while (GlobalTimeNs() - t0 < static_cast<uint64_t>(ns)) {
    }
  }
  if (arg == -12345 && threadIdx.x == 0) sink[blockIdx.x] = 1;  // never true: keeps the argument
}

struct Root {
  const char* name;
  int blocks;
  int threads;
  int cluster;  // 0: no cluster attribute
};

// Dynamic shared memory of the root and of the two 264-block kernels (--full: set in main). The
// launch reserves it; the kernels never touch it.
int g_root_smem = 0, g_kernel_smem = 0;

struct Spins {
  int64_t root_ns, k2_ns, k3_ns;
  double us() const { return (root_ns + k2_ns + k3_ns) / 1000.0; }
};

cudaError_t LaunchRoot(const Root& r, cudaStream_t st, bool pdl, int64_t ns, int64_t arg,
                       int* sink) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(r.blocks);
  cfg.blockDim = dim3(r.threads);
  cfg.dynamicSmemBytes = static_cast<size_t>(g_root_smem);
  cfg.stream = st;
  cudaLaunchAttribute attr[2];
  int n = 0;
  if (r.cluster > 0) {
    attr[n].id = cudaLaunchAttributeClusterDimension;
    attr[n].val.clusterDim.x = r.cluster;
    attr[n].val.clusterDim.y = 1;
    attr[n].val.clusterDim.z = 1;
    ++n;
  }
  if (pdl) {
    attr[n].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[n].val.programmaticStreamSerializationAllowed = 1;
    ++n;
  }
  cfg.attrs = attr;
  cfg.numAttrs = n;
  return cudaLaunchKernelEx(&cfg, SpinKernel, ns, arg, sink);
}

// One forward: the root, then two PDL kernels of 264 blocks x 256 threads.
void LaunchForward(const Root& r, const Spins& s, cudaStream_t st, bool root_pdl, int64_t arg,
                   int* sink) {
  PROBE_CHECK(LaunchRoot(r, st, root_pdl, s.root_ns, arg, sink));
  const size_t smem = static_cast<size_t>(g_kernel_smem);
  PROBE_CHECK(LaunchMaybePdl(SpinKernel, dim3(264), dim3(256), smem, st, true, s.k2_ns, arg, sink));
  PROBE_CHECK(LaunchMaybePdl(SpinKernel, dim3(264), dim3(256), smem, st, true, s.k3_ns, arg, sink));
}

enum class Mode { kGraph, kGraphSetParams, kStream, kStreamPdl, kGraphTwoPdl };

const char* ModeName(Mode m) {
  switch (m) {
    case Mode::kGraph:
      return "graph";
    case Mode::kGraphSetParams:
      return "graph+setparams";
    case Mode::kStream:
      return "stream";
    case Mode::kStreamPdl:
      return "stream, pdl root";
    case Mode::kGraphTwoPdl:
      return "graph of 2, pdl";
  }
  return "?";
}

// Mean us per forward over `replays` forwards, after a warm-up.
double TimeForwards(const Root& r, const Spins& s, Mode mode, int replays, cudaStream_t st,
                    int* sink) {
  const int per_launch = mode == Mode::kGraphTwoPdl ? 2 : 1;
  cudaGraph_t graph = nullptr;  // kept: SetParams takes a node of the instantiated graph
  cudaGraphExec_t exec = nullptr;
  cudaGraphNode_t root_node = nullptr;
  cudaKernelNodeParams root_params = {};
  const bool stream = mode == Mode::kStream || mode == Mode::kStreamPdl;
  if (!stream) {
    PROBE_CHECK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
    LaunchForward(r, s, st, false, 0, sink);
    if (mode == Mode::kGraphTwoPdl) LaunchForward(r, s, st, true, 0, sink);
    PROBE_CHECK(cudaStreamEndCapture(st, &graph));
    cudaGraphNode_t roots[4];
    size_t n_roots = 4;
    PROBE_CHECK(cudaGraphGetRootNodes(graph, roots, &n_roots));
    if (n_roots != 1) {
      std::fprintf(stderr, "captured forward: %zu roots\n", n_roots);
      std::exit(1);
    }
    root_node = roots[0];
    PROBE_CHECK(cudaGraphKernelNodeGetParams(root_node, &root_params));
    PROBE_CHECK(cudaGraphInstantiate(&exec, graph, 0));
  }
  cudaEvent_t e0, e1;
  PROBE_CHECK(cudaEventCreate(&e0));
  PROBE_CHECK(cudaEventCreate(&e1));
  const int launches = replays / per_launch;
  auto run = [&](int count) {
    for (int i = 0; i < count; ++i) {
      if (stream) {
        LaunchForward(r, s, st, mode == Mode::kStreamPdl, i, sink);
        continue;
      }
      if (mode == Mode::kGraphSetParams) {
        cudaKernelNodeParams p = root_params;
        int64_t ns = s.root_ns, arg = i;
        int* sk = sink;
        void* args[] = {&ns, &arg, &sk};
        p.kernelParams = args;
        p.extra = nullptr;
        PROBE_CHECK(cudaGraphExecKernelNodeSetParams(exec, root_node, &p));
      }
      PROBE_CHECK(cudaGraphLaunch(exec, st));
    }
  };
  run(launches / 10 + 10);
  PROBE_CHECK(cudaStreamSynchronize(st));
  PROBE_CHECK(cudaEventRecord(e0, st));
  run(launches);
  PROBE_CHECK(cudaEventRecord(e1, st));
  PROBE_CHECK(cudaEventSynchronize(e1));
  float ms = 0;
  PROBE_CHECK(cudaEventElapsedTime(&ms, e0, e1));
  PROBE_CHECK(cudaEventDestroy(e0));
  PROBE_CHECK(cudaEventDestroy(e1));
  if (exec != nullptr) PROBE_CHECK(cudaGraphExecDestroy(exec));
  if (graph != nullptr) PROBE_CHECK(cudaGraphDestroy(graph));
  return 1000.0 * ms / (launches * per_launch);
}

}  // namespace

int main(int argc, char** argv) {
  int replays = 4000;
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], "--replays=", 10) == 0) {
      replays = std::atoi(argv[i] + 10);
    } else if (std::strcmp(argv[i], "--full") == 0) {
      g_root_smem = 16 << 10;
      g_kernel_smem = 110 << 10;
    } else {
      std::fprintf(stderr, "usage: launch_probe [--replays=N] [--full]\n");
      return 2;
    }
  }
  cudaDeviceProp prop = {};
  PROBE_CHECK(cudaGetDeviceProperties(&prop, 0));
  std::printf("card: %s, %d SMs\n", prop.name, prop.multiProcessorCount);
  PROBE_CHECK(cudaFuncSetAttribute(SpinKernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1));
  PROBE_CHECK(cudaFuncSetAttribute(SpinKernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                   std::max(g_root_smem, g_kernel_smem)));
  std::printf("shared memory a block: root %d, kernels %d bytes\n", g_root_smem, g_kernel_smem);
  int* sink = nullptr;
  PROBE_CHECK(cudaMalloc(&sink, 4096 * sizeof(int)));
  cudaStream_t st;
  PROBE_CHECK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));

  const Root roots[] = {{"1x32", 1, 32, 0},
                        {"16x1024 cluster 16", 16, 1024, 16},
                        {"16x1024 cluster 8", 16, 1024, 8},
                        {"16x1024 no cluster", 16, 1024, 0},
                        {"132x256", 132, 256, 0}};
  const Spins spins[] = {{0, 0, 0}, {7000, 14000, 10000}};
  const Mode modes[] = {Mode::kGraph, Mode::kGraphSetParams, Mode::kStream, Mode::kStreamPdl,
                        Mode::kGraphTwoPdl};
  std::printf("%-20s %-16s %8s %10s %10s\n", "root", "launch", "spins_us", "us/forward",
              "overhead");
  for (const Spins& s : spins) {
    for (const Root& r : roots) {
      for (Mode m : modes) {
        const double us = TimeForwards(r, s, m, replays, st, sink);
        std::printf("%-20s %-16s %8.1f %10.2f %10.2f\n", r.name, ModeName(m), s.us(), us,
                    us - s.us());
      }
    }
  }
  PROBE_CHECK(cudaFree(sink));
  PROBE_CHECK(cudaStreamDestroy(st));
  return 0;
}
