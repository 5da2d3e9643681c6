// ExpertCacheMetrics against a real ExpertSlotPool: hits, misses, evictions, bytes and copy wait
// reach the moe_expert_cache_* series at scrape time, and stop being read once it is destroyed;
// so do the gate-lookahead prediction counts of a prediction source.
#include "moe/metrics/expert_cache_metrics.h"

#include <gtest/gtest.h>

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "metrics/collect.h"

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

TEST(ExpertCacheMetricsTest, PredictionCountsReachTheSeriesAtEachScrape) {
  auto pool = MakePool(/*n_experts=*/4, /*slots=*/2);
  ASSERT_TRUE(pool.ok()) << pool.status();
  auto metrics = std::move(Metrics::Create({})).value();
  // The source the engine would be: counts that grow between scrapes, then one failed read.
  std::optional<ExpertCacheMetrics::PredictionCounts> source =
      ExpertCacheMetrics::PredictionCounts{.predicted = 8, .routed = 10, .correct = 6};
  int calls = 0;
  auto cache_metrics = std::make_unique<ExpertCacheMetrics>(
      metrics.get(), 0, pool->get(), [&]() -> std::optional<ExpertCacheMetrics::PredictionCounts> {
        ++calls;
        return source;
      });
  const std::map<std::string, std::string> d0 = {{"device", "0"}};
  auto expect_counts = [&](double predicted, double routed, double correct) {
    (void)metrics->Serialize();  // runs the collect hook
    Collected c(*metrics);
    EXPECT_EQ(c.Counter("moe_expert_cache_predicted_experts_total", d0), predicted);
    EXPECT_EQ(c.Counter("moe_expert_cache_prediction_routed_experts_total", d0), routed);
    EXPECT_EQ(c.Counter("moe_expert_cache_correctly_predicted_experts_total", d0), correct);
  };
  expect_counts(8, 10, 6);
  EXPECT_EQ(calls, 1);
  source = ExpertCacheMetrics::PredictionCounts{.predicted = 20, .routed = 24, .correct = 15};
  expect_counts(20, 24, 15);
  source.reset();  // unreadable now: the counters hold their values
  expect_counts(20, 24, 15);
  source = ExpertCacheMetrics::PredictionCounts{.predicted = 21, .routed = 26, .correct = 16};
  expect_counts(21, 26, 16);
  EXPECT_EQ(calls, 4);
  cache_metrics.reset();
  source = ExpertCacheMetrics::PredictionCounts{.predicted = 99, .routed = 99, .correct = 99};
  expect_counts(21, 26, 16);  // no longer read
  EXPECT_EQ(calls, 4);
}

TEST(ExpertCacheMetricsTest, WithoutAPredictionSourceThePredictionCountersStayZero) {
  auto pool = MakePool(/*n_experts=*/2, /*slots=*/1);
  ASSERT_TRUE(pool.ok()) << pool.status();
  auto metrics = std::move(Metrics::Create({})).value();
  ExpertCacheMetrics cache_metrics(metrics.get(), 0, pool->get());
  (void)metrics->Serialize();
  Collected c(*metrics);
  EXPECT_EQ(c.Counter("moe_expert_cache_predicted_experts_total", {{"device", "0"}}), 0.0);
  EXPECT_EQ(c.Counter("moe_expert_cache_misses_total", {{"device", "0"}}), 0.0);
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
  EXPECT_EQ(t.predicted_experts, 0);
  const Metrics::ExpertCacheTotals p =
      ExpertCacheMetrics::ToTotals(c, {.predicted = 9, .routed = 12, .correct = 5});
  EXPECT_EQ(p.hits, 7);
  EXPECT_EQ(p.predicted_experts, 9);
  EXPECT_EQ(p.prediction_routed_experts, 12);
  EXPECT_EQ(p.correctly_predicted_experts, 5);
}

}  // namespace
}  // namespace moe::metrics
