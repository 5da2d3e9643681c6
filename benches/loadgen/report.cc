// Load run -> report: throughput, latency, errors, achieved batch size, engine comparison.
#include "report.h"

#include <cstdio>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace moe::loadgen {

std::string CodeName(int code) {
  if (code == kBadResponseCode) return "BAD_RESPONSE";
  // gRPC's status codes 0..16 are absl's, with the same names.
  if (code >= 0 && code <= static_cast<int>(absl::StatusCode::kUnauthenticated)) {
    return absl::StatusCodeToString(static_cast<absl::StatusCode>(code));
  }
  return absl::StrCat("CODE_", code);
}

Report BuildReport(const RunConfig& config, LoadResult result,
                   const std::optional<MetricsDelta>& metrics,
                   const std::optional<EngineBaseline>& baseline) {
  Report r;
  r.config = config;
  r.window_s = static_cast<double>(result.window_end_ns - result.window_start_ns) * 1e-9;
  r.requests = static_cast<int64_t>(result.measured.size());
  r.warmup_requests = result.warmup_requests;
  r.not_sent = result.not_sent;
  r.max_send_lag_ms = result.max_send_lag_ms;

  std::vector<double> latencies_ms;
  double queue_us = 0, compute_us = 0, batches = 0;
  int64_t in_window = 0, tokens_in_window = 0;
  for (const Sample& s : result.measured) {
    if (s.code != 0) {
      ++r.errors[CodeName(s.code)];
      continue;
    }
    ++r.ok;
    latencies_ms.push_back(static_cast<double>(s.end_ns - s.start_ns) * 1e-6);
    queue_us += s.server_queue_us;
    compute_us += s.server_compute_us;
    batches += s.server_batches;
    if (s.end_ns <= result.window_end_ns) {
      ++in_window;
      tokens_in_window += s.tokens;
    }
  }
  if (r.window_s > 0) {
    r.requests_per_s = static_cast<double>(in_window) / r.window_s;
    r.tokens_per_s = static_cast<double>(tokens_in_window) / r.window_s;
  }
  r.latency_ms = Summarize(latencies_ms);
  if (r.ok > 0) {
    const double n = static_cast<double>(r.ok);
    r.server_queue_ms = queue_us / n * 1e-3;
    r.server_compute_ms = compute_us / n * 1e-3;
    r.server_batches = batches / n;
  }

  r.metrics = metrics;
  if (metrics && metrics->batches > 0) {
    r.mean_batch_tokens = metrics->batch_tokens_sum / metrics->batches;
    if (metrics->compute_seconds && r.window_s > 0) {
      r.compute_occupancy = *metrics->compute_seconds / r.window_s;
    }
    if (metrics->compute_seconds && metrics->compute_count && *metrics->compute_count > 0) {
      r.daemon_compute_us_per_batch = *metrics->compute_seconds / *metrics->compute_count * 1e6;
    }
  }
  if (baseline) {
    if (std::optional<double> b = r.mean_batch_tokens) {
      r.baseline_batch_tokens = b;
      r.baseline_slots = baseline->slots();
      r.engine_us_at_batch = baseline->UsPerForward(*b);
      r.engine_tokens_per_s = baseline->TokensPerSecond(*b);
      if (*r.engine_tokens_per_s > 0) r.efficiency = r.tokens_per_s / *r.engine_tokens_per_s;
      if (r.ok > 0) r.p50_over_engine_us = r.latency_ms.p50 * 1e3 - *r.engine_us_at_batch;
    }
  }
  return r;
}

std::string FormatTable(const Report& r) {
  const RunConfig& c = r.config;
  std::string out;
  const std::string load = c.mode == "open"
                               ? absl::StrFormat("open loop, Poisson %.1f req/s", c.rate_rps)
                               : absl::StrFormat("closed loop, concurrency %d", c.concurrency);
  if (!c.label.empty()) absl::StrAppendFormat(&out, "[%s]\n", c.label);
  absl::StrAppendFormat(&out, "moe-loadgen  %s  model=%s engine=%s layer=%d dtype=%s\n", c.target,
                        c.model, c.engine, c.layer, c.dtype);
  absl::StrAppendFormat(&out, "  load        %s, tokens/request %s, %d channel(s), %s API\n", load,
                        c.tokens, c.channels, c.api);
  absl::StrAppendFormat(&out, "  window      %.2f s (warm-up %.1f s, %d warm-up requests)\n",
                        r.window_s, c.warmup_s, r.warmup_requests);
  std::string errors;
  for (const auto& [name, n] : r.errors) absl::StrAppendFormat(&errors, " %s=%d", name, n);
  absl::StrAppendFormat(&out, "  requests    %d sent, %d ok, errors:%s\n", r.requests, r.ok,
                        errors.empty() ? " none" : errors);
  if (c.mode == "open") {
    absl::StrAppendFormat(&out, "  sender      not sent (in-flight cap) %d, max lag %.2f ms\n",
                          r.not_sent, r.max_send_lag_ms);
  }
  absl::StrAppendFormat(&out, "  throughput  %.1f req/s, %.1f tokens/s (client CPU %.2f s)\n",
                        r.requests_per_s, r.tokens_per_s, r.client_cpu_s);
  absl::StrAppendFormat(&out, "  latency ms  p50 %.3f  p90 %.3f  p99 %.3f  max %.3f  mean %.3f\n",
                        r.latency_ms.p50, r.latency_ms.p90, r.latency_ms.p99, r.latency_ms.max,
                        r.latency_ms.mean);
  absl::StrAppendFormat(&out,
                        "  server      mean queue %.3f ms, compute %.3f ms, %.2f batches "
                        "(per request, from Timing)\n",
                        r.server_queue_ms, r.server_compute_ms, r.server_batches);
  if (r.metrics) {
    absl::StrAppendFormat(&out, "  batches     %.0f batches, mean %.2f tokens/batch (/metrics)",
                          r.metrics->batches, r.mean_batch_tokens.value_or(0));
    if (r.daemon_compute_us_per_batch) {
      absl::StrAppendFormat(&out, ", engine %.1f us/batch", *r.daemon_compute_us_per_batch);
    }
    if (r.compute_occupancy) {
      absl::StrAppendFormat(&out, ", compute %.2f s per s (all slots)", *r.compute_occupancy);
    }
    out += "\n";
  }
  if (r.engine_tokens_per_s) {
    absl::StrAppendFormat(&out,
                          "  engine      alone (%d slot(s)) at %.2f tokens/batch: %.1f us/forward, "
                          "%.1f tokens/s -> efficiency %.2f; p50 - engine time = %.1f us\n",
                          r.baseline_slots, *r.baseline_batch_tokens, *r.engine_us_at_batch,
                          *r.engine_tokens_per_s, r.efficiency.value_or(0),
                          r.p50_over_engine_us.value_or(0));
  }
  return out;
}

nlohmann::json ToJson(const Report& r) {
  const RunConfig& c = r.config;
  nlohmann::json j;
  if (!c.label.empty()) j["label"] = c.label;
  j["target"] = c.target;
  j["api"] = c.api;
  j["model"] = c.model;
  j["engine"] = c.engine;
  j["layer"] = c.layer;
  j["dtype"] = c.dtype;
  j["mode"] = c.mode;
  if (c.mode == "open") {
    j["rate_rps"] = c.rate_rps;
  } else {
    j["concurrency"] = c.concurrency;
  }
  j["tokens"] = c.tokens;
  j["channels"] = c.channels;
  j["warmup_s"] = c.warmup_s;
  j["window_s"] = r.window_s;
  j["requests"] = r.requests;
  j["ok"] = r.ok;
  j["errors"] = r.errors;
  j["warmup_requests"] = r.warmup_requests;
  j["not_sent"] = r.not_sent;
  j["max_send_lag_ms"] = r.max_send_lag_ms;
  j["client_cpu_s"] = r.client_cpu_s;
  j["requests_per_s"] = r.requests_per_s;
  j["tokens_per_s"] = r.tokens_per_s;
  j["latency_ms"] = {{"p50", r.latency_ms.p50},
                     {"p90", r.latency_ms.p90},
                     {"p99", r.latency_ms.p99},
                     {"max", r.latency_ms.max},
                     {"mean", r.latency_ms.mean}};
  j["server_queue_ms"] = r.server_queue_ms;
  j["server_compute_ms"] = r.server_compute_ms;
  j["server_batches"] = r.server_batches;
  if (r.metrics) {
    j["batches"] = r.metrics->batches;
    j["batch_tokens_sum"] = r.metrics->batch_tokens_sum;
  }
  auto put = [&j](const char* key, const std::optional<double>& v) {
    if (v) j[key] = *v;
  };
  put("mean_batch_tokens", r.mean_batch_tokens);
  put("compute_occupancy", r.compute_occupancy);
  put("daemon_compute_us_per_batch", r.daemon_compute_us_per_batch);
  put("daemon_compute_us_per_batch", r.daemon_compute_us_per_batch);
  put("baseline_batch_tokens", r.baseline_batch_tokens);
  if (r.baseline_batch_tokens) j["baseline_slots"] = r.baseline_slots;
  put("engine_us_at_batch", r.engine_us_at_batch);
  put("engine_tokens_per_s", r.engine_tokens_per_s);
  put("efficiency", r.efficiency);
  put("p50_over_engine_us", r.p50_over_engine_us);
  return j;
}

}  // namespace moe::loadgen
