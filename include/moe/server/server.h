// The gRPC front end: the native moe.v1.MoeService, KServe v2 inference.GRPCInferenceService,
// grpc.health.v1.Health and server reflection on one port, over a Backend (the scheduler).
//
// Lifecycle: Create() binds the port and starts serving with health NOT_SERVING and inference
// refused (UNAVAILABLE) until SetReady(true) (weights loaded and warmed up). Shutdown() drains:
// health NOT_SERVING, new requests refused with UNAVAILABLE, accepted ones finish (up to the drain
// timeout), then the port closes. Every accepted request is answered exactly once.
//
// Layer addressing (docs/API.md): native requests name the model and the layer; KServe models are
// one per MoE layer, named "<model>.layer<L>".
//
// Thread safety: every method may be called from any thread; Shutdown() is idempotent.
#pragma once

#include <memory>
#include <string>

#include "moe/common/status.h"
#include "moe/config/options.h"
#include "moe/model/spec.h"
#include "moe/server/backend.h"

namespace moe::metrics {
class Metrics;
}  // namespace moe::metrics

namespace moe::server {

// What is being served.
struct ServedModel {
  std::string name;  // served model name, e.g. "moe-tiny"
  MoeSpec spec;
  std::string engine = "cpu";  // engine name reported to clients
  int engine_slots = 1;        // concurrent batches
};

class Server {
 public:
  struct Options {
    config::ServerOptions server;        // address, port, message size, keepalive, drain timeout
    config::SchedulerOptions scheduler;  // reported limits and dynamic batching settings
    ServedModel model;
    Backend* backend = nullptr;           // not owned; outlives the Server
    metrics::Metrics* metrics = nullptr;  // optional, not owned; outlives the Server
  };

  // Builds and starts the gRPC server. UNAVAILABLE "cannot listen on ADDRESS:PORT" when the port
  // cannot be bound; INVALID_ARGUMENT for bad options.
  static StatusOr<std::unique_ptr<Server>> Create(const Options& options);
  ~Server();  // Shutdown() if not done yet.
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // The bound gRPC port (the chosen one when options.server.port was 0).
  int port() const;
  // "address:port" as bound.
  std::string address() const;

  // Ready = weights loaded and warmed up: health SERVING, ServerReady/ModelReady true, requests
  // accepted. Ignored once Shutdown() has begun.
  void SetReady(bool ready);
  bool ready() const;

  // Drains and stops (see the top of this file). Returns when the port is closed. The backend is
  // drained too (Backend::Drain) with the same deadline.
  void Shutdown();

  // Requests accepted and not yet answered.
  int64_t inflight() const;

  class Impl;

 private:
  explicit Server(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace moe::server
