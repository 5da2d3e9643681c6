// The load generator's driver: closed-loop workers and an open-loop Poisson sender over the gRPC
// callback API, recording one Sample per request.
#include "load_driver.h"

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <limits>
#include <mutex>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "moe/common/dtype.h"

namespace moe::loadgen {
namespace {

using Clock = std::chrono::steady_clock;

DType ToDType(v1::DType d) {
  switch (d) {
    case v1::DTYPE_F16:
      return DType::kF16;
    case v1::DTYPE_F32:
      return DType::kF32;
    default:
      return DType::kBF16;
  }
}

// One request in flight.
struct Call {
  RpcBuffers rpc;
  int64_t start_ns = 0;
  int64_t tokens = 0;
  bool measured = false;
};

// Shared state of one run.
//
// Thread safety: Admit(), Send(), Finished() and NowNs() are called from the caller's thread, the
// open-loop sender and gRPC's callback threads concurrently. Counters are atomics; the samples and
// the drain condition are guarded by mu_.
class Run {
 public:
  Run(const std::vector<std::unique_ptr<Transport>>& transports, const RequestFactory& factory,
      const LoadOptions& options)
      : transports_(transports), factory_(factory), options_(options), t0_(Clock::now()) {
    window_start_ns_ = static_cast<int64_t>(options.warmup_s * 1e9);
    window_deadline_ns_ = options.duration_s > 0
                              ? window_start_ns_ + static_cast<int64_t>(options.duration_s * 1e9)
                              : std::numeric_limits<int64_t>::max();
  }

  int64_t NowNs() const {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - t0_).count();
  }
  Clock::time_point TimeAt(int64_t ns) const { return t0_ + std::chrono::nanoseconds(ns); }
  int64_t window_start_ns() const { return window_start_ns_; }
  int64_t window_deadline_ns() const { return window_deadline_ns_; }

  // Whether a request scheduled at `start_ns` is still to be sent (false once the measured phase
  // is over: past its deadline or out of its request budget). Sets *measured.
  bool Admit(int64_t start_ns, bool* measured) {
    *measured = start_ns >= window_start_ns_;
    if (!*measured) return true;
    if (start_ns >= window_deadline_ns_) return false;
    if (options_.max_requests > 0 &&
        tickets_.fetch_add(1, std::memory_order_relaxed) >= options_.max_requests) {
      return false;
    }
    return true;
  }

  int64_t inflight() const { return inflight_.load(std::memory_order_relaxed); }

  // Sends `call` (start_ns, tokens and measured set by the caller). `then` runs on a gRPC thread
  // after the result is recorded; it must end with Finished().
  void Send(Call* call, std::mt19937_64& rng, std::function<void()> then) {
    inflight_.fetch_add(1, std::memory_order_relaxed);
    factory_.Fill(call->tokens, rng, &call->rpc.req);
    const uint64_t n = next_id_.fetch_add(1, std::memory_order_relaxed);
    call->rpc.req.set_request_id(std::to_string(n));
    call->rpc.resp.Clear();
    Transport& transport = *transports_[n % transports_.size()];
    transport.Forward(&call->rpc, options_.timeout_s,
                      [this, call, then = std::move(then)](const grpc::Status& status) {
                        Record(*call, status);
                        then();
                      });
  }

  // A request slot is free again.
  void Finished() {
    if (inflight_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
      std::lock_guard<std::mutex> lock(mu_);
      cv_.notify_all();
    }
  }

  void SetSendingDone() {
    std::lock_guard<std::mutex> lock(mu_);
    sending_done_ = true;
    cv_.notify_all();
  }

  // Waits until nothing is in flight and nothing more will be sent, or until `deadline_ns`.
  // True when drained.
  bool WaitDrained(int64_t deadline_ns) {
    std::unique_lock<std::mutex> lock(mu_);
    auto drained = [&] { return sending_done_ && inflight() == 0; };
    if (deadline_ns == std::numeric_limits<int64_t>::max()) {
      cv_.wait(lock, drained);
      return true;
    }
    return cv_.wait_until(lock, TimeAt(deadline_ns), drained);
  }

  // Moves the recorded samples out (after draining).
  void TakeResults(LoadResult* result) {
    std::lock_guard<std::mutex> lock(mu_);
    result->measured = std::move(samples_);
    result->warmup_requests = warmup_requests_;
    result->window_start_ns = window_start_ns_;
    result->window_end_ns = std::min(window_deadline_ns_, last_measured_end_ns_);
  }

 private:
  void Record(const Call& call, const grpc::Status& status) {
    Sample s;
    s.start_ns = call.start_ns;
    s.end_ns = NowNs();
    s.tokens = static_cast<int32_t>(call.tokens);
    s.code = static_cast<int32_t>(status.error_code());
    if (status.ok()) {
      if (!factory_.ResponseMatches(call.tokens, call.rpc.resp)) s.code = kBadResponseCode;
      if (call.rpc.resp.has_timing()) {
        const v1::Timing& t = call.rpc.resp.timing();
        s.server_queue_us = static_cast<uint32_t>(std::min<uint64_t>(t.queue_us(), UINT32_MAX));
        s.server_compute_us = static_cast<uint32_t>(std::min<uint64_t>(t.compute_us(), UINT32_MAX));
        s.server_batches = t.batches();
      }
    }
    std::lock_guard<std::mutex> lock(mu_);
    if (call.measured) {
      samples_.push_back(s);
      last_measured_end_ns_ = std::max(last_measured_end_ns_, s.end_ns);
    } else {
      ++warmup_requests_;
    }
  }

  const std::vector<std::unique_ptr<Transport>>& transports_;
  const RequestFactory& factory_;
  const LoadOptions options_;
  const Clock::time_point t0_;
  int64_t window_start_ns_ = 0;
  int64_t window_deadline_ns_ = 0;
  std::atomic<int64_t> tickets_{0};
  std::atomic<int64_t> inflight_{0};
  std::atomic<uint64_t> next_id_{0};  // request ids, and round-robin over transports

  std::mutex mu_;
  std::condition_variable cv_;
  bool sending_done_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<Sample> samples_ ABSL_GUARDED_BY(mu_);
  int64_t warmup_requests_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t last_measured_end_ns_ ABSL_GUARDED_BY(mu_) = 0;
};

// One closed-loop worker: sends its next request from the completion callback of the previous.
//
// Thread safety: only one of its requests is in flight at a time, so its members are touched by
// one thread at a time (the starter, then successive gRPC callback threads).
class ClosedLoopWorker {
 public:
  ClosedLoopWorker(Run* run, const TokenDistribution& tokens, uint64_t seed)
      : run_(run), tokens_(tokens), rng_(seed) {}

  // Sends the next request if the phase allows; false when this worker is done.
  bool Next() {
    const int64_t now = run_->NowNs();
    bool measured = false;
    if (!run_->Admit(now, &measured)) return false;
    call_.start_ns = now;
    call_.measured = measured;
    call_.tokens = tokens_.Sample(rng_);
    run_->Send(&call_, rng_, [this] {
      Next();
      run_->Finished();
    });
    return true;
  }

 private:
  Run* run_;
  const TokenDistribution& tokens_;
  std::mt19937_64 rng_;
  Call call_;
};

Status ValidateOptions(const std::vector<std::unique_ptr<Transport>>& transports,
                       const LoadOptions& o) {
  if (transports.empty()) return absl::InvalidArgumentError("no transports");
  if (o.mode == LoadOptions::Mode::kClosedLoop && o.concurrency < 1) {
    return absl::InvalidArgumentError("--concurrency must be >= 1");
  }
  if (o.mode == LoadOptions::Mode::kOpenLoop && !(o.rate_rps > 0)) {
    return absl::InvalidArgumentError("--rate must be > 0");
  }
  if (o.duration_s <= 0 && o.max_requests <= 0) {
    return absl::InvalidArgumentError("give --duration or --requests");
  }
  if (o.warmup_s < 0 || o.duration_s < 0 || o.max_requests < 0 || !(o.timeout_s > 0) ||
      o.max_inflight < 1) {
    return absl::InvalidArgumentError(
        "--warmup, --duration, --requests must be >= 0, --timeout > 0, --max-inflight >= 1");
  }
  return absl::OkStatus();
}

}  // namespace

RequestFactory::RequestFactory(const RequestTarget& target, int64_t max_tokens, uint64_t seed)
    : target_(target) {
  const DType dtype = ToDType(target.dtype);
  row_bytes_ = static_cast<size_t>(target.hidden) * DTypeSize(dtype);
  // Thousands of distinct rows, so a batch of many requests holds distinct tokens (as in serving)
  // and routes like random traffic, not a few hundred repeated rows.
  pool_rows_ = std::max<int64_t>(max_tokens, 1) + 4095;
  const size_t n = static_cast<size_t>(pool_rows_) * static_cast<size_t>(target.hidden);
  std::vector<float> values(n);
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (float& v : values) v = normal(rng);
  pool_.resize(n * DTypeSize(dtype));
  ConvertFromF32(values.data(), dtype, pool_.data(), n);
}

void RequestFactory::Fill(int64_t n_tokens, std::mt19937_64& rng, v1::ForwardRequest* req) const {
  const int64_t first = std::uniform_int_distribution<int64_t>(0, pool_rows_ - n_tokens)(rng);
  req->set_model(target_.model);
  req->set_layer(target_.layer);
  v1::Tensor* t = req->mutable_hidden_states();
  t->set_dtype(target_.dtype);
  t->clear_shape();
  t->add_shape(n_tokens);
  t->add_shape(target_.hidden);
  t->set_data(pool_.data() + static_cast<size_t>(first) * row_bytes_,
              static_cast<size_t>(n_tokens) * row_bytes_);
}

bool RequestFactory::ResponseMatches(int64_t n_tokens, const v1::ForwardResponse& resp) const {
  const v1::Tensor& t = resp.hidden_states();
  return t.dtype() == target_.dtype && t.shape_size() == 2 && t.shape(0) == n_tokens &&
         t.shape(1) == target_.hidden &&
         t.data().size() == static_cast<size_t>(n_tokens) * row_bytes_;
}

StatusOr<LoadResult> RunLoad(const std::vector<std::unique_ptr<Transport>>& transports,
                             const RequestFactory& factory, const TokenDistribution& tokens,
                             const LoadOptions& options, const LoadHooks& hooks) {
  MOE_RETURN_IF_ERROR(ValidateOptions(transports, options));
  LoadResult result;
  Run run(transports, factory, options);
  std::vector<std::unique_ptr<ClosedLoopWorker>> workers;
  std::thread sender;
  std::atomic<int64_t> not_sent{0};
  std::atomic<int64_t> max_lag_ns{0};

  if (options.mode == LoadOptions::Mode::kClosedLoop) {
    for (int i = 0; i < options.concurrency; ++i) {
      workers.push_back(std::make_unique<ClosedLoopWorker>(&run, tokens, options.seed + 1 + i));
    }
    for (auto& w : workers) w->Next();
    run.SetSendingDone();  // workers stop on their own; drained = none in flight
  } else {
    sender = std::thread([&] {
      std::mt19937_64 rng(options.seed);
      std::exponential_distribution<double> gap_s(options.rate_rps);
      double next_s = 0;
      while (true) {
        next_s += gap_s(rng);
        const int64_t scheduled_ns = static_cast<int64_t>(next_s * 1e9);
        bool measured = false;
        if (!run.Admit(scheduled_ns, &measured)) break;
        std::this_thread::sleep_until(run.TimeAt(scheduled_ns));
        const int64_t lag = run.NowNs() - scheduled_ns;
        if (lag > max_lag_ns.load(std::memory_order_relaxed)) max_lag_ns.store(lag);
        if (run.inflight() >= options.max_inflight) {
          not_sent.fetch_add(1, std::memory_order_relaxed);
          continue;
        }
        auto* call = new Call;
        call->start_ns = scheduled_ns;
        call->measured = measured;
        call->tokens = tokens.Sample(rng);
        run.Send(call, rng, [call, &run] {
          delete call;
          run.Finished();
        });
      }
      run.SetSendingDone();
    });
  }

  // Window start: the caller scrapes here.
  std::this_thread::sleep_until(run.TimeAt(run.window_start_ns()));
  if (hooks.on_window_start) hooks.on_window_start();
  // Window end: at the deadline (before draining), or when the request budget is drained first.
  const bool drained = run.WaitDrained(run.window_deadline_ns());
  if (hooks.on_window_end) hooks.on_window_end();
  if (!drained) run.WaitDrained(std::numeric_limits<int64_t>::max());
  if (sender.joinable()) sender.join();

  run.TakeResults(&result);
  result.not_sent = not_sent.load();
  result.max_send_lag_ms = static_cast<double>(max_lag_ns.load()) * 1e-6;
  return result;
}

}  // namespace moe::loadgen
