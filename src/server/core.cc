#include "core.h"

#include <spdlog/spdlog.h>

#include "moe/common/logging.h"
#include "moe/metrics/metrics.h"

namespace moe::server {

Clock::time_point EffectiveDeadline(Clock::time_point arrival, uint64_t timeout_us,
                                    uint64_t default_timeout_us,
                                    std::chrono::system_clock::time_point grpc_deadline) {
  Clock::time_point deadline = Clock::time_point::max();
  uint64_t us = timeout_us != 0 ? timeout_us : default_timeout_us;
  // Cap at ~100 years so the addition cannot overflow.
  constexpr uint64_t kMaxUs = uint64_t{100} * 365 * 24 * 3600 * 1000000;
  if (us != 0) deadline = arrival + std::chrono::microseconds(std::min(us, kMaxUs));
  if (grpc_deadline != std::chrono::system_clock::time_point::max()) {
    auto left = grpc_deadline - std::chrono::system_clock::now();
    Clock::time_point d = Clock::now() + std::chrono::duration_cast<Clock::duration>(left);
    deadline = std::min(deadline, d);
  }
  return deadline;
}

Core::Core(const Catalog* catalog, Backend* backend, metrics::Metrics* metrics)
    : catalog_(catalog), backend_(backend), metrics_(metrics), stats_(catalog->spec().moe_layers) {}

void Core::SetReady(bool ready) {
  if (draining()) return;
  ready_.store(ready, std::memory_order_release);
}

void Core::BeginDrain() {
  draining_.store(true, std::memory_order_release);
  ready_.store(false, std::memory_order_release);
}

int64_t Core::inflight() const {
  std::lock_guard<std::mutex> lock(mu_);
  return inflight_;
}

bool Core::WaitIdle(Clock::time_point deadline) {
  std::unique_lock<std::mutex> lock(mu_);
  return idle_.wait_until(lock, deadline, [this] { return inflight_ == 0; });
}

void Core::Run(const LayerRequest& request, const std::string& label, LayerDone done) {
  Status refusal;
  if (draining()) {
    refusal = absl::UnavailableError(
        "server is draining (shutting down); retry on another replica or after restart");
  } else if (!ready()) {
    refusal = absl::UnavailableError("server is not ready (loading or warming up); retry later");
  } else if (Clock::now() >= request.deadline) {
    refusal = absl::DeadlineExceededError("deadline passed before the request was queued");
  } else if (request.cancel != nullptr && request.cancel->cancelled()) {
    refusal = absl::CancelledError("request cancelled by the client");
  }
  if (refusal.ok()) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      ++inflight_;
    }
    if (metrics_ != nullptr) metrics_->RequestStarted();
    int layer = request.layer;
    int64_t n_tokens = request.n_tokens;
    Clock::time_point arrival = request.arrival;
    std::shared_ptr<CancelScope> cancel = request.cancel;
    uint64_t key = cancel != nullptr ? cancel->Reserve() : 0;
    // Shared: the backend destroys `wrapped` when it refuses, and `done` must still answer.
    auto shared_done = std::make_shared<LayerDone>(std::move(done));
    LayerDone wrapped = [this, layer, n_tokens, arrival, label, cancel, key, shared_done](
                            const Status& status, const LayerTiming& timing) {
      // Release before `done`: answering may destroy the reactor (our shared_ptr keeps the scope).
      if (cancel != nullptr) cancel->Release(key);
      // Statistics before the answer, so a client that reads them next sees its request.
      Record(layer, n_tokens, status, timing, arrival, label);
      (*shared_done)(status, timing);
      Leave();
    };
    StatusOr<uint64_t> ticket = backend_->Submit(request, std::move(wrapped));
    if (ticket.ok()) {
      if (cancel != nullptr) cancel->Arm(key, *ticket);
      return;
    }
    if (cancel != nullptr) cancel->Release(key);
    refusal = ticket.status();
    // Refused by the backend: `wrapped` was not and will not be called.
    Record(request.layer, request.n_tokens, refusal, LayerTiming{}, request.arrival, label);
    (*shared_done)(refusal, LayerTiming{});
    Leave();
    return;
  }
  RecordRejected(request.layer, refusal, request.arrival, label);
  done(refusal, LayerTiming{});
}

void Core::Record(int layer, int64_t n_tokens, const Status& status, const LayerTiming& timing,
                  Clock::time_point arrival, const std::string& label) {
  int64_t total_ns =
      std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - arrival).count();
  stats_.Record(layer, status, n_tokens, timing, total_ns);
  if (metrics_ != nullptr) {
    metrics_->RecordRequest(catalog_->model().name, status.code(), total_ns * 1e-9);
    metrics_->RequestFinished();
  }
  if (!status.ok()) LogRefusal(label, status);
}

void Core::Leave() {
  std::lock_guard<std::mutex> lock(mu_);
  if (--inflight_ == 0) idle_.notify_all();
}

void Core::RecordRejected(int layer, const Status& status, Clock::time_point arrival,
                          const std::string& label) {
  int64_t total_ns =
      std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - arrival).count();
  if (layer >= 0) stats_.Record(layer, status, 0, LayerTiming{}, total_ns);
  if (metrics_ != nullptr) {
    metrics_->RecordRequest(catalog_->model().name, status.code(), total_ns * 1e-9);
  }
  LogRefusal(label, status);
}

void Core::LogRefusal(const std::string& label, const Status& status) {
  int64_t suppressed = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    Clock::time_point now = Clock::now();
    if (now - log_window_ >= std::chrono::seconds(1)) {
      suppressed = log_suppressed_;
      log_window_ = now;
      log_count_ = 0;
      log_suppressed_ = 0;
    }
    if (++log_count_ > kLogsPerSecond) {
      ++log_suppressed_;
      return;
    }
  }
  if (suppressed > 0) log::Get("server")->warn("{} more refused requests not logged", suppressed);
  log::Get("server")->warn("refused {}: {}: {}", label, absl::StatusCodeToString(status.code()),
                           std::string(status.message()));
}

}  // namespace moe::server
