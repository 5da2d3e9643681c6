// ExpertCacheMetrics: pulls one GPU's expert cache counters (experts::ExpertSlotPool::Counters())
// into the moe_expert_cache_* families at every /metrics scrape, and, when given a prediction
// source, the gate-lookahead prediction counts (precision and recall in PromQL:
//   rate(moe_expert_cache_correctly_predicted_experts_total[5m])
//     / rate(moe_expert_cache_predicted_experts_total[5m])            (precision)
//   ... / rate(moe_expert_cache_prediction_routed_experts_total[5m])   (recall)).
//
//   moe::metrics::ExpertCacheMetrics cache_metrics(metrics, /*device=*/0, pool.get(),
//       [engine]() -> std::optional<ExpertCachePredictionCounts> { ... });  // see src/cli/serve.cc
//   ... serve ...   // destroy cache_metrics before the pool (and the prediction source's engine)
//
// Thread safety: the pool's Counters() is thread-safe and called from the scrape thread, and so is
// the prediction source (it must be thread-safe too). Metrics runs collect hooks one at a time.
// The destructor removes the collect hook; once it returns neither the pool nor the prediction
// source is called again.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>

#include "moe/experts/slot_pool.h"
#include "moe/metrics/metrics.h"

namespace moe::metrics {

// Gate-lookahead prediction counts since the cache was created, summed over the layer forwards
// that had a prediction (e.g. CudaEngine::expert_cache_stats()'s predicted / actual / correct).
struct ExpertCachePredictionCounts {
  uint64_t predicted = 0;  // experts predicted for the next layer
  uint64_t routed = 0;     // experts that layer really routed
  uint64_t correct = 0;    // predicted and really routed
};

class ExpertCacheMetrics {
 public:
  using PredictionCounts = ExpertCachePredictionCounts;
  // Called at every scrape; std::nullopt when the counts cannot be read now (the previous
  // counts are exported again).
  using PredictionSource = std::function<std::optional<PredictionCounts>()>;

  // Neither pointer is owned; both must outlive this object. `device` is the GPU ordinal used as
  // the `device` label (bounded by Metrics::Options::max_devices). Without `predictions` the
  // prediction counters stay at zero.
  ExpertCacheMetrics(Metrics* metrics, int device, const experts::ExpertSlotPool* pool,
                     PredictionSource predictions = nullptr);
  ~ExpertCacheMetrics();
  ExpertCacheMetrics(const ExpertCacheMetrics&) = delete;
  ExpertCacheMetrics& operator=(const ExpertCacheMetrics&) = delete;

  // The pool's counters as Metrics' totals: in-flight hits count as hits (no new copy was needed),
  // resident experts are summed over layers. The prediction counts are copied in.
  static Metrics::ExpertCacheTotals ToTotals(const experts::ExpertCacheCounters& counters,
                                             const PredictionCounts& predictions = {});

 private:
  Metrics* const metrics_;
  const int device_;
  const experts::ExpertSlotPool* const pool_;
  const PredictionSource predictions_;
  // The last counts the source gave; read and written only by the collect hook (one at a time).
  PredictionCounts last_predictions_;
  int hook_id_ = -1;
};

}  // namespace moe::metrics
