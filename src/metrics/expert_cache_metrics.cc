#include "moe/metrics/expert_cache_metrics.h"

#include <numeric>
#include <utility>

#include "moe/engine/cuda_engine.h"

namespace moe::metrics {

// Every lookahead depth the engine accepts has its own `depth` series.
static_assert(Metrics::kMaxLookaheadDepth >= ExpertCacheOptions::kMaxPrefetchDepth);

ExpertCacheMetrics::ExpertCacheMetrics(Metrics* metrics, int device,
                                       const experts::ExpertSlotPool* pool, EngineSource engine)
    : metrics_(metrics), device_(device), pool_(pool), engine_(std::move(engine)) {
  hook_id_ = metrics_->AddCollectHook([this](Metrics& m) {
    if (engine_) {
      if (std::optional<EngineCounts> e = engine_()) last_engine_ = std::move(*e);
    }
    m.SetExpertCacheTotals(device_, ToTotals(pool_->Counters(), last_engine_));
  });
}

ExpertCacheMetrics::~ExpertCacheMetrics() { metrics_->RemoveCollectHook(hook_id_); }

Metrics::ExpertCacheTotals ExpertCacheMetrics::ToTotals(const experts::ExpertCacheCounters& c,
                                                        const EngineCounts& e) {
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
  t.lookahead.reserve(e.lookahead.size());
  for (const PredictionCounts& p : e.lookahead) {
    t.lookahead.push_back({.predicted_experts = static_cast<int64_t>(p.predicted),
                           .routed_experts = static_cast<int64_t>(p.routed),
                           .correctly_predicted_experts = static_cast<int64_t>(p.correct)});
  }
  t.layer_forwards = static_cast<int64_t>(e.layer_forwards);
  t.device_hit_layers = static_cast<int64_t>(e.device_hit_layers);
  t.host_wait_seconds = static_cast<double>(e.host_wait_ns) * 1e-9;
  t.rounds = static_cast<int64_t>(e.rounds);
  t.ready_first_rounds = static_cast<int64_t>(e.ready_first_rounds);
  t.gated_predictions = static_cast<int64_t>(e.gated_predictions);
  t.pcie_bytes = static_cast<int64_t>(e.pcie_bytes);
  return t;
}

ExpertCacheMetrics::EngineCounts ExpertCacheMetrics::FromEngineStats(const ExpertCacheStats& s) {
  EngineCounts e;
  if (s.by_depth.empty()) {
    e.lookahead.push_back({.predicted = s.predicted, .routed = s.actual, .correct = s.correct});
  } else {
    e.lookahead.reserve(s.by_depth.size());
    for (const ExpertCacheStats::DepthAccuracy& d : s.by_depth) {
      e.lookahead.push_back({.predicted = d.predicted, .routed = d.actual, .correct = d.correct});
    }
  }
  e.layer_forwards = s.host_round_trips;
  e.device_hit_layers = s.device_hits;
  e.host_wait_ns = s.host_wait_ns;
  e.rounds = s.rounds;
  e.ready_first_rounds = s.ready_first_rounds;
  e.gated_predictions = s.gated_predictions;
  e.pcie_bytes = s.wire_bytes;
  return e;
}

}  // namespace moe::metrics
