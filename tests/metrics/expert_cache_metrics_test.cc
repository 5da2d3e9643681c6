// ExpertCacheMetrics against a real ExpertSlotPool: hits, misses, evictions, bytes and copy wait
// reach the moe_expert_cache_* series at scrape time, and stop being read once it is destroyed.
#include "moe/metrics/expert_cache_metrics.h"

#include <gtest/gtest.h>

#include <vector>

#include "metrics/collect.h"

namespace moe::metrics {
namespace {

using experts::ExpertKey;
using testing::Collected;

TEST(ExpertCacheMetricsTest, PoolCountersReachTheSeries) {
  // One layer of 4 experts of 100 bytes, 2 slots.
  experts::ExpertSlotPool::Options options;
  options.budget_bytes = 200;
  options.shape_classes = {{.expert_bytes = 100, .n_experts = 4, .layers = {0}}};
  auto pool = experts::ExpertSlotPool::Create(options);
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
}

}  // namespace
}  // namespace moe::metrics
