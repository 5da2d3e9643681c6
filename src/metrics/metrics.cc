#include "moe/metrics/metrics.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <exception>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "metrics/lazy_slots.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"
#include "prometheus/text_serializer.h"

namespace moe::metrics {
namespace {

using prometheus::Counter;
using prometheus::Family;
using prometheus::Gauge;
using prometheus::Histogram;

constexpr int kNumCodes = 17;  // gRPC codes 0 (OK) .. 16 (UNAUTHENTICATED)
constexpr int kUnknownCode = 2;
constexpr char kOtherModel[] = "_other";

// 10 us .. 10 s in a 1-2.5-5 progression: 19 bounds covering a cache hit to a cold request.
Histogram::BucketBoundaries LatencyBuckets() {
  Histogram::BucketBoundaries bounds;
  for (double decade = 1e-5; decade < 10.0; decade *= 10.0) {
    bounds.push_back(decade);
    bounds.push_back(2.5 * decade);
    bounds.push_back(5.0 * decade);
  }
  bounds.push_back(10.0);
  return bounds;
}

// 1 .. 65536 tokens, powers of two.
Histogram::BucketBoundaries TokenBuckets() {
  Histogram::BucketBoundaries bounds;
  for (double t = 1; t <= 65536; t *= 2) bounds.push_back(t);
  return bounds;
}

template <typename T>
Family<T>& Build(prometheus::Registry& registry, const std::string& name, const std::string& help);

template <>
Family<Counter>& Build(prometheus::Registry& registry, const std::string& name,
                       const std::string& help) {
  return prometheus::BuildCounter().Name(name).Help(help).Register(registry);
}
template <>
Family<Gauge>& Build(prometheus::Registry& registry, const std::string& name,
                     const std::string& help) {
  return prometheus::BuildGauge().Name(name).Help(help).Register(registry);
}
template <>
Family<Histogram>& Build(prometheus::Registry& registry, const std::string& name,
                         const std::string& help) {
  return prometheus::BuildHistogram().Name(name).Help(help).Register(registry);
}

// Per-model series. Counters for non-OK codes are created on first use.
struct ModelSeries {
  std::string label;  // the model label value
  std::array<std::atomic<Counter*>, kNumCodes> requests{};
  Histogram* duration = nullptr;
};

// The gate-lookahead counters of one (device, depth).
struct LookaheadSeries {
  Counter* predicted = nullptr;
  Counter* routed = nullptr;
  Counter* correct = nullptr;
};

// The three lookahead families, labelled {device, depth}.
struct LookaheadFamilies {
  Family<Counter>* predicted = nullptr;
  Family<Counter>* routed = nullptr;
  Family<Counter>* correct = nullptr;

  LookaheadSeries Add(int device, int depth) const {
    const prometheus::Labels l = {{"device", std::to_string(device)},
                                  {"depth", std::to_string(depth)}};
    return {&predicted->Add(l), &routed->Add(l), &correct->Add(l)};
  }
};

struct DeviceSeries {
  Counter* cache_hits;
  Counter* cache_misses;
  Counter* cache_evictions;
  Counter* cache_copied_bytes;
  Counter* cache_copy_wait;
  Counter* cache_prefetch_loads;
  Counter* cache_prefetch_useful;
  Counter* cache_prefetch_wasted;
  Gauge* cache_resident;
  Counter* cache_layer_forwards;
  Counter* cache_device_hit_layers;
  Counter* cache_host_wait;
  Counter* cache_rounds;
  Counter* cache_ready_first_rounds;
  Counter* cache_gated_predictions;
  Counter* cache_pcie_bytes;
  Gauge* memory_used;
  Gauge* memory_total;
  Gauge* busy;
  std::mutex mu;
  // [depth - 1]; depth 1 is created with the device, deeper depths when first reported.
  std::array<LookaheadSeries, Metrics::kMaxLookaheadDepth> lookahead ABSL_GUARDED_BY(mu);
  Metrics::ExpertCacheTotals last ABSL_GUARDED_BY(mu);  // last.lookahead: kMaxLookaheadDepth
};

// Counters fed from cumulative snapshots (SetWorkerTotals): last values seen, to add deltas.
struct WorkerSeries {
  Counter* sent;
  Counter* received;
  Counter* busy_seconds;
  std::mutex mu;
  Metrics::WorkerTotals last ABSL_GUARDED_BY(mu);
};

// Adds the advance from `last` to `now` to `counter`; a decrease means the source restarted.
template <typename T>
void AdvanceCounter(Counter& counter, T& last, T now) {
  counter.Increment(static_cast<double>(now >= last ? now - last : now));
  last = now;
}

// One decoder layer's expert-load state.
struct LayerLoad {
  std::mutex mu;
  std::vector<Counter*> per_expert;  // empty when n_experts > max_expert_labels
  std::vector<int64_t> window ABSL_GUARDED_BY(mu);
  int64_t window_total ABSL_GUARDED_BY(mu) = 0;
  Gauge* imbalance ABSL_GUARDED_BY(mu) = nullptr;  // created on the first full window
};

}  // namespace

// NOTES: std::mutex rather than absl::Mutex (here and in src/metrics): Debian's abseil is not
// built with TSan, so TSan cannot see absl::Mutex ordering; pthread mutexes it intercepts.
struct Metrics::Families {
  std::shared_ptr<prometheus::Registry> registry = std::make_shared<prometheus::Registry>();

  std::mutex build_mu;
  Family<Gauge>* build_info = nullptr;
  Gauge* build_info_series ABSL_GUARDED_BY(build_mu) = nullptr;
  BuildInfo build ABSL_GUARDED_BY(build_mu);
  Family<Gauge>* start_time = nullptr;
  Gauge* ready = nullptr;
  Counter* dropped = nullptr;

  Family<Counter>* requests = nullptr;
  Family<Histogram>* request_duration = nullptr;
  Gauge* inflight = nullptr;

  Histogram* queue_wait = nullptr;
  Gauge* queue_depth = nullptr;
  Gauge* queued_tokens = nullptr;
  Family<Counter>* refused = nullptr;
  Histogram* batch_tokens = nullptr;
  Counter* tokens = nullptr;

  Histogram* routing = nullptr;
  Histogram* compute = nullptr;
  Family<Counter>* expert_tokens = nullptr;
  Family<Gauge>* expert_imbalance = nullptr;

  Family<Counter>* cache_hits = nullptr;
  Family<Counter>* cache_misses = nullptr;
  Family<Counter>* cache_evictions = nullptr;
  Family<Counter>* cache_copied_bytes = nullptr;
  Family<Counter>* cache_copy_wait = nullptr;
  Family<Counter>* cache_prefetch_loads = nullptr;
  Family<Counter>* cache_prefetch_useful = nullptr;
  Family<Counter>* cache_prefetch_wasted = nullptr;
  LookaheadFamilies cache_lookahead;
  Family<Gauge>* cache_resident = nullptr;
  Family<Counter>* cache_layer_forwards = nullptr;
  Family<Counter>* cache_device_hit_layers = nullptr;
  Family<Counter>* cache_host_wait = nullptr;
  Family<Counter>* cache_rounds = nullptr;
  Family<Counter>* cache_ready_first_rounds = nullptr;
  Family<Counter>* cache_gated_predictions = nullptr;
  Family<Counter>* cache_pcie_bytes = nullptr;
  Family<Gauge>* gpu_memory_used = nullptr;
  Family<Gauge>* gpu_memory_total = nullptr;
  Family<Gauge>* gpu_busy = nullptr;

  Gauge* swarm_queue = nullptr;
  Family<Counter>* worker_sent = nullptr;
  Family<Counter>* worker_received = nullptr;
  Family<Counter>* worker_busy = nullptr;

  std::mutex hooks_mu;  // held while hooks run, so RemoveCollectHook waits for a running one
  int next_hook_id ABSL_GUARDED_BY(hooks_mu) = 0;
  std::vector<std::pair<int, CollectHook>> hooks ABSL_GUARDED_BY(hooks_mu);

  std::shared_mutex models_mu;
  absl::flat_hash_map<std::string, std::unique_ptr<ModelSeries>> models ABSL_GUARDED_BY(models_mu);

  std::shared_mutex experts_mu;  // writer: ConfigureExpertLoad; reader: RecordExpertLoad
  int n_layers ABSL_GUARDED_BY(experts_mu) = 0;
  int n_experts ABSL_GUARDED_BY(experts_mu) = 0;
  std::vector<std::unique_ptr<LayerLoad>> layers ABSL_GUARDED_BY(experts_mu);

  std::unique_ptr<LazySlots<DeviceSeries>> devices;
  std::unique_ptr<LazySlots<WorkerSeries>> workers;
};

Metrics::Metrics(const Options& options) : options_(options), f_(std::make_unique<Families>()) {}
Metrics::~Metrics() = default;

StatusOr<std::unique_ptr<Metrics>> Metrics::Create(const Options& options) {
  const BuildInfo& b = options.build;
  if (b.version.empty() || b.git_revision.empty() || b.cuda.empty() || b.engine.empty()) {
    return absl::InvalidArgumentError(
        "metrics: build info needs version, git_revision, cuda and engine (use \"none\"/"
        "\"unknown\" rather than empty)");
  }
  if (options.max_expert_labels < 0 || options.imbalance_window_assignments <= 0 ||
      options.max_devices <= 0 || options.max_workers <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("metrics: options out of range: max_expert_labels=", options.max_expert_labels,
                     " imbalance_window_assignments=", options.imbalance_window_assignments,
                     " max_devices=", options.max_devices, " max_workers=", options.max_workers));
  }
  std::unique_ptr<Metrics> metrics(new Metrics(options));
  MOE_RETURN_IF_ERROR(metrics->Init());
  return metrics;
}

absl::Status Metrics::Init() {
  Families& f = *f_;
  prometheus::Registry& r = *f.registry;
  // prometheus-cpp reports invalid names by throwing; keep that inside this function.
  try {
    f.build_info =
        &Build<Gauge>(r, "moe_build_info", "Build facts as labels; the value is always 1.");
    {
      std::lock_guard lock(f.build_mu);
      f.build = options_.build;
      f.build_info_series = &f.build_info->Add({{"version", f.build.version},
                                                {"git_revision", f.build.git_revision},
                                                {"cuda", f.build.cuda},
                                                {"engine", f.build.engine}});
      f.build_info_series->Set(1);
    }
    f.start_time = &Build<Gauge>(r, "moe_start_time_seconds",
                                 "Unix time the daemon's metrics were created, in seconds.");
    f.start_time->Add({}).Set(
        std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count());
    f.ready = &Build<Gauge>(r, "moe_ready",
                            "1 while the daemon serves (weights loaded and warmed, not "
                            "draining), else 0; mirrors /readyz.")
                   .Add({});
    f.dropped = &Build<Counter>(r, "moe_metrics_dropped_total",
                                "Observations dropped because a layer, expert, device or worker "
                                "index was out of the configured range.")
                     .Add({});

    f.requests = &Build<Counter>(r, "moe_requests_total",
                                 "Finished inference requests by model and gRPC status code.");
    f.request_duration = &Build<Histogram>(
        r, "moe_request_duration_seconds",
        "End-to-end latency of an inference request, from receipt to response, in seconds.");
    f.inflight = &Build<Gauge>(r, "moe_inflight_requests",
                               "Inference requests accepted and not yet answered.")
                      .Add({});

    f.queue_wait =
        &Build<Histogram>(r, "moe_queue_wait_seconds",
                          "Time a request waited in the scheduler queue before its batch was "
                          "dispatched, in seconds.")
             .Add({}, LatencyBuckets());
    f.queue_depth =
        &Build<Gauge>(r, "moe_queue_depth", "Requests waiting in the scheduler queue.").Add({});
    f.queued_tokens = &Build<Gauge>(r, "moe_queued_tokens",
                                    "Tokens of the requests waiting in the scheduler queue.")
                           .Add({});
    f.refused = &Build<Counter>(r, "moe_scheduler_refused_total",
                                "Requests the scheduler refused at submission, by reason "
                                "(invalid, queue_full, shutting_down).");
    f.batch_tokens =
        &Build<Histogram>(r, "moe_batch_size_tokens", "Tokens in each dispatched batch.")
             .Add({}, TokenBuckets());
    f.tokens =
        &Build<Counter>(r, "moe_tokens_processed_total", "Tokens carried by dispatched batches.")
             .Add({});

    f.routing = &Build<Histogram>(r, "moe_routing_duration_seconds",
                                  "Router time (gating scores and top-k) of one MoE layer "
                                  "forward of one batch, in seconds.")
                     .Add({}, LatencyBuckets());
    f.compute = &Build<Histogram>(r, "moe_compute_duration_seconds",
                                  "Engine forward time (routing and experts) of one MoE layer "
                                  "for one batch, in seconds.")
                     .Add({}, LatencyBuckets());
    f.expert_tokens = &Build<Counter>(
        r, "moe_expert_routed_tokens_total",
        "Tokens routed to each expert of each MoE layer (models with few experts only).");
    f.expert_imbalance = &Build<Gauge>(
        r, "moe_expert_load_imbalance_ratio",
        "Per MoE layer: max over experts of routed tokens divided by the mean, over the last "
        "window of routed tokens; 1 is perfectly balanced.");

    f.cache_hits = &Build<Counter>(r, "moe_expert_cache_hits_total",
                                   "Expert lookups served from the GPU expert cache.");
    f.cache_misses = &Build<Counter>(r, "moe_expert_cache_misses_total",
                                     "Expert lookups that had to copy the expert to the GPU.");
    f.cache_evictions = &Build<Counter>(r, "moe_expert_cache_evictions_total",
                                        "Experts evicted from the GPU expert cache.");
    f.cache_copied_bytes = &Build<Counter>(r, "moe_expert_cache_copied_bytes_total",
                                           "Bytes of expert weights copied host to device.");
    f.cache_copy_wait =
        &Build<Counter>(r, "moe_expert_cache_copy_wait_seconds_total",
                        "Time compute waited for expert copies to the GPU, in seconds.");
    f.cache_prefetch_loads = &Build<Counter>(r, "moe_expert_cache_prefetch_loads_total",
                                             "Expert prefetch loads issued.");
    f.cache_prefetch_useful =
        &Build<Counter>(r, "moe_expert_cache_prefetch_useful_total",
                        "Prefetched experts that were demanded before their eviction.");
    f.cache_prefetch_wasted = &Build<Counter>(r, "moe_expert_cache_prefetch_wasted_total",
                                              "Prefetched experts evicted without being demanded.");
    f.cache_lookahead.predicted =
        &Build<Counter>(r, "moe_expert_cache_predicted_experts_total",
                        "Experts the gate-lookahead predicted for the MoE layer `depth` layers "
                        "ahead (precision's denominator).");
    f.cache_lookahead.routed =
        &Build<Counter>(r, "moe_expert_cache_prediction_routed_experts_total",
                        "Experts really routed by the layers that had a prediction of that "
                        "depth (recall's denominator).");
    f.cache_lookahead.correct =
        &Build<Counter>(r, "moe_expert_cache_correctly_predicted_experts_total",
                        "Predicted experts that the layer `depth` ahead really routed "
                        "(precision's and recall's numerator).");
    f.cache_resident = &Build<Gauge>(r, "moe_expert_cache_resident_experts",
                                     "Experts ready or loading in the GPU expert cache.");
    f.cache_layer_forwards =
        &Build<Counter>(r, "moe_expert_cache_layer_forwards_total",
                        "MoE layer forwards through the GPU expert cache (each reads its "
                        "routing result on the host once).");
    f.cache_device_hit_layers =
        &Build<Counter>(r, "moe_expert_cache_device_hit_layers_total",
                        "Cached layer forwards whose routed experts were all resident at the "
                        "device residency check: their expert kernels ran without waiting for "
                        "the host.");
    f.cache_host_wait =
        &Build<Counter>(r, "moe_expert_cache_host_wait_seconds_total",
                        "Host time spent waiting for the routing results of cached layer "
                        "forwards, in seconds.");
    f.cache_rounds = &Build<Counter>(r, "moe_expert_cache_rounds_total",
                                     "Expert acquisition rounds of the GPU expert cache (one per "
                                     "layer forward, more when its experts do not fit at once).");
    f.cache_ready_first_rounds =
        &Build<Counter>(r, "moe_expert_cache_ready_first_rounds_total",
                        "Expert cache rounds with a miss that computed their resident experts "
                        "before waiting for the copies of the others.");
    f.cache_gated_predictions =
        &Build<Counter>(r, "moe_expert_cache_gated_predictions_total",
                        "Layer predictions two or more layers ahead not prefetched because "
                        "their depth's measured precision was too low.");
    f.cache_pcie_bytes =
        &Build<Counter>(r, "moe_expert_cache_pcie_bytes_total",
                        "Bytes the GPU expert cache's loads moved host to device (compressed "
                        "copies at their compressed size; copied_bytes counts expert bytes).");
    f.gpu_memory_used =
        &Build<Gauge>(r, "moe_gpu_memory_used_bytes", "GPU memory in use on the device, in bytes.");
    f.gpu_memory_total =
        &Build<Gauge>(r, "moe_gpu_memory_total_bytes", "GPU memory of the device, in bytes.");
    f.gpu_busy = &Build<Gauge>(r, "moe_gpu_busy_ratio",
                               "Fraction of the last sampling interval the GPU had work in "
                               "flight (0..1).");

    f.swarm_queue = &Build<Gauge>(r, "moe_swarm_queue_length",
                                  "Tasks in the worker swarm's shared queue, not yet taken by a "
                                  "worker.")
                         .Add({});
    f.worker_sent = &Build<Counter>(r, "moe_worker_messages_sent_total",
                                    "Results each swarm worker sent back (tasks completed or "
                                    "abandoned).");
    f.worker_received = &Build<Counter>(r, "moe_worker_messages_received_total",
                                        "Tasks each swarm worker took from the queue.");
    f.worker_busy = &Build<Counter>(r, "moe_worker_busy_seconds_total",
                                    "Seconds each swarm worker spent running tasks.");
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("metrics: registering families: ", e.what()));
  }

  f.devices = std::make_unique<LazySlots<DeviceSeries>>(options_.max_devices, [&f](int device) {
    const prometheus::Labels l = {{"device", std::to_string(device)}};
    auto s = std::make_unique<DeviceSeries>();
    s->cache_hits = &f.cache_hits->Add(l);
    s->cache_misses = &f.cache_misses->Add(l);
    s->cache_evictions = &f.cache_evictions->Add(l);
    s->cache_copied_bytes = &f.cache_copied_bytes->Add(l);
    s->cache_copy_wait = &f.cache_copy_wait->Add(l);
    s->cache_prefetch_loads = &f.cache_prefetch_loads->Add(l);
    s->cache_prefetch_useful = &f.cache_prefetch_useful->Add(l);
    s->cache_prefetch_wasted = &f.cache_prefetch_wasted->Add(l);
    s->cache_resident = &f.cache_resident->Add(l);
    s->cache_layer_forwards = &f.cache_layer_forwards->Add(l);
    s->cache_device_hit_layers = &f.cache_device_hit_layers->Add(l);
    s->cache_host_wait = &f.cache_host_wait->Add(l);
    s->cache_rounds = &f.cache_rounds->Add(l);
    s->cache_ready_first_rounds = &f.cache_ready_first_rounds->Add(l);
    s->cache_gated_predictions = &f.cache_gated_predictions->Add(l);
    s->cache_pcie_bytes = &f.cache_pcie_bytes->Add(l);
    {
      std::lock_guard lock(s->mu);
      s->lookahead[0] = f.cache_lookahead.Add(device, /*depth=*/1);
      s->last.lookahead.resize(Metrics::kMaxLookaheadDepth);
    }
    s->memory_used = &f.gpu_memory_used->Add(l);
    s->memory_total = &f.gpu_memory_total->Add(l);
    s->busy = &f.gpu_busy->Add(l);
    return s;
  });
  f.workers = std::make_unique<LazySlots<WorkerSeries>>(options_.max_workers, [&f](int worker) {
    const prometheus::Labels l = {{"worker", std::to_string(worker)}};
    auto s = std::make_unique<WorkerSeries>();
    s->sent = &f.worker_sent->Add(l);
    s->received = &f.worker_received->Add(l);
    s->busy_seconds = &f.worker_busy->Add(l);
    return s;
  });
  // Requests for unregistered models are counted under "_other", which always exists.
  return RegisterModel(kOtherModel);
}

const std::shared_ptr<prometheus::Registry>& Metrics::registry() const { return f_->registry; }

std::string Metrics::Serialize() {
  {
    std::lock_guard lock(f_->hooks_mu);
    for (auto& [id, hook] : f_->hooks) hook(*this);
  }
  return prometheus::TextSerializer().Serialize(f_->registry->Collect());
}

int Metrics::AddCollectHook(CollectHook hook) {
  std::lock_guard lock(f_->hooks_mu);
  const int id = f_->next_hook_id++;
  f_->hooks.emplace_back(id, std::move(hook));
  return id;
}

void Metrics::RemoveCollectHook(int id) {
  std::lock_guard lock(f_->hooks_mu);
  auto& hooks = f_->hooks;
  hooks.erase(std::remove_if(hooks.begin(), hooks.end(),
                             [id](const auto& entry) { return entry.first == id; }),
              hooks.end());
}

std::string_view Metrics::CodeName(int grpc_code) {
  static constexpr std::array<std::string_view, kNumCodes> kNames = {
      "OK",
      "CANCELLED",
      "UNKNOWN",
      "INVALID_ARGUMENT",
      "DEADLINE_EXCEEDED",
      "NOT_FOUND",
      "ALREADY_EXISTS",
      "PERMISSION_DENIED",
      "RESOURCE_EXHAUSTED",
      "FAILED_PRECONDITION",
      "ABORTED",
      "OUT_OF_RANGE",
      "UNIMPLEMENTED",
      "INTERNAL",
      "UNAVAILABLE",
      "DATA_LOSS",
      "UNAUTHENTICATED",
  };
  if (grpc_code < 0 || grpc_code >= kNumCodes) return kNames[kUnknownCode];
  return kNames[grpc_code];
}

// ---- Set-up --------------------------------------------------------------------------------

absl::Status Metrics::RegisterModel(std::string_view model) {
  if (model.empty()) return absl::InvalidArgumentError("metrics: empty model name");
  Families& f = *f_;
  std::lock_guard lock(f.models_mu);
  auto [it, inserted] = f.models.try_emplace(std::string(model));
  if (!inserted) return absl::OkStatus();
  auto series = std::make_unique<ModelSeries>();
  series->label = std::string(model);
  const prometheus::Labels model_label = {{"model", std::string(model)}};
  series->duration = &f.request_duration->Add(model_label, LatencyBuckets());
  // The OK series exists from the start so rate() over it is defined before the first request.
  series->requests[0].store(
      &f.requests->Add({{"model", std::string(model)}, {"code", std::string(CodeName(0))}}),
      std::memory_order_release);
  it->second = std::move(series);
  return absl::OkStatus();
}

absl::Status Metrics::SetEngine(std::string_view engine) {
  if (engine != "cpu" && engine != "cuda") {
    return absl::InvalidArgumentError(
        absl::StrCat("metrics: engine label '", std::string(engine), "' is not cpu or cuda"));
  }
  Families& f = *f_;
  std::lock_guard lock(f.build_mu);
  if (f.build.engine == engine) return absl::OkStatus();
  f.build.engine = std::string(engine);
  f.build_info->Remove(f.build_info_series);
  f.build_info_series = &f.build_info->Add({{"version", f.build.version},
                                            {"git_revision", f.build.git_revision},
                                            {"cuda", f.build.cuda},
                                            {"engine", f.build.engine}});
  f.build_info_series->Set(1);
  return absl::OkStatus();
}

absl::Status Metrics::ConfigureExpertLoad(int n_layers, int n_experts) {
  if (n_layers <= 0 || n_experts <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("metrics: ConfigureExpertLoad(n_layers=", n_layers, ", n_experts=", n_experts,
                     "): both must be positive"));
  }
  Families& f = *f_;
  std::lock_guard lock(f.experts_mu);
  // A reload: the old model's series go away so they do not linger with stale values.
  for (auto& layer : f.layers) {
    for (Counter* c : layer->per_expert) f.expert_tokens->Remove(c);
    std::lock_guard layer_lock(layer->mu);
    if (layer->imbalance != nullptr) f.expert_imbalance->Remove(layer->imbalance);
  }
  f.layers.clear();
  f.n_layers = n_layers;
  f.n_experts = n_experts;
  const bool per_expert = n_experts <= options_.max_expert_labels;
  for (int l = 0; l < n_layers; ++l) {
    auto layer = std::make_unique<LayerLoad>();
    // Per-expert counters are created here (not on first use) for every layer; layers that are
    // not MoE never receive tokens and stay at 0. Bounded by n_layers * max_expert_labels.
    if (per_expert) {
      layer->per_expert.reserve(n_experts);
      for (int e = 0; e < n_experts; ++e) {
        layer->per_expert.push_back(
            &f.expert_tokens->Add({{"layer", std::to_string(l)}, {"expert", std::to_string(e)}}));
      }
    }
    std::lock_guard layer_lock(layer->mu);
    layer->window.assign(n_experts, 0);
    f.layers.push_back(std::move(layer));
  }
  return absl::OkStatus();
}

// ---- Requests ------------------------------------------------------------------------------

void Metrics::RecordRequest(std::string_view model, absl::StatusCode code, double seconds) {
  RecordRequest(model, static_cast<int>(code), seconds);
}

void Metrics::RecordRequest(std::string_view model, int grpc_code, double seconds) {
  Families& f = *f_;
  if (grpc_code < 0 || grpc_code >= kNumCodes) grpc_code = kUnknownCode;
  ModelSeries* series = nullptr;
  {
    std::shared_lock lock(f.models_mu);
    auto it = f.models.find(absl::string_view(model.data(), model.size()));
    if (it == f.models.end()) it = f.models.find(kOtherModel);
    series = it->second.get();  // ModelSeries are never removed
  }
  Counter* counter = series->requests[grpc_code].load(std::memory_order_acquire);
  if (counter == nullptr) {
    // Family::Add returns the existing series for equal labels, so a race here is harmless.
    counter =
        &f.requests->Add({{"model", series->label}, {"code", std::string(CodeName(grpc_code))}});
    series->requests[grpc_code].store(counter, std::memory_order_release);
  }
  counter->Increment();
  series->duration->Observe(seconds);
}

void Metrics::RequestStarted() { f_->inflight->Increment(); }
void Metrics::RequestFinished() { f_->inflight->Decrement(); }

// ---- Scheduler -----------------------------------------------------------------------------

void Metrics::RecordQueueWait(double seconds) { f_->queue_wait->Observe(seconds); }
void Metrics::SetQueueDepth(int64_t requests, int64_t tokens) {
  f_->queue_depth->Set(static_cast<double>(requests));
  f_->queued_tokens->Set(static_cast<double>(tokens));
}

void Metrics::RecordRefused(std::string_view reason) {
  std::string label = "other";
  for (const char* known : {"invalid", "queue_full", "shutting_down"}) {
    if (reason == known) label = known;
  }
  // Family::Add returns the existing series for equal labels (4 possible).
  f_->refused->Add({{"reason", label}}).Increment();
}
void Metrics::RecordBatch(int64_t tokens) {
  if (tokens < 0) {
    f_->dropped->Increment();
    return;
  }
  f_->batch_tokens->Observe(static_cast<double>(tokens));
  f_->tokens->Increment(static_cast<double>(tokens));
}

// ---- Engine --------------------------------------------------------------------------------

void Metrics::RecordRouting(double seconds) { f_->routing->Observe(seconds); }
void Metrics::RecordCompute(double seconds) { f_->compute->Observe(seconds); }

void Metrics::RecordExpertLoad(int layer, absl::Span<const uint32_t> tokens_per_expert) {
  Families& f = *f_;
  std::shared_lock lock(f.experts_mu);
  if (layer < 0 || layer >= f.n_layers ||
      tokens_per_expert.size() != static_cast<size_t>(f.n_experts)) {
    f.dropped->Increment();
    return;
  }
  LayerLoad& load = *f.layers[layer];
  for (size_t e = 0; e < load.per_expert.size(); ++e) {
    if (tokens_per_expert[e] != 0) load.per_expert[e]->Increment(tokens_per_expert[e]);
  }
  std::lock_guard layer_lock(load.mu);
  for (size_t e = 0; e < tokens_per_expert.size(); ++e) {
    load.window[e] += tokens_per_expert[e];
    load.window_total += tokens_per_expert[e];
  }
  if (load.window_total < options_.imbalance_window_assignments) return;
  const int64_t max_load = *std::max_element(load.window.begin(), load.window.end());
  const double mean = static_cast<double>(load.window_total) / f.n_experts;
  if (load.imbalance == nullptr) {
    load.imbalance = &f.expert_imbalance->Add({{"layer", std::to_string(layer)}});
  }
  load.imbalance->Set(static_cast<double>(max_load) / mean);
  std::fill(load.window.begin(), load.window.end(), 0);
  load.window_total = 0;
}

// ---- Expert cache and GPU ------------------------------------------------------------------

namespace {
template <typename T>
T* SlotOrDrop(LazySlots<T>& slots, int index, Counter& dropped) {
  T* s = slots.Get(index);
  if (s == nullptr) dropped.Increment();
  return s;
}
}  // namespace

void Metrics::SetExpertCacheTotals(int device, const ExpertCacheTotals& totals) {
  DeviceSeries* s = SlotOrDrop(*f_->devices, device, *f_->dropped);
  if (s == nullptr) return;
  std::lock_guard lock(s->mu);
  ExpertCacheTotals& last = s->last;
  AdvanceCounter(*s->cache_hits, last.hits, totals.hits);
  AdvanceCounter(*s->cache_misses, last.misses, totals.misses);
  AdvanceCounter(*s->cache_evictions, last.evictions, totals.evictions);
  AdvanceCounter(*s->cache_copied_bytes, last.bytes_copied, totals.bytes_copied);
  AdvanceCounter(*s->cache_copy_wait, last.copy_wait_seconds, totals.copy_wait_seconds);
  AdvanceCounter(*s->cache_prefetch_loads, last.prefetch_loads, totals.prefetch_loads);
  AdvanceCounter(*s->cache_prefetch_useful, last.prefetch_useful, totals.prefetch_useful);
  AdvanceCounter(*s->cache_prefetch_wasted, last.prefetch_wasted, totals.prefetch_wasted);
  s->cache_resident->Set(static_cast<double>(totals.resident_experts));
  AdvanceCounter(*s->cache_layer_forwards, last.layer_forwards, totals.layer_forwards);
  AdvanceCounter(*s->cache_device_hit_layers, last.device_hit_layers, totals.device_hit_layers);
  AdvanceCounter(*s->cache_host_wait, last.host_wait_seconds, totals.host_wait_seconds);
  AdvanceCounter(*s->cache_rounds, last.rounds, totals.rounds);
  AdvanceCounter(*s->cache_ready_first_rounds, last.ready_first_rounds, totals.ready_first_rounds);
  AdvanceCounter(*s->cache_gated_predictions, last.gated_predictions, totals.gated_predictions);
  AdvanceCounter(*s->cache_pcie_bytes, last.pcie_bytes, totals.pcie_bytes);
  for (size_t d = 0; d < totals.lookahead.size(); ++d) {
    if (d >= s->lookahead.size()) {
      f_->dropped->Increment();  // deeper than kMaxLookaheadDepth: no new series
      continue;
    }
    LookaheadSeries& series = s->lookahead[d];
    if (series.predicted == nullptr) {
      series = f_->cache_lookahead.Add(device, static_cast<int>(d) + 1);
    }
    LookaheadTotals& was = last.lookahead[d];
    const LookaheadTotals& now = totals.lookahead[d];
    AdvanceCounter(*series.predicted, was.predicted_experts, now.predicted_experts);
    AdvanceCounter(*series.routed, was.routed_experts, now.routed_experts);
    AdvanceCounter(*series.correct, was.correctly_predicted_experts,
                   now.correctly_predicted_experts);
  }
}

void Metrics::SetGpuMemory(int device, int64_t used_bytes, int64_t total_bytes) {
  if (DeviceSeries* s = SlotOrDrop(*f_->devices, device, *f_->dropped)) {
    s->memory_used->Set(static_cast<double>(used_bytes));
    s->memory_total->Set(static_cast<double>(total_bytes));
  }
}
void Metrics::SetGpuBusyRatio(int device, double ratio) {
  if (DeviceSeries* s = SlotOrDrop(*f_->devices, device, *f_->dropped)) {
    s->busy->Set(std::clamp(ratio, 0.0, 1.0));
  }
}

// ---- Worker swarm --------------------------------------------------------------------------

void Metrics::SetSwarmQueueLength(int64_t length) {
  f_->swarm_queue->Set(static_cast<double>(length));
}

void Metrics::SetWorkerTotals(int worker, const WorkerTotals& totals) {
  WorkerSeries* s = SlotOrDrop(*f_->workers, worker, *f_->dropped);
  if (s == nullptr) return;
  std::lock_guard lock(s->mu);
  AdvanceCounter(*s->received, s->last.received, totals.received);
  AdvanceCounter(*s->sent, s->last.sent, totals.sent);
  AdvanceCounter(*s->busy_seconds, s->last.busy_seconds, totals.busy_seconds);
}

void Metrics::SetReady(bool ready) { f_->ready->Set(ready ? 1 : 0); }

}  // namespace moe::metrics
