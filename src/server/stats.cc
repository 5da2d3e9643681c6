#include "stats.h"

#include <chrono>

namespace moe::server {

Stats::Stats(const std::vector<int>& layers) {
  std::lock_guard<std::mutex> lock(mu_);
  for (int l : layers) layers_[l];
}

void Stats::Record(int layer, const Status& status, int64_t n_tokens, const LayerTiming& timing,
                   int64_t total_ns) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = layers_.find(layer);
  if (it == layers_.end()) return;
  Layer& l = it->second;
  if (!status.ok()) {
    l.fail.Add(total_ns);
    return;
  }
  l.success.Add(total_ns);
  l.queue.Add(timing.queue_ns);
  l.compute.Add(timing.compute_ns);
  l.inference_count += static_cast<uint64_t>(n_tokens);
  l.execution_count += 1;
  l.last_inference_ms =
      static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                std::chrono::system_clock::now().time_since_epoch())
                                .count());
}

void Stats::Fill(int layer, inference::ModelStatistics* out) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = layers_.find(layer);
  if (it == layers_.end()) return;
  const Layer& l = it->second;
  auto set = [](const Duration& d, inference::StatisticDuration* o) {
    o->set_count(d.count);
    o->set_ns(d.ns);
  };
  out->set_last_inference(l.last_inference_ms);
  out->set_inference_count(l.inference_count);
  out->set_execution_count(l.execution_count);
  inference::InferStatistics* s = out->mutable_inference_stats();
  set(l.success, s->mutable_success());
  set(l.fail, s->mutable_fail());
  set(l.queue, s->mutable_queue());
  set(l.compute, s->mutable_compute_infer());
  s->mutable_compute_input();
  s->mutable_compute_output();
}

}  // namespace moe::server
