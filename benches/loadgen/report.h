// Turning a load run into numbers: throughput, latency percentiles, errors by gRPC code, the
// daemon's achieved batch size (from /metrics diffs) and the comparison with the engine alone.
// Printed as a human table and as one JSON line.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>

#include "engine_baseline.h"
#include "load_driver.h"
#include "nlohmann/json.hpp"
#include "stats.h"

namespace moe::loadgen {

// What the run was (echoed into the report).
struct RunConfig {
  std::string label;  // free text naming the run (--label)
  std::string target;
  std::string api;  // "unary" or "stream"
  std::string model;
  std::string engine;  // the daemon's engine ("cpu"/"cuda") from GetModel
  int layer = 0;
  std::string dtype;
  std::string mode;  // "closed" or "open"
  int concurrency = 0;
  double rate_rps = 0;
  std::string tokens;
  int channels = 1;
  double warmup_s = 0;
  double duration_s = 0;
  int64_t max_requests = 0;
};

// Differences of the daemon's counters over the measured window (absent when not scraped).
struct MetricsDelta {
  double batches = 0;                     // moe_batch_size_tokens_count
  double batch_tokens_sum = 0;            // moe_batch_size_tokens_sum
  std::optional<double> compute_seconds;  // moe_compute_duration_seconds_sum
  std::optional<double> compute_count;    // moe_compute_duration_seconds_count
};

struct Report {
  RunConfig config;
  double window_s = 0;
  int64_t requests = 0;                   // measured requests sent
  int64_t ok = 0;                         // of which OK with a well-formed output
  std::map<std::string, int64_t> errors;  // gRPC code name (or BAD_RESPONSE) -> count
  int64_t warmup_requests = 0;
  int64_t not_sent = 0;
  double max_send_lag_ms = 0;
  double client_cpu_s = 0;  // CPU time of the load generator itself during the run
  // Completions inside the window.
  double requests_per_s = 0;
  double tokens_per_s = 0;
  LatencySummary latency_ms;  // OK requests
  // Means over OK responses of their Timing fields (0 when the server sends none).
  double server_queue_ms = 0;
  double server_compute_ms = 0;
  double server_batches = 0;  // per request: engine batches its tokens were spread over
  // From /metrics.
  std::optional<MetricsDelta> metrics;
  std::optional<double> mean_batch_tokens;  // per batch: delta sum / delta count
  // Engine compute seconds per wall second over the window (up to the daemon's engine slots).
  std::optional<double> compute_occupancy;
  // The daemon's own Engine::Forward time per batch over the window (compute histogram
  // delta sum / delta count): the engine under the same conditions as the serving run.
  std::optional<double> daemon_compute_us_per_batch;
  // Against the engine-alone baseline, at the achieved mean batch size (from /metrics; absent
  // without --metrics-url).
  std::optional<double> baseline_batch_tokens;
  int baseline_slots = 0;  // engine slots the baseline ran with
  std::optional<double> engine_us_at_batch;
  std::optional<double> engine_tokens_per_s;
  std::optional<double> efficiency;          // tokens_per_s / engine_tokens_per_s
  std::optional<double> p50_over_engine_us;  // p50 latency - engine time of that batch
};

// Canonical name of a gRPC status code number ("OK", "UNAVAILABLE", ...); "BAD_RESPONSE" for
// kBadResponseCode; "CODE_<n>" otherwise.
std::string CodeName(int code);

Report BuildReport(const RunConfig& config, LoadResult result,
                   const std::optional<MetricsDelta>& metrics,
                   const std::optional<EngineBaseline>& baseline);

std::string FormatTable(const Report& report);
nlohmann::json ToJson(const Report& report);

}  // namespace moe::loadgen
