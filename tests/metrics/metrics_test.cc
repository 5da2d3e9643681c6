// Metrics: family names and types follow the Prometheus conventions, every recording method lands
// in the right series with the right value, label sets stay bounded, and concurrent recording
// loses nothing.
#include "moe/metrics/metrics.h"

#include <gtest/gtest.h>

#include <map>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "metrics/collect.h"
#include "prometheus/metric_type.h"

namespace moe::metrics {
namespace {

using prometheus::MetricType;
using testing::Collected;

// Whether `name` matches ^moe_[a-z][a-z0-9_]*[a-z0-9]$. NOTES: by hand rather than std::regex,
// whose <regex> trips GCC 12's -Wmaybe-uninitialized (an error here) under -fsanitize=address.
bool IsMoeMetricName(const std::string& name) {
  const std::string prefix = "moe_";
  if (name.size() < prefix.size() + 2 || name.compare(0, prefix.size(), prefix) != 0) return false;
  auto lower = [](char ch) { return ch >= 'a' && ch <= 'z'; };
  auto digit = [](char ch) { return ch >= '0' && ch <= '9'; };
  const std::string rest = name.substr(prefix.size());
  if (!lower(rest.front()) || !(lower(rest.back()) || digit(rest.back()))) return false;
  for (const char ch : rest) {
    if (!lower(ch) && !digit(ch) && ch != '_') return false;
  }
  return true;
}

std::unique_ptr<Metrics> MakeMetrics(Metrics::Options options = {}) {
  auto metrics = Metrics::Create(options);
  EXPECT_TRUE(metrics.ok()) << metrics.status();
  return std::move(metrics).value();
}

// Records into every family once, so that lazily created series exist.
void TouchEverything(Metrics& m) {
  ASSERT_TRUE(m.RegisterModel("m").ok());
  ASSERT_TRUE(m.ConfigureExpertLoad(1, 2).ok());
  m.RecordRequest("m", 3, 1e-3);
  m.RecordExpertLoad(0, std::vector<uint32_t>(2, 5000));
  m.SetExpertCacheTotals(0, {.hits = 1});
  m.SetWorkerTotals(0, {.received = 1, .sent = 1, .busy_seconds = 0.5});
  m.RecordRefused("queue_full");
}

TEST(MetricsTest, FamiliesFollowPrometheusNaming) {
  auto metrics = MakeMetrics();
  TouchEverything(*metrics);
  Collected c(*metrics);
  std::set<std::string> names;
  for (const auto& f : c.families()) {
    names.insert(f.name);
    EXPECT_TRUE(IsMoeMetricName(f.name)) << f.name;
    EXPECT_FALSE(f.help.empty()) << f.name;
    const bool ends_total = f.name.size() > 6 && f.name.substr(f.name.size() - 6) == "_total";
    if (f.type == MetricType::Counter) {
      EXPECT_TRUE(ends_total) << "counter without _total: " << f.name;
    } else {
      EXPECT_FALSE(ends_total) << "non-counter with _total: " << f.name;
    }
    if (f.type == MetricType::Histogram) {
      const bool unit = f.name.find("_seconds") != std::string::npos ||
                        f.name.find("_tokens") != std::string::npos;
      EXPECT_TRUE(unit) << "histogram without a unit: " << f.name;
    }
    // No non-base units among the name's words.
    const std::set<std::string> bad_units = {"ms",           "us", "ns", "sec", "milliseconds",
                                             "microseconds", "kb", "mb", "gb",  "percent"};
    std::stringstream words(f.name);
    for (std::string word; std::getline(words, word, '_');) {
      EXPECT_EQ(bad_units.count(word), 0u) << f.name;
    }
  }
  for (const char* want : {
           "moe_build_info",
           "moe_start_time_seconds",
           "moe_ready",
           "moe_metrics_dropped_total",
           "moe_requests_total",
           "moe_request_duration_seconds",
           "moe_inflight_requests",
           "moe_queue_wait_seconds",
           "moe_queue_depth",
           "moe_batch_size_tokens",
           "moe_tokens_processed_total",
           "moe_routing_duration_seconds",
           "moe_compute_duration_seconds",
           "moe_expert_routed_tokens_total",
           "moe_expert_load_imbalance_ratio",
           "moe_expert_cache_hits_total",
           "moe_expert_cache_misses_total",
           "moe_expert_cache_evictions_total",
           "moe_expert_cache_copied_bytes_total",
           "moe_expert_cache_copy_wait_seconds_total",
           "moe_expert_cache_prefetch_loads_total",
           "moe_expert_cache_prefetch_useful_total",
           "moe_expert_cache_prefetch_wasted_total",
           "moe_expert_cache_predicted_experts_total",
           "moe_expert_cache_prediction_routed_experts_total",
           "moe_expert_cache_correctly_predicted_experts_total",
           "moe_expert_cache_resident_experts",
           "moe_expert_cache_layer_forwards_total",
           "moe_expert_cache_device_hit_layers_total",
           "moe_expert_cache_host_wait_seconds_total",
           "moe_expert_cache_rounds_total",
           "moe_expert_cache_ready_first_rounds_total",
           "moe_expert_cache_gated_predictions_total",
           "moe_expert_cache_pcie_bytes_total",
           "moe_gpu_memory_used_bytes",
           "moe_gpu_memory_total_bytes",
           "moe_gpu_busy_ratio",
           "moe_queued_tokens",
           "moe_scheduler_refused_total",
           "moe_swarm_queue_length",
           "moe_worker_busy_seconds_total",
           "moe_worker_messages_sent_total",
           "moe_worker_messages_received_total",
       }) {
    EXPECT_TRUE(names.count(want)) << "missing family " << want;
  }
}

TEST(MetricsTest, NameCheckRejectsBadNames) {
  EXPECT_TRUE(IsMoeMetricName("moe_expert_cache_rounds_total"));
  EXPECT_TRUE(IsMoeMetricName("moe_a1"));
  for (const char* bad : {"moe_", "moe_a", "moe_Rounds", "moe_rounds_", "moe_1x", "foo_rounds",
                          "moe_host-wait", "moe_wait_seconds "}) {
    EXPECT_FALSE(IsMoeMetricName(bad)) << bad;
  }
}

TEST(MetricsTest, BuildInfoCarriesItsLabels) {
  Metrics::Options options;
  options.build = {.version = "9.8.7", .git_revision = "abc123", .cuda = "13.0", .engine = "cuda"};
  auto metrics = MakeMetrics(options);
  Collected c(*metrics);
  EXPECT_EQ(
      c.Gauge(
          "moe_build_info",
          {{"version", "9.8.7"}, {"git_revision", "abc123"}, {"cuda", "13.0"}, {"engine", "cuda"}}),
      1.0);
  EXPECT_EQ(c.NumSeries("moe_build_info"), 1u);
  EXPECT_GT(c.Gauge("moe_start_time_seconds"), 1.6e9);  // after 2020
}

TEST(MetricsTest, SetEngineRelabelsBuildInfo) {
  auto metrics = MakeMetrics();
  const BuildInfo b = DefaultBuildInfo();
  ASSERT_TRUE(metrics->SetEngine("cuda").ok());
  EXPECT_EQ(metrics->SetEngine("tpu").code(), absl::StatusCode::kInvalidArgument);
  Collected c(*metrics);
  EXPECT_EQ(c.NumSeries("moe_build_info"), 1u);
  EXPECT_EQ(c.Gauge("moe_build_info", {{"version", b.version},
                                       {"git_revision", b.git_revision},
                                       {"cuda", b.cuda},
                                       {"engine", "cuda"}}),
            1.0);
}

TEST(MetricsTest, DefaultBuildInfoIsFilledIn) {
  const BuildInfo b = DefaultBuildInfo();
  EXPECT_FALSE(b.version.empty());
  EXPECT_FALSE(b.git_revision.empty());
  EXPECT_FALSE(b.cuda.empty());
  EXPECT_EQ(b.engine, "cpu");
}

TEST(MetricsTest, CreateRejectsBadOptions) {
  Metrics::Options options;
  options.build.engine = "";
  EXPECT_EQ(Metrics::Create(options).status().code(), absl::StatusCode::kInvalidArgument);
  options = {};
  options.max_workers = 0;
  EXPECT_EQ(Metrics::Create(options).status().code(), absl::StatusCode::kInvalidArgument);
  options = {};
  options.imbalance_window_assignments = 0;
  EXPECT_EQ(Metrics::Create(options).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(MetricsTest, RequestsCountByModelAndCode) {
  auto metrics = MakeMetrics();
  ASSERT_TRUE(metrics->RegisterModel("mixtral").ok());
  ASSERT_TRUE(metrics->RegisterModel("mixtral").ok());  // idempotent
  EXPECT_EQ(metrics->RegisterModel("").code(), absl::StatusCode::kInvalidArgument);
  {
    Collected c(*metrics);
    // OK series exist at 0 before the first request; others appear on first use.
    EXPECT_EQ(c.Counter("moe_requests_total", {{"model", "mixtral"}, {"code", "OK"}}), 0.0);
    EXPECT_EQ(c.Series("moe_requests_total", {{"model", "mixtral"}, {"code", "NOT_FOUND"}}),
              nullptr);
  }
  for (int i = 0; i < 5; ++i) metrics->RecordRequest("mixtral", absl::StatusCode::kOk, 0.002);
  metrics->RecordRequest("mixtral", absl::StatusCode::kInvalidArgument, 0.0001);
  metrics->RecordRequest("mixtral", 14, 0.5);         // UNAVAILABLE as a gRPC number
  metrics->RecordRequest("mixtral", 99, 0.5);         // unknown number -> UNKNOWN
  metrics->RecordRequest("no-such-model", 5, 0.001);  // NOT_FOUND, unregistered model
  metrics->RecordRequest("another-unknown", 5, 0.001);

  Collected c(*metrics);
  EXPECT_EQ(c.Counter("moe_requests_total", {{"model", "mixtral"}, {"code", "OK"}}), 5.0);
  EXPECT_EQ(c.Counter("moe_requests_total", {{"model", "mixtral"}, {"code", "INVALID_ARGUMENT"}}),
            1.0);
  EXPECT_EQ(c.Counter("moe_requests_total", {{"model", "mixtral"}, {"code", "UNAVAILABLE"}}), 1.0);
  EXPECT_EQ(c.Counter("moe_requests_total", {{"model", "mixtral"}, {"code", "UNKNOWN"}}), 1.0);
  EXPECT_EQ(c.Counter("moe_requests_total", {{"model", "_other"}, {"code", "NOT_FOUND"}}), 2.0);
  // Unregistered names never become label values.
  for (const auto& m : c.Family("moe_requests_total")->metric) {
    for (const auto& l : m.label) EXPECT_NE(l.value, "no-such-model");
  }
  const auto* d = c.Series("moe_request_duration_seconds", {{"model", "mixtral"}});
  ASSERT_NE(d, nullptr);
  EXPECT_EQ(d->histogram.sample_count, 8u);
  EXPECT_NEAR(d->histogram.sample_sum, 5 * 0.002 + 0.0001 + 0.5 + 0.5, 1e-12);
}

TEST(MetricsTest, LatencyBucketsSpanTenMicrosecondsToTenSeconds) {
  auto metrics = MakeMetrics();
  metrics->RecordQueueWait(3e-5);
  metrics->RecordQueueWait(20.0);  // beyond the last bound: only +Inf
  Collected c(*metrics);
  const auto* h = c.Series("moe_queue_wait_seconds", {});
  ASSERT_NE(h, nullptr);
  const auto& b = h->histogram.bucket;
  ASSERT_EQ(b.size(), 20u);  // 19 bounds + Inf
  EXPECT_DOUBLE_EQ(b.front().upper_bound, 1e-5);
  EXPECT_DOUBLE_EQ(b[18].upper_bound, 10.0);
  for (size_t i = 1; i < b.size(); ++i) EXPECT_GT(b[i].upper_bound, b[i - 1].upper_bound);
  EXPECT_EQ(b[1].cumulative_count, 0u);  // <= 25us
  EXPECT_EQ(b[2].cumulative_count, 1u);  // <= 50us
  EXPECT_EQ(b[18].cumulative_count, 1u);
  EXPECT_EQ(b[19].cumulative_count, 2u);
}

TEST(MetricsTest, SchedulerAndEngineValues) {
  auto metrics = MakeMetrics();
  metrics->RequestStarted();
  metrics->RequestStarted();
  metrics->RequestStarted();
  metrics->RequestFinished();
  metrics->SetQueueDepth(7, 700);
  metrics->RecordRefused("queue_full");
  metrics->RecordRefused("queue_full");
  metrics->RecordRefused("made-up");
  metrics->RecordBatch(12);
  metrics->RecordBatch(300);
  metrics->RecordBatch(-1);  // dropped
  metrics->RecordRouting(1e-4);
  metrics->RecordCompute(2e-3);
  metrics->RecordCompute(3e-3);
  Collected c(*metrics);
  EXPECT_EQ(c.Gauge("moe_inflight_requests"), 2.0);
  EXPECT_EQ(c.Gauge("moe_queue_depth"), 7.0);
  EXPECT_EQ(c.Gauge("moe_queued_tokens"), 700.0);
  EXPECT_EQ(c.Counter("moe_scheduler_refused_total", {{"reason", "queue_full"}}), 2.0);
  EXPECT_EQ(c.Counter("moe_scheduler_refused_total", {{"reason", "other"}}), 1.0);
  EXPECT_EQ(c.Counter("moe_tokens_processed_total"), 312.0);
  const auto* batch = c.Series("moe_batch_size_tokens", {});
  ASSERT_NE(batch, nullptr);
  EXPECT_EQ(batch->histogram.sample_count, 2u);
  EXPECT_DOUBLE_EQ(batch->histogram.bucket.front().upper_bound, 1.0);
  EXPECT_DOUBLE_EQ(batch->histogram.bucket[16].upper_bound, 65536.0);
  EXPECT_EQ(c.HistogramCount("moe_routing_duration_seconds"), 1.0);
  EXPECT_EQ(c.HistogramCount("moe_compute_duration_seconds"), 2.0);
  EXPECT_EQ(c.Counter("moe_metrics_dropped_total"), 1.0);
}

TEST(MetricsTest, ReadyGaugeFollowsSetReady) {
  auto metrics = MakeMetrics();
  EXPECT_EQ(Collected(*metrics).Gauge("moe_ready"), 0.0);
  metrics->SetReady(true);
  EXPECT_EQ(Collected(*metrics).Gauge("moe_ready"), 1.0);
  metrics->SetReady(false);
  EXPECT_EQ(Collected(*metrics).Gauge("moe_ready"), 0.0);
}

TEST(MetricsTest, ExpertLoadPerExpertAndImbalance) {
  Metrics::Options options;
  options.imbalance_window_assignments = 16;
  auto metrics = MakeMetrics(options);
  // Not configured yet: dropped.
  const std::vector<uint32_t> load8 = {6, 2, 0, 0, 0, 0, 0, 0};
  metrics->RecordExpertLoad(0, load8);
  EXPECT_EQ(Collected(*metrics).Counter("moe_metrics_dropped_total"), 1.0);

  ASSERT_TRUE(metrics->ConfigureExpertLoad(/*n_layers=*/4, /*n_experts=*/8).ok());
  EXPECT_EQ(metrics->ConfigureExpertLoad(0, 8).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Collected(*metrics).NumSeries("moe_expert_routed_tokens_total"), 32u);

  metrics->RecordExpertLoad(1, load8);  // 8 assignments: window (16) not full
  {
    Collected c(*metrics);
    EXPECT_EQ(c.Counter("moe_expert_routed_tokens_total", {{"layer", "1"}, {"expert", "0"}}), 6.0);
    EXPECT_EQ(c.Counter("moe_expert_routed_tokens_total", {{"layer", "1"}, {"expert", "1"}}), 2.0);
    EXPECT_EQ(c.Counter("moe_expert_routed_tokens_total", {{"layer", "0"}, {"expert", "0"}}), 0.0);
    EXPECT_EQ(c.NumSeries("moe_expert_load_imbalance_ratio"), 0u);
  }
  metrics->RecordExpertLoad(1, load8);  // 16 assignments: max 12 / mean 2 = 6
  {
    Collected c(*metrics);
    EXPECT_DOUBLE_EQ(c.Gauge("moe_expert_load_imbalance_ratio", {{"layer", "1"}}), 6.0);
    EXPECT_EQ(c.Counter("moe_expert_routed_tokens_total", {{"layer", "1"}, {"expert", "0"}}), 12.0);
  }
  const std::vector<uint32_t> balanced(8, 2);
  metrics->RecordExpertLoad(1, balanced);  // a fresh window: 16 assignments, all equal
  EXPECT_DOUBLE_EQ(Collected(*metrics).Gauge("moe_expert_load_imbalance_ratio", {{"layer", "1"}}),
                   1.0);

  // Wrong layer or wrong width: dropped, no new series.
  metrics->RecordExpertLoad(4, balanced);
  metrics->RecordExpertLoad(-1, balanced);
  metrics->RecordExpertLoad(0, std::vector<uint32_t>(7, 1));
  Collected c(*metrics);
  EXPECT_EQ(c.Counter("moe_metrics_dropped_total"), 4.0);
  EXPECT_EQ(c.NumSeries("moe_expert_routed_tokens_total"), 32u);
}

TEST(MetricsTest, ManyExpertsGetOnlyTheImbalanceGauge) {
  Metrics::Options options;
  options.imbalance_window_assignments = 256;
  auto metrics = MakeMetrics(options);
  ASSERT_TRUE(metrics->ConfigureExpertLoad(/*n_layers=*/3, /*n_experts=*/256).ok());
  std::vector<uint32_t> load(256, 1);
  load[17] = 5;  // 260 assignments, max 5, mean 260/256
  metrics->RecordExpertLoad(2, load);
  Collected c(*metrics);
  EXPECT_EQ(c.NumSeries("moe_expert_routed_tokens_total"), 0u);
  EXPECT_NEAR(c.Gauge("moe_expert_load_imbalance_ratio", {{"layer", "2"}}), 5.0 / (260.0 / 256.0),
              1e-12);
}

TEST(MetricsTest, ReconfiguringExpertLoadDropsOldSeries) {
  Metrics::Options options;
  options.imbalance_window_assignments = 1;
  auto metrics = MakeMetrics(options);
  ASSERT_TRUE(metrics->ConfigureExpertLoad(2, 8).ok());
  metrics->RecordExpertLoad(0, std::vector<uint32_t>(8, 1));
  ASSERT_TRUE(metrics->ConfigureExpertLoad(3, 4).ok());
  Collected c(*metrics);
  EXPECT_EQ(c.NumSeries("moe_expert_routed_tokens_total"), 12u);
  EXPECT_EQ(c.NumSeries("moe_expert_load_imbalance_ratio"), 0u);
  EXPECT_EQ(c.Series("moe_expert_routed_tokens_total", {{"layer", "0"}, {"expert", "7"}}), nullptr);
}

TEST(MetricsTest, DeviceSeriesAppearOnFirstUseAndStayBounded) {
  Metrics::Options options;
  options.max_devices = 2;
  auto metrics = MakeMetrics(options);
  EXPECT_EQ(Collected(*metrics).NumSeries("moe_gpu_memory_used_bytes"), 0u);  // CPU-only daemon
  metrics->SetExpertCacheTotals(1, {.hits = 3,
                                    .misses = 1,
                                    .evictions = 2,
                                    .bytes_copied = int64_t{3} << 30,
                                    .copy_wait_seconds = 0.004,
                                    .prefetch_loads = 5,
                                    .prefetch_useful = 4,
                                    .prefetch_wasted = 1,
                                    .resident_experts = 7});
  // Totals grow: counters advance by the difference.
  metrics->SetExpertCacheTotals(1, {.hits = 10,
                                    .misses = 1,
                                    .evictions = 2,
                                    .bytes_copied = (int64_t{3} << 30) + 1024,
                                    .copy_wait_seconds = 0.005,
                                    .prefetch_loads = 5,
                                    .prefetch_useful = 4,
                                    .prefetch_wasted = 1,
                                    .resident_experts = 6});
  metrics->SetGpuMemory(1, int64_t{40} << 30, int64_t{80} << 30);
  metrics->SetGpuBusyRatio(1, 0.75);
  metrics->SetGpuBusyRatio(0, 3.0);               // clamped to 1
  metrics->SetExpertCacheTotals(2, {.hits = 1});  // out of range: dropped
  Collected c(*metrics);
  const std::map<std::string, std::string> d1 = {{"device", "1"}};
  EXPECT_EQ(c.Counter("moe_expert_cache_hits_total", d1), 10.0);
  EXPECT_EQ(c.Counter("moe_expert_cache_misses_total", d1), 1.0);
  EXPECT_EQ(c.Counter("moe_expert_cache_evictions_total", d1), 2.0);
  EXPECT_EQ(c.Counter("moe_expert_cache_copied_bytes_total", d1),
            static_cast<double>((int64_t{3} << 30) + 1024));
  EXPECT_DOUBLE_EQ(c.Counter("moe_expert_cache_copy_wait_seconds_total", d1), 0.005);
  EXPECT_EQ(c.Counter("moe_expert_cache_prefetch_loads_total", d1), 5.0);
  EXPECT_EQ(c.Counter("moe_expert_cache_prefetch_useful_total", d1), 4.0);
  EXPECT_EQ(c.Counter("moe_expert_cache_prefetch_wasted_total", d1), 1.0);
  EXPECT_EQ(c.Gauge("moe_expert_cache_resident_experts", d1), 6.0);
  EXPECT_EQ(c.Gauge("moe_gpu_memory_used_bytes", d1), static_cast<double>(int64_t{40} << 30));
  EXPECT_EQ(c.Gauge("moe_gpu_memory_total_bytes", d1), static_cast<double>(int64_t{80} << 30));
  EXPECT_EQ(c.Gauge("moe_gpu_busy_ratio", d1), 0.75);
  EXPECT_EQ(c.Gauge("moe_gpu_busy_ratio", {{"device", "0"}}), 1.0);
  EXPECT_EQ(c.NumSeries("moe_expert_cache_hits_total"), 2u);
  // The depth 1 lookahead series exist with the device, deeper ones only once reported.
  EXPECT_EQ(
      c.Counter("moe_expert_cache_predicted_experts_total", {{"device", "1"}, {"depth", "1"}}),
      0.0);
  EXPECT_EQ(c.NumSeries("moe_expert_cache_predicted_experts_total"), 2u);
  EXPECT_EQ(c.Counter("moe_metrics_dropped_total"), 1.0);
}

// The engine's cache counters (layer forwards, device hits, host wait, rounds, gated predictions)
// and the lookahead counters per depth advance by differences; a smaller total restarts from zero;
// depths beyond kMaxLookaheadDepth are dropped, never a new series.
TEST(MetricsTest, ExpertCacheEngineCountersAdvancePerDepth) {
  auto metrics = MakeMetrics();
  Metrics::ExpertCacheTotals t;
  t.lookahead = {{.predicted_experts = 40, .routed_experts = 50, .correctly_predicted_experts = 30},
                 {.predicted_experts = 20, .routed_experts = 25, .correctly_predicted_experts = 9}};
  t.layer_forwards = 100;
  t.device_hit_layers = 70;
  t.host_wait_seconds = 0.25;
  t.rounds = 130;
  t.gated_predictions = 6;
  t.pcie_bytes = 1000;
  metrics->SetExpertCacheTotals(0, t);
  t.lookahead[0] = {
      .predicted_experts = 48, .routed_experts = 60, .correctly_predicted_experts = 35};
  t.lookahead[1] = {
      .predicted_experts = 30, .routed_experts = 35, .correctly_predicted_experts = 12};
  t.layer_forwards = 120;
  t.device_hit_layers = 85;
  t.host_wait_seconds = 0.375;
  t.rounds = 150;
  t.gated_predictions = 8;
  t.pcie_bytes = 1500;
  metrics->SetExpertCacheTotals(0, t);
  const std::map<std::string, std::string> d0 = {{"device", "0"}};
  const std::map<std::string, std::string> depth1 = {{"device", "0"}, {"depth", "1"}};
  const std::map<std::string, std::string> depth2 = {{"device", "0"}, {"depth", "2"}};
  {
    Collected c(*metrics);
    EXPECT_EQ(c.Counter("moe_expert_cache_layer_forwards_total", d0), 120.0);
    EXPECT_EQ(c.Counter("moe_expert_cache_device_hit_layers_total", d0), 85.0);
    EXPECT_DOUBLE_EQ(c.Counter("moe_expert_cache_host_wait_seconds_total", d0), 0.375);
    EXPECT_EQ(c.Counter("moe_expert_cache_rounds_total", d0), 150.0);
    EXPECT_EQ(c.Counter("moe_expert_cache_gated_predictions_total", d0), 8.0);
    EXPECT_EQ(c.Counter("moe_expert_cache_pcie_bytes_total", d0), 1500.0);
    EXPECT_EQ(c.Counter("moe_expert_cache_predicted_experts_total", depth1), 48.0);
    EXPECT_EQ(c.Counter("moe_expert_cache_prediction_routed_experts_total", depth1), 60.0);
    EXPECT_EQ(c.Counter("moe_expert_cache_correctly_predicted_experts_total", depth1), 35.0);
    EXPECT_EQ(c.Counter("moe_expert_cache_predicted_experts_total", depth2), 30.0);
    EXPECT_EQ(c.Counter("moe_expert_cache_prediction_routed_experts_total", depth2), 35.0);
    EXPECT_EQ(c.Counter("moe_expert_cache_correctly_predicted_experts_total", depth2), 12.0);
    EXPECT_EQ(c.Series("moe_expert_cache_predicted_experts_total", d0), nullptr);  // no unlabeled
    EXPECT_EQ(c.NumSeries("moe_expert_cache_predicted_experts_total"), 2u);
    EXPECT_EQ(c.Counter("moe_metrics_dropped_total"), 0.0);
  }
  // A new cache (smaller totals) counts from zero; a report of depth 1 only leaves depth 2 alone.
  Metrics::ExpertCacheTotals restarted;
  restarted.lookahead = {
      {.predicted_experts = 4, .routed_experts = 5, .correctly_predicted_experts = 3}};
  restarted.layer_forwards = 10;
  restarted.device_hit_layers = 2;
  restarted.host_wait_seconds = 0.125;
  restarted.rounds = 11;
  restarted.gated_predictions = 1;
  restarted.pcie_bytes = 100;
  metrics->SetExpertCacheTotals(0, restarted);
  {
    Collected c(*metrics);
    EXPECT_EQ(c.Counter("moe_expert_cache_layer_forwards_total", d0), 130.0);
    EXPECT_EQ(c.Counter("moe_expert_cache_device_hit_layers_total", d0), 87.0);
    EXPECT_DOUBLE_EQ(c.Counter("moe_expert_cache_host_wait_seconds_total", d0), 0.5);
    EXPECT_EQ(c.Counter("moe_expert_cache_rounds_total", d0), 161.0);
    EXPECT_EQ(c.Counter("moe_expert_cache_gated_predictions_total", d0), 9.0);
    EXPECT_EQ(c.Counter("moe_expert_cache_pcie_bytes_total", d0), 1600.0);
    EXPECT_EQ(c.Counter("moe_expert_cache_predicted_experts_total", depth1), 52.0);
    EXPECT_EQ(c.Counter("moe_expert_cache_prediction_routed_experts_total", depth1), 65.0);
    EXPECT_EQ(c.Counter("moe_expert_cache_correctly_predicted_experts_total", depth1), 38.0);
    EXPECT_EQ(c.Counter("moe_expert_cache_predicted_experts_total", depth2), 30.0);
  }
  // One depth more than the label allows: depths 1..kMax get series, the extra one is dropped.
  Metrics::ExpertCacheTotals deep;
  deep.lookahead.assign(
      Metrics::kMaxLookaheadDepth + 1,
      {.predicted_experts = 1000, .routed_experts = 1000, .correctly_predicted_experts = 1000});
  metrics->SetExpertCacheTotals(0, deep);
  Collected c(*metrics);
  EXPECT_EQ(c.NumSeries("moe_expert_cache_predicted_experts_total"),
            static_cast<size_t>(Metrics::kMaxLookaheadDepth));
  EXPECT_EQ(c.Counter("moe_expert_cache_predicted_experts_total",
                      {{"device", "0"}, {"depth", std::to_string(Metrics::kMaxLookaheadDepth)}}),
            1000.0);
  EXPECT_EQ(c.Counter("moe_metrics_dropped_total"), 1.0);
}

TEST(MetricsTest, WorkerCountersAdvanceByDifferences) {
  Metrics::Options options;
  options.max_workers = 4;
  auto metrics = MakeMetrics(options);
  metrics->SetSwarmQueueLength(9);
  metrics->SetWorkerTotals(3, {.received = 10, .sent = 8, .busy_seconds = 1.5});
  metrics->SetWorkerTotals(3, {.received = 15, .sent = 15, .busy_seconds = 2.0});
  {
    Collected c(*metrics);
    EXPECT_EQ(c.Gauge("moe_swarm_queue_length"), 9.0);
    EXPECT_EQ(c.Counter("moe_worker_messages_received_total", {{"worker", "3"}}), 15.0);
    EXPECT_EQ(c.Counter("moe_worker_messages_sent_total", {{"worker", "3"}}), 15.0);
    EXPECT_DOUBLE_EQ(c.Counter("moe_worker_busy_seconds_total", {{"worker", "3"}}), 2.0);
  }
  // A restarted swarm reports smaller totals: counted as a restart from zero, never a decrease.
  metrics->SetWorkerTotals(3, {.received = 4, .sent = 4, .busy_seconds = 0.25});
  metrics->SetWorkerTotals(4, {.received = 1});  // out of range
  Collected c(*metrics);
  EXPECT_EQ(c.Counter("moe_worker_messages_received_total", {{"worker", "3"}}), 19.0);
  EXPECT_EQ(c.Counter("moe_worker_messages_sent_total", {{"worker", "3"}}), 19.0);
  EXPECT_DOUBLE_EQ(c.Counter("moe_worker_busy_seconds_total", {{"worker", "3"}}), 2.25);
  EXPECT_EQ(c.NumSeries("moe_worker_messages_sent_total"), 1u);
  EXPECT_EQ(c.Counter("moe_metrics_dropped_total"), 1.0);
}

TEST(MetricsTest, CollectHooksRunOnEveryScrapeUntilRemoved) {
  auto metrics = MakeMetrics();
  int runs = 0;
  const int id = metrics->AddCollectHook([&runs](Metrics& m) {
    ++runs;
    m.SetQueueDepth(runs, 10 * runs);
  });
  std::string text = metrics->Serialize();
  EXPECT_NE(text.find("\nmoe_queue_depth 1\n"), std::string::npos) << text;
  text = metrics->Serialize();
  EXPECT_NE(text.find("\nmoe_queued_tokens 20\n"), std::string::npos) << text;
  metrics->RemoveCollectHook(id);
  text = metrics->Serialize();
  EXPECT_EQ(runs, 2);
  EXPECT_NE(text.find("\nmoe_queue_depth 2\n"), std::string::npos) << text;
  metrics->RemoveCollectHook(id);  // unknown ids are ignored
}

TEST(MetricsTest, CodeNames) {
  EXPECT_EQ(Metrics::CodeName(0), "OK");
  EXPECT_EQ(Metrics::CodeName(8), "RESOURCE_EXHAUSTED");
  EXPECT_EQ(Metrics::CodeName(16), "UNAUTHENTICATED");
  EXPECT_EQ(Metrics::CodeName(17), "UNKNOWN");
  EXPECT_EQ(Metrics::CodeName(-1), "UNKNOWN");
  EXPECT_EQ(Metrics::CodeName(static_cast<int>(absl::StatusCode::kDeadlineExceeded)),
            "DEADLINE_EXCEEDED");
}

TEST(MetricsTest, SerializeIsTextExposition) {
  auto metrics = MakeMetrics();
  ASSERT_TRUE(metrics->RegisterModel("m").ok());
  metrics->RecordRequest("m", absl::StatusCode::kOk, 0.01);
  const std::string text = metrics->Serialize();
  EXPECT_NE(text.find("# TYPE moe_requests_total counter"), std::string::npos);
  EXPECT_NE(text.find("moe_requests_total{code=\"OK\",model=\"m\"} 1"), std::string::npos) << text;
  EXPECT_NE(text.find("# TYPE moe_request_duration_seconds histogram"), std::string::npos);
}

// Many threads record at once; counts are exact afterwards (and TSan finds no race).
TEST(MetricsTest, ConcurrentRecordingLosesNothing) {
  Metrics::Options options;
  options.imbalance_window_assignments = 64;
  auto metrics = MakeMetrics(options);
  ASSERT_TRUE(metrics->RegisterModel("m").ok());
  ASSERT_TRUE(metrics->ConfigureExpertLoad(2, 4).ok());
  constexpr int kThreads = 4;
  constexpr int kIters = 2000;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      const std::vector<uint32_t> load = {1, 0, 2, 1};
      for (int i = 0; i < kIters; ++i) {
        metrics->RequestStarted();
        metrics->RecordRequest("m", i % 2 == 0 ? 0 : 13, 1e-3);
        metrics->RecordRequest(t % 2 == 0 ? "x" : "y", 5, 1e-3);
        metrics->RecordBatch(3);
        metrics->RecordExpertLoad(i % 2, load);
        metrics->RecordRefused("invalid");
        // One cache per thread; its depth 2 series appear while other threads scrape.
        metrics->SetExpertCacheTotals(t, {.hits = i + 1,
                                          .lookahead = {{}, {.predicted_experts = 2 * (i + 1)}},
                                          .layer_forwards = i + 1});
        metrics->RequestFinished();
        if (i % 500 == 0) (void)metrics->Serialize();
      }
    });
  }
  for (auto& th : threads) th.join();
  Collected c(*metrics);
  const double n = kThreads * kIters;
  EXPECT_EQ(c.Counter("moe_requests_total", {{"model", "m"}, {"code", "OK"}}), n / 2);
  EXPECT_EQ(c.Counter("moe_requests_total", {{"model", "m"}, {"code", "INTERNAL"}}), n / 2);
  EXPECT_EQ(c.Counter("moe_requests_total", {{"model", "_other"}, {"code", "NOT_FOUND"}}), n);
  EXPECT_EQ(c.Counter("moe_tokens_processed_total"), 3 * n);
  EXPECT_EQ(c.Gauge("moe_inflight_requests"), 0.0);
  EXPECT_EQ(c.Counter("moe_expert_routed_tokens_total", {{"layer", "0"}, {"expert", "2"}}), n);
  EXPECT_EQ(c.Counter("moe_scheduler_refused_total", {{"reason", "invalid"}}), n);
  EXPECT_EQ(c.Counter("moe_expert_cache_hits_total", {{"device", "2"}}), kIters);
  EXPECT_EQ(c.Counter("moe_expert_cache_layer_forwards_total", {{"device", "2"}}), kIters);
  EXPECT_EQ(
      c.Counter("moe_expert_cache_predicted_experts_total", {{"device", "3"}, {"depth", "2"}}),
      2 * kIters);
  EXPECT_EQ(c.NumSeries("moe_expert_cache_predicted_experts_total"), 2u * kThreads);
  // Every layer's windows hold 4 assignments per record: max 2 / mean 1 = 2 exactly.
  EXPECT_DOUBLE_EQ(c.Gauge("moe_expert_load_imbalance_ratio", {{"layer", "0"}}), 2.0);
}

}  // namespace
}  // namespace moe::metrics
