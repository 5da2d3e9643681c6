// The side HTTP server (civetweb) on the metrics port:
//   GET /metrics  Prometheus text exposition of Metrics' registry (200)
//   GET /healthz  200 "ok" while the process is live; 503 "<reason>" after SetLive(false, ...)
//   GET /readyz   200 "ready" only while ready (weights loaded and warmed, not draining);
//                 503 "<reason>" otherwise, e.g. "starting", "loading model", "draining"
// HEAD is answered like GET without a body; other methods get 405, other paths 404.
// Bodies are short text/plain lines so `curl` and probes show the reason directly.
//
// Life cycle in the daemon: Create() early (not ready, reason "starting") so probes and scrapes
// work while weights load; SetReady(true) after warm-up; SetReady(false, "draining") on SIGTERM;
// destroy last.
//
// Thread safety: SetReady/SetLive/ready()/port() may be called from any thread while civetweb's
// threads serve requests. The destructor stops civetweb and waits for handlers in flight (up to
// about 2 s: civetweb's accept loop polls in 2 s quanta); the Metrics passed in must outlive the
// server.
#pragma once

#include <memory>
#include <mutex>
#include <string>
#include <string_view>

#include "absl/base/thread_annotations.h"
#include "moe/common/status.h"
#include "moe/config/defaults.h"

struct mg_context;
struct mg_connection;

namespace moe::metrics {

class Metrics;

class HttpServer {
 public:
  struct Options {
    // IPv4 literal ("0.0.0.0", "127.0.0.1"); IPv6 literals ("::") only where civetweb was built
    // with IPv6 (Debian 12's is not: INVALID_ARGUMENT). Host names are not resolved.
    std::string bind_address = config::kDefaultBindAddress;
    // 0 picks a free port; port() tells which.
    int port = config::kDefaultMetricsPort;
    // civetweb worker threads (scrapes and probes are tiny; 2 keeps one free for probes).
    int num_threads = 2;
    // Required, not owned; must outlive the server.
    Metrics* metrics = nullptr;
  };

  // Starts listening. INVALID_ARGUMENT for a bad option; UNAVAILABLE naming the address and the
  // reason when the port cannot be bound (in use, no permission, bad address).
  static StatusOr<std::unique_ptr<HttpServer>> Create(const Options& options);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // The port actually bound (the ephemeral one when Options::port was 0).
  int port() const { return port_; }
  // "address:port" as bound, e.g. "127.0.0.1:9091" or "[::1]:9091".
  const std::string& address() const { return address_; }

  // Readiness for /readyz (and the moe_ready gauge). `reason` is the 503 body when not ready;
  // ignored when ready.
  void SetReady(bool ready, std::string_view reason = "");
  bool ready() const;
  // Liveness for /healthz: set false only for a fatal, unrecoverable state (the orchestrator
  // then restarts the process). Live from the start.
  void SetLive(bool live, std::string_view reason = "");

 private:
  explicit HttpServer(Metrics* metrics);
  static int Handle(mg_connection* conn, void* self);
  int HandleRequest(mg_connection* conn);

  Metrics* const metrics_;
  mg_context* context_ = nullptr;
  int port_ = 0;
  std::string address_;

  mutable std::mutex mu_;
  bool ready_ ABSL_GUARDED_BY(mu_) = false;
  std::string not_ready_reason_ ABSL_GUARDED_BY(mu_) = "starting";
  bool live_ ABSL_GUARDED_BY(mu_) = true;
  std::string not_live_reason_ ABSL_GUARDED_BY(mu_);
};

}  // namespace moe::metrics
