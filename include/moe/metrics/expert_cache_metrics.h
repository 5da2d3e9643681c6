// ExpertCacheMetrics: pulls one GPU's expert cache counters (experts::ExpertSlotPool::Counters())
// into the moe_expert_cache_* families at every /metrics scrape.
//
//   moe::metrics::ExpertCacheMetrics cache_metrics(metrics, /*device=*/0, pool.get());
//   ... serve ...   // destroy cache_metrics before the pool
//
// Thread safety: the pool's Counters() is thread-safe and called from the scrape thread. The
// destructor removes the collect hook; once it returns the pool is not read again.
#pragma once

#include "moe/experts/slot_pool.h"
#include "moe/metrics/metrics.h"

namespace moe::metrics {

class ExpertCacheMetrics {
 public:
  // Neither pointer is owned; both must outlive this object. `device` is the GPU ordinal used as
  // the `device` label (bounded by Metrics::Options::max_devices).
  ExpertCacheMetrics(Metrics* metrics, int device, const experts::ExpertSlotPool* pool);
  ~ExpertCacheMetrics();
  ExpertCacheMetrics(const ExpertCacheMetrics&) = delete;
  ExpertCacheMetrics& operator=(const ExpertCacheMetrics&) = delete;

  // The pool's counters as Metrics' totals: in-flight hits count as hits (no new copy was needed),
  // resident experts are summed over layers.
  static Metrics::ExpertCacheTotals ToTotals(const experts::ExpertCacheCounters& counters);

 private:
  Metrics* const metrics_;
  const int device_;
  const experts::ExpertSlotPool* const pool_;
  int hook_id_ = -1;
};

}  // namespace moe::metrics
