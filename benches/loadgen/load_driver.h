// The load generator's driver: issues moe.v1 Forward RPCs (gRPC callback API) in one of two modes
// and records one Sample per request.
//
//   closed loop  `concurrency` workers; each sends its next request when the previous one returns.
//   open loop    Poisson arrivals at `rate_rps` (exponential inter-arrival times, fixed seed), sent
//                on schedule whatever the completions; latency is measured from the scheduled time
//                (so a late sender does not hide queueing: no coordinated omission).
//
// Phases: requests scheduled before `warmup_s` are warm-up (sent, not measured). The measured phase
// lasts `duration_s` (0 = unbounded) and/or `max_requests` measured requests (0 = unbounded),
// whichever ends first; then sending stops and the requests still in flight are drained.
// Hooks run on the caller's thread at the start and end of the measured window (the end hook
// before draining in duration mode), so the caller can scrape /metrics around exactly that window.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "moe/common/status.h"
#include "moe/v1/moe.grpc.pb.h"
#include "stats.h"
#include "transport.h"

namespace moe::loadgen {

// What every request addresses, and the shape of its hidden states.
struct RequestTarget {
  std::string model;  // empty = the only served model
  int layer = 0;
  v1::DType dtype = v1::DTYPE_BF16;
  int hidden = 0;
};

// Builds requests with random hidden states: a pool of random rows (standard normal values,
// rounded to the dtype, from `seed`), of which each request copies n_tokens consecutive rows
// starting at a random row.
//
// Thread safety: immutable after construction; Fill() may be called from any thread.
class RequestFactory {
 public:
  RequestFactory(const RequestTarget& target, int64_t max_tokens, uint64_t seed);
  // Fills `req` (model, layer, hidden_states [n_tokens, hidden]; the caller sets request_id).
  // n_tokens in [1, max_tokens].
  void Fill(int64_t n_tokens, std::mt19937_64& rng, v1::ForwardRequest* req) const;
  // OK when `resp` has the request's dtype and shape [n_tokens, hidden] with the right byte count.
  bool ResponseMatches(int64_t n_tokens, const v1::ForwardResponse& resp) const;
  const RequestTarget& target() const { return target_; }

 private:
  RequestTarget target_;
  size_t row_bytes_;
  int64_t pool_rows_;
  std::string pool_;  // [pool_rows_, hidden] in the target dtype
};

struct LoadOptions {
  enum class Mode { kClosedLoop, kOpenLoop };
  Mode mode = Mode::kClosedLoop;
  int concurrency = 1;           // closed loop: workers
  double rate_rps = 0;           // open loop: mean arrivals per second
  double warmup_s = 0;           // not measured
  double duration_s = 10;        // measured phase; 0 = until max_requests
  int64_t max_requests = 0;      // measured requests; 0 = until duration_s
  int64_t max_inflight = 16384;  // open loop: arrivals beyond this many in flight are not sent
  double timeout_s = 30;         // gRPC deadline of each request
  uint64_t seed = 1;
};

// Result code of a request that returned OK but whose output had the wrong dtype or shape.
inline constexpr int kBadResponseCode = -1;

// One request. Times are nanoseconds since the run started.
struct Sample {
  int64_t start_ns = 0;  // sent (closed loop) or scheduled (open loop)
  int64_t end_ns = 0;    // response received
  int32_t tokens = 0;
  int32_t code = 0;  // grpc::StatusCode, or kBadResponseCode
  // From the response's Timing (0 when absent or on error).
  uint32_t server_queue_us = 0;
  uint32_t server_compute_us = 0;
  uint32_t server_batches = 0;  // engine batches its tokens were spread over
};

struct LoadResult {
  int64_t window_start_ns = 0;
  int64_t window_end_ns = 0;     // duration mode: start + duration; else the last completion
  std::vector<Sample> measured;  // every request scheduled in the measured phase
  int64_t warmup_requests = 0;
  int64_t not_sent = 0;        // open loop: arrivals dropped at max_inflight
  double max_send_lag_ms = 0;  // open loop: worst lateness of the sender against the schedule
};

struct LoadHooks {
  std::function<void()> on_window_start;
  std::function<void()> on_window_end;
};

// Runs the load through `transports` (requests spread round-robin over them, e.g. one per
// channel); returns once every request has completed (the caller may then Close() them).
// INVALID_ARGUMENT for impossible options (concurrency < 1, rate <= 0, no duration and no
// max_requests, no transports).
StatusOr<LoadResult> RunLoad(const std::vector<std::unique_ptr<Transport>>& transports,
                             const RequestFactory& factory, const TokenDistribution& tokens,
                             const LoadOptions& options, const LoadHooks& hooks);

}  // namespace moe::loadgen
