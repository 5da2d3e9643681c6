// Tests of the load generator: request-size parsing, percentiles, Prometheus parsing and HTTP
// scraping, the engine baseline interpolation, the report, and both load modes end to end against
// an in-process echo MoeService (fake_moe_service.h). No timing is asserted.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <map>
#include <thread>

#include "engine_baseline.h"
#include "fake_moe_service.h"
#include "load_driver.h"
#include "prom_scrape.h"
#include "report.h"
#include "stats.h"

namespace moe::loadgen {
namespace {

TEST(TokenDistribution, FixedListAndRange) {
  std::mt19937_64 rng(7);
  auto fixed = TokenDistribution::Parse("16");
  ASSERT_TRUE(fixed.ok()) << fixed.status();
  for (int i = 0; i < 20; ++i) EXPECT_EQ(fixed->Sample(rng), 16);
  EXPECT_EQ(fixed->max_tokens(), 16);
  EXPECT_DOUBLE_EQ(fixed->mean_tokens(), 16);

  auto list = TokenDistribution::Parse("1,4,16");
  ASSERT_TRUE(list.ok()) << list.status();
  std::map<int64_t, int> seen;
  for (int i = 0; i < 300; ++i) ++seen[list->Sample(rng)];
  EXPECT_EQ(seen.size(), 3u);
  EXPECT_GT(seen[1], 0);
  EXPECT_GT(seen[4], 0);
  EXPECT_GT(seen[16], 0);
  EXPECT_EQ(list->max_tokens(), 16);
  EXPECT_DOUBLE_EQ(list->mean_tokens(), 7);

  auto range = TokenDistribution::Parse("2-5,64");
  ASSERT_TRUE(range.ok()) << range.status();
  seen.clear();
  for (int i = 0; i < 1000; ++i) ++seen[range->Sample(rng)];
  EXPECT_EQ(seen.size(), 5u);
  EXPECT_EQ(seen.begin()->first, 2);
  EXPECT_EQ(seen.rbegin()->first, 64);
  EXPECT_EQ(range->max_tokens(), 64);
}

TEST(TokenDistribution, RejectsBadSpecs) {
  for (const char* bad : {"", "0", "abc", "5-3", "1,,2", "-3", "4-x"}) {
    EXPECT_FALSE(TokenDistribution::Parse(bad).ok()) << bad;
  }
}

TEST(Summarize, NearestRankPercentiles) {
  std::vector<double> v;
  for (int i = 100; i >= 1; --i) v.push_back(i);
  LatencySummary s = Summarize(v);
  EXPECT_EQ(s.count, 100);
  EXPECT_DOUBLE_EQ(s.p50, 50);
  EXPECT_DOUBLE_EQ(s.p90, 90);
  EXPECT_DOUBLE_EQ(s.p99, 99);
  EXPECT_DOUBLE_EQ(s.max, 100);
  EXPECT_DOUBLE_EQ(s.mean, 50.5);
  std::vector<double> one = {3.5};
  s = Summarize(one);
  EXPECT_DOUBLE_EQ(s.p50, 3.5);
  EXPECT_DOUBLE_EQ(s.p99, 3.5);
  std::vector<double> none;
  s = Summarize(none);
  EXPECT_EQ(s.count, 0);
  EXPECT_DOUBLE_EQ(s.max, 0);
}

constexpr char kExposition[] = R"(# HELP moe_batch_size_tokens Tokens in each dispatched batch.
# TYPE moe_batch_size_tokens histogram
moe_batch_size_tokens_bucket{le="1"} 3
moe_batch_size_tokens_bucket{le="+Inf"} 10
moe_batch_size_tokens_sum 123.5
moe_batch_size_tokens_count 10
moe_requests_total{model="m",code="OK"} 7
moe_requests_total{model="m",code="UNAVAILABLE"} 2 1700000000000
moe_requests_total_extra 100
weird_line_without_value
nan_metric NaN
)";

TEST(Prometheus, ParsesSamplesAndSumsLabelSets) {
  std::map<std::string, double> samples = ParsePrometheusText(kExposition);
  EXPECT_DOUBLE_EQ(samples.at("moe_batch_size_tokens_bucket{le=\"1\"}"), 3);
  EXPECT_EQ(samples.count("nan_metric"), 0u);
  auto requests = SumSeries(samples, "moe_requests_total");
  ASSERT_TRUE(requests.ok()) << requests.status();
  EXPECT_DOUBLE_EQ(*requests, 9);  // not moe_requests_total_extra
  auto h = ReadHistogram(samples, "moe_batch_size_tokens");
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_DOUBLE_EQ(h->sum, 123.5);
  EXPECT_DOUBLE_EQ(h->count, 10);
  EXPECT_EQ(ReadHistogram(samples, "moe_missing").status().code(), absl::StatusCode::kNotFound);
}

// Answers each connection on a loopback socket with `response`, `connections` times.
class OneShotHttpServer {
 public:
  OneShotHttpServer(std::string response, int connections) : response_(std::move(response)) {
    fd_ = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = 0;
    EXPECT_EQ(bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
    EXPECT_EQ(listen(fd_, 4), 0);
    socklen_t len = sizeof(addr);
    getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
    thread_ = std::thread([this, connections] {
      for (int i = 0; i < connections; ++i) {
        int c = accept(fd_, nullptr, nullptr);
        if (c < 0) return;
        char buf[4096];
        std::string request;
        while (request.find("\r\n\r\n") == std::string::npos) {
          ssize_t n = recv(c, buf, sizeof(buf), 0);
          if (n <= 0) break;
          request.append(buf, static_cast<size_t>(n));
        }
        requests_.push_back(request);
        send(c, response_.data(), response_.size(), MSG_NOSIGNAL);
        close(c);
      }
    });
  }
  ~OneShotHttpServer() {
    thread_.join();
    close(fd_);
  }
  std::string url(const std::string& path) const {
    return "http://127.0.0.1:" + std::to_string(port_) + path;
  }
  std::vector<std::string> requests_;

 private:
  std::string response_;
  int fd_ = -1;
  int port_ = 0;
  std::thread thread_;
};

TEST(HttpGet, PlainChunkedAndErrorResponses) {
  {
    OneShotHttpServer server("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nhello metrics\n",
                             1);
    auto body = HttpGet(server.url("/metrics"), 5000);
    ASSERT_TRUE(body.ok()) << body.status();
    EXPECT_EQ(*body, "hello metrics\n");
  }
  {
    OneShotHttpServer server(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n7\r\n "
        "world\n\r\n0\r\n\r\n",
        1);
    auto body = HttpGet(server.url("/metrics"), 5000);
    ASSERT_TRUE(body.ok()) << body.status();
    EXPECT_EQ(*body, "hello world\n");
  }
  {
    OneShotHttpServer server("HTTP/1.1 503 Service Unavailable\r\n\r\nnot ready", 1);
    auto body = HttpGet(server.url("/readyz"), 5000);
    EXPECT_EQ(body.status().code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_NE(std::string(body.status().message()).find("503"), std::string::npos);
  }
  EXPECT_EQ(HttpGet("https://x/", 100).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(EngineBaseline, InterpolatesLinearlyInBatchSize) {
  auto b = EngineBaseline::FromPoints({{4, 160}, {1, 100}, {2, 120}});
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_DOUBLE_EQ(b->UsPerForward(1), 100);
  EXPECT_DOUBLE_EQ(b->UsPerForward(0.5), 100);  // below the smallest: its time
  EXPECT_DOUBLE_EQ(b->UsPerForward(3), 140);
  EXPECT_DOUBLE_EQ(b->UsPerForward(1.5), 110);
  EXPECT_DOUBLE_EQ(b->UsPerForward(8), 320);  // above the largest: its time per token
  EXPECT_DOUBLE_EQ(b->TokensPerSecond(2), 2 / 120e-6);
  EXPECT_FALSE(EngineBaseline::FromPoints({}).ok());
  EXPECT_FALSE(EngineBaseline::FromPoints({{1, 10}, {1, 12}}).ok());
  EXPECT_FALSE(EngineBaseline::FromPoints({{1, 0}}).ok());
  auto two_slots = EngineBaseline::FromPoints({{1, 100}, {2, 120}}, 2);
  ASSERT_TRUE(two_slots.ok());
  EXPECT_DOUBLE_EQ(two_slots->TokensPerSecond(2), 2 * 2 / 120e-6);
}

TEST(EngineBaseline, ReadsEngineBenchJsonLines) {
  const std::string path = testing::TempDir() + "/engine_baseline_test.jsonl";
  {
    std::ofstream out(path);
    out << R"({"bench":"engine","batch_tokens":1,"us_per_forward":50.0})"
        << "\n";
    out << R"({"note":"other line"})"
        << "\n\n";
    out << R"({"bench":"engine","batch_tokens":8,"us_per_forward":120})"
        << "\n";
  }
  auto b = EngineBaseline::ReadJsonLines(path);
  ASSERT_TRUE(b.ok()) << b.status();
  ASSERT_EQ(b->points().size(), 2u);
  EXPECT_DOUBLE_EQ(b->UsPerForward(8), 120);
  EXPECT_EQ(b->slots(), 1);
  {
    std::ofstream out(path);
    out << R"({"batch_tokens":1,"us_per_forward":50.0,"slots":2})"
        << "\n";
    out << R"({"batch_tokens":2,"us_per_forward":60.0,"slots":2})"
        << "\n";
  }
  auto two = EngineBaseline::ReadJsonLines(path);
  ASSERT_TRUE(two.ok()) << two.status();
  EXPECT_EQ(two->slots(), 2);
  {
    std::ofstream out(path);
    out << R"({"batch_tokens":1,"us_per_forward":50.0,"slots":2})"
        << "\n";
    out << R"({"batch_tokens":2,"us_per_forward":60.0})"
        << "\n";
  }
  EXPECT_FALSE(EngineBaseline::ReadJsonLines(path).ok());
  std::remove(path.c_str());
  EXPECT_EQ(EngineBaseline::ReadJsonLines(path).status().code(), absl::StatusCode::kNotFound);
}

TEST(Report, ThroughputErrorsBatchAndEfficiency) {
  LoadResult result;
  result.window_start_ns = 0;
  result.window_end_ns = 2'000'000'000;  // 2 s
  // 4 OK requests of 10 tokens ending inside the window, 1 ending after it, 2 errors.
  for (int i = 0; i < 5; ++i) {
    Sample s;
    s.start_ns = i * 100'000'000;
    s.end_ns = s.start_ns + (i == 4 ? 2'500'000'000 : 1'000'000);  // 1 ms (last: 2.5 s)
    s.tokens = 10;
    s.server_batches = 2;
    result.measured.push_back(s);
  }
  result.measured.push_back({0, 1, 3, 14, 0, 0, 0});
  result.measured.push_back({0, 1, 3, kBadResponseCode, 0, 0, 0});
  MetricsDelta metrics;
  metrics.batches = 4;
  metrics.batch_tokens_sum = 40;  // mean 10 tokens per batch
  metrics.compute_seconds = 0.5;
  metrics.compute_count = 4;
  auto baseline = EngineBaseline::FromPoints({{1, 100}, {10, 1000}});  // 10k tokens/s at 10
  ASSERT_TRUE(baseline.ok());
  RunConfig config;
  config.mode = "closed";
  Report r = BuildReport(config, std::move(result), metrics, *baseline);
  EXPECT_EQ(r.requests, 7);
  EXPECT_EQ(r.ok, 5);
  EXPECT_EQ(r.errors.at("UNAVAILABLE"), 1);
  EXPECT_EQ(r.errors.at("BAD_RESPONSE"), 1);
  EXPECT_DOUBLE_EQ(r.window_s, 2.0);
  EXPECT_DOUBLE_EQ(r.requests_per_s, 2.0);  // 4 completions in 2 s
  EXPECT_DOUBLE_EQ(r.tokens_per_s, 20.0);
  EXPECT_DOUBLE_EQ(r.server_batches, 2.0);
  ASSERT_TRUE(r.mean_batch_tokens.has_value());
  EXPECT_DOUBLE_EQ(*r.mean_batch_tokens, 10.0);
  EXPECT_DOUBLE_EQ(*r.compute_occupancy, 0.25);
  EXPECT_DOUBLE_EQ(*r.daemon_compute_us_per_batch, 125000.0);
  EXPECT_DOUBLE_EQ(*r.engine_tokens_per_s, 10000.0);
  EXPECT_DOUBLE_EQ(*r.efficiency, 20.0 / 10000.0);
  EXPECT_DOUBLE_EQ(r.latency_ms.p50, 1.0);
  EXPECT_DOUBLE_EQ(*r.p50_over_engine_us, 1000.0 - 1000.0);
  nlohmann::json j = ToJson(r);
  EXPECT_EQ(j["errors"]["UNAVAILABLE"], 1);
  EXPECT_DOUBLE_EQ(j["efficiency"].get<double>(), 0.002);
  EXPECT_NE(FormatTable(r).find("UNAVAILABLE=1"), std::string::npos);
}

// An in-process echo server and two transports to it, unary or stream (the test parameter).
class FakeServerTest : public testing::TestWithParam<std::string> {
 protected:
  void StartServer(const FakeServiceOptions& options) {
    service_ = std::make_unique<FakeMoeService>(options);
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(service_.get());
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    ASSERT_GT(port, 0);
    for (int i = 0; i < 2; ++i) {
      grpc::ChannelArguments args;
      args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
      auto channel = grpc::CreateCustomChannel("127.0.0.1:" + std::to_string(port),
                                               grpc::InsecureChannelCredentials(), args);
      transports_.push_back(GetParam() == "stream" ? MakeStreamTransport(channel)
                                                   : MakeUnaryTransport(channel));
    }
    target_.hidden = options.hidden;
    target_.layer = 1;
    target_.dtype = v1::DTYPE_BF16;
  }
  // Ends the streams (after a run has drained); each must end OK.
  void CloseTransports() {
    for (auto& t : transports_) EXPECT_TRUE(t->Close().ok());
    transports_.clear();
  }
  void TearDown() override {
    CloseTransports();
    if (server_) server_->Shutdown();
  }

  std::unique_ptr<FakeMoeService> service_;
  std::unique_ptr<grpc::Server> server_;
  std::vector<std::unique_ptr<Transport>> transports_;
  RequestTarget target_;
};

INSTANTIATE_TEST_SUITE_P(Api, FakeServerTest, testing::Values("unary", "stream"),
                         [](const testing::TestParamInfo<std::string>& i) { return i.param; });

TEST_P(FakeServerTest, ClosedLoopSendsExactlyTheBudgetAndCountsErrors) {
  FakeServiceOptions options;
  options.fail_tokens = {3};
  StartServer(options);
  auto tokens = TokenDistribution::Parse("1-4");
  ASSERT_TRUE(tokens.ok());
  RequestFactory factory(target_, tokens->max_tokens(), 5);
  LoadOptions lo;
  lo.mode = LoadOptions::Mode::kClosedLoop;
  lo.concurrency = 4;
  lo.duration_s = 0;
  lo.max_requests = 200;
  int window_hooks = 0;
  LoadHooks hooks{[&] { ++window_hooks; }, [&] { ++window_hooks; }};
  auto result = RunLoad(transports_, factory, *tokens, lo, hooks);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(window_hooks, 2);
  ASSERT_EQ(result->measured.size(), 200u);
  int64_t failed = 0, ok_tokens = 0, ok = 0;
  for (const Sample& s : result->measured) {
    EXPECT_GE(s.tokens, 1);
    EXPECT_LE(s.tokens, 4);
    EXPECT_GE(s.end_ns, s.start_ns);
    if (s.tokens == 3) {
      EXPECT_EQ(s.code, static_cast<int>(grpc::StatusCode::INVALID_ARGUMENT));
      ++failed;
    } else {
      EXPECT_EQ(s.code, 0);
      EXPECT_EQ(s.server_batches, 1u);
      ok_tokens += s.tokens;
      ++ok;
    }
  }
  EXPECT_GT(failed, 0);
  EXPECT_EQ(service_->forwards(), ok);
  EXPECT_EQ(service_->tokens(), ok_tokens);
  EXPECT_EQ(result->window_end_ns,
            std::max_element(result->measured.begin(), result->measured.end(),
                             [](const Sample& a, const Sample& b) { return a.end_ns < b.end_ns; })
                ->end_ns);
}

TEST_P(FakeServerTest, OpenLoopSendsOnScheduleUntilTheBudget) {
  StartServer(FakeServiceOptions{});
  auto tokens = TokenDistribution::Parse("2,8");
  ASSERT_TRUE(tokens.ok());
  RequestFactory factory(target_, tokens->max_tokens(), 5);
  LoadOptions lo;
  lo.mode = LoadOptions::Mode::kOpenLoop;
  lo.rate_rps = 2000;
  lo.duration_s = 0;
  lo.max_requests = 150;
  lo.warmup_s = 0.01;
  auto result = RunLoad(transports_, factory, *tokens, lo, {});
  ASSERT_TRUE(result.ok()) << result.status();
  ASSERT_EQ(result->measured.size() + result->not_sent, 150u);
  EXPECT_EQ(result->not_sent, 0);
  int64_t prev_start = 0;
  std::vector<Sample> sorted = result->measured;
  std::sort(sorted.begin(), sorted.end(),
            [](const Sample& a, const Sample& b) { return a.start_ns < b.start_ns; });
  for (const Sample& s : sorted) {
    EXPECT_EQ(s.code, 0);
    EXPECT_TRUE(s.tokens == 2 || s.tokens == 8);
    EXPECT_GE(s.start_ns, static_cast<int64_t>(lo.warmup_s * 1e9));  // scheduled in the window
    EXPECT_GE(s.start_ns, prev_start);
    prev_start = s.start_ns;
  }
  EXPECT_EQ(service_->forwards(), 150 + result->warmup_requests);
}

TEST_P(FakeServerTest, DurationModeStopsAtTheDeadline) {
  StartServer(FakeServiceOptions{});
  auto tokens = TokenDistribution::Parse("1");
  ASSERT_TRUE(tokens.ok());
  RequestFactory factory(target_, 1, 5);
  LoadOptions lo;
  lo.concurrency = 2;
  lo.duration_s = 0.2;
  auto result = RunLoad(transports_, factory, *tokens, lo, {});
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_GT(result->measured.size(), 0u);
  EXPECT_EQ(result->window_end_ns - result->window_start_ns, 200'000'000);
  for (const Sample& s : result->measured) EXPECT_LT(s.start_ns, result->window_end_ns);
}

TEST_P(FakeServerTest, ResponseShapeIsChecked) {
  StartServer(FakeServiceOptions{});
  RequestFactory factory(target_, 4, 5);
  std::mt19937_64 rng(1);
  v1::ForwardRequest req;
  factory.Fill(4, rng, &req);
  EXPECT_EQ(req.hidden_states().data().size(), 4u * 64u * 2u);
  v1::ForwardResponse resp;
  *resp.mutable_hidden_states() = req.hidden_states();
  EXPECT_TRUE(factory.ResponseMatches(4, resp));
  EXPECT_FALSE(factory.ResponseMatches(3, resp));
  resp.mutable_hidden_states()->set_dtype(v1::DTYPE_F32);
  EXPECT_FALSE(factory.ResponseMatches(4, resp));
}

TEST(RunLoad, RejectsImpossibleOptions) {
  std::vector<std::unique_ptr<Transport>> none;
  RequestTarget t;
  t.hidden = 8;
  RequestFactory factory(t, 1, 1);
  auto tokens = TokenDistribution::Parse("1");
  ASSERT_TRUE(tokens.ok());
  LoadOptions lo;
  EXPECT_EQ(RunLoad(none, factory, *tokens, lo, {}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace moe::loadgen
