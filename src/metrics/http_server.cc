#include "moe/metrics/http_server.h"

#include <arpa/inet.h>

#include <array>
#include <cstring>
#include <mutex>
#include <string>

#include "civetweb.h"
#include "moe/common/logging.h"
#include "moe/metrics/metrics.h"
#include "spdlog/logger.h"

namespace moe::metrics {
namespace {

constexpr char kTextPlain[] = "text/plain; charset=utf-8";
// The Prometheus text exposition format, version 0.0.4.
constexpr char kPrometheusText[] = "text/plain; version=0.0.4; charset=utf-8";

// civetweb's own messages (bind failures, protocol errors) go to our "http" logger, not stderr.
int LogCivetMessage(const mg_connection*, const char* message) {
  moe::log::Get("http")->debug("civetweb: {}", message);
  return 1;
}

void SendResponse(mg_connection* conn, bool head_only, int status, const char* content_type,
                  std::string_view body) {
  mg_printf(conn,
            "HTTP/1.1 %d %s\r\n"
            "Content-Type: %s\r\n"
            "Content-Length: %zu\r\n"
            "Cache-Control: no-store\r\n"
            "Connection: close\r\n\r\n",
            status, mg_get_response_code_text(conn, status), content_type, body.size());
  if (!head_only && !body.empty()) mg_write(conn, body.data(), body.size());
}

// IPv4 / IPv6 literal check, so a host name or typo fails early with a clear message.
bool IsIpLiteral(const std::string& address, bool* is_v6) {
  std::array<unsigned char, 16> buf{};
  if (inet_pton(AF_INET, address.c_str(), buf.data()) == 1) {
    *is_v6 = false;
    return true;
  }
  if (inet_pton(AF_INET6, address.c_str(), buf.data()) == 1) {
    *is_v6 = true;
    return true;
  }
  return false;
}

}  // namespace

HttpServer::HttpServer(Metrics* metrics) : metrics_(metrics) {}

StatusOr<std::unique_ptr<HttpServer>> HttpServer::Create(const Options& options) {
  if (options.metrics == nullptr) {
    return absl::InvalidArgumentError("metrics HTTP server: Options::metrics is null");
  }
  if (options.port < 0 || options.port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("metrics HTTP server: port ", options.port, " is outside 0..65535"));
  }
  if (options.num_threads < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("metrics HTTP server: num_threads ", options.num_threads, " must be >= 1"));
  }
  bool is_v6 = false;
  if (!IsIpLiteral(options.bind_address, &is_v6)) {
    return absl::InvalidArgumentError(
        absl::StrCat("metrics HTTP server: bind address '", options.bind_address,
                     "' is not an IPv4 or IPv6 literal (e.g. 0.0.0.0, 127.0.0.1, ::)"));
  }
  static std::once_flag init_once;
  std::call_once(init_once, [] { mg_init_library(0); });
  constexpr unsigned kFeatureIpv6 = 8;  // mg_check_feature() bit
  if (is_v6 && mg_check_feature(kFeatureIpv6) == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "metrics HTTP server: bind address '", options.bind_address,
        "' is IPv6, but this civetweb build has no IPv6 support (Debian's has none); use an "
        "IPv4 address such as 0.0.0.0 or 127.0.0.1"));
  }

  const std::string host =
      is_v6 ? absl::StrCat("[", options.bind_address, "]") : options.bind_address;
  const std::string listening = absl::StrCat(host, ":", options.port);
  const std::string threads = std::to_string(options.num_threads);
  const char* config[] = {
      "listening_ports", listening.c_str(),   "num_threads", threads.c_str(), "request_timeout_ms",
      "10000",           "enable_keep_alive", "no",          nullptr};

  std::unique_ptr<HttpServer> server(new HttpServer(options.metrics));
  mg_callbacks callbacks{};
  callbacks.log_message = &LogCivetMessage;
  mg_init_data init{};
  init.callbacks = &callbacks;
  init.user_data = server.get();
  init.configuration_options = config;
  unsigned error_code = 0;
  char error_text[256] = {0};
  mg_error_data error{};
  error.code = &error_code;
  error.text = error_text;
  error.text_buffer_size = sizeof(error_text);

  server->context_ = mg_start2(&init, &error);
  if (server->context_ == nullptr) {
    return absl::UnavailableError(absl::StrCat(
        "metrics HTTP server: cannot listen on ", listening, ": ",
        error_text[0] != '\0' ? error_text : "unknown civetweb error",
        " (is another process using the port? set server.metrics_port / --metrics-port)"));
  }
  // One handler for every path; it dispatches on the exact path.
  mg_set_request_handler(server->context_, "/", &HttpServer::Handle, server.get());

  std::array<mg_server_port, 4> ports{};
  const int n = mg_get_server_ports(server->context_, static_cast<int>(ports.size()), ports.data());
  if (n < 1 || ports[0].port <= 0) {
    return absl::InternalError(absl::StrCat("metrics HTTP server: listening on ", listening,
                                            " but civetweb reports no bound port"));
  }
  server->port_ = ports[0].port;
  server->address_ = absl::StrCat(host, ":", server->port_);
  server->metrics_->SetReady(false);  // in step with /readyz: not ready until SetReady(true)
  moe::log::Get("http")->info("serving /metrics /healthz /readyz on http://{}", server->address_);
  return server;
}

HttpServer::~HttpServer() {
  if (context_ != nullptr) mg_stop(context_);  // waits for handlers in flight
}

void HttpServer::SetReady(bool ready, std::string_view reason) {
  {
    std::lock_guard lock(mu_);
    ready_ = ready;
    not_ready_reason_ = ready ? "" : (reason.empty() ? "not ready" : std::string(reason));
  }
  metrics_->SetReady(ready);
}

bool HttpServer::ready() const {
  std::lock_guard lock(mu_);
  return ready_;
}

void HttpServer::SetLive(bool live, std::string_view reason) {
  std::lock_guard lock(mu_);
  live_ = live;
  not_live_reason_ = live ? "" : (reason.empty() ? "not live" : std::string(reason));
}

int HttpServer::Handle(mg_connection* conn, void* self) {
  return static_cast<HttpServer*>(self)->HandleRequest(conn);
}

int HttpServer::HandleRequest(mg_connection* conn) {
  const mg_request_info* info = mg_get_request_info(conn);
  const std::string_view method = info->request_method ? info->request_method : "";
  const std::string_view path = info->local_uri ? info->local_uri : "";
  const bool head = method == "HEAD";
  if (method != "GET" && !head) {
    SendResponse(conn, false, 405, kTextPlain, "method not allowed (GET or HEAD)\n");
    return 405;
  }
  if (path == config::kMetricsPath) {
    SendResponse(conn, head, 200, kPrometheusText, metrics_->Serialize());
    return 200;
  }
  if (path == config::kHealthzPath || path == config::kReadyzPath) {
    const bool readyz = path == config::kReadyzPath;
    bool ok = false;
    std::string body;
    {
      std::lock_guard lock(mu_);
      ok = readyz ? ready_ && live_ : live_;
      if (ok) {
        body = readyz ? "ready\n" : "ok\n";
      } else {
        body = absl::StrCat(live_ ? not_ready_reason_ : not_live_reason_, "\n");
      }
    }
    const int status = ok ? 200 : 503;
    SendResponse(conn, head, status, kTextPlain, body);
    return status;
  }
  SendResponse(conn, head, 404, kTextPlain, "not found (try /metrics, /healthz, /readyz)\n");
  return 404;
}

}  // namespace moe::metrics
