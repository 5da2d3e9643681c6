// ExpertCacheMetrics: pulls one GPU's expert cache counters (experts::ExpertSlotPool::Counters())
// into the moe_expert_cache_* families at every /metrics scrape, and, when given an engine
// source, what the engine driving the cache measured (CudaEngine::expert_cache_stats()): the
// gate-lookahead prediction counts per depth, layer forwards, device hits, host wait, rounds and
// gated predictions. In PromQL, per depth d:
//   rate(moe_expert_cache_correctly_predicted_experts_total{depth="d"}[5m])
//     / rate(moe_expert_cache_predicted_experts_total{depth="d"}[5m])           (precision)
//   ... / rate(moe_expert_cache_prediction_routed_experts_total{depth="d"}[5m])  (recall)
//   rate(moe_expert_cache_device_hit_layers_total[5m])
//     / rate(moe_expert_cache_layer_forwards_total[5m])                         (device hit ratio)
//
//   moe::metrics::ExpertCacheMetrics cache_metrics(metrics, /*device=*/0, pool.get(),
//       [engine]() -> std::optional<ExpertCacheEngineCounts> { ... });  // see src/cli/serve.cc
//   ... serve ...   // destroy cache_metrics before the pool (and the engine source's engine)
//
// Thread safety: the pool's Counters() is thread-safe and called from the scrape thread, and so is
// the engine source (it must be thread-safe too). Metrics runs collect hooks one at a time.
// The destructor removes the collect hook; once it returns neither the pool nor the engine
// source is called again.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <vector>

#include "moe/experts/slot_pool.h"
#include "moe/metrics/metrics.h"

namespace moe {
struct ExpertCacheStats;  // moe/engine/cuda_engine.h
}  // namespace moe

namespace moe::metrics {

// Gate-lookahead prediction counts of one depth since the cache was created, summed over the layer
// forwards that had a prediction of that depth.
struct ExpertCachePredictionCounts {
  uint64_t predicted = 0;  // experts predicted for the layer `depth` MoE layers ahead
  uint64_t routed = 0;     // experts that layer really routed
  uint64_t correct = 0;    // predicted and really routed
};

// What the engine driving the cache measured since the cache was created (cumulative).
struct ExpertCacheEngineCounts {
  // [depth - 1]: predictions made that many MoE layers ahead (depth="1" is the next layer).
  std::vector<ExpertCachePredictionCounts> lookahead = {};
  uint64_t layer_forwards = 0;      // layer forwards through the cache (routing read by the host)
  uint64_t device_hit_layers = 0;   // of those, every routed expert resident at the device check
  uint64_t host_wait_ns = 0;        // host time waiting for those forwards' routing results
  uint64_t rounds = 0;              // expert acquisition rounds (>= layer forwards)
  uint64_t ready_first_rounds = 0;  // of those, a miss with resident experts computed first
  uint64_t gated_predictions = 0;   // layer predictions not loaded: their depth's precision low
  uint64_t pcie_bytes = 0;  // bytes the loads moved host -> device (compressed blobs as such)
};

class ExpertCacheMetrics {
 public:
  using PredictionCounts = ExpertCachePredictionCounts;
  using EngineCounts = ExpertCacheEngineCounts;
  // Called at every scrape; std::nullopt when the counts cannot be read now (the previous
  // counts are exported again).
  using EngineSource = std::function<std::optional<EngineCounts>()>;

  // Neither pointer is owned; both must outlive this object. `device` is the GPU ordinal used as
  // the `device` label (bounded by Metrics::Options::max_devices). Without `engine` the engine's
  // counters (predictions, layer forwards, device hits, host wait, rounds) stay at zero.
  ExpertCacheMetrics(Metrics* metrics, int device, const experts::ExpertSlotPool* pool,
                     EngineSource engine = nullptr);
  ~ExpertCacheMetrics();
  ExpertCacheMetrics(const ExpertCacheMetrics&) = delete;
  ExpertCacheMetrics& operator=(const ExpertCacheMetrics&) = delete;

  // The pool's counters as Metrics' totals: in-flight hits count as hits (no new copy was needed),
  // resident experts are summed over layers. The engine's counts are copied in (host wait in
  // seconds).
  static Metrics::ExpertCacheTotals ToTotals(const experts::ExpertCacheCounters& counters,
                                             const EngineCounts& engine = {});

  // CudaEngine::expert_cache_stats() as engine counts: by_depth per depth, host_round_trips (one
  // per cached layer forward) as layer forwards, device_hits as device-hit layers, host_wait_ns,
  // rounds, ready_first_rounds, gated_predictions, pcie_bytes (wire_bytes). Stats without by_depth
  // give their micro-averaged predicted / actual / correct as depth 1.
  static EngineCounts FromEngineStats(const ExpertCacheStats& stats);

 private:
  Metrics* const metrics_;
  const int device_;
  const experts::ExpertSlotPool* const pool_;
  const EngineSource engine_;
  // The last counts the source gave; read and written only by the collect hook (one at a time).
  EngineCounts last_engine_;
  int hook_id_ = -1;
};

}  // namespace moe::metrics
