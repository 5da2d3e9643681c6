// The request path both APIs share once a request is decoded: admission (ready, draining),
// deadline and cancel checks, submission to the backend, statistics, metrics and refusal logs.
//
// Thread safety: every method may be called from any thread.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <string>

#include "absl/base/thread_annotations.h"
#include "catalog.h"
#include "moe/server/backend.h"
#include "stats.h"

namespace moe::metrics {
class Metrics;
}  // namespace moe::metrics

namespace moe::server {

// The effective deadline of a request: the earliest of its timeout parameter (0 = the server's
// default timeout, itself 0 = none) counted from `arrival`, and the gRPC deadline.
Clock::time_point EffectiveDeadline(Clock::time_point arrival, uint64_t timeout_us,
                                    uint64_t default_timeout_us,
                                    std::chrono::system_clock::time_point grpc_deadline);

class Core {
 public:
  Core(const Catalog* catalog, Backend* backend, metrics::Metrics* metrics);

  const Catalog& catalog() const { return *catalog_; }
  Backend* backend() const { return backend_; }
  const Stats& stats() const { return stats_; }

  void SetReady(bool ready);
  bool ready() const { return ready_.load(std::memory_order_acquire); }
  // From now on every request is refused with UNAVAILABLE, and SetReady() is ignored.
  void BeginDrain();
  bool draining() const { return draining_.load(std::memory_order_acquire); }

  // Submits a decoded, validated request. `done` is called exactly once: inline when refused
  // (not ready, draining, past deadline, cancelled, backend full), else from a backend thread.
  // `label` names the request in refusal logs (API and request id).
  void Run(const LayerRequest& request, const std::string& label, LayerDone done);
  // Accounts a request that never reached Run() (decode or resolve failed). `layer` may be -1.
  void RecordRejected(int layer, const Status& status, Clock::time_point arrival,
                      const std::string& label);

  // Requests between Run() and their `done`.
  int64_t inflight() const;
  // Waits until inflight() == 0 or `deadline`; true when idle.
  bool WaitIdle(Clock::time_point deadline);

 private:
  // Statistics, metrics and the refusal log of one finished request.
  void Record(int layer, int64_t n_tokens, const Status& status, const LayerTiming& timing,
              Clock::time_point arrival, const std::string& label);
  // The request has been answered: inflight - 1.
  void Leave();
  void LogRefusal(const std::string& label, const Status& status);

  const Catalog* const catalog_;
  Backend* const backend_;
  metrics::Metrics* const metrics_;
  Stats stats_;
  std::atomic<bool> ready_{false};
  std::atomic<bool> draining_{false};

  mutable std::mutex mu_;
  std::condition_variable idle_;  // signalled when inflight_ drops to 0
  int64_t inflight_ ABSL_GUARDED_BY(mu_) = 0;
  // Refusal log rate limit: at most kLogsPerSecond lines a second, the rest counted.
  static constexpr int kLogsPerSecond = 20;
  Clock::time_point log_window_ ABSL_GUARDED_BY(mu_);
  int log_count_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t log_suppressed_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace moe::server
