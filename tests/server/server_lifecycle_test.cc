// Lifecycle and flow control of the front end: health transitions, reflection, readiness gating,
// deadlines, client cancellation, overload, drain on shutdown, and port conflicts.
#include <atomic>
#include <thread>

#include "absl/synchronization/notification.h"
#include "server_fixture.h"

namespace moe::server::testing {
namespace {

using grpc::health::v1::HealthCheckRequest;
using grpc::health::v1::HealthCheckResponse;

// The health status of `service`, or the RPC's error code when it failed.
int Health(Daemon& d, const std::string& service) {
  grpc::ClientContext ctx;
  HealthCheckRequest req;
  req.set_service(service);
  HealthCheckResponse resp;
  grpc::Status s = d.health->Check(&ctx, req, &resp);
  if (!s.ok()) return -static_cast<int>(s.error_code());
  return resp.status();
}

bool WaitFor(const std::function<bool()>& cond) {
  for (int i = 0; i < 1000; ++i) {
    if (cond()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return false;
}

TEST(ServerLifecycleTest, HealthFollowsReadinessAndRequestsWaitForIt) {
  FixtureOptions fo;
  fo.ready = false;
  Daemon d(fo);
  for (const char* name : {"", "moe.v1.MoeService", "inference.GRPCInferenceService", "tiny",
                           "tiny.layer0", "tiny.layer2"}) {
    EXPECT_EQ(Health(d, name), HealthCheckResponse::NOT_SERVING) << name;
  }
  EXPECT_EQ(Health(d, "tiny.layer7"), -static_cast<int>(grpc::StatusCode::NOT_FOUND));
  {
    grpc::ClientContext ctx;
    inference::ServerReadyResponse r;
    ASSERT_TRUE(d.kserve->ServerReady(&ctx, {}, &r).ok());
    EXPECT_FALSE(r.ready());
    grpc::ClientContext ctx2;
    inference::ServerLiveResponse live;
    ASSERT_TRUE(d.kserve->ServerLive(&ctx2, {}, &live).ok());
    EXPECT_TRUE(live.live());
  }
  {
    moe::v1::ForwardResponse resp;
    grpc::ClientContext ctx;
    grpc::Status s = d.native->Forward(
        &ctx, NativeRequest("early", 0, DType::kBF16, 2, d.spec().hidden, 1), &resp);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE);
    EXPECT_NE(s.error_message().find("not ready"), std::string::npos) << s.error_message();
  }
  d.server().SetReady(true);
  for (const char* name : {"", "moe.v1.MoeService", "tiny.layer1"}) {
    EXPECT_EQ(Health(d, name), HealthCheckResponse::SERVING) << name;
  }
  moe::v1::ForwardResponse resp;
  grpc::ClientContext ctx;
  EXPECT_TRUE(
      d.native->Forward(&ctx, NativeRequest("now", 0, DType::kBF16, 2, d.spec().hidden, 1), &resp)
          .ok());
}

TEST(ServerLifecycleTest, ReflectionListsEveryService) {
  Daemon d;
  grpc::ClientContext ctx;
  const grpc::internal::RpcMethod method(
      "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
      grpc::internal::RpcMethod::BIDI_STREAMING);
  std::unique_ptr<grpc::ClientReaderWriter<moe_test::ServerReflectionRequest,
                                           moe_test::ServerReflectionResponse>>
      stream(grpc::internal::ClientReaderWriterFactory<
             moe_test::ServerReflectionRequest,
             moe_test::ServerReflectionResponse>::Create(d.channel().get(), method, &ctx));
  moe_test::ServerReflectionRequest req;
  req.set_list_services("");
  ASSERT_TRUE(stream->Write(req));
  stream->WritesDone();
  moe_test::ServerReflectionResponse resp;
  ASSERT_TRUE(stream->Read(&resp));
  std::set<std::string> names;
  for (const auto& s : resp.list_services_response().service()) names.insert(s.name());
  EXPECT_TRUE(stream->Finish().ok());
  for (const char* want : {"moe.v1.MoeService", "inference.GRPCInferenceService",
                           "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"}) {
    EXPECT_EQ(names.count(want), 1u) << want;
  }
}

TEST(ServerLifecycleTest, TimeoutParameterExpiresQueuedWork) {
  // Batches wait up to 10 s to fill; a 50 ms timeout ends the request first, without compute.
  FixtureOptions fo;
  fo.max_queue_delay_us = 10'000'000;
  Daemon d(fo);
  moe::v1::ForwardRequest req = NativeRequest("late", 0, DType::kBF16, 2, d.spec().hidden, 1);
  req.mutable_parameters()->set_timeout_us(50'000);
  moe::v1::ForwardResponse resp;
  grpc::ClientContext ctx;
  grpc::Status s = d.native->Forward(&ctx, req, &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED) << s.error_message();
  EXPECT_EQ(d.scheduler().Stats().expired, 1);
  EXPECT_EQ(d.scheduler().Stats().completed_ok, 0);

  // The KServe "timeout" parameter does the same.
  inference::ModelInferRequest kreq = KserveRequest("late", 1, "BF16", DType::kBF16, 2, 64, 2);
  (*kreq.mutable_parameters())["timeout"].set_int64_param(50'000);
  inference::ModelInferResponse kresp;
  grpc::ClientContext kctx;
  EXPECT_EQ(d.kserve->ModelInfer(&kctx, kreq, &kresp).error_code(),
            grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_EQ(d.scheduler().Stats().expired, 2);
}

TEST(ServerLifecycleTest, ClientCancelDropsQueuedWork) {
  FixtureOptions fo;
  fo.max_queue_delay_us = 10'000'000;
  Daemon d(fo);
  moe::v1::ForwardRequest req = NativeRequest("gone", 0, DType::kBF16, 2, d.spec().hidden, 1);
  moe::v1::ForwardResponse resp;
  grpc::ClientContext ctx;
  absl::Notification done;
  grpc::Status status;
  d.native->async()->Forward(&ctx, &req, &resp, [&](grpc::Status s) {
    status = s;
    done.Notify();
  });
  ASSERT_TRUE(WaitFor([&] { return d.scheduler().Stats().queued_requests == 1; }));
  ctx.TryCancel();
  done.WaitForNotification();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::CANCELLED);
  // The server saw the cancel and the scheduler dropped the work before computing it.
  EXPECT_TRUE(WaitFor([&] { return d.scheduler().Stats().cancelled == 1; }));
  EXPECT_EQ(d.scheduler().Stats().completed_ok, 0);
  EXPECT_TRUE(WaitFor([&] { return d.server().inflight() == 0; }));
}

TEST(ServerLifecycleTest, OverloadIsUnavailableWithARetryHint) {
  FixtureOptions fo;
  fo.max_batch_tokens = 64;
  fo.max_queue_tokens = 64;
  fo.max_queue_delay_us = 10'000'000;
  Daemon d(fo);
  // 60 tokens wait for the batch to fill; 10 more would exceed the 64-token queue.
  moe::v1::ForwardRequest first = NativeRequest("a", 0, DType::kBF16, 60, d.spec().hidden, 1);
  moe::v1::ForwardResponse first_resp;
  grpc::ClientContext first_ctx;
  absl::Notification first_done;
  grpc::Status first_status;
  d.native->async()->Forward(&first_ctx, &first, &first_resp, [&](grpc::Status s) {
    first_status = s;
    first_done.Notify();
  });
  ASSERT_TRUE(WaitFor([&] { return d.scheduler().Stats().queued_tokens == 60; }));
  moe::v1::ForwardResponse resp;
  grpc::ClientContext ctx;
  grpc::Status s =
      d.native->Forward(&ctx, NativeRequest("b", 0, DType::kBF16, 10, d.spec().hidden, 2), &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_NE(s.error_message().find("overloaded"), std::string::npos) << s.error_message();
  EXPECT_NE(s.error_message().find("retry after"), std::string::npos) << s.error_message();
  // Shutting down flushes the queued request: it completes normally.
  d.server().Shutdown();
  first_done.WaitForNotification();
  EXPECT_TRUE(first_status.ok()) << first_status.error_message();
  Daemon::Reference ref = d.Expected(0, DType::kBF16, 60, first.hidden_states().data());
  EXPECT_TRUE(first_resp.hidden_states().data() == ref.output);
}

TEST(ServerLifecycleTest, DrainFinishesAcceptedWorkAndRefusesNewWork) {
  FixtureOptions fo;
  fo.hold = true;  // accepted requests stay parked until released
  Daemon d(fo);
  constexpr int kNative = 6;
  constexpr int kKserve = 4;
  std::vector<moe::v1::ForwardRequest> nreq(kNative);
  std::vector<moe::v1::ForwardResponse> nresp(kNative);
  std::vector<inference::ModelInferRequest> kreq(kKserve);
  std::vector<inference::ModelInferResponse> kresp(kKserve);
  std::vector<std::unique_ptr<grpc::ClientContext>> ctxs;
  std::vector<grpc::Status> status(kNative + kKserve);
  std::atomic<int> answers{0};
  std::vector<std::atomic<int>> times(kNative + kKserve);
  for (int i = 0; i < kNative; ++i) {
    nreq[i] = NativeRequest("n" + std::to_string(i), i % 3, DType::kBF16, 1 + i, 64, 10 + i);
    ctxs.push_back(std::make_unique<grpc::ClientContext>());
    d.native->async()->Forward(ctxs.back().get(), &nreq[i], &nresp[i], [&, i](grpc::Status s) {
      status[i] = s;
      ++times[i];
      ++answers;
    });
  }
  for (int i = 0; i < kKserve; ++i) {
    kreq[i] = KserveRequest("k" + std::to_string(i), i % 3, "FP32", DType::kF32, 2 + i, 64, 30 + i);
    ctxs.push_back(std::make_unique<grpc::ClientContext>());
    d.kserve->async()->ModelInfer(ctxs.back().get(), &kreq[i], &kresp[i], [&, i](grpc::Status s) {
      status[kNative + i] = s;
      ++times[kNative + i];
      ++answers;
    });
  }
  ASSERT_TRUE(WaitFor([&] { return d.holding().held() == kNative + kKserve; }));
  EXPECT_EQ(d.server().inflight(), kNative + kKserve);

  std::thread shutdown([&] { d.server().Shutdown(); });
  ASSERT_TRUE(WaitFor([&] { return Health(d, "") == HealthCheckResponse::NOT_SERVING; }));
  EXPECT_EQ(Health(d, "tiny.layer0"), HealthCheckResponse::NOT_SERVING);
  {
    moe::v1::ForwardResponse resp;
    grpc::ClientContext ctx;
    grpc::Status s =
        d.native->Forward(&ctx, NativeRequest("new", 0, DType::kBF16, 1, 64, 1), &resp);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE);
    EXPECT_NE(s.error_message().find("draining"), std::string::npos) << s.error_message();
  }
  EXPECT_EQ(answers.load(), 0);
  d.holding().Release();
  shutdown.join();

  ASSERT_TRUE(WaitFor([&] { return answers.load() == kNative + kKserve; }));
  for (int i = 0; i < kNative + kKserve; ++i) {
    EXPECT_TRUE(status[i].ok()) << i << ": " << status[i].error_message();
    EXPECT_EQ(times[i].load(), 1) << i;
  }
  for (int i = 0; i < kNative; ++i) {
    Daemon::Reference ref = d.Expected(i % 3, DType::kBF16, 1 + i, nreq[i].hidden_states().data());
    EXPECT_TRUE(nresp[i].hidden_states().data() == ref.output) << i;
  }
  for (int i = 0; i < kKserve; ++i) {
    Daemon::Reference ref = d.Expected(i % 3, DType::kF32, 2 + i, kreq[i].raw_input_contents(0));
    EXPECT_TRUE(kresp[i].raw_output_contents(0) == ref.output) << i;
  }
  EXPECT_EQ(d.server().inflight(), 0);
}

TEST(ServerLifecycleTest, APortInUseIsAStartUpError) {
  Daemon d;
  int port = d.server().port();
  ASSERT_GT(port, 0);
  // A second server on the same port must fail cleanly.
  StatusOr<std::unique_ptr<Model>> m = Model::Open(TestModelDir());
  ASSERT_TRUE(m.ok());
  HoldingBackend* unused = nullptr;
  (void)unused;
  struct NullBackend final : Backend {
    StatusOr<uint64_t> Submit(const LayerRequest&, LayerDone) override {
      return absl::UnavailableError("null");
    }
    void Cancel(uint64_t) override {}
    int64_t max_request_tokens() const override { return 1; }
    void Drain(Clock::time_point) override {}
  } null_backend;
  Server::Options opts;
  opts.server.address = "127.0.0.1";
  opts.server.port = port;
  opts.model.name = "tiny";
  opts.model.spec = (*m)->spec();
  opts.backend = &null_backend;
  StatusOr<std::unique_ptr<Server>> second = Server::Create(opts);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(second.status().message().find("cannot listen on 127.0.0.1:" + std::to_string(port)),
            std::string::npos)
      << second.status();
}

}  // namespace
}  // namespace moe::server::testing
