// Benchmarks one full MoE layer (routing included) of the CUDA engine on device-generated random
// weights, replayed from CUDA graphs, against the card's two ceilings measured in the same run.
//
//   cuda_engine_bench                       Google Benchmark suite (manual time from CUDA events)
//   cuda_engine_bench --report=out.jsonl    roofline table on stdout + one JSON line per point
//       [--shapes=mixtral,qwen3,dsv2lite,embedded] [--tokens=1,8,64,512,4096,16384] [--no-det]
//       [--shape=NAME:HIDDEN:INTER:EXPERTS:TOP_K]   (adds a routed-only shape; name it in --shapes)
//                             (every token count gets a CUDA graph, so its own plan, of its own)
//       [--narrow | --tall | --wide | --ws | --cluster]   (Hopper tile: 128x128 two per SM,
//       256x128, the cp.async 128x256 kernel, the warp-specialised persistent 128x256 one, or that
//       one with TMA-multicast weights over 2-block clusters, the default)
//       [--wgmma-from=N]   (rows per expert past which the Hopper tile runs)
//       [--decode-to=N]   (rows per expert up to which the decode tile runs)
//       [--max-down-splits=N]   (at most N K splits of the routed down GEMM)
//       [--max-batch=N]   (the engines' max_batch_tokens when above every --tokens: workspaces
//                         and the plans that depend on them, as a server configured for N sees)
//       [--no-decode-paths]   (small-batch paths off: the v6 engine, for comparisons)
//       [--no-gemv | --gemv-always] [--narrow-gate-up]   (decode GEMV never / wherever it fits;
//                             the narrow gate/up tile)
//       [--fused-route] [--early-prefetch-down | --late-prefetch-down] [--fused-cluster-size=N]
//       [--fused-clusters=N] [--down-h-smem] [--prefetch-units=N] [--down-tma] [--gate-up-tma]
//       [--[no-]one-front] [--decode-down-chunks=N] [--[no-]down-groups] [--down-groups-batch=N]
//       [--down-groups-preload=N]
//                             (decode experts path variants, CudaEngineOptions::decode_*; the
//                             --no-* / --down-h-global forms restore the defaults)
//       [--no-front-cluster] [--no-wave-split] [--no-router-mma]   (session 5 paths off)
//       [--no-large-router-mma]   (past kRouterMmaMaxTokens the router fused with the input copy
//                             or on the plan's Hopper tile, not the mma.sync tile)
//       [--no-narrow-router]   (past kRouterMmaMaxTokens routers of 64-128 rows not on the
//                             128 x 128 wgmma tile: CudaEngineOptions::large_batch_router_narrow)
//       [--static-schedule]   (cluster tile: every ClusterCount()-th work item per cluster, not
//                             the dynamic schedule: CudaEngineOptions::cluster_dynamic_schedule)
//       [--down-overlap | --no-down-overlap]   (cluster tile: the down GEMM starts on the SMs
//                             gate/up leaves idle, per-expert h-ready counters, in every plan /
//                             never; default: ping-pong plans and those of few gate/up items,
//                             MoePlan::down_overlap, CudaEngineOptions::cluster_down_overlap)
//       [--no-stream-gate-up | --stream-gate-up-always] [--stream-down]   (decode-tile plans'
//                             routed gate/up GEMM on the weight-streaming kernel never / in
//                             every such plan, and the down GEMM too:
//                             CudaEngineOptions::stream_gate_up, stream_down)
//       [--packed | --no-packed] [--packed-tensor | --no-packed-tensor]   (routed experts in the
//                             packed layout in every engine whose shapes allow / never; the
//                             cluster GEMMs' packed boxes by tensor copies in every plan / never:
//                             CudaEngineOptions::packed_expert_weights, packed_tensor_copies)
//       [--meta-copy]   (each forward's meta by a host-to-device copy before the graph, not as
//                       the graph's first kernel: CudaEngineOptions::meta_in_graph off)
//       [--no-front-meta]   (at 1 token the meta kernel first, not the front taking the meta:
//                            CudaEngineOptions::front_takes_meta off)
//       [--input-copy]   (the GEMMs read a copy of the input: CudaEngineOptions::input_in_place
//       off)
//       [--router-convert-splits=N]   (at most N K splits of the fused router; 1: none)
//       [--no-combine-unroll]   (the combine takes one chunk of 8 columns a thread)
//       [--no-early-indices]   (scatter and combine load indices after their PDL wait)
//       [--route-tail]   (route and scan in one grid: CudaEngineOptions::route_scan_tail)
//       [--no-gemm-prefetch]   (with --gemm-pdl: no weight stages before the down GEMM's wait)
//       [--zero-counts | --memset-counts]   (the first kernel zeroes the route's counters / a
//                             memset node does)
//       [--expected-active]   (floors from the expected distinct experts, no host forwards)
//       [--warmup-ms=N]   (forwards for N ms before each point is timed, so that the card's
//                         power-capped clock settles: without it a point's clock depends on the
//                         points before it; RESULTS.md "Session 40")
//       [--no-lead-forward]   (each batch of timed forwards starts on an idle device, as before
//                             session 46: its first interval then includes the host's submission)
//       [--no-tma-a-down | --tma-a-down] [--no-permute-x | --permute-x-always] [--quad-down |
//       --quad-down-always]   (cluster tile: the down GEMM's A by cp.async / by TMA in every plan,
//                             default TMA outside ping-pong plans; gate/up never / always
//                             from the permuted copy of x; the down GEMM on 2 x 2 clusters from
//                             kQuadDownMinWaves waves / always)
//       [--extra-rows | --no-extra-rows]   (cluster tile: an expert's last rows in its last
//                             pair always / never: CudaEngineOptions::cluster_pair_extra_rows)
//       [--no-pingpong | --pingpong-always]   (cluster tile: ping-pong GEMMs never / always)
//       [--raster-units=N]   (cluster tile: N units per raster group of the work items; default
//                             the plan's rule, MoePlan::raster_units)
//       [--pingpong-long-stages]   (ping-pong GEMMs in the kernel of 128-row stages)
//       [--no-hopper-pdl]   (no programmatic dependent launch in plans of Hopper tiles)
//       [--no-tma-store]   (cluster tile: full tiles' outputs by st.global, not TMA stores)
//       [--no-gemm-pdl]   (cluster tile: its GEMMs launch without PDL)
//   cuda_engine_bench --check-invariance    deterministic mode: wgmma vs mma.sync bits
//
// Per point: median and mean of many timed forwards (CUDA events around each forward, rotating
// among up to 32 slices of each input buffer), floor_us = max(bytes / HBM GB/s, FLOPs / matmul
// TFLOP/s) where bytes = activated experts' weights (distinct experts the timed inputs activate,
// averaged over them: the column `active`) + shared expert + router + activations in/out;
// %floor = floor_us / mean_us.
// Ceilings: a 2 GiB device-to-device copy (read + write) and an 8192^3 bf16 cuBLAS GEMM.
#include <benchmark/benchmark.h>
#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "engine/cuda/cublas_handle.h"
#include "engine/cuda/cuda_raii.h"
#include "kernels/gemm_trace.cuh"
#include "kernels/moe_kernels.h"
#include "moe/engine/cuda_engine.h"

namespace moe {
namespace {

// --narrow / --tall / --wide / --ws / --cluster: the Hopper tile (also for --check-invariance when
// given first); the engine's default otherwise.
CudaEngineOptions::HopperTile g_hopper_tile = CudaEngineOptions().hopper_tile;
// --cluster-solo: the cluster tile without multicast (each block loads its own weights).
bool g_cluster_multicast = true;
// --wgmma-from=N: rows per expert past which the Hopper tile runs (engine default otherwise).
int g_wgmma_min_rows = CudaEngineOptions().wgmma_min_rows_per_expert;
// --decode-to=N: rows per expert up to which the decode tile runs (engine default otherwise).
int g_decode_max_rows = CudaEngineOptions().decode_tile_max_rows_per_expert;
// --max-down-splits=N: at most N K splits of the routed down GEMM.
int g_max_down_splits = 0;
int g_raster_units = 0;   // --raster-units=N: CudaEngineOptions::cluster_raster_units
int64_t g_max_batch = 0;  // --max-batch=N: the engine's max_batch_tokens (workspaces, plans)
double g_warmup_ms = 0;   // --warmup-ms=N: forwards for N ms before each point's timed ones
// --no-lead-forward: no untimed forward ahead of each batch of timed ones (Timing's note).
bool g_lead_forward = true;
// --tokens=...: the token counts measured (each gets a graph of its own).
std::vector<int64_t> g_tokens;
// --no-decode-paths: the engine's small-batch paths off (overlap_launches, fused_decode_front,
// decode_gemv), for before/after comparisons on one card.
bool g_decode_paths = true;
// --no-gemv: without the decode GEMV; --narrow-gate-up: the 16-column gate/up decode tile.
bool g_decode_gemv = true;
bool g_decode_gemv_always = false;  // --gemv-always
bool g_narrow_gate_up = false;
// Decode experts path tuning (CudaEngineOptions, RESULTS.md "v9"); each flag sets one option:
// --fused-route / --no-fused-route, --early-prefetch-down / --late-prefetch-down /
// --no-prefetch-down, --fused-cluster-size=N, --fused-clusters=N, --down-h-smem / --down-h-global,
// --prefetch-units=N, --down-tma, --gate-up-tma, --decode-down-chunks=N (8, 10, 12; else the rule).
bool g_fused_route = CudaEngineOptions().decode_fused_route;
CudaEngineOptions::DownPrefetch g_prefetch_down = CudaEngineOptions().decode_prefetch_down;
int g_fused_cluster_size = CudaEngineOptions().decode_fused_cluster_size;
int g_fused_clusters = 0;
bool g_down_h_smem = CudaEngineOptions().decode_down_h_smem;
int g_prefetch_units = 0;                                                    // --prefetch-units=N
bool g_one_token_front = CudaEngineOptions().decode_front_one_token_kernel;  // --[no-]one-front
int g_down_chunks = 0;                                                   // --decode-down-chunks=N
bool g_down_groups = CudaEngineOptions().decode_down_groups;             // --[no-]down-groups
int g_down_groups_batch = CudaEngineOptions().decode_down_groups_batch;  // --down-groups-batch=N
int g_down_groups_preload =
    CudaEngineOptions().decode_down_groups_preload;                      // --down-groups-preload=N
bool g_front_cluster = CudaEngineOptions().decode_front_cluster;         // --[no-]front-cluster
bool g_wave_split = CudaEngineOptions().wave_split_down;                 // --no-wave-split
bool g_router_mma = CudaEngineOptions().small_batch_router_mma;          // --no-router-mma
bool g_large_router_mma = CudaEngineOptions().large_batch_router_mma;    // --[no-]large-router-mma
bool g_narrow_router = CudaEngineOptions().large_batch_router_narrow;    // --[no-]narrow-router
bool g_dynamic_schedule = CudaEngineOptions().cluster_dynamic_schedule;  // --static-schedule
// --no-quad-down / --quad-down / --quad-down-always: the 2 x 2 cluster down GEMM never / from
// kQuadDownMinWaves waves / always.
CudaEngineOptions::Use g_quad_down = CudaEngineOptions().cluster_quad_down;
CudaEngineOptions::Use g_tma_a_down = CudaEngineOptions().cluster_tma_a_down;  // --[no-]tma-a-down
// --extra-rows / --no-extra-rows: a pair's extra rows always / never.
CudaEngineOptions::Use g_pair_extra_rows = CudaEngineOptions().cluster_pair_extra_rows;
// --no-permute-x / --permute-x-always: gate/up from a permuted copy of x never / always.
CudaEngineOptions::Use g_permute_x = CudaEngineOptions().cluster_permute_x;
// --no-router-convert / --router-convert-always: the router fused with the input copy never /
// always.
CudaEngineOptions::Use g_router_convert = CudaEngineOptions().fused_router_convert;
// --router-convert-splits=N: at most N K splits of the fused router (1: none).
int g_router_convert_splits = CudaEngineOptions().max_router_convert_splits;
// --expected-active: floors from the expected distinct experts under uniform routing instead of
// those the timed inputs activate (no host forwards between points).
bool g_measure_active = true;
// --no-gemm-prefetch: with --gemm-pdl, the down GEMM does not stream weights before its wait.
bool g_gemm_prefetch = CudaEngineOptions().cluster_gemm_prefetch;
// --zero-counts: the first kernel zeroes the route's counters (no memset node); --memset-counts.
bool g_zero_counts = CudaEngineOptions().zero_counts_in_kernel;
// --route-tail: route and scan in one grid (CudaEngineOptions::route_scan_tail).
bool g_route_tail = CudaEngineOptions().route_scan_tail;
// --no-early-indices: the scatter and the combine load their indices after their PDL wait.
bool g_early_indices = CudaEngineOptions().early_index_loads;
// --no-combine-unroll: the combine takes one chunk a thread.
bool g_combine_unrolled = CudaEngineOptions().combine_unrolled;
#ifdef MOE_GEMM_TRACE
// --gemm-trace=PREFIX (trace builds): the cluster GEMM's timeline of each point's last forward
// into PREFIX_<shape>_<tokens>.bin (kernels/gemm_trace.cuh; tools/device/gemm_trace.py reads it).
std::string g_gemm_trace;
// --decode-trace=PREFIX (trace builds): the decode chain's timeline of each point's last
// DecodeTraceLayout::kReplays forwards into PREFIX_<shape>_<tokens>.bin (kernels/gemm_trace.cuh;
// tools/device/decode_trace.py reads it).
std::string g_decode_trace;
#endif
// --no-pingpong / --pingpong-always: the ping-pong cluster GEMMs never / always.
CudaEngineOptions::Use g_pingpong = CudaEngineOptions().cluster_pingpong;
// --pingpong-long-stages: ping-pong GEMMs in the kernel of 128-row stages (kMcStages of them).
bool g_pingpong_short_stages = CudaEngineOptions().cluster_pingpong_short_stages;
bool g_hopper_pdl = CudaEngineOptions().hopper_overlap_launches;  // --[no-]hopper-pdl
bool g_tma_store = CudaEngineOptions().cluster_tma_store;         // --[no-]tma-store
bool g_gemm_pdl = CudaEngineOptions().cluster_gemm_overlap;       // --[no-]gemm-pdl
CudaEngineOptions::Use g_down_overlap = CudaEngineOptions().cluster_down_overlap;
bool g_down_tma = false;     // --down-tma
bool g_gate_up_tma = false;  // --gate-up-tma
CudaEngineOptions::Use g_stream_gate_up = CudaEngineOptions().stream_gate_up;
bool g_stream_down = CudaEngineOptions().stream_down;                         // --stream-down
CudaEngineOptions::Use g_packed = CudaEngineOptions().packed_expert_weights;  // --[no-]packed
auto g_packed_tensor = CudaEngineOptions().packed_tensor_copies;  // --[no-]packed-tensor
bool g_meta_in_graph = CudaEngineOptions().meta_in_graph;         // --meta-copy
bool g_front_takes_meta = CudaEngineOptions().front_takes_meta;   // --no-front-meta
bool g_input_in_place = CudaEngineOptions().input_in_place;       // --input-copy

struct Shape {
  std::string name;
  int hidden, inter, experts, top_k, shared_inter;
  bool shared_gate;
  // vLLM fused_moe reference (H200, best config, full layer incl. routing), us, per token count.
  std::map<int64_t, double> ref_us;
};

std::vector<Shape>& MutableShapes() {
  static std::vector<Shape> shapes = {
      {"mixtral",
       4096,
       14336,
       8,
       2,
       0,
       false,
       {{1, 207}, {8, 509}, {64, 673}, {512, 956}, {4096, 4785}, {16384, 18807}}},
      {"qwen3",
       2048,
       768,
       128,
       8,
       0,
       false,
       {{1, 58}, {8, 154}, {64, 319}, {512, 358}, {4096, 798}, {16384, 2549}}},
      {"dsv2lite",
       2048,
       1408,
       64,
       6,
       0,
       false,
       {{1, 66}, {8, 178}, {64, 299}, {512, 333}, {4096, 916}, {16384, 3370}}},
      {"embedded", 512, 256, 32, 4, 512, true, {}},
  };
  return shapes;
}
const std::vector<Shape>& Shapes() { return MutableShapes(); }

// The non-empty items of `s` between `sep`s.
std::vector<std::string> Split(const std::string& s, char sep = ',') {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, sep)) {
    if (!item.empty()) out.push_back(item);
  }
  return out;
}

// --shape=NAME:HIDDEN:INTER:EXPERTS:TOP_K adds a routed-only shape (no vLLM reference), measured
// when --shapes names it: for experiments on GEMM shapes that no model of the table has.
bool AddShape(const std::string& spec) {
  const std::vector<std::string> f = Split(spec, ':');
  if (f.size() != 5) return false;
  Shape s{f[0],
          std::atoi(f[1].c_str()),
          std::atoi(f[2].c_str()),
          std::atoi(f[3].c_str()),
          std::atoi(f[4].c_str()),
          0,
          false,
          {}};
  if (s.hidden <= 0 || s.hidden % 8 != 0 || s.inter <= 0 || s.inter % 8 != 0 || s.experts <= 0 ||
      s.top_k <= 0 || s.top_k > s.experts) {
    return false;
  }
  MutableShapes().push_back(s);
  return true;
}

MoeSpec SpecOf(const Shape& s) {
  MoeSpec spec;
  spec.family = s.shared_gate ? Family::kQwen2Moe : Family::kQwen3Moe;
  spec.hidden = s.hidden;
  spec.moe_intermediate = s.inter;
  spec.n_layers = 1;
  spec.moe_layers = {0};
  spec.routing.n_experts = s.experts;
  spec.routing.top_k = s.top_k;
  spec.routing.norm_topk_prob = !s.shared_gate;
  spec.shared_intermediate = s.shared_inter;
  spec.shared_expert_gate = s.shared_gate;
  spec.weight_dtype = DType::kBF16;
  return spec;
}

#define BENCH_CHECK(expr)                                                     \
  do {                                                                        \
    const cudaError_t e_ = (expr);                                            \
    if (e_ != cudaSuccess) {                                                  \
      std::fprintf(stderr, "%s failed: %s\n", #expr, cudaGetErrorString(e_)); \
      std::exit(1);                                                           \
    }                                                                         \
  } while (0)

template <typename T>
T OrDie(StatusOr<T> v) {
  if (!v.ok()) {
    std::fprintf(stderr, "error: %s\n", v.status().ToString().c_str());
    std::exit(1);
  }
  return std::move(v).value();
}
void OrDie(const Status& s) {
  if (!s.ok()) {
    std::fprintf(stderr, "error: %s\n", s.ToString().c_str());
    std::exit(1);
  }
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

struct Ceilings {
  double hbm_gbs = 0;
  double matmul_tflops = 0;
};

Ceilings MeasureCeilings() {
  Ceilings c;
  cuda::Stream stream = OrDie(cuda::CreateStream());
  cuda::Event a = OrDie(cuda::CreateEvent(true)), b = OrDie(cuda::CreateEvent(true));
  {
    const int64_t bytes = 2LL << 30;
    cuda::DeviceBuffer src = OrDie(cuda::DeviceBuffer::Create(bytes));
    cuda::DeviceBuffer dst = OrDie(cuda::DeviceBuffer::Create(bytes));
    OrDie(cuda::LaunchFillRandom(src.get(), bytes / 2, cuda::WType::kBF16, 1.0f, 7, stream.get()));
    std::vector<double> ms;
    for (int i = 0; i < 12; ++i) {
      BENCH_CHECK(cudaEventRecord(a.get(), stream.get()));
      BENCH_CHECK(
          cudaMemcpyAsync(dst.get(), src.get(), bytes, cudaMemcpyDeviceToDevice, stream.get()));
      BENCH_CHECK(cudaEventRecord(b.get(), stream.get()));
      BENCH_CHECK(cudaEventSynchronize(b.get()));
      float t = 0;
      BENCH_CHECK(cudaEventElapsedTime(&t, a.get(), b.get()));
      if (i >= 2) ms.push_back(t);
    }
    c.hbm_gbs = 2.0 * bytes / (Median(ms) * 1e-3) / 1e9;
  }
  {
    const int n = 8192;
    cuda::DeviceBuffer A = OrDie(cuda::DeviceBuffer::Create(int64_t{n} * n * 2));
    cuda::DeviceBuffer B = OrDie(cuda::DeviceBuffer::Create(int64_t{n} * n * 2));
    cuda::DeviceBuffer C = OrDie(cuda::DeviceBuffer::Create(int64_t{n} * n * 2));
    OrDie(
        cuda::LaunchFillRandom(A.get(), int64_t{n} * n, cuda::WType::kBF16, 1.0f, 1, stream.get()));
    OrDie(
        cuda::LaunchFillRandom(B.get(), int64_t{n} * n, cuda::WType::kBF16, 1.0f, 2, stream.get()));
    cuda::CublasHandle h = OrDie(cuda::CublasHandle::Create(stream.get()));
    const float alpha = 1, beta = 0;
    auto gemm = [&]() -> Status {
      CUBLAS_RETURN_IF_ERROR(cublasGemmEx(
          h.get(), CUBLAS_OP_T, CUBLAS_OP_N, n, n, n, &alpha, A.get(), CUDA_R_16BF, n, B.get(),
          CUDA_R_16BF, n, &beta, C.get(), CUDA_R_16BF, n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
      return absl::OkStatus();
    };
    std::vector<double> ms;
    for (int i = 0; i < 12; ++i) {
      BENCH_CHECK(cudaEventRecord(a.get(), stream.get()));
      OrDie(gemm());
      BENCH_CHECK(cudaEventRecord(b.get(), stream.get()));
      BENCH_CHECK(cudaEventSynchronize(b.get()));
      float t = 0;
      BENCH_CHECK(cudaEventElapsedTime(&t, a.get(), b.get()));
      if (i >= 2) ms.push_back(t);
    }
    c.matmul_tflops = 2.0 * n * n * double(n) / (Median(ms) * 1e-3) / 1e12;
  }
  return c;
}

struct PointCost {
  double bytes = 0;
  double flops = 0;
};

// Expected distinct experts that `tokens` tokens activate under uniform routing.
double ExpectedActive(const Shape& s, int64_t tokens) {
  const double e = s.experts, k = s.top_k;
  return e * (1.0 - std::pow(1.0 - k / e, static_cast<double>(tokens)));
}

// `active`: distinct routed experts the batch activates (ExpectedActive, or measured).
PointCost CostOf(const Shape& s, int64_t tokens, double active) {
  const double e = s.experts, k = s.top_k, t = static_cast<double>(tokens);
  const double expert_bytes = 3.0 * s.hidden * s.inter * 2;
  PointCost c;
  c.bytes = active * expert_bytes + 3.0 * s.hidden * s.shared_inter * 2 +
            (e + (s.shared_gate ? 1 : 0)) * s.hidden * 2 + 2.0 * t * s.hidden * 2;
  c.flops = 2.0 * t *
            (k * 3.0 * s.hidden * s.inter + 3.0 * s.hidden * s.shared_inter +
             (e + (s.shared_gate ? 1 : 0)) * s.hidden);
  return c;
}

// Owns an engine for one shape and rotating device inputs; times forwards of `tokens` tokens.
class Runner {
 public:
  Runner(const Shape& shape, bool deterministic, int64_t max_tokens) : shape_(shape) {
    CudaEngineOptions o;
    o.max_batch_tokens = max_tokens;
    o.deterministic = deterministic;
    // The table's sizes and every size asked for (each runs its own plan).
    std::set<int64_t> sizes = {1, 8, 64, 512, 4096, 16384};
    for (int64_t t : g_tokens) {
      if (t <= max_tokens) sizes.insert(t);
    }
    o.graph_batch_sizes.assign(sizes.begin(), sizes.end());
    o.hopper_tile = g_hopper_tile;
    o.cluster_multicast = g_cluster_multicast;
    o.wgmma_min_rows_per_expert = g_wgmma_min_rows;
    o.decode_tile_max_rows_per_expert = g_decode_max_rows;
    o.max_down_splits = g_max_down_splits;
    o.cluster_raster_units = g_raster_units;
    if (!g_decode_paths) o.overlap_launches = o.fused_decode_front = false;
    if (!g_decode_paths || !g_decode_gemv) o.decode_gemv = CudaEngineOptions::DecodeGemv::kNever;
    if (g_decode_gemv_always) o.decode_gemv = CudaEngineOptions::DecodeGemv::kAlways;
    if (g_narrow_gate_up) o.narrow_decode_gate_up = true;
    o.decode_fused_route = g_fused_route;
    o.decode_prefetch_down = g_prefetch_down;
    o.decode_fused_cluster_size = g_fused_cluster_size;
    o.decode_fused_max_clusters = g_fused_clusters;
    o.decode_down_h_smem = g_down_h_smem;
    o.decode_prefetch_units = g_prefetch_units;
    o.decode_front_one_token_kernel = g_one_token_front;
    o.decode_down_chunks = g_down_chunks;
    o.decode_down_groups = g_down_groups;
    o.decode_down_groups_batch = g_down_groups_batch;
    o.decode_down_groups_preload = g_down_groups_preload;
    o.decode_front_cluster = g_front_cluster;
    o.wave_split_down = g_wave_split;
    o.cluster_quad_down = g_quad_down;
    o.cluster_tma_a_down = g_tma_a_down;
    o.cluster_pair_extra_rows = g_pair_extra_rows;
    o.cluster_permute_x = g_permute_x;
    o.cluster_pingpong = g_pingpong;
    o.cluster_pingpong_short_stages = g_pingpong_short_stages;
    o.hopper_overlap_launches = g_hopper_pdl;
    o.cluster_tma_store = g_tma_store;
    o.cluster_gemm_overlap = g_gemm_pdl;
    o.cluster_down_overlap = g_down_overlap;
    o.fused_router_convert = g_router_convert;
    o.max_router_convert_splits = g_router_convert_splits;
    o.combine_unrolled = g_combine_unrolled;
    o.early_index_loads = g_early_indices;
    o.route_scan_tail = g_route_tail;
    o.cluster_gemm_prefetch = g_gemm_prefetch;
    o.zero_counts_in_kernel = g_zero_counts;
    o.small_batch_router_mma = g_router_mma;
    o.large_batch_router_mma = g_large_router_mma;
    o.large_batch_router_narrow = g_narrow_router;
    o.cluster_dynamic_schedule = g_dynamic_schedule;
    o.decode_down_tma = g_down_tma;
    o.decode_gate_up_tma = g_gate_up_tma;
    o.stream_gate_up = g_stream_gate_up;
    o.stream_down = g_stream_down;
    o.packed_expert_weights = g_packed;
    o.packed_tensor_copies = g_packed_tensor;
    o.meta_in_graph = g_meta_in_graph;
    o.front_takes_meta = g_front_takes_meta;
    o.input_in_place = g_input_in_place;
    engine_ = OrDie(CudaEngine::CreateRandom(SpecOf(shape), 1234, o));
    max_tokens_ = max_tokens;
    const int64_t in_bytes = max_tokens * shape.hidden * 2;
    // Enough input sets that together they exceed the L2 several times over.
    const int n_inputs = static_cast<int>(std::clamp<int64_t>((256LL << 20) / in_bytes, 2, 8));
    for (int i = 0; i < n_inputs; ++i) {
      inputs_.push_back(OrDie(cuda::DeviceBuffer::Create(in_bytes)));
      OrDie(cuda::LaunchFillRandom(inputs_.back().get(), in_bytes / 2, cuda::WType::kBF16, 1.0f,
                                   100 + i, engine_->stream(0)));
    }
    output_ = OrDie(cuda::DeviceBuffer::Create(in_bytes));
    start_ = OrDie(cuda::CreateEvent(true));
    stop_ = OrDie(cuda::CreateEvent(true));
    BENCH_CHECK(cudaStreamSynchronize(engine_->stream(0)));
  }

  CudaEngine& engine() { return *engine_; }

  // Distinct inputs of `tokens` tokens: slices of the input buffers, so that small batches see
  // many routings (the expected-experts floor is an average over routings) whatever the largest
  // batch. NOTES: with one slice per buffer, Mixtral at 8 tokens took 590 us in an engine for 64
  // tokens (8 buffers) and 664 us in one for 16384 (2 buffers): the two 8-token inputs of the
  // latter happened to activate more experts than average (session 9, RESULTS.md).
  int64_t Slices(int64_t tokens) const {
    return std::min<int64_t>(max_tokens_ / tokens, kMaxSlices) *
           static_cast<int64_t>(inputs_.size());
  }
  const void* Input(int64_t tokens, int64_t j) const {
    const int64_t n = static_cast<int64_t>(inputs_.size());
    const int64_t slice = (j % Slices(tokens)) / n;
    return static_cast<const uint8_t*>(inputs_[j % n].get()) + slice * tokens * shape_.hidden * 2;
  }

  // Mean distinct routed experts over the Slices(tokens) inputs, from the engine's own routing
  // (a host forward of each input, expert ids out).
  double MeasuredActive(int64_t tokens) {
    const int64_t k = shape_.top_k;
    std::vector<uint16_t> in(tokens * shape_.hidden), out(in.size());
    std::vector<int32_t> ids(tokens * k);
    double sum = 0;
    const int64_t slices = Slices(tokens);
    for (int64_t j = 0; j < slices; ++j) {
      BENCH_CHECK(cudaMemcpy(in.data(), Input(tokens, j), in.size() * 2, cudaMemcpyDeviceToHost));
      ForwardArgs a;
      a.layer = 0;
      a.dtype = DType::kBF16;
      a.n_tokens = tokens;
      a.input = in.data();
      a.output = out.data();
      a.expert_ids = ids.data();
      OrDie(engine_->Forward(a));
      sum += static_cast<double>(std::set<int32_t>(ids.begin(), ids.end()).size());
    }
    return sum / static_cast<double>(slices);
  }

  // One forward of `tokens` on the next input, enqueued on stream 0.
  void Enqueue(int64_t tokens) {
    DeviceForwardArgs a;
    a.layer = 0;
    a.dtype = DType::kBF16;
    a.n_tokens = tokens;
    a.input = Input(tokens, next_++);
    a.output = output_.get();
    OrDie(engine_->EnqueueDevice(a));
  }

  // One timed forward, in microseconds.
  double TimeOne(int64_t tokens) {
    cudaStream_t st = engine_->stream(0);
    BENCH_CHECK(cudaEventRecord(start_.get(), st));
    Enqueue(tokens);
    BENCH_CHECK(cudaEventRecord(stop_.get(), st));
    BENCH_CHECK(cudaEventSynchronize(stop_.get()));
    float ms = 0;
    BENCH_CHECK(cudaEventElapsedTime(&ms, start_.get(), stop_.get()));
    return ms * 1e3;
  }

  // Median and mean of forwards after warm-up (graph capture happens in the first one). Forwards
  // are enqueued back to back in batches (events between them), so the host's submission time
  // hides behind the device's work, as in a serving loop. Each batch starts with one untimed
  // forward: the batch's first event then completes when that forward does, with the first timed
  // one already queued behind it. Without it (--no-lead-forward) the device is idle when the
  // first event is recorded, and the first interval of every batch also counts the host's
  // submission of its forward (a few us at 1 token; the median does not see it, the mean does).
  struct Timing {
    double median_us, mean_us;
  };
  double MedianUs(int64_t tokens) { return Time(tokens).median_us; }
  Timing Time(int64_t tokens) {
    for (int i = 0; i < 5; ++i) TimeOne(tokens);
    cudaStream_t st = engine_->stream(0);
    // --warmup-ms: the same forwards, untimed, until the card has run them that long (at least 5
    // ms of device time each round, so the host's waits stay a small share).
    for (double ran_ms = 0; ran_ms < g_warmup_ms;) {
      BENCH_CHECK(cudaEventRecord(start_.get(), st));
      for (double enqueued_us = 0; enqueued_us < 5e3;) {
        Enqueue(tokens);
        enqueued_us += 20.0 + 0.05 * static_cast<double>(tokens);  // a lower bound per forward
      }
      BENCH_CHECK(cudaEventRecord(stop_.get(), st));
      BENCH_CHECK(cudaEventSynchronize(stop_.get()));
      float ms = 0;
      BENCH_CHECK(cudaEventElapsedTime(&ms, start_.get(), stop_.get()));
      ran_ms += ms;
    }
    constexpr int kBatch = 20;
    std::vector<cuda::Event> ev;
    for (int i = 0; i <= kBatch; ++i) ev.push_back(OrDie(cuda::CreateEvent(true)));
    std::vector<double> us;
    double total = 0;
    while (us.size() < 40 || (total < 3e5 && us.size() < 400)) {
      if (g_lead_forward) Enqueue(tokens);
      BENCH_CHECK(cudaEventRecord(ev[0].get(), st));
      for (int i = 0; i < kBatch; ++i) {
        Enqueue(tokens);
        BENCH_CHECK(cudaEventRecord(ev[i + 1].get(), st));
      }
      BENCH_CHECK(cudaEventSynchronize(ev[kBatch].get()));
      for (int i = 0; i < kBatch; ++i) {
        float ms = 0;
        BENCH_CHECK(cudaEventElapsedTime(&ms, ev[i].get(), ev[i + 1].get()));
        us.push_back(ms * 1e3);
        total += ms * 1e3;
      }
    }
    return Timing{Median(us), total / static_cast<double>(us.size())};
  }

 private:
  static constexpr int64_t kMaxSlices = 32;  // per input buffer
  Shape shape_;
  std::unique_ptr<CudaEngine> engine_;
  std::vector<cuda::DeviceBuffer> inputs_;
  cuda::DeviceBuffer output_;
  cuda::Event start_, stop_;
  int64_t max_tokens_ = 0;
  int64_t next_ = 0;
};

#ifdef MOE_GEMM_TRACE
// Copies `words` uint64 words of a trace buffer to the file `path` once the device is idle.
void WriteTrace(const cuda::DeviceBuffer& buf, int64_t words, const std::string& path) {
  BENCH_CHECK(cudaDeviceSynchronize());
  std::vector<uint64_t> host(static_cast<size_t>(words));
  BENCH_CHECK(cudaMemcpy(host.data(), buf.get(), host.size() * 8, cudaMemcpyDeviceToHost));
  std::ofstream(path, std::ios::binary)
      .write(reinterpret_cast<const char*>(host.data()),
             static_cast<std::streamsize>(host.size() * 8));
}
#endif

int Report(const std::string& json_path, const std::vector<std::string>& shape_names,
           const std::vector<int64_t>& tokens, bool with_det) {
  cudaDeviceProp prop{};
  BENCH_CHECK(cudaGetDeviceProperties(&prop, 0));
  const Ceilings ceil = MeasureCeilings();
  std::printf("card: %s (%d SMs)  HBM copy: %.0f GB/s  bf16 cuBLAS 8192^3: %.0f TFLOP/s\n",
              prop.name, prop.multiProcessorCount, ceil.hbm_gbs, ceil.matmul_tflops);
  std::ofstream json(json_path);
  std::printf("%-9s %6s %10s %10s %10s %7s %7s %8s %8s %9s %10s %8s\n", "shape", "tokens",
              "time_us", "mean_us", "floor_us", "active", "%floor", "TFLOP/s", "GB/s", "vllm_us",
              "det_us", "det/def");
  const int64_t max_tokens = std::max(g_max_batch, *std::max_element(tokens.begin(), tokens.end()));
  for (const Shape& shape : Shapes()) {
    if (std::find(shape_names.begin(), shape_names.end(), shape.name) == shape_names.end())
      continue;
    std::map<int64_t, double> det_us;
    if (with_det) {
      Runner det(shape, true, max_tokens);
      for (int64_t t : tokens) det_us[t] = det.MedianUs(t);
    }
    Runner run(shape, false, max_tokens);
#ifdef MOE_GEMM_TRACE
    cuda::DeviceBuffer trace;
    if (!g_gemm_trace.empty()) {
      trace = OrDie(cuda::DeviceBuffer::Create(cuda::GemmTraceLayout::kWords * 8));
      OrDie(cuda::SetGemmTraceBuffer(trace.as<uint64_t>()));
    }
    cuda::DeviceBuffer decode_trace;
    if (!g_decode_trace.empty()) {
      decode_trace = OrDie(cuda::DeviceBuffer::Create(cuda::DecodeTraceLayout::kWords * 8));
      OrDie(cuda::SetDecodeTraceBuffer(decode_trace.as<uint64_t>()));
    }
#endif
    for (int64_t t : tokens) {
#ifdef MOE_GEMM_TRACE
      if (!g_gemm_trace.empty()) {
        BENCH_CHECK(cudaMemset(trace.get(), 0, cuda::GemmTraceLayout::kWords * 8));
      }
      if (!g_decode_trace.empty()) {
        BENCH_CHECK(cudaMemset(decode_trace.get(), 0, cuda::DecodeTraceLayout::kWords * 8));
      }
#endif
      const Runner::Timing tm = run.Time(t);
      const double us = tm.median_us;
#ifdef MOE_GEMM_TRACE
      if (!g_gemm_trace.empty()) {
        WriteTrace(trace, cuda::GemmTraceLayout::kWords,
                   g_gemm_trace + "_" + shape.name + "_" + std::to_string(t) + ".bin");
      }
      if (!g_decode_trace.empty()) {
        WriteTrace(decode_trace, cuda::DecodeTraceLayout::kWords,
                   g_decode_trace + "_" + shape.name + "_" + std::to_string(t) + ".bin");
      }
#endif
      // The floor counts the experts the timed inputs activated; it is an average over them, so
      // %floor compares it with the mean time (at a few tokens the count varies between inputs
      // and the median time follows the most common count).
      const double active = g_measure_active ? run.MeasuredActive(t) : ExpectedActive(shape, t);
      const PointCost c = CostOf(shape, t, active);
      const double floor_us =
          std::max(c.bytes / (ceil.hbm_gbs * 1e3), c.flops / (ceil.matmul_tflops * 1e6));
      const auto ref = shape.ref_us.find(t);
      const double ref_us = ref == shape.ref_us.end() ? 0 : ref->second;
      const double d = with_det ? det_us[t] : 0;
      std::printf("%-9s %6lld %10.1f %10.1f %10.1f %7.2f %6.1f%% %8.1f %8.0f %9.0f %10.1f %8.2f\n",
                  shape.name.c_str(), static_cast<long long>(t), us, tm.mean_us, floor_us, active,
                  100.0 * floor_us / tm.mean_us, c.flops / us / 1e6, c.bytes / us / 1e3, ref_us, d,
                  with_det ? d / us : 0.0);
      std::fflush(stdout);
      json << "{\"shape\":\"" << shape.name << "\",\"tokens\":" << t << ",\"time_us\":" << us
           << ",\"mean_us\":" << tm.mean_us << ",\"active_experts\":" << active
           << ",\"expected_active\":" << ExpectedActive(shape, t) << ",\"floor_us\":" << floor_us
           << ",\"det_time_us\":" << d << ",\"vllm_h200_us\":" << ref_us
           << ",\"tflops\":" << c.flops / us / 1e6 << ",\"gbs\":" << c.bytes / us / 1e3
           << ",\"card\":\"" << prop.name << "\",\"hbm_gbs\":" << ceil.hbm_gbs
           << ",\"matmul_tflops\":" << ceil.matmul_tflops << ",\"warmup_ms\":" << g_warmup_ms
           << ",\"lead_forward\":" << (g_lead_forward ? "true" : "false") << "}\n";
    }
    std::printf(
        "  %s: weights %.1f MiB on device (%s), workspace %.1f MiB per slot (max %lld tokens), "
        "fused decode grid %d blocks\n",
        shape.name.c_str(), run.engine().weight_device_bytes() / 1048576.0,
        run.engine().packed_expert_weights() ? "routed experts packed" : "row-major",
        run.engine().workspace_device_bytes_per_slot() / 1048576.0,
        static_cast<long long>(max_tokens), run.engine().fused_decode_blocks());
#ifdef MOE_GEMM_TRACE
    if (!g_gemm_trace.empty()) OrDie(cuda::SetGemmTraceBuffer(nullptr));
    if (!g_decode_trace.empty()) OrDie(cuda::SetDecodeTraceBuffer(nullptr));
#endif
  }
  if (g_hopper_tile == CudaEngineOptions::HopperTile::kWideCluster) {
    const StatusOr<int> clusters = cuda::ClusterGemmResidentClusters();
    std::printf("cluster tile (multicast %s): %d clusters of 2 blocks resident\n",
                g_cluster_multicast ? "on" : "off", clusters.ok() ? *clusters : -1);
  }
  return 0;
}

// Deterministic mode with wgmma allowed: are a token's output bits the same alone (decode tile,
// mma.sync) and inside a large batch (wgmma tile)? Prints the number of differing rows.
int CheckInvariance() {
  int failures = 0;
  for (const Shape& shape : Shapes()) {
    if (shape.name == "mixtral") continue;  // same kernels, bigger
    CudaEngineOptions o;
    o.max_batch_tokens = 2048;
    o.deterministic = true;
    o.deterministic_wgmma = true;
    o.hopper_tile = g_hopper_tile;
    o.cluster_multicast = g_cluster_multicast;
    o.wgmma_min_rows_per_expert = g_wgmma_min_rows;
    auto engine = OrDie(CudaEngine::CreateRandom(SpecOf(shape), 99, o));
    const int64_t n = 2048, h = shape.hidden;
    cuda::DeviceBuffer in = OrDie(cuda::DeviceBuffer::Create(n * h * 2));
    cuda::DeviceBuffer out_full = OrDie(cuda::DeviceBuffer::Create(n * h * 2));
    cuda::DeviceBuffer out_part = OrDie(cuda::DeviceBuffer::Create(n * h * 2));
    cudaStream_t st = engine->stream(0);
    OrDie(cuda::LaunchFillRandom(in.get(), n * h, cuda::WType::kBF16, 1.0f, 5, st));
    auto run = [&](int64_t begin, int64_t len, void* out) {
      DeviceForwardArgs a;
      a.layer = 0;
      a.n_tokens = len;
      a.input = in.as<uint16_t>() + begin * h;
      a.output = static_cast<uint16_t*>(out) + begin * h;
      OrDie(engine->EnqueueDevice(a));
    };
    run(0, n, out_full.get());
    // Single tokens (decode tile) and a medium batch (mma.sync medium tile).
    for (int64_t t = 0; t < 64; ++t) run(t, 1, out_part.get());
    run(64, 200, out_part.get());
    BENCH_CHECK(cudaStreamSynchronize(st));
    std::vector<uint16_t> full(n * h), part(n * h);
    BENCH_CHECK(cudaMemcpy(full.data(), out_full.get(), full.size() * 2, cudaMemcpyDeviceToHost));
    BENCH_CHECK(cudaMemcpy(part.data(), out_part.get(), part.size() * 2, cudaMemcpyDeviceToHost));
    int differing = 0;
    for (int64_t t = 0; t < 264; ++t) {
      if (std::memcmp(full.data() + t * h, part.data() + t * h, h * 2) != 0) ++differing;
    }
    std::printf(
        "invariance %-9s wgmma batch of %lld vs decode/medium tiles: %d of 264 rows differ\n",
        shape.name.c_str(), static_cast<long long>(n), differing);
    failures += differing;
  }
  return failures == 0 ? 0 : 1;
}

// Google Benchmark: one benchmark per (shape, tokens), manual time from CUDA events.
void BM_MoeLayer(benchmark::State& state, const Shape* shape) {
  static std::map<std::string, std::unique_ptr<Runner>> runners;
  int dummy = 0;
  if (cudaGetDeviceCount(&dummy) != cudaSuccess || dummy == 0) {
    state.SkipWithError("no CUDA device");
    return;
  }
  auto& runner = runners[shape->name];
  if (!runner) runner = std::make_unique<Runner>(*shape, false, 16384);
  const int64_t tokens = state.range(0);
  for (int i = 0; i < 3; ++i) runner->TimeOne(tokens);
  for (auto _ : state) state.SetIterationTime(runner->TimeOne(tokens) * 1e-6);
  const PointCost c = CostOf(*shape, tokens, ExpectedActive(*shape, tokens));
  state.counters["GB/s"] =
      benchmark::Counter(c.bytes * state.iterations(), benchmark::Counter::kIsRate);
  state.counters["FLOP/s"] =
      benchmark::Counter(c.flops * state.iterations(), benchmark::Counter::kIsRate);
}

}  // namespace
}  // namespace moe

int main(int argc, char** argv) {
  std::string report;
  std::vector<std::string> shapes = {"mixtral", "qwen3", "dsv2lite", "embedded"};
  std::vector<int64_t> tokens = {1, 8, 64, 512, 4096, 16384};
  bool with_det = true;
  std::vector<char*> rest = {argv[0]};
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a.rfind("--report", 0) == 0) {
      report = a.size() > 9 ? a.substr(9) : "cuda_engine_bench.jsonl";
    } else if (a.rfind("--shape=", 0) == 0) {
      if (!moe::AddShape(a.substr(8))) {
        std::fprintf(stderr, "bad --shape=%s (NAME:HIDDEN:INTER:EXPERTS:TOP_K)\n", a.c_str() + 8);
        return 2;
      }
    } else if (a.rfind("--shapes=", 0) == 0) {
      shapes = moe::Split(a.substr(9));
    } else if (a.rfind("--tokens=", 0) == 0) {
      tokens.clear();
      for (const auto& t : moe::Split(a.substr(9))) tokens.push_back(std::stoll(t));
      moe::g_tokens = tokens;
    } else if (a == "--check-invariance") {
      return moe::CheckInvariance();
    } else if (a == "--narrow") {
      moe::g_hopper_tile = moe::CudaEngineOptions::HopperTile::kTwoPerSm;
    } else if (a == "--tall") {
      moe::g_hopper_tile = moe::CudaEngineOptions::HopperTile::kTall;
    } else if (a == "--wide") {
      moe::g_hopper_tile = moe::CudaEngineOptions::HopperTile::kWide;
    } else if (a == "--ws") {
      moe::g_hopper_tile = moe::CudaEngineOptions::HopperTile::kWideWarpSpecialized;
    } else if (a == "--cluster") {
      moe::g_hopper_tile = moe::CudaEngineOptions::HopperTile::kWideCluster;
    } else if (a.rfind("--wgmma-from=", 0) == 0) {
      moe::g_wgmma_min_rows = std::atoi(a.c_str() + 13);
    } else if (a.rfind("--max-down-splits=", 0) == 0) {
      moe::g_max_down_splits = std::atoi(a.c_str() + 18);
    } else if (a.rfind("--raster-units=", 0) == 0) {
      moe::g_raster_units = std::atoi(a.c_str() + 15);
    } else if (a.rfind("--max-batch=", 0) == 0) {
      moe::g_max_batch = std::atoll(a.c_str() + 12);
    } else if (a.rfind("--warmup-ms=", 0) == 0) {
      moe::g_warmup_ms = std::atof(a.c_str() + 12);
    } else if (a == "--no-lead-forward") {
      moe::g_lead_forward = false;
    } else if (a.rfind("--decode-to=", 0) == 0) {
      moe::g_decode_max_rows = std::atoi(a.c_str() + 12);
    } else if (a == "--cluster-solo") {
      moe::g_hopper_tile = moe::CudaEngineOptions::HopperTile::kWideCluster;
      moe::g_cluster_multicast = false;
    } else if (a == "--no-decode-paths") {
      moe::g_decode_paths = false;
    } else if (a == "--no-gemv") {
      moe::g_decode_gemv = false;
    } else if (a == "--gemv-always") {
      moe::g_decode_gemv_always = true;
    } else if (a == "--narrow-gate-up") {
      moe::g_narrow_gate_up = true;
    } else if (a == "--no-fused-route") {
      moe::g_fused_route = false;
    } else if (a == "--fused-route") {
      moe::g_fused_route = true;
    } else if (a == "--early-prefetch-down") {
      moe::g_prefetch_down = moe::CudaEngineOptions::DownPrefetch::kEarly;
    } else if (a == "--no-prefetch-down") {
      moe::g_prefetch_down = moe::CudaEngineOptions::DownPrefetch::kNone;
    } else if (a == "--late-prefetch-down") {
      moe::g_prefetch_down = moe::CudaEngineOptions::DownPrefetch::kLate;
    } else if (a.rfind("--fused-cluster-size=", 0) == 0) {
      moe::g_fused_cluster_size = std::atoi(a.c_str() + 21);
    } else if (a.rfind("--fused-clusters=", 0) == 0) {
      moe::g_fused_clusters = std::atoi(a.c_str() + 17);
    } else if (a == "--down-h-global") {
      moe::g_down_h_smem = false;
    } else if (a == "--down-h-smem") {
      moe::g_down_h_smem = true;
    } else if (a.rfind("--prefetch-units=", 0) == 0) {
      moe::g_prefetch_units = std::atoi(a.c_str() + 17);
    } else if (a == "--one-front") {
      moe::g_one_token_front = true;
    } else if (a == "--no-one-front") {
      moe::g_one_token_front = false;
    } else if (a.rfind("--decode-down-chunks=", 0) == 0) {
      moe::g_down_chunks = std::atoi(a.c_str() + 21);
    } else if (a == "--down-groups") {
      moe::g_down_groups = true;
    } else if (a == "--no-down-groups") {
      moe::g_down_groups = false;
    } else if (a.rfind("--down-groups-batch=", 0) == 0) {
      moe::g_down_groups_batch = std::atoi(a.c_str() + 20);
    } else if (a.rfind("--down-groups-preload=", 0) == 0) {
      moe::g_down_groups_preload = std::atoi(a.c_str() + 22);
    } else if (a == "--no-quad-down") {
      moe::g_quad_down = moe::CudaEngineOptions::Use::kNever;
    } else if (a == "--no-permute-x") {
      moe::g_permute_x = moe::CudaEngineOptions::Use::kNever;
    } else if (a == "--permute-x-always") {
      moe::g_permute_x = moe::CudaEngineOptions::Use::kAlways;
    } else if (a == "--tma-a-down") {
      moe::g_tma_a_down = moe::CudaEngineOptions::Use::kAlways;
    } else if (a == "--no-tma-a-down") {
      moe::g_tma_a_down = moe::CudaEngineOptions::Use::kNever;
    } else if (a == "--extra-rows") {
      moe::g_pair_extra_rows = moe::CudaEngineOptions::Use::kAlways;
    } else if (a == "--no-extra-rows") {
      moe::g_pair_extra_rows = moe::CudaEngineOptions::Use::kNever;
    } else if (a == "--quad-down") {
      moe::g_quad_down = moe::CudaEngineOptions::Use::kAuto;
    } else if (a == "--quad-down-always") {
      moe::g_quad_down = moe::CudaEngineOptions::Use::kAlways;
    } else if (a == "--no-router-convert") {
      moe::g_router_convert = moe::CudaEngineOptions::Use::kNever;
    } else if (a == "--router-convert-always") {
      moe::g_router_convert = moe::CudaEngineOptions::Use::kAlways;
    } else if (a == "--no-gemm-prefetch") {
      moe::g_gemm_prefetch = false;
    } else if (a == "--zero-counts") {
      moe::g_zero_counts = true;
    } else if (a == "--memset-counts") {
      moe::g_zero_counts = false;
    } else if (a == "--route-tail") {
      moe::g_route_tail = true;
    } else if (a == "--no-early-indices") {
      moe::g_early_indices = false;
    } else if (a == "--no-combine-unroll") {
      moe::g_combine_unrolled = false;
    } else if (a.rfind("--router-convert-splits=", 0) == 0) {
      moe::g_router_convert_splits = std::atoi(a.c_str() + 24);
    } else if (a == "--no-router-mma") {
      moe::g_router_mma = false;
    } else if (a == "--large-router-mma") {
      moe::g_large_router_mma = true;
    } else if (a == "--no-large-router-mma") {
      moe::g_large_router_mma = false;
    } else if (a == "--narrow-router") {
      moe::g_narrow_router = true;
    } else if (a == "--no-narrow-router") {
      moe::g_narrow_router = false;
    } else if (a == "--static-schedule") {
      moe::g_dynamic_schedule = false;
    } else if (a == "--dynamic-schedule") {
      moe::g_dynamic_schedule = true;
    } else if (a == "--no-wave-split") {
      moe::g_wave_split = false;
    } else if (a == "--front-cluster") {
      moe::g_front_cluster = true;
    } else if (a == "--no-front-cluster") {
      moe::g_front_cluster = false;
    } else if (a == "--down-tma") {
      moe::g_down_tma = true;
    } else if (a == "--gate-up-tma") {
      moe::g_gate_up_tma = true;
    } else if (a == "--no-stream-gate-up") {
      moe::g_stream_gate_up = moe::CudaEngineOptions::Use::kNever;
    } else if (a == "--stream-gate-up-always") {
      moe::g_stream_gate_up = moe::CudaEngineOptions::Use::kAlways;
    } else if (a == "--stream-down") {
      moe::g_stream_down = true;
    } else if (a == "--packed") {
      moe::g_packed = moe::CudaEngineOptions::Use::kAlways;
    } else if (a == "--no-packed") {
      moe::g_packed = moe::CudaEngineOptions::Use::kNever;
    } else if (a == "--packed-tensor") {
      moe::g_packed_tensor = moe::CudaEngineOptions::Use::kAlways;
    } else if (a == "--no-packed-tensor") {
      moe::g_packed_tensor = moe::CudaEngineOptions::Use::kNever;
    } else if (a == "--meta-copy") {
      moe::g_meta_in_graph = false;
    } else if (a == "--no-front-meta") {
      moe::g_front_takes_meta = false;
    } else if (a == "--input-copy") {
      moe::g_input_in_place = false;
#ifdef MOE_GEMM_TRACE
    } else if (a.rfind("--gemm-trace=", 0) == 0) {
      moe::g_gemm_trace = a.substr(13);
    } else if (a.rfind("--decode-trace=", 0) == 0) {
      moe::g_decode_trace = a.substr(15);
#endif
    } else if (a == "--gemm-pdl") {
      moe::g_gemm_pdl = true;
    } else if (a == "--no-gemm-pdl") {
      moe::g_gemm_pdl = false;
    } else if (a == "--down-overlap") {
      moe::g_down_overlap = moe::CudaEngineOptions::Use::kAlways;
    } else if (a == "--no-down-overlap") {
      moe::g_down_overlap = moe::CudaEngineOptions::Use::kNever;
    } else if (a == "--tma-store") {
      moe::g_tma_store = true;
    } else if (a == "--no-tma-store") {
      moe::g_tma_store = false;
    } else if (a == "--hopper-pdl") {
      moe::g_hopper_pdl = true;
    } else if (a == "--no-hopper-pdl") {
      moe::g_hopper_pdl = false;
    } else if (a == "--pingpong-long-stages") {
      moe::g_pingpong_short_stages = false;
    } else if (a == "--no-pingpong") {
      moe::g_pingpong = moe::CudaEngineOptions::Use::kNever;
    } else if (a == "--pingpong-always") {
      moe::g_pingpong = moe::CudaEngineOptions::Use::kAlways;
    } else if (a == "--expected-active") {
      moe::g_measure_active = false;
    } else if (a == "--no-det") {
      with_det = false;
    } else {
      rest.push_back(argv[i]);
    }
  }
  if (!report.empty()) return moe::Report(report, shapes, tokens, with_det);
  for (const moe::Shape& s : moe::Shapes()) {
    benchmark::RegisterBenchmark(("MoeLayer/" + s.name).c_str(), moe::BM_MoeLayer, &s)
        ->ArgsProduct({{1, 8, 64, 512, 4096, 16384}})
        ->UseManualTime()
        ->Unit(benchmark::kMicrosecond);
  }
  int rest_argc = static_cast<int>(rest.size());
  benchmark::Initialize(&rest_argc, rest.data());
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
