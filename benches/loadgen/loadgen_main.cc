// moe-loadgen: load generator for the native moe.v1 gRPC API of `moe-swarm serve`.
//
//   moe-loadgen --target 127.0.0.1:50051 --concurrency 8 --tokens 1-16 --duration 10
//               --metrics-url http://127.0.0.1:9091/metrics --engine-baseline engine.jsonl
//   moe-loadgen --rate 500 --tokens 1,4,16 --requests 5000 --api stream --json
//
// Closed loop (--concurrency N) or open-loop Poisson (--rate R); see load_driver.h for the phases.
// Prints a table (report.h); --json adds one JSON line on stdout, --json-out FILE appends it.
// Exit status: 0 when the run completed (whatever the RPC errors: they are reported), 1 when it
// could not run (bad flags, no server, no model), 2 with --fail-on-error and any RPC error.
#include <grpcpp/grpcpp.h>
#include <sys/resource.h>

#include <cstdio>
#include <fstream>
#include <iostream>

#include "CLI/CLI.hpp"
#include "engine_baseline.h"
#include "load_driver.h"
#include "prom_scrape.h"
#include "report.h"
#include "stats.h"

namespace moe::loadgen {
namespace {

struct Flags {
  std::string label;
  std::string target = "127.0.0.1:50051";
  std::string api = "unary";
  std::string model;
  int layer = -1;
  std::string dtype = "bf16";
  std::string tokens = "1";
  int concurrency = 0;
  double rate = 0;
  double warmup_s = 1;
  double duration_s = 0;
  int64_t requests = 0;
  int channels = 1;
  double timeout_s = 30;
  double connect_timeout_s = 10;
  int64_t max_inflight = 16384;
  uint64_t seed = 1;
  std::string metrics_url;
  std::string batch_metric = "moe_batch_size_tokens";
  std::string compute_metric = "moe_compute_duration_seconds";
  std::string engine_baseline;
  bool json = false;
  std::string json_out;
  bool fail_on_error = false;
};

StatusOr<v1::DType> ParseDType(const std::string& s) {
  if (s == "bf16") return v1::DTYPE_BF16;
  if (s == "f16") return v1::DTYPE_F16;
  if (s == "f32") return v1::DTYPE_F32;
  return absl::InvalidArgumentError(absl::StrCat("--dtype '", s, "': expected bf16, f16 or f32"));
}

std::shared_ptr<grpc::Channel> MakeChannel(const std::string& target, int index) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(-1);
  args.SetMaxSendMessageSize(-1);
  // A distinct argument and a local subchannel pool give each channel its own TCP connection.
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  args.SetInt("moe.loadgen.channel_index", index);
  return grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args);
}

StatusOr<v1::ModelInfo> FetchModel(v1::MoeService::Stub& stub, const Flags& f) {
  grpc::ClientContext ctx;
  ctx.set_wait_for_ready(true);
  ctx.set_deadline(std::chrono::system_clock::now() +
                   std::chrono::milliseconds(static_cast<int64_t>(f.connect_timeout_s * 1e3)));
  v1::GetModelRequest req;
  req.set_model(f.model);
  v1::GetModelResponse resp;
  grpc::Status s = stub.GetModel(&ctx, req, &resp);
  if (!s.ok()) {
    return absl::UnavailableError(absl::StrCat("GetModel on ", f.target, ": ",
                                               CodeName(s.error_code()), ": ", s.error_message()));
  }
  return resp.model();
}

// User + system CPU seconds of this process so far.
double ProcessCpuSeconds() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  auto sec = [](const timeval& t) { return static_cast<double>(t.tv_sec) + t.tv_usec * 1e-6; };
  return sec(ru.ru_utime) + sec(ru.ru_stime);
}

StatusOr<std::map<std::string, double>> Scrape(const std::string& url) {
  MOE_ASSIGN_OR_RETURN(std::string body, HttpGet(url, 5000));
  return ParsePrometheusText(body);
}

// Delta of the batch and compute histograms between two scrapes.
StatusOr<MetricsDelta> Diff(const std::map<std::string, double>& before,
                            const std::map<std::string, double>& after, const Flags& f) {
  MetricsDelta d;
  MOE_ASSIGN_OR_RETURN(HistogramTotals b0, ReadHistogram(before, f.batch_metric));
  MOE_ASSIGN_OR_RETURN(HistogramTotals b1, ReadHistogram(after, f.batch_metric));
  d.batches = b1.count - b0.count;
  d.batch_tokens_sum = b1.sum - b0.sum;
  StatusOr<HistogramTotals> c0 = ReadHistogram(before, f.compute_metric);
  StatusOr<HistogramTotals> c1 = ReadHistogram(after, f.compute_metric);
  if (c0.ok() && c1.ok()) {
    d.compute_seconds = c1->sum - c0->sum;
    d.compute_count = c1->count - c0->count;
  }
  return d;
}

StatusOr<int> Main(const Flags& f) {
  MOE_ASSIGN_OR_RETURN(TokenDistribution tokens, TokenDistribution::Parse(f.tokens));
  MOE_ASSIGN_OR_RETURN(v1::DType dtype, ParseDType(f.dtype));
  if ((f.concurrency > 0) == (f.rate > 0)) {
    return absl::InvalidArgumentError("give exactly one of --concurrency N or --rate R");
  }
  if (f.channels < 1) return absl::InvalidArgumentError("--channels must be >= 1");
  std::optional<EngineBaseline> baseline;
  if (!f.engine_baseline.empty()) {
    MOE_ASSIGN_OR_RETURN(baseline, EngineBaseline::ReadJsonLines(f.engine_baseline));
  }

  if (f.api != "unary" && f.api != "stream") {
    return absl::InvalidArgumentError("--api: expected unary or stream");
  }
  std::vector<std::shared_ptr<grpc::Channel>> channels;
  for (int i = 0; i < f.channels; ++i) channels.push_back(MakeChannel(f.target, i));
  MOE_ASSIGN_OR_RETURN(v1::ModelInfo info, FetchModel(*v1::MoeService::NewStub(channels[0]), f));
  RequestTarget target;
  target.model = f.model;
  target.dtype = dtype;
  target.hidden = info.hidden();
  target.layer = f.layer;
  if (target.layer < 0) {
    if (info.moe_layers().empty()) return absl::FailedPreconditionError("model has no MoE layers");
    target.layer = info.moe_layers(0);
  }
  if (target.hidden <= 0) return absl::FailedPreconditionError("GetModel reports hidden <= 0");
  if (info.limits().max_batch_tokens() > 0 &&
      tokens.max_tokens() > info.limits().max_batch_tokens()) {
    std::cerr << "warning: --tokens up to " << tokens.max_tokens()
              << " exceeds the server's max_batch_tokens " << info.limits().max_batch_tokens()
              << "; those requests will fail\n";
  }
  RequestFactory factory(target, tokens.max_tokens(), f.seed);

  LoadOptions options;
  options.mode = f.concurrency > 0 ? LoadOptions::Mode::kClosedLoop : LoadOptions::Mode::kOpenLoop;
  options.concurrency = f.concurrency;
  options.rate_rps = f.rate;
  options.warmup_s = f.warmup_s;
  options.duration_s = f.duration_s;
  options.max_requests = f.requests;
  if (options.duration_s <= 0 && options.max_requests <= 0) options.duration_s = 10;
  options.max_inflight = f.max_inflight;
  options.timeout_s = f.timeout_s;
  options.seed = f.seed;

  std::map<std::string, double> before, after;
  Status scrape_status = absl::OkStatus();
  LoadHooks hooks;
  if (!f.metrics_url.empty()) {
    hooks.on_window_start = [&] {
      StatusOr<std::map<std::string, double>> s = Scrape(f.metrics_url);
      if (s.ok())
        before = *std::move(s);
      else
        scrape_status = s.status();
    };
    hooks.on_window_end = [&] {
      StatusOr<std::map<std::string, double>> s = Scrape(f.metrics_url);
      if (s.ok())
        after = *std::move(s);
      else if (scrape_status.ok())
        scrape_status = s.status();
    };
  }
  const double cpu_before = ProcessCpuSeconds();
  std::vector<std::unique_ptr<Transport>> transports;
  for (const auto& channel : channels) {
    transports.push_back(f.api == "stream" ? MakeStreamTransport(channel)
                                           : MakeUnaryTransport(channel));
  }
  MOE_ASSIGN_OR_RETURN(LoadResult result, RunLoad(transports, factory, tokens, options, hooks));
  for (auto& t : transports) {
    if (Status s = t->Close(); !s.ok()) std::cerr << "warning: closing the stream: " << s << "\n";
  }
  const double client_cpu_s = ProcessCpuSeconds() - cpu_before;

  std::optional<MetricsDelta> delta;
  if (!f.metrics_url.empty()) {
    if (scrape_status.ok()) {
      StatusOr<MetricsDelta> d = Diff(before, after, f);
      if (d.ok())
        delta = *d;
      else
        scrape_status = d.status();
    }
    if (!scrape_status.ok()) std::cerr << "warning: /metrics: " << scrape_status << "\n";
  }

  RunConfig config;
  config.label = f.label;
  config.target = f.target;
  config.api = f.api;
  config.model = info.name();
  config.engine = info.engine();
  config.layer = target.layer;
  config.dtype = f.dtype;
  config.mode = f.concurrency > 0 ? "closed" : "open";
  config.concurrency = f.concurrency;
  config.rate_rps = f.rate;
  config.tokens = f.tokens;
  config.channels = f.channels;
  config.warmup_s = options.warmup_s;
  config.duration_s = options.duration_s;
  config.max_requests = options.max_requests;
  Report report = BuildReport(config, std::move(result), delta, baseline);
  report.client_cpu_s = client_cpu_s;
  std::cout << FormatTable(report);
  const std::string line = ToJson(report).dump();
  if (f.json) std::cout << line << "\n";
  if (!f.json_out.empty()) {
    std::ofstream out(f.json_out, std::ios::app);
    if (!out) return absl::UnavailableError(absl::StrCat("cannot append to ", f.json_out));
    out << line << "\n";
  }
  std::cout.flush();
  return f.fail_on_error && report.ok != report.requests ? 2 : 0;
}

}  // namespace
}  // namespace moe::loadgen

int main(int argc, char** argv) {
  moe::loadgen::Flags f;
  CLI::App app{"moe-loadgen: closed- or open-loop load on moe.v1 Forward (see benches/loadgen)"};
  app.add_option("--label", f.label, "name of this run, echoed in the report and JSON");
  app.add_option("--target", f.target, "gRPC host:port")->capture_default_str();
  app.add_option("--api", f.api,
                 "unary: one Forward RPC per request; stream: requests as messages on one "
                 "ForwardStream per channel")
      ->capture_default_str();
  app.add_option("--model", f.model, "served model name (empty = the only one)");
  app.add_option("--layer", f.layer, "MoE layer index (-1 = the model's first MoE layer)")
      ->capture_default_str();
  app.add_option("--dtype", f.dtype, "bf16 | f16 | f32")->capture_default_str();
  app.add_option("--tokens", f.tokens, "tokens per request: N, N1,N2,... or LO-HI (uniform)")
      ->capture_default_str();
  app.add_option("--concurrency", f.concurrency, "closed loop with N workers");
  app.add_option("--rate", f.rate, "open loop: Poisson arrivals, requests per second");
  app.add_option("--warmup", f.warmup_s, "seconds of unmeasured warm-up")->capture_default_str();
  app.add_option("--duration", f.duration_s, "seconds measured (default 10 without --requests)");
  app.add_option("--requests", f.requests, "measured requests (stops at whichever comes first)");
  app.add_option("--channels", f.channels, "gRPC channels (TCP connections)")
      ->capture_default_str();
  app.add_option("--timeout", f.timeout_s, "per-request deadline, seconds")->capture_default_str();
  app.add_option("--connect-timeout", f.connect_timeout_s, "seconds to wait for the server")
      ->capture_default_str();
  app.add_option("--max-inflight", f.max_inflight, "open loop: cap on requests in flight")
      ->capture_default_str();
  app.add_option("--seed", f.seed, "random seed (hidden states, sizes, arrivals)")
      ->capture_default_str();
  app.add_option("--metrics-url", f.metrics_url,
                 "daemon /metrics URL, scraped before and after the window for the batch size");
  app.add_option("--batch-metric", f.batch_metric, "batch-size histogram (tokens)")
      ->capture_default_str();
  app.add_option("--compute-metric", f.compute_metric, "per-batch compute histogram (seconds)")
      ->capture_default_str();
  app.add_option("--engine-baseline", f.engine_baseline,
                 "moe-engine-bench --json-out file: compare with the engine alone");
  app.add_flag("--json", f.json, "also print the report as one JSON line");
  app.add_option("--json-out", f.json_out, "append the JSON line to this file");
  app.add_flag("--fail-on-error", f.fail_on_error, "exit 2 if any request failed");
  CLI11_PARSE(app, argc, argv);

  moe::StatusOr<int> rc = moe::loadgen::Main(f);
  if (!rc.ok()) {
    std::cerr << "moe-loadgen: " << rc.status() << "\n";
    return 1;
  }
  return *rc;
}
