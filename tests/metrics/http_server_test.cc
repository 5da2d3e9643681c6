// HttpServer: /metrics, /healthz and /readyz over a real loopback socket on an ephemeral port;
// readiness and liveness transitions; bind failures come back as statuses.
#include "moe/metrics/http_server.h"

#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <thread>
#include <vector>

#include "civetweb.h"
#include "metrics/http_get.h"
#include "moe/metrics/metrics.h"

namespace moe::metrics {
namespace {

using testing::HttpGet;
using testing::HttpRequest;

// One server for the suite (stopping civetweb takes up to 2 s); each test starts from
// "live, not ready (starting)".
class HttpServerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto metrics = Metrics::Create({});
    ASSERT_TRUE(metrics.ok()) << metrics.status();
    metrics_ = std::move(metrics).value().release();
    auto server = HttpServer::Create({.bind_address = "127.0.0.1", .port = 0, .metrics = metrics_});
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(server).value().release();
    ASSERT_GT(server_->port(), 0);
  }
  static void TearDownTestSuite() {
    delete server_;
    delete metrics_;
    server_ = nullptr;
    metrics_ = nullptr;
  }
  void SetUp() override {
    ASSERT_NE(server_, nullptr);
    server_->SetLive(true);
    server_->SetReady(false, "starting");
  }

  static Metrics* metrics_;
  static HttpServer* server_;
};
Metrics* HttpServerTest::metrics_ = nullptr;
HttpServer* HttpServerTest::server_ = nullptr;

TEST_F(HttpServerTest, MetricsEndpointServesTheRegistry) {
  ASSERT_TRUE(metrics_->RegisterModel("served").ok());
  metrics_->RecordRequest("served", absl::StatusCode::kOk, 0.003);
  metrics_->RecordRequest("served", absl::StatusCode::kOk, 0.004);
  const auto r = HttpGet(server_->port(), "/metrics");
  ASSERT_EQ(r.status, 200) << r.headers;
  EXPECT_NE(r.headers.find("text/plain; version=0.0.4"), std::string::npos) << r.headers;
  EXPECT_NE(r.body.find("moe_requests_total{code=\"OK\",model=\"served\"} 2"), std::string::npos)
      << r.body;
  EXPECT_NE(r.body.find("# TYPE moe_build_info gauge"), std::string::npos);
  EXPECT_NE(r.body.find("moe_request_duration_seconds_count{model=\"served\"} 2"),
            std::string::npos);
}

TEST_F(HttpServerTest, AddressNamesTheBoundPort) {
  EXPECT_EQ(server_->address(), "127.0.0.1:" + std::to_string(server_->port()));
}

TEST_F(HttpServerTest, ReadinessTransitions) {
  // Starts live but not ready.
  EXPECT_EQ(HttpGet(server_->port(), "/healthz").status, 200);
  auto r = HttpGet(server_->port(), "/readyz");
  EXPECT_EQ(r.status, 503);
  EXPECT_EQ(r.body, "starting\n");
  EXPECT_FALSE(server_->ready());

  server_->SetReady(false, "loading model");
  r = HttpGet(server_->port(), "/readyz");
  EXPECT_EQ(r.status, 503);
  EXPECT_EQ(r.body, "loading model\n");

  server_->SetReady(true);
  r = HttpGet(server_->port(), "/readyz");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, "ready\n");
  EXPECT_TRUE(server_->ready());
  EXPECT_NE(HttpGet(server_->port(), "/metrics").body.find("\nmoe_ready 1"), std::string::npos);

  server_->SetReady(false, "draining");
  r = HttpGet(server_->port(), "/readyz");
  EXPECT_EQ(r.status, 503);
  EXPECT_EQ(r.body, "draining\n");
  EXPECT_NE(HttpGet(server_->port(), "/metrics").body.find("\nmoe_ready 0"), std::string::npos);
  // Draining is still live: the orchestrator must not restart a draining process.
  EXPECT_EQ(HttpGet(server_->port(), "/healthz").status, 200);
}

TEST_F(HttpServerTest, LivenessFailureFailsBothProbes) {
  server_->SetReady(true);
  server_->SetLive(false, "CUDA context lost");
  auto r = HttpGet(server_->port(), "/healthz");
  EXPECT_EQ(r.status, 503);
  EXPECT_EQ(r.body, "CUDA context lost\n");
  r = HttpGet(server_->port(), "/readyz");
  EXPECT_EQ(r.status, 503);
  EXPECT_EQ(r.body, "CUDA context lost\n");
  server_->SetLive(true);
  EXPECT_EQ(HttpGet(server_->port(), "/healthz").status, 200);
  EXPECT_EQ(HttpGet(server_->port(), "/readyz").status, 200);
}

TEST_F(HttpServerTest, UnknownPathsAndMethods) {
  EXPECT_EQ(HttpGet(server_->port(), "/").status, 404);
  EXPECT_EQ(HttpGet(server_->port(), "/metricsx").status, 404);
  EXPECT_EQ(HttpGet(server_->port(), "/readyz/extra").status, 404);
  EXPECT_EQ(HttpRequest(server_->port(), "POST", "/metrics").status, 405);
  const auto head = HttpRequest(server_->port(), "HEAD", "/healthz");
  EXPECT_EQ(head.status, 200);
  EXPECT_TRUE(head.body.empty());
}

TEST_F(HttpServerTest, ConcurrentScrapesWhileRecording) {
  ASSERT_TRUE(metrics_->RegisterModel("tiny").ok());
  std::atomic<bool> stop{false};
  std::thread recorder([&] {
    while (!stop.load()) metrics_->RecordRequest("tiny", absl::StatusCode::kOk, 1e-4);
  });
  std::vector<std::thread> scrapers;
  std::atomic<int> ok{0};
  for (int t = 0; t < 3; ++t) {
    scrapers.emplace_back([&] {
      for (int i = 0; i < 10; ++i) {
        if (HttpGet(server_->port(), "/metrics").status == 200) ok.fetch_add(1);
        server_->SetReady(i % 2 == 0, "flapping");
      }
    });
  }
  for (auto& s : scrapers) s.join();
  stop.store(true);
  recorder.join();
  EXPECT_EQ(ok.load(), 30);
}

TEST(HttpServerCreateTest, PortInUseIsAStatus) {
  auto metrics = Metrics::Create({});
  ASSERT_TRUE(metrics.ok());
  auto first =
      HttpServer::Create({.bind_address = "127.0.0.1", .port = 0, .metrics = metrics->get()});
  ASSERT_TRUE(first.ok()) << first.status();
  auto second = HttpServer::Create(
      {.bind_address = "127.0.0.1", .port = (*first)->port(), .metrics = metrics->get()});
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(second.status().message().find(std::to_string((*first)->port())), std::string::npos)
      << second.status();
  // The first server still serves.
  EXPECT_EQ(HttpGet((*first)->port(), "/healthz").status, 200);
}

TEST(HttpServerCreateTest, BadOptionsAreStatuses) {
  auto metrics = Metrics::Create({});
  ASSERT_TRUE(metrics.ok());
  EXPECT_EQ(HttpServer::Create({.bind_address = "127.0.0.1", .port = 0, .metrics = nullptr})
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(HttpServer::Create({.bind_address = "localhost", .port = 0, .metrics = metrics->get()})
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(
      HttpServer::Create({.bind_address = "127.0.0.1", .port = 70000, .metrics = metrics->get()})
          .status()
          .code(),
      absl::StatusCode::kInvalidArgument);
  // An address this host does not have cannot be bound.
  auto foreign = HttpServer::Create(
      {.bind_address = "192.0.2.1", .port = 0, .metrics = metrics->get()});  // TEST-NET-1
  EXPECT_EQ(foreign.status().code(), absl::StatusCode::kUnavailable) << foreign.status();
}

TEST(HttpServerCreateTest, Ipv6Address) {
  auto metrics = Metrics::Create({});
  ASSERT_TRUE(metrics.ok());
  if (mg_check_feature(8) == 0) {
    // civetweb without IPv6 (Debian 12): a clear INVALID_ARGUMENT, not a bind failure.
    auto server = HttpServer::Create({.bind_address = "::1", .port = 0, .metrics = metrics->get()});
    EXPECT_EQ(server.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(server.status().message().find("IPv6"), std::string::npos) << server.status();
    return;
  }
  // Skip where the host has no IPv6 loopback (some containers).
  const int fd = socket(AF_INET6, SOCK_STREAM, 0);
  sockaddr_in6 addr{};
  addr.sin6_family = AF_INET6;
  addr.sin6_addr = in6addr_loopback;
  const bool have_v6 = fd >= 0 && bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  if (fd >= 0) close(fd);
  if (!have_v6) GTEST_SKIP() << "no IPv6 loopback on this host";
  auto server = HttpServer::Create({.bind_address = "::1", .port = 0, .metrics = metrics->get()});
  ASSERT_TRUE(server.ok()) << server.status();
  EXPECT_EQ((*server)->address(), "[::1]:" + std::to_string((*server)->port()));
}

}  // namespace
}  // namespace moe::metrics
