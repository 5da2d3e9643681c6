// Logging set-up (spdlog) and per-request ids.
//
// Start-up (once, in main, before other threads log):
//   MOE_RETURN_IF_ERROR(moe::log::Setup({.level = flag_level, .format = moe::log::Format::kJson}));
// then everywhere:
//   moe::log::Get("scheduler")->info("dispatched {} tokens", n);   // or spdlog::info(...)
// Every logger shares one sink (stderr unless Options::sink), one level and one format.
//
// Text lines:  2026-11-28T07:00:00.123456Z I [scheduler] [req=4bf92f35...] dispatched 12 tokens
// JSON lines:  {"ts":"2026-11-28T07:00:00.123456Z","level":"info","logger":"scheduler",
//               "msg":"dispatched 12 tokens","request_id":"4bf92f35..."}   (one object per line;
//               request_id only when the logging thread has one, see ScopedRequestId)
//
// Request ids: the gRPC front end calls RequestIdFromMetadata() with the client's `x-request-id`
// and `traceparent` metadata (empty when absent), puts the result in a ScopedRequestId on the
// thread handling the request, echoes it to the client, and appends it to error messages with
// AnnotateWithRequestId(). Work that hops threads (scheduler, workers) carries the id in its
// request object and opens its own ScopedRequestId where it logs about that request.
//
// Thread safety: Setup() must not race with itself; everything else may be called from any thread
// (spdlog loggers and sinks are the thread-safe `_mt` kind; the current request id is per thread).
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "moe/common/status.h"
#include "spdlog/common.h"

namespace spdlog {
class logger;
}  // namespace spdlog

namespace moe::log {

enum class Format { kText, kJson };

struct Options {
  // trace, debug, info, warn (or warning), error, critical, off. Empty: the MOE_LOG environment
  // variable when set, else "info". A level given here (the --log-level flag / logging.level
  // key) wins over MOE_LOG.
  std::string level;
  Format format = Format::kText;
  // Where lines go; null = stderr. Tests pass an ostream or ring-buffer sink.
  spdlog::sink_ptr sink;
};

// Applies `options` to every logger, existing and future, and makes Get("moe") spdlog's default
// logger. May be called again (e.g. tests); INVALID_ARGUMENT for an unknown level (naming MOE_LOG
// when the bad value came from there); nothing changes on error.
absl::Status Setup(const Options& options);

// "trace" ... "off" (case-insensitive; "warning" = "warn", "err" = "error"). INVALID_ARGUMENT else.
StatusOr<spdlog::level::level_enum> ParseLevel(std::string_view name);
// "text" or "json". INVALID_ARGUMENT else.
StatusOr<Format> ParseFormat(std::string_view name);

// The logger called `name` (e.g. "server", "scheduler", "metrics"), created on first use with the
// shared sink, level and format. Never null.
std::shared_ptr<spdlog::logger> Get(std::string_view name);

// ---- Request ids ---------------------------------------------------------------------------

// The request id for one request: the client's `x-request-id` when it is a valid id (1..128
// characters of [A-Za-z0-9._:-], so it cannot inject into logs), else the trace id of a valid
// W3C `traceparent` (version-traceid-parentid-flags), else NewRequestId(). Pass "" for absent
// metadata.
std::string RequestIdFromMetadata(std::string_view traceparent, std::string_view x_request_id);
// A fresh id: 32 lowercase hex digits (a valid W3C trace id, so it can seed a traceparent).
std::string NewRequestId();
// Whether `id` is acceptable as a client-given x-request-id (see RequestIdFromMetadata).
bool IsValidRequestId(std::string_view id);
// The 32-hex trace id of a valid W3C traceparent header value; nullopt when malformed, when the
// version is "ff", or when the trace id or parent id is all zeros.
std::optional<std::string> TraceIdFromTraceparent(std::string_view traceparent);

// Sets the calling thread's current request id (shown in its log lines) for this object's
// lifetime, restoring the previous one after. Not movable; create it on the stack.
class ScopedRequestId {
 public:
  explicit ScopedRequestId(std::string_view request_id);
  ~ScopedRequestId();
  ScopedRequestId(const ScopedRequestId&) = delete;
  ScopedRequestId& operator=(const ScopedRequestId&) = delete;

 private:
  std::string previous_;
};

// The calling thread's current request id; empty when none.
std::string_view CurrentRequestId();

// `status` with " [request_id=<id>]" appended to its message (code and payloads kept). OK statuses
// and an empty id are returned unchanged.
absl::Status AnnotateWithRequestId(const absl::Status& status, std::string_view request_id);

}  // namespace moe::log
