// Reading the daemon's Prometheus side port: a minimal HTTP/1.0 GET over a TCP socket, and the
// few sample values the load generator diffs (batch-size histogram _sum/_count, counters).
//
// Only what `moe-swarm serve` exposes is supported: plain HTTP (no TLS), an IPv4 address or a
// host name, a response with or without chunked transfer encoding.
#pragma once

#include <map>
#include <string>

#include "moe/common/status.h"

namespace moe::loadgen {

// GET `url` ("http://host:port/path"), waiting at most `timeout_ms` in total. Returns the body of
// a 200 response. INVALID_ARGUMENT for a malformed URL, UNAVAILABLE when the connection fails or
// times out, FAILED_PRECONDITION for a non-200 status (the message carries the status line).
StatusOr<std::string> HttpGet(const std::string& url, int timeout_ms);

// Sample values of the text exposition format, keyed by the series as written
// (`name` or `name{label="v",...}`); comment lines are skipped. Unparseable lines are ignored.
std::map<std::string, double> ParsePrometheusText(const std::string& text);

// The sum over every series of metric `name` (all label sets), or NOT_FOUND if it has none.
StatusOr<double> SumSeries(const std::map<std::string, double>& samples, const std::string& name);

// The counters of one histogram (or summary), summed over label sets.
struct HistogramTotals {
  double sum = 0;
  double count = 0;
};
// NOT_FOUND when `<name>_sum` or `<name>_count` is missing.
StatusOr<HistogramTotals> ReadHistogram(const std::map<std::string, double>& samples,
                                        const std::string& name);

}  // namespace moe::loadgen
