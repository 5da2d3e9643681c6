// ExpertCacheMetrics against a real ExpertSlotPool: hits, misses, evictions, bytes and copy wait
// reach the moe_expert_cache_* series at scrape time, and stop being read once it is destroyed;
// so do an engine source's counts (lookahead per depth, layer forwards, device hits, host wait,
// rounds, gated predictions), and CudaEngine's cache statistics map onto them field by field.
#include "moe/metrics/expert_cache_metrics.h"

#include <gtest/gtest.h>

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "metrics/collect.h"
#include "moe/engine/cuda_engine.h"

namespace moe::metrics {
namespace {

using experts::ExpertKey;
using testing::Collected;

// A pool of one layer of `n_experts` experts of 100 bytes, with `slots` slots.
StatusOr<std::unique_ptr<experts::ExpertSlotPool>> MakePool(int n_experts, int slots) {
  experts::ExpertSlotPool::Options options;
  options.budget_bytes = 100 * slots;
  options.shape_classes = {{.expert_bytes = 100, .n_experts = n_experts, .layers = {0}}};
  return experts::ExpertSlotPool::Create(options);
}

TEST(ExpertCacheMetricsTest, PoolCountersReachTheSeries) {
  auto pool = MakePool(/*n_experts=*/4, /*slots=*/2);
  ASSERT_TRUE(pool.ok()) << pool.status();
  auto metrics = std::move(Metrics::Create({})).value();
  auto cache_metrics = std::make_unique<ExpertCacheMetrics>(metrics.get(), 1, pool->get());

  auto step = [&](std::vector<ExpertKey> keys) {
    auto round = (*pool)->Acquire(keys);
    ASSERT_TRUE(round.ok()) << round.status();
    for (const auto& e : round->entries) {
      if (e.source == experts::SlotSource::kLoad) {
        ASSERT_TRUE((*pool)->MarkLoaded(e.slot).ok());
      }
    }
    ASSERT_TRUE((*pool)->Release(*round, 1).ok());
  };
  step({{0, 0}, {0, 1}});  // 2 misses (loads)
  step({{0, 0}});          // hit
  step({{0, 2}});          // miss, evicts one
  (*pool)->RecordCopyWait(5'000'000);

  (void)metrics->Serialize();  // runs the collect hook
  const std::map<std::string, std::string> d1 = {{"device", "1"}};
  {
    Collected c(*metrics);
    EXPECT_EQ(c.Counter("moe_expert_cache_hits_total", d1), 1.0);
    EXPECT_EQ(c.Counter("moe_expert_cache_misses_total", d1), 3.0);
    EXPECT_EQ(c.Counter("moe_expert_cache_evictions_total", d1), 1.0);
    EXPECT_EQ(c.Counter("moe_expert_cache_copied_bytes_total", d1), 300.0);
    EXPECT_DOUBLE_EQ(c.Counter("moe_expert_cache_copy_wait_seconds_total", d1), 0.005);
    EXPECT_EQ(c.Gauge("moe_expert_cache_resident_experts", d1), 2.0);
  }
  cache_metrics.reset();
  step({{0, 3}});  // another miss, no longer exported
  (void)metrics->Serialize();
  EXPECT_EQ(Collected(*metrics).Counter("moe_expert_cache_misses_total", d1), 3.0);
}

TEST(ExpertCacheMetricsTest, EngineCountsReachTheSeriesAtEachScrape) {
  auto pool = MakePool(/*n_experts=*/4, /*slots=*/2);
  ASSERT_TRUE(pool.ok()) << pool.status();
  auto metrics = std::move(Metrics::Create({})).value();
  // The source the engine would be: counts that grow between scrapes (a third lookahead depth
  // appears in the second one), then one failed read.
  std::optional<ExpertCacheMetrics::EngineCounts> source =
      ExpertCacheMetrics::EngineCounts{.lookahead = {{.predicted = 8, .routed = 10, .correct = 6},
                                                     {.predicted = 7, .routed = 9, .correct = 3}},
                                       .layer_forwards = 40,
                                       .device_hit_layers = 25,
                                       .host_wait_ns = 3'000'000,
                                       .rounds = 55,
                                       .ready_first_rounds = 6,
                                       .gated_predictions = 2,
                                       .pcie_bytes = 4096};
  int calls = 0;
  auto cache_metrics = std::make_unique<ExpertCacheMetrics>(
      metrics.get(), 0, pool->get(), [&]() -> std::optional<ExpertCacheMetrics::EngineCounts> {
        ++calls;
        return source;
      });
  const std::map<std::string, std::string> d0 = {{"device", "0"}};
  auto depth = [](int d) -> std::map<std::string, std::string> {
    return {{"device", "0"}, {"depth", std::to_string(d)}};
  };
  // Scrapes, then checks every engine series against `want` (lookahead [depth - 1]).
  auto expect_counts = [&](const ExpertCacheMetrics::EngineCounts& want) {
    (void)metrics->Serialize();  // runs the collect hook
    Collected c(*metrics);
    EXPECT_EQ(c.NumSeries("moe_expert_cache_predicted_experts_total"), want.lookahead.size());
    for (size_t i = 0; i < want.lookahead.size(); ++i) {
      const int d = static_cast<int>(i) + 1;
      SCOPED_TRACE(d);
      EXPECT_EQ(c.Counter("moe_expert_cache_predicted_experts_total", depth(d)),
                want.lookahead[i].predicted);
      EXPECT_EQ(c.Counter("moe_expert_cache_prediction_routed_experts_total", depth(d)),
                want.lookahead[i].routed);
      EXPECT_EQ(c.Counter("moe_expert_cache_correctly_predicted_experts_total", depth(d)),
                want.lookahead[i].correct);
    }
    EXPECT_EQ(c.Counter("moe_expert_cache_layer_forwards_total", d0), want.layer_forwards);
    EXPECT_EQ(c.Counter("moe_expert_cache_device_hit_layers_total", d0), want.device_hit_layers);
    EXPECT_DOUBLE_EQ(c.Counter("moe_expert_cache_host_wait_seconds_total", d0),
                     static_cast<double>(want.host_wait_ns) * 1e-9);
    EXPECT_EQ(c.Counter("moe_expert_cache_rounds_total", d0), want.rounds);
    EXPECT_EQ(c.Counter("moe_expert_cache_ready_first_rounds_total", d0), want.ready_first_rounds);
    EXPECT_EQ(c.Counter("moe_expert_cache_gated_predictions_total", d0), want.gated_predictions);
    EXPECT_EQ(c.Counter("moe_expert_cache_pcie_bytes_total", d0), want.pcie_bytes);
  };
  expect_counts(*source);
  EXPECT_EQ(calls, 1);
  source =
      ExpertCacheMetrics::EngineCounts{.lookahead = {{.predicted = 20, .routed = 24, .correct = 15},
                                                     {.predicted = 16, .routed = 20, .correct = 8},
                                                     {.predicted = 5, .routed = 6, .correct = 1}},
                                       .layer_forwards = 90,
                                       .device_hit_layers = 61,
                                       .host_wait_ns = 7'500'000,
                                       .rounds = 120,
                                       .ready_first_rounds = 14,
                                       .gated_predictions = 5,
                                       .pcie_bytes = 9000};
  const ExpertCacheMetrics::EngineCounts second = *source;
  expect_counts(second);
  source.reset();  // unreadable now: the counters hold their values
  expect_counts(second);
  source = second;
  source->lookahead[0] = {.predicted = 21, .routed = 26, .correct = 16};
  source->layer_forwards = 91;
  source->device_hit_layers = 62;
  const ExpertCacheMetrics::EngineCounts third = *source;
  expect_counts(third);
  EXPECT_EQ(calls, 4);
  cache_metrics.reset();
  source->lookahead[0] = {.predicted = 99, .routed = 99, .correct = 99};
  source->layer_forwards = 999;
  expect_counts(third);  // no longer read
  EXPECT_EQ(calls, 4);
}

TEST(ExpertCacheMetricsTest, WithoutAnEngineSourceTheEngineCountersStayZero) {
  auto pool = MakePool(/*n_experts=*/2, /*slots=*/1);
  ASSERT_TRUE(pool.ok()) << pool.status();
  auto metrics = std::move(Metrics::Create({})).value();
  ExpertCacheMetrics cache_metrics(metrics.get(), 0, pool->get());
  (void)metrics->Serialize();
  Collected c(*metrics);
  const std::map<std::string, std::string> d0 = {{"device", "0"}};
  EXPECT_EQ(
      c.Counter("moe_expert_cache_predicted_experts_total", {{"device", "0"}, {"depth", "1"}}),
      0.0);
  EXPECT_EQ(c.NumSeries("moe_expert_cache_predicted_experts_total"), 1u);  // depth 1 only
  EXPECT_EQ(c.Counter("moe_expert_cache_layer_forwards_total", d0), 0.0);
  EXPECT_EQ(c.Counter("moe_expert_cache_device_hit_layers_total", d0), 0.0);
  EXPECT_EQ(c.Counter("moe_expert_cache_ready_first_rounds_total", d0), 0.0);
  EXPECT_EQ(c.Counter("moe_expert_cache_misses_total", d0), 0.0);
}

TEST(ExpertCacheMetricsTest, ToTotalsCountsInFlightHitsAsHits) {
  experts::ExpertCacheCounters c;
  c.hits = 5;
  c.hits_in_flight = 2;
  c.misses = 3;
  c.prefetch_issued = 4;
  c.resident_per_layer = {3, 0, 4};
  const Metrics::ExpertCacheTotals t = ExpertCacheMetrics::ToTotals(c);
  EXPECT_EQ(t.hits, 7);
  EXPECT_EQ(t.misses, 3);
  EXPECT_EQ(t.prefetch_loads, 4);
  EXPECT_EQ(t.resident_experts, 7);
  EXPECT_TRUE(t.lookahead.empty());
  EXPECT_EQ(t.layer_forwards, 0);
  const Metrics::ExpertCacheTotals p =
      ExpertCacheMetrics::ToTotals(c, {.lookahead = {{.predicted = 9, .routed = 12, .correct = 5},
                                                     {.predicted = 4, .routed = 11, .correct = 2}},
                                       .layer_forwards = 17,
                                       .device_hit_layers = 13,
                                       .host_wait_ns = 2'500'000'000,
                                       .rounds = 19,
                                       .ready_first_rounds = 4,
                                       .gated_predictions = 3});
  EXPECT_EQ(p.hits, 7);
  ASSERT_EQ(p.lookahead.size(), 2u);
  EXPECT_EQ(p.lookahead[0].predicted_experts, 9);
  EXPECT_EQ(p.lookahead[0].routed_experts, 12);
  EXPECT_EQ(p.lookahead[0].correctly_predicted_experts, 5);
  EXPECT_EQ(p.lookahead[1].predicted_experts, 4);
  EXPECT_EQ(p.lookahead[1].routed_experts, 11);
  EXPECT_EQ(p.lookahead[1].correctly_predicted_experts, 2);
  EXPECT_EQ(p.layer_forwards, 17);
  EXPECT_EQ(p.device_hit_layers, 13);
  EXPECT_DOUBLE_EQ(p.host_wait_seconds, 2.5);
  EXPECT_EQ(p.rounds, 19);
  EXPECT_EQ(p.ready_first_rounds, 4);
  EXPECT_EQ(p.gated_predictions, 3);
}

// The serve wiring's mapping of CudaEngine::expert_cache_stats(): by_depth per depth (not the
// nearest-prediction totals), host round trips as layer forwards.
TEST(ExpertCacheMetricsTest, FromEngineStatsMapsEveryField) {
  ExpertCacheStats s;
  s.predicted = 1;  // nearest-depth totals: used only without by_depth
  s.actual = 2;
  s.correct = 3;
  s.by_depth = {{.predicted = 30, .actual = 40, .correct = 20},
                {.predicted = 31, .actual = 41, .correct = 10},
                {.predicted = 32, .actual = 42, .correct = 5}};
  s.host_round_trips = 500;
  s.device_hits = 420;
  s.host_wait_ns = 123'456;
  s.rounds = 530;
  s.ready_first_rounds = 77;
  s.gated_predictions = 7;
  s.wire_bytes = 12345;
  s.copy_busy_ns = 999;  // not exported here
  const ExpertCacheMetrics::EngineCounts e = ExpertCacheMetrics::FromEngineStats(s);
  ASSERT_EQ(e.lookahead.size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(e.lookahead[i].predicted, s.by_depth[i].predicted) << i;
    EXPECT_EQ(e.lookahead[i].routed, s.by_depth[i].actual) << i;
    EXPECT_EQ(e.lookahead[i].correct, s.by_depth[i].correct) << i;
  }
  EXPECT_EQ(e.layer_forwards, 500u);
  EXPECT_EQ(e.device_hit_layers, 420u);
  EXPECT_EQ(e.host_wait_ns, 123'456u);
  EXPECT_EQ(e.rounds, 530u);
  EXPECT_EQ(e.ready_first_rounds, 77u);
  EXPECT_EQ(e.gated_predictions, 7u);
  EXPECT_EQ(e.pcie_bytes, 12345u);

  s.by_depth.clear();
  const ExpertCacheMetrics::EngineCounts flat = ExpertCacheMetrics::FromEngineStats(s);
  ASSERT_EQ(flat.lookahead.size(), 1u);
  EXPECT_EQ(flat.lookahead[0].predicted, 1u);
  EXPECT_EQ(flat.lookahead[0].routed, 2u);
  EXPECT_EQ(flat.lookahead[0].correct, 3u);
}

}  // namespace
}  // namespace moe::metrics
