// SchedulerMetrics: the scheduler's observer (moe::SchedulerObserver) feeding Metrics, plus a
// scrape-time pull of SchedulerStats for the gauges and the per-worker counters.
//
// Wiring in the daemon:
//   moe::metrics::SchedulerMetrics sched_metrics(metrics.get());
//   scheduler_options.observer = &sched_metrics;
//   auto scheduler = ...Create(scheduler_options);
//   sched_metrics.SetStatsSource([s = scheduler.get()] { return s->Stats(); });
//   ... serve ...
//   sched_metrics.SetStatsSource(nullptr);   // before the scheduler is destroyed
//
// What goes where:
//   OnRefused      -> moe_scheduler_refused_total{reason}
//   OnRequestDone  -> moe_queue_wait_seconds (queue_us)
//   OnBatchFormed  -> moe_batch_size_tokens, moe_tokens_processed_total
//   OnBatchDone    -> moe_compute_duration_seconds (compute_us)
//   each scrape    -> moe_queue_depth, moe_queued_tokens, moe_swarm_queue_length,
//                     moe_worker_messages_{received,sent}_total, moe_worker_busy_seconds_total
// Request counts by gRPC code and end-to-end latency are recorded by the gRPC front end
// (Metrics::RecordRequest), which knows the code the client saw.
//
// Thread safety: the hooks may be called concurrently from any thread (they only touch Metrics,
// which is thread-safe). SetStatsSource() may be called while scrapes run; once it returns, the
// previous source is not running and will not be called again.
#pragma once

#include <functional>
#include <mutex>

#include "absl/base/thread_annotations.h"
#include "moe/metrics/metrics.h"
#include "moe/scheduler/observer.h"

namespace moe::metrics {

class SchedulerMetrics final : public SchedulerObserver {
 public:
  using StatsSource = std::function<SchedulerStats()>;

  // `metrics` is not owned and must outlive this object. Registers a collect hook.
  explicit SchedulerMetrics(Metrics* metrics);
  ~SchedulerMetrics() override;  // removes the collect hook
  SchedulerMetrics(const SchedulerMetrics&) = delete;
  SchedulerMetrics& operator=(const SchedulerMetrics&) = delete;

  // Where scrapes read the scheduler's snapshot from; nullptr stops the pulling.
  void SetStatsSource(StatsSource source);

  // SchedulerObserver.
  void OnRefused(RefusalReason reason, int64_t n_tokens) override;
  void OnRequestDone(const RequestRecord& record) override;
  void OnBatchFormed(int layer, DType dtype, int64_t n_tokens, int n_segments) override;
  void OnBatchDone(const BatchRecord& record) override;

  // Copies one snapshot into Metrics (what the collect hook does; public for tests and for
  // callers that sample on their own schedule).
  static void Publish(const SchedulerStats& stats, Metrics& metrics);

 private:
  void Collect(Metrics& metrics);

  Metrics* const metrics_;
  int hook_id_ = -1;
  std::mutex mu_;
  StatsSource source_ ABSL_GUARDED_BY(mu_);
};

}  // namespace moe::metrics
