// SchedulerMetrics: observer hooks land in the right families; SchedulerStats are pulled at each
// scrape and stop being pulled once the source is cleared.
#include "moe/metrics/scheduler_metrics.h"

#include <gtest/gtest.h>

#include <atomic>
#include <thread>

#include "metrics/collect.h"

namespace moe::metrics {
namespace {

using testing::Collected;

std::unique_ptr<Metrics> MakeMetrics() {
  auto metrics = Metrics::Create({});
  EXPECT_TRUE(metrics.ok()) << metrics.status();
  return std::move(metrics).value();
}

TEST(SchedulerMetricsTest, HooksFeedTheFamilies) {
  auto metrics = MakeMetrics();
  SchedulerMetrics observer(metrics.get());
  SchedulerObserver& hooks = observer;
  hooks.OnRefused(RefusalReason::kQueueFull, 100);
  hooks.OnRefused(RefusalReason::kShuttingDown, 1);
  RequestRecord request;
  request.layer = 1;
  request.n_tokens = 4;
  request.queue_us = 250;
  request.total_us = 900;
  hooks.OnRequestDone(request);
  hooks.OnBatchFormed(1, DType::kBF16, 48, 3);
  hooks.OnBatchFormed(1, DType::kBF16, 16, 1);
  BatchRecord batch;
  batch.layer = 1;
  batch.worker = 0;
  batch.n_tokens = 48;
  batch.compute_us = 1500;
  hooks.OnBatchDone(batch);
  Collected c(*metrics);
  EXPECT_EQ(c.Counter("moe_scheduler_refused_total", {{"reason", "queue_full"}}), 1.0);
  EXPECT_EQ(c.Counter("moe_scheduler_refused_total", {{"reason", "shutting_down"}}), 1.0);
  const auto* wait = c.Series("moe_queue_wait_seconds", {});
  ASSERT_NE(wait, nullptr);
  EXPECT_EQ(wait->histogram.sample_count, 1u);
  EXPECT_NEAR(wait->histogram.sample_sum, 250e-6, 1e-12);
  EXPECT_EQ(c.HistogramCount("moe_batch_size_tokens"), 2.0);
  EXPECT_EQ(c.Counter("moe_tokens_processed_total"), 64.0);
  const auto* compute = c.Series("moe_compute_duration_seconds", {});
  ASSERT_NE(compute, nullptr);
  EXPECT_NEAR(compute->histogram.sample_sum, 1.5e-3, 1e-12);
}

TEST(SchedulerMetricsTest, StatsArePulledAtEachScrape) {
  auto metrics = MakeMetrics();
  SchedulerMetrics observer(metrics.get());
  std::atomic<int64_t> received{0};
  observer.SetStatsSource([&received] {
    SchedulerStats stats;
    stats.queued_requests = 3;
    stats.queued_tokens = 96;
    stats.swarm.queued = 2;
    stats.swarm.workers.resize(2);
    stats.swarm.workers[1].received = received.load();
    stats.swarm.workers[1].completed = received.load() - 1;
    stats.swarm.workers[1].abandoned = 1;
    stats.swarm.workers[1].busy_ns = 2'000'000'000;
    return stats;
  });
  received = 5;
  std::string text = metrics->Serialize();
  EXPECT_NE(text.find("\nmoe_queue_depth 3\n"), std::string::npos) << text;
  EXPECT_NE(text.find("\nmoe_queued_tokens 96\n"), std::string::npos);
  EXPECT_NE(text.find("\nmoe_swarm_queue_length 2\n"), std::string::npos);
  EXPECT_NE(text.find("moe_worker_messages_received_total{worker=\"1\"} 5\n"), std::string::npos);
  EXPECT_NE(text.find("moe_worker_messages_sent_total{worker=\"1\"} 5\n"), std::string::npos);
  EXPECT_NE(text.find("moe_worker_busy_seconds_total{worker=\"1\"} 2\n"), std::string::npos);
  received = 9;
  text = metrics->Serialize();
  EXPECT_NE(text.find("moe_worker_messages_received_total{worker=\"1\"} 9\n"), std::string::npos)
      << text;

  observer.SetStatsSource(nullptr);
  received = 50;
  text = metrics->Serialize();
  EXPECT_NE(text.find("moe_worker_messages_received_total{worker=\"1\"} 9\n"), std::string::npos);
}

// Scrapes race with the source being replaced and with the observer's destruction (TSan).
TEST(SchedulerMetricsTest, ScrapesRaceWithSourceChanges) {
  auto metrics = MakeMetrics();
  std::atomic<bool> stop{false};
  std::thread scraper([&] {
    while (!stop.load()) (void)metrics->Serialize();
  });
  for (int i = 0; i < 50; ++i) {
    SchedulerMetrics observer(metrics.get());
    observer.SetStatsSource([i] {
      SchedulerStats stats;
      stats.queued_requests = i;
      return stats;
    });
    observer.OnBatchFormed(0, DType::kF32, 1, 1);
    std::this_thread::yield();
  }
  stop.store(true);
  scraper.join();
  EXPECT_EQ(Collected(*metrics).Counter("moe_tokens_processed_total"), 50.0);
}

}  // namespace
}  // namespace moe::metrics
