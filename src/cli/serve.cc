// `moe-swarm serve`: start-up (one log line per stage), serving, and the SIGTERM/SIGINT drain.
//
// Stages: logging -> side HTTP port (not ready: "starting") -> model (embedded one generated on
// first use) -> engine -> warm-up (one forward per MoE layer and slot) -> scheduler -> gRPC port
// (health NOT_SERVING) -> ready. On SIGTERM/SIGINT: not ready ("draining"), new
// requests refused, accepted ones finish within server.drain_timeout_ms, exit 0.
#include <pthread.h>
#include <signal.h>
#include <spdlog/spdlog.h>

#include <filesystem>
#include <optional>
#include <random>
#include <thread>
#include <utility>

#include "commands.h"
#include "moe/common/logging.h"
#include "moe/engine/cpu_engine.h"
#include "moe/experts/eviction_policy.h"
#include "moe/metrics/expert_cache_metrics.h"
#include "moe/metrics/gpu_metrics.h"
#include "moe/metrics/http_server.h"
#include "moe/metrics/instrumented_engine.h"
#include "moe/metrics/metrics.h"
#include "moe/metrics/scheduler_metrics.h"
#include "moe/model/embedded.h"
#include "moe/model/model.h"
#include "moe/scheduler/scheduler.h"
#include "moe/server/scheduler_backend.h"
#include "moe/server/server.h"
#ifdef MOE_WITH_CUDA
#include <cuda_runtime_api.h>

#include "engine/cuda/cache_rounds.h"
#include "moe/engine/cuda_engine.h"
#include "moe/experts/trace.h"
#endif

namespace moe::cli {

namespace {

using Clock = std::chrono::steady_clock;

int64_t MsSince(Clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t).count();
}

int CudaDeviceCount() {
#ifdef MOE_WITH_CUDA
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) return 0;
  return n;
#else
  return 0;
#endif
}

#ifdef MOE_WITH_CUDA
// The CUDA engine's expert cache from experts.* (a percentage of experts.cache_bytes is of the
// device memory free now, before the engine allocates).
StatusOr<ExpertCacheOptions> ExpertCacheFromFlags(const config::ExpertOptions& x, int device) {
  ExpertCacheOptions c;
  MOE_ASSIGN_OR_RETURN(const config::ByteBudget budget, config::ParseByteBudget(x.cache_bytes));
  c.budget_bytes = budget.bytes;
  if (budget.fraction > 0) {
    size_t free_bytes = 0, total_bytes = 0;
    if (cudaSetDevice(device) != cudaSuccess ||
        cudaMemGetInfo(&free_bytes, &total_bytes) != cudaSuccess) {
      cudaGetLastError();
      return absl::FailedPreconditionError(
          "experts.cache_bytes is a percentage but the device's free memory cannot be read");
    }
    c.budget_bytes = static_cast<int64_t>(budget.fraction * static_cast<double>(free_bytes));
    spdlog::info("expert cache: {} of {} MiB free = {} MiB", x.cache_bytes, free_bytes >> 20,
                 c.budget_bytes >> 20);
  }
  MOE_ASSIGN_OR_RETURN(c.eviction, experts::ParseEvictionKind(x.eviction));
  c.prefetch = x.prefetch;
  c.prefetch_depth = x.prefetch_depth;
  c.prefetch_min_precision = x.prefetch_min_precision;
  c.compress_host_tier = x.compress;
  c.trace_path = x.trace;
  return c;
}
#endif

// Picks and builds the engine (engine.kind: auto = cuda when built with CUDA and a GPU is present).
StatusOr<std::unique_ptr<Engine>> CreateEngine(const config::DaemonOptions& o,
                                               std::shared_ptr<const Model> model) {
  config::EngineKind kind = o.engine.kind;
  if (kind == config::EngineKind::kAuto) {
    kind = CudaDeviceCount() > 0 ? config::EngineKind::kCuda : config::EngineKind::kCpu;
  }
  int slots = o.engine.slots > 0 ? o.engine.slots : 2;
  if (kind == config::EngineKind::kCuda) {
#ifdef MOE_WITH_CUDA
    if (CudaDeviceCount() == 0) {
      return absl::FailedPreconditionError(
          "engine.kind = cuda: no CUDA device is visible; use --engine cpu or auto");
    }
    CudaEngineOptions eo;
    eo.num_slots = slots;
    eo.max_batch_tokens = o.scheduler.max_batch_tokens;
    MOE_ASSIGN_OR_RETURN(eo.expert_cache, ExpertCacheFromFlags(o.experts, eo.device));
    MOE_ASSIGN_OR_RETURN(auto engine, CudaEngine::Create(std::move(model), eo));
    return std::unique_ptr<Engine>(std::move(engine));
#else
    return absl::FailedPreconditionError(
        "engine.kind = cuda: this binary was built without the CUDA engine (configure with "
        "-DMOE_CUDA=ON where nvcc exists); use --engine cpu or auto");
#endif
  }
  if (o.experts.cache_bytes != "0" || !o.experts.trace.empty() || !o.experts.warm_trace.empty()) {
    spdlog::warn(
        "experts.cache_bytes / trace / warm_trace apply to the CUDA engine only; the CPU engine "
        "reads every expert from the mapped checkpoint");
  }
  CpuEngineOptions eo;
  eo.num_threads = o.engine.threads;
  eo.num_slots = slots;
  eo.max_batch_tokens = o.scheduler.max_batch_tokens;
  MOE_ASSIGN_OR_RETURN(auto engine, CpuEngine::Create(std::move(model), eo));
  return std::unique_ptr<Engine>(std::move(engine));
}

// The served name: server.model_name, else the model directory's last component.
std::string ServedName(const config::DaemonOptions& o, const std::string& dir) {
  if (!o.server.model_name.empty()) return o.server.model_name;
  std::filesystem::path p(dir);
  while (!p.empty() && p.filename().empty()) p = p.parent_path();
  std::string name = p.filename().string();
  for (char& c : name) {
    if (c == ' ' || c == '/') c = '_';
  }
  return name.empty() ? "model" : name;
}

// One small forward per MoE layer on every engine slot (before the scheduler owns the slots), so
// the first requests do not pay for first-touch workspaces, caches and lazily built state.
Status WarmUp(Engine* engine) {
  const MoeSpec& spec = engine->spec();
  constexpr int64_t kTokens = 4;
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> f32(static_cast<size_t>(kTokens * spec.hidden));
  for (float& v : f32) v = normal(rng);
  std::vector<uint16_t> in(f32.size()), out(f32.size());
  ConvertFromF32(f32.data(), DType::kBF16, in.data(), f32.size());
  for (int slot = 0; slot < engine->num_slots(); ++slot) {
    for (int layer : spec.moe_layers) {
      ForwardArgs a;
      a.layer = layer;
      a.dtype = DType::kBF16;
      a.n_tokens = kTokens;
      a.input = in.data();
      a.output = out.data();
      a.slot = slot;
      MOE_RETURN_IF_ERROR(engine->Forward(a));
    }
  }
  return absl::OkStatus();
}

}  // namespace

int RunServe(const config::DaemonOptions& o) {
  // Signals are taken synchronously by this thread (sigwait); block them before any thread starts
  // so every thread inherits the mask.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  log::Options lo;
  lo.level = o.logging.level;
  lo.format = o.logging.format == "json" ? log::Format::kJson : log::Format::kText;
  if (Status s = log::Setup(lo); !s.ok()) {
    fprintf(stderr, "moe-swarm serve: %s\n", std::string(s.message()).c_str());
    return 1;
  }
  auto fail = [](const char* stage, const Status& s) {
    spdlog::critical("{} failed: {}", stage, std::string(s.message()));
    return 1;
  };
  Clock::time_point start = Clock::now();
  spdlog::info("moe-swarm {} starting (pid {})", MOE_VERSION, getpid());
  spdlog::debug("configuration:\n{}", config::ToToml(o));

  // Side HTTP port first, so probes and scrapes answer (not ready) while the model loads.
  metrics::Metrics::Options mo;
  StatusOr<std::unique_ptr<metrics::Metrics>> metrics = metrics::Metrics::Create(mo);
  if (!metrics.ok()) return fail("metrics", metrics.status());
  std::unique_ptr<metrics::HttpServer> http;
  if (o.server.metrics_port >= 0) {
    metrics::HttpServer::Options ho;
    ho.bind_address = o.server.metrics_address;
    ho.port = o.server.metrics_port;
    ho.metrics = metrics->get();
    StatusOr<std::unique_ptr<metrics::HttpServer>> h = metrics::HttpServer::Create(ho);
    if (!h.ok()) return fail("side HTTP port", h.status());
    http = std::move(*h);
    http->SetReady(false, "starting");
    spdlog::info("stage 1/7 side HTTP: /metrics /healthz /readyz on {}", http->address());
  } else {
    spdlog::info("stage 1/7 side HTTP: off (server.metrics_port = -1)");
  }

  // Model.
  std::string dir = o.model.dir;
  if (dir.empty()) {
    Clock::time_point t = Clock::now();
    StatusOr<std::string> embedded = EnsureEmbeddedModel(o.model.cache_dir);
    if (!embedded.ok()) return fail("embedded model", embedded.status());
    dir = *embedded;
    spdlog::info("stage 2/7 model: embedded model at {} ({} ms)", dir, MsSince(t));
  }
  Clock::time_point t = Clock::now();
  StatusOr<std::unique_ptr<Model>> opened = Model::Open(dir);
  if (!opened.ok()) return fail("model", opened.status());
  std::shared_ptr<const Model> model = std::move(*opened);
  const MoeSpec& spec = model->spec();
  std::string name = ServedName(o, dir);
  spdlog::info(
      "stage 2/7 model: {} ({}), hidden {}, {} MoE layers, {} experts, top-{}, {}, {} MiB mapped "
      "({} ms)",
      name, std::string(FamilyName(spec.family)), spec.hidden, spec.moe_layers.size(),
      spec.n_experts(), spec.top_k(), std::string(DTypeName(spec.weight_dtype)),
      model->mapped_bytes() >> 20, MsSince(t));
  if (Status s = metrics.value()->RegisterModel(name); !s.ok()) return fail("metrics", s);
  if (Status s = metrics.value()->ConfigureExpertLoad(spec.n_layers, spec.n_experts()); !s.ok()) {
    return fail("metrics", s);
  }

  // Engine.
  t = Clock::now();
  StatusOr<std::unique_ptr<Engine>> engine = CreateEngine(o, model);
  if (!engine.ok()) return fail("engine", engine.status());
  if (Status s = metrics.value()->SetEngine(engine.value()->name()); !s.ok()) {
    return fail("metrics", s);
  }
  // GPU memory and busy ratio (NVML); absent on hosts without a driver, which is not an error.
  std::unique_ptr<metrics::GpuMetrics> gpu_metrics;
  if (auto g = metrics::GpuMetrics::Create(metrics->get()); g.ok()) {
    gpu_metrics = std::move(*g);
  } else {
    spdlog::info("GPU metrics off: {}", std::string(g.status().message()));
  }
  // GPU expert cache: its counters on /metrics (destroyed before the engine: declared after it).
  std::unique_ptr<metrics::ExpertCacheMetrics> cache_metrics;
#ifdef MOE_WITH_CUDA
  auto* cuda_engine = dynamic_cast<CudaEngine*>(engine->get());
  if (cuda_engine != nullptr && cuda_engine->expert_cache_pool() == nullptr) {
    spdlog::info(
        "cuda engine: {} ({} SMs), {} tiles, routed experts resident and {}; {} MiB of weights, {} "
        "MiB of workspace per slot",
        cuda_engine->device_name(), cuda_engine->sm_count(),
        cuda_engine->uses_wgmma() ? "Hopper (wgmma)" : "mma.sync",
        cuda_engine->packed_expert_weights() ? "packed" : "row-major",
        cuda_engine->weight_device_bytes() >> 20,
        cuda_engine->workspace_device_bytes_per_slot() >> 20);
  }
  if (cuda_engine != nullptr && cuda_engine->expert_cache_pool() != nullptr) {
    const experts::ExpertSlotPool* pool = cuda_engine->expert_cache_pool();
    // Lookahead precision / recall per depth, layer forwards, device hits, host wait, rounds
    // (expert_cache_stats() is thread-safe).
    auto engine_counts =
        [cuda_engine]() -> std::optional<metrics::ExpertCacheMetrics::EngineCounts> {
      StatusOr<ExpertCacheStats> stats = cuda_engine->expert_cache_stats();
      if (!stats.ok()) return std::nullopt;
      return metrics::ExpertCacheMetrics::FromEngineStats(*stats);
    };
    cache_metrics = std::make_unique<metrics::ExpertCacheMetrics>(metrics->get(), /*device=*/0,
                                                                  pool, std::move(engine_counts));
    if (!o.experts.warm_trace.empty()) {
      const Clock::time_point w = Clock::now();
      StatusOr<experts::Trace> trace = experts::ReadTraceFile(o.experts.warm_trace);
      if (!trace.ok()) return fail("experts.warm_trace", trace.status());
      const std::vector<experts::ExpertKey> ranked = cuda::RankTraceExperts(*trace);
      StatusOr<int64_t> warmed = cuda_engine->WarmExpertCache(ranked);
      if (!warmed.ok()) return fail("expert cache warm-up", warmed.status());
      spdlog::info("expert cache: warmed {} of the {} experts of {} ({} ms)", *warmed,
                   ranked.size(), o.experts.warm_trace, MsSince(w));
    }
    auto stats = cuda_engine->expert_cache_stats();
    spdlog::info(
        "expert cache: {} slots x {} KiB ({} MiB for {} MiB of routed experts), eviction {}, "
        "prefetch {}, host tier {}{}, {} slots; {} MiB of device memory for resident weights "
        "(routers, shared experts) and slots; routed experts load on demand",
        pool->SlotCount(0), pool->SlotBytes(0) >> 10,
        (int64_t{pool->SlotCount(0)} * pool->SlotBytes(0)) >> 20,
        (pool->SlotBytes(0) * spec.n_experts() * static_cast<int64_t>(spec.moe_layers.size())) >>
            20,
        std::string(pool->PolicyName()), o.experts.prefetch ? "on" : "off",
        stats.ok() ? stats->host_tier : std::string("?"),
        stats.ok() && stats->compressible_experts > 0 ? " + compressed copies (encoding)" : "",
        stats.ok() && stats->packed_slots ? "packed" : "row-major",
        cuda_engine->weight_device_bytes() >> 20);
  }
#endif
  // Expert load per layer (moe_expert_routed_tokens_total, moe_expert_load_imbalance_ratio).
  engine = metrics::InstrumentedEngine::Create(std::move(*engine), metrics->get());
  if (!engine.ok()) return fail("engine metrics", engine.status());
  spdlog::info("stage 3/7 engine: {} with {} slots, max {} tokens per batch ({} ms)",
               std::string(engine.value()->name()), engine.value()->num_slots(),
               engine.value()->max_batch_tokens(), MsSince(t));

  // Warm-up, while the engine's slots are still ours.
  t = Clock::now();
  if (Status s = WarmUp(engine->get()); !s.ok()) return fail("warm-up", s);
  spdlog::info("stage 4/7 warm-up: {} MoE layers x {} slots ({} ms)", spec.moe_layers.size(),
               engine.value()->num_slots(), MsSince(t));

  // Scheduler.
  metrics::SchedulerMetrics sched_metrics(metrics->get());
  SchedulerOptions so;
  so.engine = engine->get();
  so.max_batch_tokens = o.scheduler.max_batch_tokens;
  so.max_queue_delay_us = o.scheduler.max_queue_delay_us;
  so.preferred_batch_tokens = o.scheduler.preferred_batch_tokens;
  so.max_queue_tokens = o.scheduler.max_queue_tokens;
  so.observer = &sched_metrics;
  StatusOr<std::unique_ptr<Scheduler>> scheduler = Scheduler::Create(so);
  if (!scheduler.ok()) return fail("scheduler", scheduler.status());
  sched_metrics.SetStatsSource([s = scheduler->get()] { return s->Stats(); });
  server::SchedulerBackend backend(scheduler->get(), spec.top_k(), o.scheduler.max_batch_tokens);
  spdlog::info(
      "stage 5/7 scheduler: max_batch_tokens {}, max_queue_delay_us {}, "
      "max_queue_tokens {}",
      o.scheduler.max_batch_tokens, o.scheduler.max_queue_delay_us, o.scheduler.max_queue_tokens);

  // gRPC (health NOT_SERVING until warm).
  server::Server::Options opts;
  opts.server = o.server;
  opts.scheduler = o.scheduler;
  opts.model.name = name;
  opts.model.spec = spec;
  opts.model.engine = std::string(engine.value()->name());
  opts.model.engine_slots = engine.value()->num_slots();
  opts.backend = &backend;
  opts.metrics = metrics->get();
  StatusOr<std::unique_ptr<server::Server>> server = server::Server::Create(opts);
  if (!server.ok()) {
    sched_metrics.SetStatsSource(nullptr);
    return fail("gRPC server", server.status());
  }
  spdlog::info("stage 6/7 gRPC: {} (health NOT_SERVING until ready)", server.value()->address());

  server.value()->SetReady(true);
  if (http != nullptr) http->SetReady(true);
  spdlog::info("stage 7/7 ready: serving {} (KServe models {}.layer<L>) on {}; start-up took {} ms",
               name, name, server.value()->address(), MsSince(start));

  int sig = 0;
  sigwait(&signals, &sig);
  spdlog::info("received {}; draining (up to {} ms)", sig == SIGTERM ? "SIGTERM" : "SIGINT",
               o.server.drain_timeout_ms);
  if (http != nullptr) http->SetReady(false, "draining");
  server.value()->Shutdown();  // drains the scheduler too
  sched_metrics.SetStatsSource(nullptr);
  spdlog::info("stopped cleanly");
  return 0;
}

}  // namespace moe::cli
