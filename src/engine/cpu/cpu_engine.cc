// CpuEngine: Create() validates and converts the weights; Forward() runs the layer in chunks of at
// most kChunkTokens tokens, each in five phases (see RunChunk).
#include "moe/engine/cpu_engine.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <map>
#include <thread>
#include <utility>
#include <vector>

#include "engine/cpu/elementwise.h"
#include "engine/cpu/fixed_gemm.h"
#include "engine/cpu/openblas_loader.h"
#include "engine/cpu/prepared_layer.h"
#include "engine/cpu/thread_pool.h"
#include "moe/engine/routing.h"

namespace moe {
namespace {

using cpu::AlignedFloats;
using cpu::AllocateFloats;
using cpu::kPanel;

constexpr int64_t kChunkTokens = 512;  // tokens per internal chunk (bounds the workspaces)
constexpr int64_t kTokenBlock = 16;    // tokens per routing / combine task
constexpr int64_t kRowBlock = 64;      // rows per gate/up tile (fixed order) or per task (OpenBLAS)
constexpr int64_t kTaskPanels = 2;     // output panels (of 32 columns) per fixed-order task

int64_t RoundUp(int64_t x, int64_t m) { return (x + m - 1) / m * m; }
int64_t CeilDiv(int64_t x, int64_t m) { return (x + m - 1) / m; }
inline float Sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }

// One unit of expert work: FFN `ffn` (an expert index, or n_experts for the shared expert) and
// `part` (kTaskPanels output panels for the fixed-order backend, kRowBlock rows for OpenBLAS).
struct Task {
  int32_t ffn;
  int32_t part;
};

// Per-slot scratch, sized for kChunkTokens (or max_batch_tokens if smaller) tokens.
struct Workspace {
  std::atomic<bool> busy{false};
  AlignedFloats x32;                          // [C, hidden] converted input (unless it is F32)
  std::vector<const float*> x_rows;           // [C] fp32 input rows
  AlignedFloats logits;                       // [C, router_ld]
  std::vector<int32_t> ids;                   // [C, top_k]
  std::vector<float> weights;                 // [C, top_k]
  std::vector<int64_t> offsets;               // [n_experts + 1] first permuted row of each expert
  std::vector<int64_t> fill;                  // [n_experts]
  std::vector<int64_t> row_of;                // [C * top_k] permuted row of (token, j)
  std::vector<const float*> perm_x_rows;      // [C * top_k] input row of each permuted row
  std::vector<const float*> act_rows;         // [C * top_k] activation row of each permuted row
  std::vector<const float*> act_shared_rows;  // [C]
  AlignedFloats act;                          // [C * top_k, act_ld] silu(gate) * up
  AlignedFloats y;                            // [C * top_k, y_ld] expert outputs
  AlignedFloats act_shared;                   // [C, shared_act_ld]
  AlignedFloats y_shared;                     // [C, y_ld]
  AlignedFloats x_gather;                     // OpenBLAS: [C * top_k, hidden]
  AlignedFloats gate_out;                     // OpenBLAS: [C * top_k + C, gu_ld]
  AlignedFloats up_out;                       // OpenBLAS: [C * top_k + C, gu_ld]
  std::vector<Task> tasks;
  int64_t bytes = 0;
};

}  // namespace

struct CpuEngine::Impl {
  std::shared_ptr<const Model> model;
  MoeSpec spec;
  CpuEngineOptions options;
  int64_t chunk = 0;  // tokens per chunk
  int64_t router_ld = 0, act_ld = 0, shared_act_ld = 0, y_ld = 0, gu_ld = 0;
  std::unique_ptr<cpu::ThreadPool> pool;
  std::map<int, cpu::PreparedLayer> layers;
  std::vector<std::unique_ptr<Workspace>> slots;
  cpu::GemmKernel kernel = cpu::GemmKernel::kPortable;

  const cpu::OpenBlas* blas = nullptr;  // loaded only for GemmBackend::kOpenBlas
  bool openblas() const { return options.gemm == CpuEngineOptions::GemmBackend::kOpenBlas; }
  std::unique_ptr<Workspace> MakeWorkspace() const;
  void RunChunk(const cpu::PreparedLayer& layer, Workspace& ws, DType dtype, const void* input,
                void* output, int64_t n, int32_t* ids_out, float* weights_out,
                double* routing_seconds);
  void RouteTokens(const cpu::PreparedLayer& layer, Workspace& ws, DType dtype, const void* input,
                   int64_t n);
  void Permute(Workspace& ws, int64_t n);
  void FixedOrderExperts(const cpu::PreparedLayer& layer, Workspace& ws, int64_t n);
  void OpenBlasExperts(const cpu::PreparedLayer& layer, Workspace& ws, int64_t n);
  void Combine(const cpu::PreparedLayer& layer, Workspace& ws, DType dtype, void* output,
               int64_t n);
};

std::unique_ptr<Workspace> CpuEngine::Impl::MakeWorkspace() const {
  auto ws = std::make_unique<Workspace>();
  const int64_t c = chunk;
  const int64_t k = spec.top_k();
  const int64_t e = spec.n_experts();
  const int64_t hidden = spec.hidden;
  const bool shared = spec.shared_intermediate > 0;
  auto floats = [&ws](int64_t n) {
    ws->bytes += n * static_cast<int64_t>(sizeof(float));
    return AllocateFloats(n);
  };
  ws->x32 = floats(c * hidden);
  ws->x_rows.resize(static_cast<size_t>(c));
  ws->logits = floats(c * router_ld);
  ws->ids.resize(static_cast<size_t>(c * k));
  ws->weights.resize(static_cast<size_t>(c * k));
  ws->offsets.resize(static_cast<size_t>(e + 1));
  ws->fill.resize(static_cast<size_t>(e));
  ws->row_of.resize(static_cast<size_t>(c * k));
  ws->perm_x_rows.resize(static_cast<size_t>(c * k));
  ws->act_rows.resize(static_cast<size_t>(c * k));
  ws->act_shared_rows.resize(static_cast<size_t>(c));
  ws->act = floats(c * k * act_ld);
  ws->y = floats(c * k * y_ld);
  if (shared) {
    ws->act_shared = floats(c * shared_act_ld);
    ws->y_shared = floats(c * y_ld);
  }
  if (openblas()) {
    ws->x_gather = floats(c * k * hidden);
    ws->gate_out = floats((c * k + c) * gu_ld);
    ws->up_out = floats((c * k + c) * gu_ld);
  }
  return ws;
}

// Phase 1: fp32 input rows, router logits (fixed-order GEMM: row invariant), routing. Per block of
// kTokenBlock tokens.
void CpuEngine::Impl::RouteTokens(const cpu::PreparedLayer& layer, Workspace& ws, DType dtype,
                                  const void* input, int64_t n) {
  const int64_t hidden = spec.hidden;
  const int64_t n_experts = spec.n_experts();
  const int64_t k = spec.top_k();
  const size_t in_size = DTypeSize(dtype);
  const float* bias = layer.correction_bias.empty() ? nullptr : layer.correction_bias.data();
  pool->ParallelFor(CeilDiv(n, kTokenBlock), [&](int64_t b) {
    const int64_t t0 = b * kTokenBlock;
    const int64_t rows = std::min(kTokenBlock, n - t0);
    for (int64_t t = t0; t < t0 + rows; ++t) {
      const void* src = static_cast<const char*>(input) + static_cast<size_t>(t * hidden) * in_size;
      if (dtype == DType::kF32) {
        ws.x_rows[static_cast<size_t>(t)] = static_cast<const float*>(src);
      } else {
        float* dst = ws.x32.get() + t * hidden;
        ConvertToF32(dtype, src, dst, static_cast<size_t>(hidden));
        ws.x_rows[static_cast<size_t>(t)] = dst;
      }
    }
    cpu::GemmPanels(ws.x_rows.data() + t0, rows, layer.router, 0, layer.router.n_panels,
                    ws.logits.get() + t0 * router_ld, router_ld, kernel);
    float block_logits[kTokenBlock * 512];
    std::vector<float> big;
    float* dense = block_logits;
    if (rows * n_experts > static_cast<int64_t>(sizeof(block_logits) / sizeof(float))) {
      big.resize(static_cast<size_t>(rows * n_experts));
      dense = big.data();
    }
    for (int64_t r = 0; r < rows; ++r) {
      std::copy_n(ws.logits.get() + (t0 + r) * router_ld, n_experts, dense + r * n_experts);
    }
    Route(spec.routing, dense, bias, rows, ws.ids.data() + t0 * k, ws.weights.data() + t0 * k);
  });
}

// Phase 2: group the (token, j) pairs by expert, tokens ascending within an expert.
void CpuEngine::Impl::Permute(Workspace& ws, int64_t n) {
  const int64_t n_experts = spec.n_experts();
  const int64_t k = spec.top_k();
  std::fill(ws.offsets.begin(), ws.offsets.end(), 0);
  for (int64_t i = 0; i < n * k; ++i)
    ++ws.offsets[static_cast<size_t>(ws.ids[static_cast<size_t>(i)]) + 1];
  for (int64_t e = 0; e < n_experts; ++e)
    ws.offsets[static_cast<size_t>(e + 1)] += ws.offsets[static_cast<size_t>(e)];
  std::fill(ws.fill.begin(), ws.fill.end(), 0);
  for (int64_t t = 0; t < n; ++t) {
    for (int64_t j = 0; j < k; ++j) {
      const size_t e = static_cast<size_t>(ws.ids[static_cast<size_t>(t * k + j)]);
      const int64_t r = ws.offsets[e] + ws.fill[e]++;
      ws.row_of[static_cast<size_t>(t * k + j)] = r;
      ws.perm_x_rows[static_cast<size_t>(r)] = ws.x_rows[static_cast<size_t>(t)];
      ws.act_rows[static_cast<size_t>(r)] = ws.act.get() + r * act_ld;
    }
    if (spec.shared_intermediate > 0) {
      ws.act_shared_rows[static_cast<size_t>(t)] = ws.act_shared.get() + t * shared_act_ld;
    }
  }
}

// Phase 3+4, fixed order: gate/up + SwiGLU per (FFN, intermediate panel), then down per (FFN,
// hidden panel). Each GEMM element is one FMA chain (fixed_gemm.h), so the task split does not
// matter.
void CpuEngine::Impl::FixedOrderExperts(const cpu::PreparedLayer& layer, Workspace& ws, int64_t n) {
  const int64_t n_experts = spec.n_experts();
  const bool has_shared = layer.shared.has_value();
  auto ffn_of = [&](int32_t f) -> const cpu::Fp32Ffn& {
    return f == n_experts ? *layer.shared : layer.experts[static_cast<size_t>(f)];
  };
  auto rows_of = [&](int32_t f) { return f == n_experts ? n : ws.offsets[f + 1] - ws.offsets[f]; };
  auto add_tasks = [&](auto panels_of) {
    ws.tasks.clear();
    for (int32_t f = 0; f < n_experts + (has_shared ? 1 : 0); ++f) {
      if (rows_of(f) == 0) continue;
      const int64_t panels = CeilDiv(panels_of(ffn_of(f)), kTaskPanels);
      for (int32_t p = 0; p < panels; ++p) ws.tasks.push_back({f, p});
    }
  };

  // gate/up + activation.
  add_tasks([](const cpu::Fp32Ffn& f) { return f.gate.packed.n_panels; });
  pool->ParallelFor(static_cast<int64_t>(ws.tasks.size()), [&](int64_t i) {
    const Task task = ws.tasks[static_cast<size_t>(i)];
    const cpu::Fp32Ffn& ffn = ffn_of(task.ffn);
    const bool shared = task.ffn == n_experts;
    const int64_t rows = rows_of(task.ffn);
    const int64_t first = shared ? 0 : ws.offsets[task.ffn];
    const float* const* x = shared ? ws.x_rows.data() : ws.perm_x_rows.data() + first;
    float* act = shared ? ws.act_shared.get() : ws.act.get() + first * act_ld;
    const int64_t ld = shared ? shared_act_ld : act_ld;
    const int64_t p0 = int64_t{task.part} * kTaskPanels;
    const int64_t np = std::min(kTaskPanels, ffn.gate.packed.n_panels - p0);
    const int64_t col0 = p0 * kPanel;
    const int64_t cols = std::min(np * kPanel, ffn.inter - col0);
    constexpr int64_t kTileLd = kTaskPanels * kPanel;
    alignas(64) float g[kRowBlock * kTileLd];
    alignas(64) float u[kRowBlock * kTileLd];
    for (int64_t r0 = 0; r0 < rows; r0 += kRowBlock) {
      const int64_t here = std::min(kRowBlock, rows - r0);
      cpu::GemmPanels(x + r0, here, ffn.gate.packed, p0, np, g, kTileLd, kernel);
      cpu::GemmPanels(x + r0, here, ffn.up.packed, p0, np, u, kTileLd, kernel);
      for (int64_t m = 0; m < here; ++m) {
        cpu::SiluMul(g + m * kTileLd, u + m * kTileLd, act + (r0 + m) * ld + col0, cols);
      }
    }
  });

  // down.
  add_tasks([](const cpu::Fp32Ffn& f) { return f.down.packed.n_panels; });
  pool->ParallelFor(static_cast<int64_t>(ws.tasks.size()), [&](int64_t i) {
    const Task task = ws.tasks[static_cast<size_t>(i)];
    const cpu::Fp32Ffn& ffn = ffn_of(task.ffn);
    const int64_t p0 = int64_t{task.part} * kTaskPanels;
    const int64_t np = std::min(kTaskPanels, ffn.down.packed.n_panels - p0);
    if (task.ffn == n_experts) {
      cpu::GemmPanels(ws.act_shared_rows.data(), n, ffn.down.packed, p0, np,
                      ws.y_shared.get() + p0 * kPanel, y_ld, kernel);
    } else {
      const int64_t first = ws.offsets[task.ffn];
      cpu::GemmPanels(ws.act_rows.data() + first, rows_of(task.ffn), ffn.down.packed, p0, np,
                      ws.y.get() + first * y_ld + p0 * kPanel, y_ld, kernel);
    }
  });
}

// Phase 3+4, OpenBLAS: per (FFN, block of kRowBlock rows): gather, sgemm gate and up, SwiGLU,
// sgemm down. OpenBLAS runs single-threaded inside our tasks.
void CpuEngine::Impl::OpenBlasExperts(const cpu::PreparedLayer& layer, Workspace& ws, int64_t n) {
  const int64_t n_experts = spec.n_experts();
  const int64_t k = spec.top_k();
  const int64_t hidden = spec.hidden;
  const bool has_shared = layer.shared.has_value();
  ws.tasks.clear();
  for (int32_t f = 0; f < n_experts + (has_shared ? 1 : 0); ++f) {
    const int64_t rows = f == n_experts ? n : ws.offsets[f + 1] - ws.offsets[f];
    for (int32_t b = 0; b < CeilDiv(rows, kRowBlock); ++b) ws.tasks.push_back({f, b});
  }
  pool->ParallelFor(static_cast<int64_t>(ws.tasks.size()), [&](int64_t i) {
    const Task task = ws.tasks[static_cast<size_t>(i)];
    const bool shared = task.ffn == n_experts;
    const cpu::Fp32Ffn& ffn = shared ? *layer.shared : layer.experts[static_cast<size_t>(task.ffn)];
    const int64_t total = shared ? n : ws.offsets[task.ffn + 1] - ws.offsets[task.ffn];
    const int64_t r0 = int64_t{task.part} * kRowBlock;
    const int64_t m = std::min(kRowBlock, total - r0);
    const int64_t inter = ffn.inter;
    // Row range in the gate/up scratch, and A = the input rows, contiguous.
    const int64_t g_row = shared ? n * k + r0 : ws.offsets[task.ffn] + r0;
    const float* a = nullptr;
    if (shared) {
      a = ws.x_rows[0] + r0 * hidden;  // input rows are contiguous (input or x32)
    } else {
      float* dst = ws.x_gather.get() + g_row * hidden;
      for (int64_t r = 0; r < m; ++r) {
        std::copy_n(ws.perm_x_rows[static_cast<size_t>(g_row + r)], hidden, dst + r * hidden);
      }
      a = dst;
    }
    float* g = ws.gate_out.get() + g_row * gu_ld;
    float* u = ws.up_out.get() + g_row * gu_ld;
    const int mi = static_cast<int>(m), ni = static_cast<int>(inter), hi = static_cast<int>(hidden);
    blas->sgemm(cpu::kCblasRowMajor, cpu::kCblasNoTrans, cpu::kCblasTrans, mi, ni, hi, 1.0f, a, hi,
                ffn.gate.plain.get(), hi, 0.0f, g, static_cast<int>(gu_ld));
    blas->sgemm(cpu::kCblasRowMajor, cpu::kCblasNoTrans, cpu::kCblasTrans, mi, ni, hi, 1.0f, a, hi,
                ffn.up.plain.get(), hi, 0.0f, u, static_cast<int>(gu_ld));
    const int64_t ld = shared ? shared_act_ld : act_ld;
    float* act = shared ? ws.act_shared.get() + r0 * ld : ws.act.get() + g_row * ld;
    for (int64_t r = 0; r < m; ++r) cpu::SiluMul(g + r * gu_ld, u + r * gu_ld, act + r * ld, inter);
    float* y = shared ? ws.y_shared.get() + r0 * y_ld : ws.y.get() + g_row * y_ld;
    blas->sgemm(cpu::kCblasRowMajor, cpu::kCblasNoTrans, cpu::kCblasTrans, mi, hi, ni, 1.0f, act,
                static_cast<int>(ld), ffn.down.plain.get(), ni, 0.0f, y, static_cast<int>(y_ld));
  });
}

// Phase 5: per token, in a fixed order: sum_j w_j * y_j (j in top-k order), + s * shared, rounded
// once to the output dtype.
void CpuEngine::Impl::Combine(const cpu::PreparedLayer& layer, Workspace& ws, DType dtype,
                              void* output, int64_t n) {
  const int64_t hidden = spec.hidden;
  const int64_t k = spec.top_k();
  const size_t out_size = DTypeSize(dtype);
  const bool has_shared = layer.shared.has_value();
  pool->ParallelFor(CeilDiv(n, kTokenBlock), [&](int64_t b) {
    std::vector<float> acc(static_cast<size_t>(hidden));
    const int64_t t0 = b * kTokenBlock;
    const int64_t t1 = std::min(n, t0 + kTokenBlock);
    for (int64_t t = t0; t < t1; ++t) {
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (int64_t j = 0; j < k; ++j) {
        const float w = ws.weights[static_cast<size_t>(t * k + j)];
        const float* y = ws.y.get() + ws.row_of[static_cast<size_t>(t * k + j)] * y_ld;
        cpu::AddScaled(acc.data(), w, y, hidden);
      }
      if (has_shared) {
        // Qwen2-MoE: sigmoid(x . shared_expert_gate); DeepSeek: 1 (acc + 1 * y == acc + y).
        const float s =
            layer.shared_gate_row >= 0
                ? Sigmoid(ws.logits[static_cast<size_t>(t * router_ld + layer.shared_gate_row)])
                : 1.0f;
        cpu::AddScaled(acc.data(), s, ws.y_shared.get() + t * y_ld, hidden);
      }
      ConvertFromF32(acc.data(), dtype,
                     static_cast<char*>(output) + static_cast<size_t>(t * hidden) * out_size,
                     static_cast<size_t>(hidden));
    }
  });
}

void CpuEngine::Impl::RunChunk(const cpu::PreparedLayer& layer, Workspace& ws, DType dtype,
                               const void* input, void* output, int64_t n, int32_t* ids_out,
                               float* weights_out, double* routing_seconds) {
  const auto route_start = std::chrono::steady_clock::now();
  RouteTokens(layer, ws, dtype, input, n);
  if (routing_seconds != nullptr) {
    *routing_seconds +=
        std::chrono::duration<double>(std::chrono::steady_clock::now() - route_start).count();
  }
  Permute(ws, n);
  if (openblas()) {
    OpenBlasExperts(layer, ws, n);
  } else {
    FixedOrderExperts(layer, ws, n);
  }
  Combine(layer, ws, dtype, output, n);
  const size_t pairs = static_cast<size_t>(n * spec.top_k());
  if (ids_out != nullptr) std::copy_n(ws.ids.data(), pairs, ids_out);
  if (weights_out != nullptr) std::copy_n(ws.weights.data(), pairs, weights_out);
}

StatusOr<std::unique_ptr<CpuEngine>> CpuEngine::Create(std::shared_ptr<const Model> model,
                                                       const CpuEngineOptions& options) {
  if (model == nullptr) return absl::InvalidArgumentError("CpuEngine: model is null");
  if (options.num_threads < 0 || options.num_slots < 1 || options.max_batch_tokens < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "CpuEngine options out of range: num_threads ", options.num_threads, " (>= 0), num_slots ",
        options.num_slots, " (>= 1), max_batch_tokens ", options.max_batch_tokens, " (>= 1)"));
  }
  const MoeSpec& spec = model->spec();
  if (spec.weight_dtype == DType::kF8E4M3) {
    return absl::InvalidArgumentError("F8_E4M3 weights are not supported by the CPU engine yet");
  }
  MOE_RETURN_IF_ERROR(ValidateRoutingSpec(spec.routing));
  if (spec.moe_layers.empty())
    return absl::InvalidArgumentError("CpuEngine: the model has no MoE layer");

  auto impl = std::make_unique<Impl>();
  impl->model = model;
  impl->spec = spec;
  impl->options = options;
  int threads = options.num_threads;
  if (threads == 0) threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  impl->pool = std::make_unique<cpu::ThreadPool>(threads - 1);
  impl->kernel = cpu::BestGemmKernel();
  if (impl->openblas()) {
    MOE_ASSIGN_OR_RETURN(impl->blas, cpu::LoadOpenBlas());
    impl->blas->set_num_threads(1);
  }

  for (int layer : spec.moe_layers) {
    const MoeLayerWeights* weights = model->layer(layer);
    if (weights == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("MoE layer ", layer, " has no weights in the model"));
    }
    MOE_ASSIGN_OR_RETURN(cpu::PreparedLayer prepared,
                         cpu::PrepareLayer(spec, *weights, impl->openblas(), *impl->pool));
    impl->layers.emplace(layer, std::move(prepared));
  }
  const cpu::PreparedLayer& any = impl->layers.begin()->second;
  impl->chunk = std::min(options.max_batch_tokens, kChunkTokens);
  impl->router_ld = any.router.n_panels * kPanel;
  impl->act_ld = RoundUp(spec.moe_intermediate, kPanel);
  impl->shared_act_ld = RoundUp(spec.shared_intermediate, kPanel);
  impl->y_ld = RoundUp(spec.hidden, kPanel);
  impl->gu_ld = std::max<int64_t>(spec.moe_intermediate, spec.shared_intermediate);
  for (int s = 0; s < options.num_slots; ++s) impl->slots.push_back(impl->MakeWorkspace());
  return std::unique_ptr<CpuEngine>(new CpuEngine(std::move(impl)));
}

CpuEngine::CpuEngine(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
CpuEngine::~CpuEngine() = default;

const MoeSpec& CpuEngine::spec() const { return impl_->spec; }
int CpuEngine::num_slots() const { return static_cast<int>(impl_->slots.size()); }
int64_t CpuEngine::max_batch_tokens() const { return impl_->options.max_batch_tokens; }
int CpuEngine::num_threads() const { return impl_->pool->num_workers() + 1; }

int64_t CpuEngine::weight_bytes() const {
  int64_t total = 0;
  for (const auto& [index, layer] : impl_->layers) total += layer.bytes();
  return total;
}

int64_t CpuEngine::workspace_bytes() const {
  int64_t total = 0;
  for (const auto& ws : impl_->slots) total += ws->bytes;
  return total;
}

double CpuEngine::FlopsPerForward(int64_t n_tokens) const {
  const MoeSpec& s = impl_->spec;
  const double per_token =
      static_cast<double>(s.hidden) *
      (s.n_experts() + 3.0 * s.top_k() * s.moe_intermediate + 3.0 * s.shared_intermediate);
  return 2.0 * per_token * static_cast<double>(n_tokens);
}

Status CpuEngine::Forward(const ForwardArgs& args) {
  Impl& impl = *impl_;
  MOE_RETURN_IF_ERROR(ValidateForwardArgs(impl.spec, args, num_slots(), max_batch_tokens()));
  auto it = impl.layers.find(args.layer);
  if (it == impl.layers.end()) {
    return absl::NotFoundError(
        absl::StrCat("layer ", args.layer, " has no weights in the CPU engine"));
  }
  Workspace& ws = *impl.slots[static_cast<size_t>(args.slot)];
  if (ws.busy.exchange(true)) {
    return absl::FailedPreconditionError(
        absl::StrCat("slot ", args.slot, " is already running a Forward() call"));
  }
  const int64_t hidden = impl.spec.hidden;
  const int64_t k = impl.spec.top_k();
  const size_t row_bytes = static_cast<size_t>(hidden) * DTypeSize(args.dtype);
  if (args.routing_seconds != nullptr) *args.routing_seconds = 0.0;
  for (int64_t t0 = 0; t0 < args.n_tokens; t0 += impl.chunk) {
    const int64_t n = std::min(impl.chunk, args.n_tokens - t0);
    impl.RunChunk(it->second, ws, args.dtype,
                  static_cast<const char*>(args.input) + static_cast<size_t>(t0) * row_bytes,
                  static_cast<char*>(args.output) + static_cast<size_t>(t0) * row_bytes, n,
                  args.expert_ids != nullptr ? args.expert_ids + t0 * k : nullptr,
                  args.expert_weights != nullptr ? args.expert_weights + t0 * k : nullptr,
                  args.routing_seconds);
  }
  ws.busy.store(false);
  return absl::OkStatus();
}

}  // namespace moe
