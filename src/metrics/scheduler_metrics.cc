#include "moe/metrics/scheduler_metrics.h"

#include <utility>

namespace moe::metrics {
namespace {

constexpr double kSecondsPerMicro = 1e-6;
constexpr double kSecondsPerNano = 1e-9;

std::string_view RefusalLabel(RefusalReason reason) {
  switch (reason) {
    case RefusalReason::kInvalid:
      return "invalid";
    case RefusalReason::kQueueFull:
      return "queue_full";
    case RefusalReason::kShuttingDown:
      return "shutting_down";
  }
  return "other";
}

}  // namespace

SchedulerMetrics::SchedulerMetrics(Metrics* metrics) : metrics_(metrics) {
  hook_id_ = metrics_->AddCollectHook([this](Metrics& m) { Collect(m); });
}

SchedulerMetrics::~SchedulerMetrics() { metrics_->RemoveCollectHook(hook_id_); }

void SchedulerMetrics::SetStatsSource(StatsSource source) {
  std::lock_guard lock(mu_);
  source_ = std::move(source);
}

void SchedulerMetrics::Collect(Metrics& metrics) {
  std::lock_guard lock(mu_);
  if (source_) Publish(source_(), metrics);
}

void SchedulerMetrics::Publish(const SchedulerStats& stats, Metrics& metrics) {
  metrics.SetQueueDepth(stats.queued_requests, stats.queued_tokens);
  metrics.SetSwarmQueueLength(stats.swarm.queued);
  for (size_t i = 0; i < stats.swarm.workers.size(); ++i) {
    const WorkerStats& w = stats.swarm.workers[i];
    metrics.SetWorkerTotals(static_cast<int>(i),
                            {.received = w.received,
                             .sent = w.completed + w.abandoned,
                             .busy_seconds = static_cast<double>(w.busy_ns) * kSecondsPerNano});
  }
}

void SchedulerMetrics::OnRefused(RefusalReason reason, int64_t n_tokens) {
  metrics_->RecordRefused(RefusalLabel(reason));
}

void SchedulerMetrics::OnRequestDone(const RequestRecord& record) {
  metrics_->RecordQueueWait(static_cast<double>(record.queue_us) * kSecondsPerMicro);
}

void SchedulerMetrics::OnBatchFormed(int layer, DType dtype, int64_t n_tokens, int n_segments) {
  metrics_->RecordBatch(n_tokens);
}

void SchedulerMetrics::OnBatchDone(const BatchRecord& record) {
  metrics_->RecordCompute(static_cast<double>(record.compute_us) * kSecondsPerMicro);
}

}  // namespace moe::metrics
