#include "moe/metrics/expert_cache_metrics.h"

#include <numeric>

namespace moe::metrics {

ExpertCacheMetrics::ExpertCacheMetrics(Metrics* metrics, int device,
                                       const experts::ExpertSlotPool* pool)
    : metrics_(metrics), device_(device), pool_(pool) {
  hook_id_ = metrics_->AddCollectHook(
      [this](Metrics& m) { m.SetExpertCacheTotals(device_, ToTotals(pool_->Counters())); });
}

ExpertCacheMetrics::~ExpertCacheMetrics() { metrics_->RemoveCollectHook(hook_id_); }

Metrics::ExpertCacheTotals ExpertCacheMetrics::ToTotals(const experts::ExpertCacheCounters& c) {
  Metrics::ExpertCacheTotals t;
  t.hits = static_cast<int64_t>(c.hits + c.hits_in_flight);
  t.misses = static_cast<int64_t>(c.misses);
  t.evictions = static_cast<int64_t>(c.evictions);
  t.bytes_copied = static_cast<int64_t>(c.bytes_copied);
  t.copy_wait_seconds = static_cast<double>(c.copy_wait_ns) * 1e-9;
  t.prefetch_loads = static_cast<int64_t>(c.prefetch_issued);
  t.prefetch_useful = static_cast<int64_t>(c.prefetch_useful);
  t.prefetch_wasted = static_cast<int64_t>(c.prefetch_wasted);
  t.resident_experts =
      std::accumulate(c.resident_per_layer.begin(), c.resident_per_layer.end(), int64_t{0});
  return t;
}

}  // namespace moe::metrics
