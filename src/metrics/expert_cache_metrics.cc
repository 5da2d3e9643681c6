#include "moe/metrics/expert_cache_metrics.h"

#include <numeric>
#include <utility>

namespace moe::metrics {

ExpertCacheMetrics::ExpertCacheMetrics(Metrics* metrics, int device,
                                       const experts::ExpertSlotPool* pool,
                                       PredictionSource predictions)
    : metrics_(metrics), device_(device), pool_(pool), predictions_(std::move(predictions)) {
  hook_id_ = metrics_->AddCollectHook([this](Metrics& m) {
    if (predictions_) {
      if (std::optional<PredictionCounts> p = predictions_()) last_predictions_ = *p;
    }
    m.SetExpertCacheTotals(device_, ToTotals(pool_->Counters(), last_predictions_));
  });
}

ExpertCacheMetrics::~ExpertCacheMetrics() { metrics_->RemoveCollectHook(hook_id_); }

Metrics::ExpertCacheTotals ExpertCacheMetrics::ToTotals(const experts::ExpertCacheCounters& c,
                                                        const PredictionCounts& p) {
  Metrics::ExpertCacheTotals t;
  t.hits = static_cast<int64_t>(c.hits + c.hits_in_flight);
  t.misses = static_cast<int64_t>(c.misses);
  t.evictions = static_cast<int64_t>(c.evictions);
  t.bytes_copied = static_cast<int64_t>(c.bytes_copied);
  t.copy_wait_seconds = static_cast<double>(c.copy_wait_ns) * 1e-9;
  t.prefetch_loads = static_cast<int64_t>(c.prefetch_issued);
  t.prefetch_useful = static_cast<int64_t>(c.prefetch_useful);
  t.prefetch_wasted = static_cast<int64_t>(c.prefetch_wasted);
  t.predicted_experts = static_cast<int64_t>(p.predicted);
  t.prediction_routed_experts = static_cast<int64_t>(p.routed);
  t.correctly_predicted_experts = static_cast<int64_t>(p.correct);
  t.resident_experts =
      std::accumulate(c.resident_per_layer.begin(), c.resident_per_layer.end(), int64_t{0});
  return t;
}

}  // namespace moe::metrics
