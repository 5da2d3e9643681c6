// Prometheus metrics of the daemon: one `Metrics` object owns the registry and every family.
//
// Other components record through the narrow methods below and never see prometheus-cpp types.
// Names follow the Prometheus conventions: one prefix `moe_`, base units (`_seconds`, `_bytes`),
// counters end in `_total`, and every label has a bounded value set:
//   model   the models registered with RegisterModel() (anything else is recorded as "_other"),
//   code    the 17 canonical gRPC status codes ("OK", "INVALID_ARGUMENT", ...),
//   layer   decoder layer indices [0, n_layers) of the configured model,
//   expert  expert indices [0, n_experts) and only while n_experts <= Options::max_expert_labels,
//   device  GPU ordinals [0, Options::max_devices),
//   depth   gate-lookahead depths [1, kMaxLookaheadDepth] (how many MoE layers ahead a
//           prediction was made),
//   worker  swarm worker indices [0, Options::max_workers),
//   reason  scheduler refusal reasons: invalid, queue_full, shutting_down, other.
// Out-of-range layer/expert/device/worker/depth values are dropped (never a new series) and counted
// in moe_metrics_dropped_total, so a caller bug cannot blow up the series count. docs/OPERATIONS.md
// lists every family with its meaning.
//
// Thread safety: every method may be called from any thread concurrently. Recording methods are
// cheap (atomic adds, or a short mutex inside a prometheus histogram); RegisterModel() and
// ConfigureExpertLoad() take a writer lock and are meant for start-up / model load.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "moe/common/status.h"

namespace prometheus {
class Registry;
}  // namespace prometheus

namespace moe::metrics {

// Build facts published as the labels of moe_build_info (value 1).
struct BuildInfo {
  std::string version;       // project version, e.g. "0.1.0"
  std::string git_revision;  // short git hash at configure time, "unknown" outside a checkout
  std::string cuda;          // CUDA toolkit version compiled in, e.g. "13.0", or "none"
  std::string engine;        // the engine serving: "cpu" or "cuda"
};

// The values CMake baked into this build (version, git revision, CUDA version); engine = "cpu".
BuildInfo DefaultBuildInfo();

class Metrics {
 public:
  struct Options {
    BuildInfo build = DefaultBuildInfo();
    // Per-(layer, expert) token counters exist only for models with at most this many experts;
    // larger models get only the per-layer imbalance gauge.
    int max_expert_labels = 64;
    // The per-layer imbalance gauge is recomputed each time a layer has seen this many
    // token->expert assignments since the previous computation (top_k assignments per token).
    int64_t imbalance_window_assignments = 4096;
    int max_devices = 16;
    int max_workers = 1024;
  };

  // INVALID_ARGUMENT when an option is out of range or a build label is empty.
  static StatusOr<std::unique_ptr<Metrics>> Create(const Options& options);
  ~Metrics();
  Metrics(const Metrics&) = delete;
  Metrics& operator=(const Metrics&) = delete;

  // ---- Set-up ------------------------------------------------------------------------------
  // Sets the `engine` label of moe_build_info once the engine is chosen (engine.kind = auto is
  // resolved after the side HTTP port is up). INVALID_ARGUMENT unless "cpu" or "cuda".
  absl::Status SetEngine(std::string_view engine);
  // Makes `model` a label value of the per-model families (idempotent). Requests for models
  // never registered are recorded under model="_other". INVALID_ARGUMENT for an empty name.
  absl::Status RegisterModel(std::string_view model);
  // Declares the shape for RecordExpertLoad(): decoder layers [0, n_layers), experts
  // [0, n_experts). Re-configuring (a model reload) drops the previous per-expert series.
  // INVALID_ARGUMENT unless both are positive.
  absl::Status ConfigureExpertLoad(int n_layers, int n_experts);

  // ---- Requests (gRPC front end) -------------------------------------------------------------
  // One finished request: moe_requests_total{model,code} += 1 and its end-to-end latency into
  // moe_request_duration_seconds{model}. `code` uses the gRPC numbering (absl::StatusCode and
  // grpc::StatusCode agree; cast either); unknown numbers are recorded as "UNKNOWN".
  void RecordRequest(std::string_view model, absl::StatusCode code, double seconds);
  void RecordRequest(std::string_view model, int grpc_code, double seconds);
  // moe_inflight_requests: +1 when a request is accepted, -1 when its response is sent.
  void RequestStarted();
  void RequestFinished();

  // ---- Scheduler -----------------------------------------------------------------------------
  // Time one request spent queued before its batch was dispatched.
  void RecordQueueWait(double seconds);
  // Requests, and their tokens, currently waiting in the scheduler queue.
  void SetQueueDepth(int64_t requests, int64_t tokens);
  // Submit() refused a request. reason: "invalid", "queue_full" or "shutting_down" (anything
  // else is recorded as "other").
  void RecordRefused(std::string_view reason);
  // One dispatched batch: its size in tokens (moe_batch_size_tokens) and the tokens it carried
  // (moe_tokens_processed_total).
  void RecordBatch(int64_t tokens);

  // ---- Engine --------------------------------------------------------------------------------
  // Router time (gating scores + top-k) of one layer forward of one batch, for engines that time
  // it separately; and the whole engine forward (routing + experts) of one layer and batch.
  void RecordRouting(double seconds);
  void RecordCompute(double seconds);
  // Tokens routed to each expert of decoder layer `layer` in one forward;
  // tokens_per_expert.size() must equal the configured n_experts (else dropped).
  void RecordExpertLoad(int layer, absl::Span<const uint32_t> tokens_per_expert);

  // ---- Expert cache (GPU) --------------------------------------------------------------------
  // Lookahead depths with their own series (the `depth` label); at least the CUDA engine's
  // ExpertCacheOptions::kMaxPrefetchDepth (checked where the two meet, expert_cache_metrics.cc).
  static constexpr int kMaxLookaheadDepth = 4;
  // Gate-lookahead prediction of one depth, summed over the layers that had a prediction of that
  // depth (micro-averaged): precision = correct / predicted, recall = correct / routed.
  struct LookaheadTotals {
    int64_t predicted_experts = 0;            // experts predicted for the layer `depth` ahead
    int64_t routed_experts = 0;               // experts that layer really routed
    int64_t correctly_predicted_experts = 0;  // predicted and really routed
  };
  // Cumulative totals of one device's expert cache since it was created (pulled at scrape time by
  // ExpertCacheMetrics from ExpertSlotPool::Counters() and the engine's cache statistics).
  // Counters advance by the difference to the previous call; a smaller value than before (a new
  // pool) counts as a restart from zero.
  struct ExpertCacheTotals {
    int64_t hits = 0;              // demanded experts ready, or already loading, in a slot
    int64_t misses = 0;            // demanded experts that needed a copy
    int64_t evictions = 0;         // resident experts dropped for another one
    int64_t bytes_copied = 0;      // host -> device bytes of all expert loads (demand + prefetch)
    double copy_wait_seconds = 0;  // time compute waited for expert copies
    int64_t prefetch_loads = 0;    // prefetch loads issued
    int64_t prefetch_useful = 0;   // prefetched experts demanded before eviction
    int64_t prefetch_wasted = 0;   // prefetched experts evicted unused
    int64_t resident_experts = 0;  // a level: experts ready or loading now
    // [depth - 1]: lookahead totals of predictions made that many MoE layers ahead. The depth 1
    // series exist from the device's first call (at 0 while empty); deeper ones once reported.
    // Entries beyond kMaxLookaheadDepth are dropped (counted in moe_metrics_dropped_total).
    std::vector<LookaheadTotals> lookahead = {};
    int64_t layer_forwards = 0;     // layer forwards through the cache (routing read by the host)
    int64_t device_hit_layers = 0;  // of those, every routed expert resident at the device check
    double host_wait_seconds = 0;   // host time waiting for those forwards' routing results
    int64_t rounds = 0;             // expert acquisition rounds (>= layer forwards)
    // rounds with a miss that computed their resident experts before waiting for the loads
    int64_t ready_first_rounds = 0;
    int64_t gated_predictions = 0;  // layer predictions not loaded: their depth's precision low
    int64_t pcie_bytes = 0;         // bytes moved host -> device (compressed blobs at their size)
  };
  void SetExpertCacheTotals(int device, const ExpertCacheTotals& totals);

  // ---- GPU -----------------------------------------------------------------------------------
  void SetGpuMemory(int device, int64_t used_bytes, int64_t total_bytes);
  // Fraction of the last sampling interval the device had work in flight, in [0, 1].
  void SetGpuBusyRatio(int device, double ratio);

  // ---- Worker swarm --------------------------------------------------------------------------
  // Tasks in the swarm's (single, shared) queue, accepted and not yet taken by a worker.
  void SetSwarmQueueLength(int64_t length);
  // Cumulative totals of one worker since it started, from a swarm snapshot: tasks received
  // (dequeued), results sent back (completed or abandoned), and seconds spent running tasks.
  // The counters advance by the difference to the previous call; a smaller value than before
  // (a restarted swarm) counts as a restart from zero.
  struct WorkerTotals {
    int64_t received = 0;
    int64_t sent = 0;
    double busy_seconds = 0;
  };
  void SetWorkerTotals(int worker, const WorkerTotals& totals);

  // ---- Lifecycle -----------------------------------------------------------------------------
  // moe_ready: 1 while the daemon serves (weights loaded and warmed, not draining), else 0.
  // HttpServer::SetReady() keeps it in step with /readyz.
  void SetReady(bool ready);

  // ---- Scrape-time refresh -------------------------------------------------------------------
  // `hook` runs at the start of every Serialize() (every /metrics scrape) to refresh gauges and
  // counters from pulled snapshots (scheduler and swarm stats, GPU memory). Hooks must be fast,
  // thread-safe and must not call AddCollectHook/RemoveCollectHook. Returns an id for
  // RemoveCollectHook(); after RemoveCollectHook() returns the hook is not running and never
  // runs again, so objects it captures may then be destroyed.
  using CollectHook = std::function<void(Metrics&)>;
  int AddCollectHook(CollectHook hook);
  void RemoveCollectHook(int id);

  // ---- Exposition ----------------------------------------------------------------------------
  // Runs the collect hooks, then renders the whole registry in the Prometheus text exposition
  // format (version 0.0.4).
  std::string Serialize();
  // The registry, for code in src/metrics (the HTTP server) and tests; others use the methods.
  const std::shared_ptr<prometheus::Registry>& registry() const;

  // Canonical gRPC name of a status code number ("OK" ... "UNAUTHENTICATED"), "UNKNOWN" if none.
  static std::string_view CodeName(int grpc_code);

 private:
  struct Families;
  explicit Metrics(const Options& options);
  absl::Status Init();

  const Options options_;
  std::unique_ptr<Families> f_;
};

}  // namespace moe::metrics
