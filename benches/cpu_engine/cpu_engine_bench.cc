// CPU engine throughput on the embedded model's shape (Qwen2-MoE: hidden 512, 32 experts, top-4,
// moe_intermediate 256, shared expert 512 with gate, BF16 weights; include/moe/model/embedded.h),
// next to what the GEMMs underneath can do on this machine:
//   BM_EngineForward/<backend>/<batch>/<threads>: one layer's Forward() on `batch` BF16 tokens with
//     `threads` threads (0 = every core).
//     Counters: tok/s, and GFLOP/s = CpuEngine::FlopsPerForward (router + routed + shared FFNs).
//   BM_Sgemm/<threads>/<M>: OpenBLAS cblas_sgemm C[M, 512] = X[M, 512] · W[512, 512]ᵀ, i.e. one
//     expert's fused gate+up GEMM (2 x 256 outputs) for M routed rows; M = 128 is the average rows
//     per expert at batch 1024 (1024 * 4 / 32). threads 0 = all cores.
//   BM_FixedGemm/<M>: the engine's fixed-order kernel at the same shape, one thread.
//   BM_SgemmRowInvariance: not a timing; counts rows whose sgemm bits change with M or position.
// Run: build-*/bin/cpu_engine_bench [--benchmark_filter=...]. Set MOE_CACHE_DIR to choose where the
// embedded model is generated (about 107 MB, once).
#include <benchmark/benchmark.h>
#include <cblas.h>

#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <random>
#include <thread>
#include <vector>

#include "engine/cpu/fixed_gemm.h"
#include "moe/common/dtype.h"
#include "moe/engine/cpu_engine.h"
#include "moe/model/embedded.h"
#include "moe/model/model.h"

namespace moe {
namespace {

int Cores() { return static_cast<int>(std::max(1u, std::thread::hardware_concurrency())); }

std::shared_ptr<const Model> EmbeddedModel() {
  static std::shared_ptr<const Model> model = [] {
    auto dir = EnsureEmbeddedModel("");
    if (!dir.ok()) {
      std::fprintf(stderr, "EnsureEmbeddedModel: %s\n", dir.status().ToString().c_str());
      return std::shared_ptr<const Model>();
    }
    auto m = Model::Open(*dir);
    if (!m.ok()) {
      std::fprintf(stderr, "Model::Open: %s\n", m.status().ToString().c_str());
      return std::shared_ptr<const Model>();
    }
    return std::shared_ptr<const Model>(std::move(m).value());
  }();
  return model;
}

// One engine per (backend, threads), built on first use; threads 0 = every core.
CpuEngine* Engine(CpuEngineOptions::GemmBackend backend, int threads = 0) {
  static std::map<std::pair<int, int>, std::unique_ptr<CpuEngine>> engines;
  std::unique_ptr<CpuEngine>& e = engines[{static_cast<int>(backend), threads}];
  if (e == nullptr && EmbeddedModel() != nullptr) {
    CpuEngineOptions options;
    options.gemm = backend;
    options.num_threads = threads;
    options.max_batch_tokens = 1024;
    auto created = CpuEngine::Create(EmbeddedModel(), options);
    if (!created.ok()) {
      std::fprintf(stderr, "CpuEngine::Create: %s\n", created.status().ToString().c_str());
      return nullptr;
    }
    e = std::move(created).value();
  }
  return e.get();
}

std::vector<uint16_t> RandomBf16(int64_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> dist;
  std::vector<uint16_t> v(static_cast<size_t>(n));
  for (uint16_t& x : v) x = F32ToBf16(dist(rng));
  return v;
}

void BM_EngineForward(benchmark::State& state) {
  const auto backend = static_cast<CpuEngineOptions::GemmBackend>(state.range(0));
  const int64_t batch = state.range(1);
  CpuEngine* engine = Engine(backend, static_cast<int>(state.range(2)));
  if (engine == nullptr) {
    state.SkipWithError("no engine (see stderr)");
    return;
  }
  const MoeSpec& spec = engine->spec();
  const std::vector<uint16_t> input = RandomBf16(batch * spec.hidden, 1);
  std::vector<uint16_t> output(input.size());
  ForwardArgs args;
  args.layer = spec.moe_layers[0];
  args.dtype = DType::kBF16;
  args.n_tokens = batch;
  args.input = input.data();
  args.output = output.data();
  for (auto _ : state) {
    const Status st = engine->Forward(args);
    if (!st.ok()) {
      state.SkipWithError(st.ToString().c_str());
      return;
    }
    benchmark::DoNotOptimize(output.data());
  }
  state.counters["tok/s"] =
      benchmark::Counter(static_cast<double>(batch), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["GFLOP/s"] = benchmark::Counter(engine->FlopsPerForward(batch) * 1e-9,
                                                 benchmark::Counter::kIsIterationInvariantRate);
  state.counters["threads"] = engine->num_threads();
  state.SetLabel(backend == CpuEngineOptions::GemmBackend::kFixedOrder
                     ? std::string("fixed-order ") + cpu::GemmKernelName(cpu::BestGemmKernel())
                     : std::string("openblas"));
}
BENCHMARK(BM_EngineForward)
    ->ArgNames({"backend", "batch", "threads"})
    ->ArgsProduct({{0, 1}, {1, 16, 64, 256, 1024}, {0}})
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();
// Scaling with the thread count (fixed order), for sizing slots x threads.
BENCHMARK(BM_EngineForward)
    ->ArgNames({"backend", "batch", "threads"})
    ->ArgsProduct({{0}, {1, 64, 1024}, {1, 2, 4, 8}})
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();

constexpr int kK = 512;  // hidden
constexpr int kN = 512;  // gate + up outputs of one expert (2 x 256)

void BM_Sgemm(benchmark::State& state) {
  const int threads = state.range(0) == 0 ? Cores() : static_cast<int>(state.range(0));
  const int m = static_cast<int>(state.range(1));
  openblas_set_num_threads(threads);
  std::vector<float> x(static_cast<size_t>(m) * kK, 0.5f), w(static_cast<size_t>(kN) * kK, 0.25f);
  std::vector<float> c(static_cast<size_t>(m) * kN);
  for (auto _ : state) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, kN, kK, 1.0f, x.data(), kK, w.data(),
                kK, 0.0f, c.data(), kN);
    benchmark::DoNotOptimize(c.data());
  }
  state.counters["GFLOP/s"] =
      benchmark::Counter(2.0 * m * kN * kK * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["threads"] = threads;
  state.SetLabel(openblas_get_corename());
}
BENCHMARK(BM_Sgemm)
    ->ArgNames({"threads", "M"})
    ->ArgsProduct({{1, 0}, {1, 16, 128, 1024}})
    ->UseRealTime();

void BM_FixedGemm(benchmark::State& state) {
  const int64_t m = state.range(0);
  std::vector<float> x(static_cast<size_t>(m) * kK, 0.5f), w(static_cast<size_t>(kN) * kK, 0.25f);
  const cpu::PackedMatrix packed = cpu::PackMatrix(w.data(), DType::kF32, kN, kK);
  std::vector<float> c(static_cast<size_t>(m) * kN);
  std::vector<const float*> rows(static_cast<size_t>(m));
  for (int64_t r = 0; r < m; ++r) rows[static_cast<size_t>(r)] = x.data() + r * kK;
  for (auto _ : state) {
    cpu::GemmPanels(rows.data(), m, packed, 0, packed.n_panels, c.data(), kN);
    benchmark::DoNotOptimize(c.data());
  }
  state.counters["GFLOP/s"] = benchmark::Counter(2.0 * static_cast<double>(m) * kN * kK * 1e-9,
                                                 benchmark::Counter::kIsIterationInvariantRate);
  state.SetLabel(cpu::GemmKernelName(cpu::BestGemmKernel()));
}
BENCHMARK(BM_FixedGemm)->ArgName("M")->Arg(1)->Arg(16)->Arg(128)->Arg(1024)->UseRealTime();

// Not a timing: whether cblas_sgemm gives a row the same bits whatever M and the row's position
// (the property the engine needs; see src/engine/cpu/fixed_gemm.h). Counters: rows checked and
// rows that differed from the same row computed in an M = 256 call, one OpenBLAS thread.
void BM_SgemmRowInvariance(benchmark::State& state) {
  openblas_set_num_threads(1);
  constexpr int kTotal = 256;
  std::mt19937_64 rng(3);
  std::normal_distribution<float> dist;
  std::vector<float> x(static_cast<size_t>(kTotal) * kK), w(static_cast<size_t>(kN) * kK);
  for (float& v : x) v = dist(rng);
  for (float& v : w) v = dist(rng);
  std::vector<float> all(static_cast<size_t>(kTotal) * kN), part(static_cast<size_t>(kTotal) * kN);
  int64_t checked = 0, differ = 0;
  for (auto _ : state) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, kTotal, kN, kK, 1.0f, x.data(), kK,
                w.data(), kK, 0.0f, all.data(), kN);
    for (int m : {1, 2, 3, 7, 16, 64, 200}) {
      for (int first : {0, 5, kTotal - m}) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, kN, kK, 1.0f,
                    x.data() + static_cast<size_t>(first) * kK, kK, w.data(), kK, 0.0f, part.data(),
                    kN);
        for (int r = 0; r < m; ++r) {
          ++checked;
          differ += std::memcmp(part.data() + static_cast<size_t>(r) * kN,
                                all.data() + static_cast<size_t>(first + r) * kN,
                                sizeof(float) * kN) != 0;
        }
      }
    }
  }
  state.counters["rows_checked"] = static_cast<double>(checked);
  state.counters["rows_differing"] = static_cast<double>(differ);
  state.SetLabel(openblas_get_corename());
}
BENCHMARK(BM_SgemmRowInvariance)->Iterations(1);

}  // namespace
}  // namespace moe

BENCHMARK_MAIN();
