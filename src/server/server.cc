// Server: builds the gRPC server (services, health, reflection, limits, keepalive) and runs the
// lifecycle (not ready -> ready -> draining -> stopped).
#include "moe/server/server.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <spdlog/spdlog.h>

#include <mutex>

#include "core.h"
#include "kserve_service.h"
#include "moe/common/logging.h"
#include "native_service.h"

#ifndef MOE_VERSION
#define MOE_VERSION "0.0.0"
#endif

namespace moe::server {

class Server::Impl {
 public:
  explicit Impl(const Options& options)
      : options_(options),
        catalog_(options.model, options.server, options.scheduler,
                 options.backend->max_request_tokens()),
        core_(&catalog_, options.backend, options.metrics),
        native_(&core_),
        kserve_(&core_, MOE_VERSION) {}

  Status Start();
  void SetReady(bool ready);
  void Shutdown();

  const Options options_;
  Catalog catalog_;
  Core core_;
  NativeService native_;
  KserveService kserve_;
  int port_ = 0;
  std::string bound_;

 private:
  // Every health service name: "" (overall), the two APIs, the model and each KServe model.
  std::vector<std::string> HealthNames() const;
  void SetHealth(bool serving);

  std::mutex mu_;
  bool shut_down_ ABSL_GUARDED_BY(mu_) = false;
  std::unique_ptr<grpc::Server> server_;  // last: destroyed first
};

std::vector<std::string> Server::Impl::HealthNames() const {
  std::vector<std::string> names = {"", moe::v1::MoeService::service_full_name(),
                                    inference::GRPCInferenceService::service_full_name(),
                                    catalog_.model().name};
  for (const std::string& n : catalog_.KserveNames()) names.push_back(n);
  return names;
}

void Server::Impl::SetHealth(bool serving) {
  grpc::HealthCheckServiceInterface* health = server_->GetHealthCheckService();
  if (health == nullptr) return;
  for (const std::string& name : HealthNames()) health->SetServingStatus(name, serving);
}

Status Server::Impl::Start() {
  const config::ServerOptions& s = options_.server;
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  std::string host = s.address.find(':') != std::string::npos && s.address.front() != '['
                         ? absl::StrCat("[", s.address, "]")
                         : s.address;
  std::string target = absl::StrCat(host, ":", s.port);
  builder.AddListeningPort(target, grpc::InsecureServerCredentials(), &port_);
  builder.RegisterService(&native_);
  builder.RegisterService(&kserve_);
  int max_message = static_cast<int>(s.max_message_bytes);
  builder.SetMaxReceiveMessageSize(max_message);
  builder.SetMaxSendMessageSize(max_message);
  // A port another process holds must be an error, not a silent second listener.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, static_cast<int>(s.keepalive_time_ms));
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS,
                             static_cast<int>(s.keepalive_timeout_ms));
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS,
                             s.keepalive_permit_without_calls ? 1 : 0);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS,
                             static_cast<int>(s.keepalive_min_ping_interval_ms));
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  server_ = builder.BuildAndStart();
  if (server_ == nullptr || port_ == 0) {
    server_.reset();
    return absl::UnavailableError(absl::StrCat(
        "cannot listen on ", target,
        " (address in use or not available); choose another with --port / server.port"));
  }
  bound_ = absl::StrCat(host, ":", port_);
  SetHealth(false);
  log::Get("server")->info(
      "gRPC listening on {} (moe.v1.MoeService, inference.GRPCInferenceService, "
      "grpc.health.v1.Health, reflection); max message {} bytes",
      bound_, s.max_message_bytes);
  return absl::OkStatus();
}

void Server::Impl::SetReady(bool ready) {
  std::lock_guard<std::mutex> lock(mu_);
  if (shut_down_) return;
  core_.SetReady(ready);
  SetHealth(ready);
  log::Get("server")->info("health: {}", ready ? "SERVING" : "NOT_SERVING");
}

void Server::Impl::Shutdown() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (shut_down_) return;
    shut_down_ = true;
    core_.BeginDrain();
    SetHealth(false);
  }
  auto drain = std::chrono::milliseconds(options_.server.drain_timeout_ms);
  Clock::time_point deadline = Clock::now() + drain;
  log::Get("server")->info(
      "draining: health NOT_SERVING, new requests refused; {} in flight, up to {} ms",
      core_.inflight(), options_.server.drain_timeout_ms);
  // The backend first: it flushes its queue at once (no batching delays) and answers every
  // accepted request; then the last callbacks return.
  options_.backend->Drain(deadline);
  bool idle = core_.WaitIdle(std::max(deadline, Clock::now() + std::chrono::seconds(5)));
  if (!idle)
    log::Get("server")->warn("drain: {} requests still in flight at the deadline",
                             core_.inflight());
  // Idle streams and calls still being written get a moment, then are cancelled.
  server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
  server_->Wait();
  log::Get("server")->info("gRPC server stopped");
}

StatusOr<std::unique_ptr<Server>> Server::Create(const Options& options) {
  if (options.backend == nullptr) return absl::InvalidArgumentError("Server: backend is null");
  if (options.model.name.empty()) return absl::InvalidArgumentError("Server: model name is empty");
  if (options.model.spec.moe_layers.empty() || options.model.spec.hidden <= 0) {
    return absl::InvalidArgumentError("Server: the model has no MoE layers");
  }
  auto impl = std::make_unique<Impl>(options);
  MOE_RETURN_IF_ERROR(impl->Start());
  return std::unique_ptr<Server>(new Server(std::move(impl)));
}

Server::Server(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Server::~Server() { Shutdown(); }
int Server::port() const { return impl_->port_; }
std::string Server::address() const { return impl_->bound_; }
void Server::SetReady(bool ready) { impl_->SetReady(ready); }
bool Server::ready() const { return impl_->core_.ready(); }
void Server::Shutdown() { impl_->Shutdown(); }
int64_t Server::inflight() const { return impl_->core_.inflight(); }

}  // namespace moe::server
