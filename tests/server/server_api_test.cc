// The front end's RPCs against the real scheduler and CPU engine: results equal the engine's own
// (bit for bit), and every malformed request gets the documented code and a message naming the
// field and the expected value.
#include <atomic>
#include <cstring>
#include <functional>
#include <map>
#include <thread>

#include "server_fixture.h"

namespace moe::server::testing {
namespace {

class ServerApiTest : public ::testing::Test {
 protected:
  Daemon d_;
  int hidden() const { return d_.spec().hidden; }
  int top_k() const { return d_.spec().top_k(); }
};

TEST_F(ServerApiTest, GetModelDescribesTheSpecAndLimits) {
  grpc::ClientContext ctx;
  moe::v1::GetModelResponse resp;
  ASSERT_TRUE(d_.native->GetModel(&ctx, moe::v1::GetModelRequest(), &resp).ok());
  const moe::v1::ModelInfo& m = resp.model();
  EXPECT_EQ(m.name(), "tiny");
  EXPECT_EQ(m.family(), "qwen2_moe");
  EXPECT_EQ(m.hidden(), 64);
  EXPECT_EQ(m.num_experts(), 8);
  EXPECT_EQ(m.top_k(), 2);
  EXPECT_EQ(m.moe_layers_size(), 3);
  EXPECT_EQ(m.shared_intermediate(), 64);
  EXPECT_EQ(m.weight_dtype(), "BF16");
  EXPECT_EQ(m.engine(), "cpu");
  EXPECT_TRUE(m.ready());
  EXPECT_EQ(m.limits().max_batch_tokens(), 256);
  EXPECT_EQ(m.limits().max_message_bytes(), 1 << 20);
  EXPECT_EQ(m.activation_dtypes_size(), 3);

  grpc::ClientContext ctx2;
  moe::v1::GetModelRequest other;
  other.set_model("nope");
  grpc::Status s = d_.native->GetModel(&ctx2, other, &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND);
}

TEST_F(ServerApiTest, NativeForwardEqualsTheEngineForEveryDtype) {
  uint64_t seed = 11;
  for (DType dtype : {DType::kBF16, DType::kF16, DType::kF32}) {
    for (int layer : d_.spec().moe_layers) {
      SCOPED_TRACE(std::string(DTypeName(dtype)) + " layer " + std::to_string(layer));
      moe::v1::ForwardRequest req = NativeRequest("r", layer, dtype, 5, hidden(), seed++);
      moe::v1::ForwardResponse resp;
      resp.mutable_hidden_states()->set_data("poison");
      grpc::ClientContext ctx;
      grpc::Status s = d_.native->Forward(&ctx, req, &resp);
      ASSERT_TRUE(s.ok()) << s.error_message();
      Daemon::Reference ref = d_.Expected(layer, dtype, 5, req.hidden_states().data());
      EXPECT_EQ(resp.request_id(), "r");
      EXPECT_EQ(resp.layer(), layer);
      EXPECT_EQ(resp.hidden_states().dtype(), req.hidden_states().dtype());
      ASSERT_EQ(resp.hidden_states().shape_size(), 2);
      EXPECT_EQ(resp.hidden_states().shape(0), 5);
      EXPECT_EQ(resp.hidden_states().shape(1), hidden());
      EXPECT_TRUE(resp.hidden_states().data() == ref.output) << "output differs from the engine";
      EXPECT_EQ(resp.routing().top_k(), top_k());
      EXPECT_EQ(std::vector<int32_t>(resp.routing().expert_ids().begin(),
                                     resp.routing().expert_ids().end()),
                ref.ids);
      EXPECT_EQ(std::vector<float>(resp.routing().expert_weights().begin(),
                                   resp.routing().expert_weights().end()),
                ref.weights);
      EXPECT_GE(resp.timing().batches(), 1u);
      EXPECT_GE(resp.timing().total_us(), resp.timing().queue_us());
    }
  }
  // Without return_routing there is no routing.
  moe::v1::ForwardRequest req = NativeRequest("r", 0, DType::kBF16, 3, hidden(), 5, false);
  moe::v1::ForwardResponse resp;
  grpc::ClientContext ctx;
  ASSERT_TRUE(d_.native->Forward(&ctx, req, &resp).ok());
  EXPECT_FALSE(resp.has_routing());
}

TEST_F(ServerApiTest, KserveInferEqualsTheEngine) {
  inference::ModelInferRequest req = KserveRequest("k1", 1, "FP16", DType::kF16, 7, hidden(), 3);
  Daemon::Reference ref = d_.Expected(1, DType::kF16, 7, req.raw_input_contents(0));
  {
    // No outputs named: all three, in the config's order.
    inference::ModelInferResponse resp;
    grpc::ClientContext ctx;
    grpc::Status s = d_.kserve->ModelInfer(&ctx, req, &resp);
    ASSERT_TRUE(s.ok()) << s.error_message();
    EXPECT_EQ(resp.model_name(), "tiny.layer1");
    EXPECT_EQ(resp.model_version(), "1");
    EXPECT_EQ(resp.id(), "k1");
    ASSERT_EQ(resp.outputs_size(), 3);
    ASSERT_EQ(resp.raw_output_contents_size(), 3);
    EXPECT_EQ(resp.outputs(0).name(), "output");
    EXPECT_EQ(resp.outputs(0).datatype(), "FP16");
    EXPECT_EQ(resp.outputs(0).shape(0), 7);
    EXPECT_EQ(resp.outputs(0).shape(1), hidden());
    EXPECT_TRUE(resp.raw_output_contents(0) == ref.output);
    EXPECT_EQ(resp.outputs(1).name(), "expert_ids");
    EXPECT_EQ(resp.outputs(1).datatype(), "INT32");
    EXPECT_EQ(resp.outputs(1).shape(1), top_k());
    std::vector<int32_t> ids(ref.ids.size());
    ASSERT_EQ(resp.raw_output_contents(1).size(), ids.size() * 4);
    std::memcpy(ids.data(), resp.raw_output_contents(1).data(), ids.size() * 4);
    EXPECT_EQ(ids, ref.ids);
    EXPECT_EQ(resp.outputs(2).name(), "expert_weights");
    EXPECT_EQ(resp.outputs(2).datatype(), "FP32");
    std::vector<float> w(ref.weights.size());
    ASSERT_EQ(resp.raw_output_contents(2).size(), w.size() * 4);
    std::memcpy(w.data(), resp.raw_output_contents(2).data(), w.size() * 4);
    EXPECT_EQ(w, ref.weights);
  }
  {
    // Only the weights, then the output: returned in the order asked.
    req.add_outputs()->set_name("expert_weights");
    req.add_outputs()->set_name("output");
    inference::ModelInferResponse resp;
    grpc::ClientContext ctx;
    ASSERT_TRUE(d_.kserve->ModelInfer(&ctx, req, &resp).ok());
    ASSERT_EQ(resp.outputs_size(), 2);
    EXPECT_EQ(resp.outputs(0).name(), "expert_weights");
    EXPECT_EQ(resp.outputs(1).name(), "output");
    EXPECT_TRUE(resp.raw_output_contents(1) == ref.output);
  }
  {
    // Only the routing: the layer output is computed but not sent.
    req.clear_outputs();
    req.add_outputs()->set_name("expert_ids");
    req.set_model_version("1");
    inference::ModelInferResponse resp;
    grpc::ClientContext ctx;
    ASSERT_TRUE(d_.kserve->ModelInfer(&ctx, req, &resp).ok());
    ASSERT_EQ(resp.outputs_size(), 1);
    ASSERT_EQ(resp.raw_output_contents_size(), 1);
    EXPECT_EQ(resp.outputs(0).name(), "expert_ids");
  }
}

struct ErrorCase {
  std::string name;
  std::function<void(moe::v1::ForwardRequest*)> mutate;
  grpc::StatusCode code;
  std::vector<std::string> message_parts;
};

TEST_F(ServerApiTest, NativeBadRequestsGetPreciseErrors) {
  std::vector<ErrorCase> cases = {
      {"unknown model",
       [](auto* r) { r->set_model("other"); },
       grpc::StatusCode::NOT_FOUND,
       {"model: \"other\" is not served", "expected \"tiny\""}},
      {"unknown layer",
       [](auto* r) { r->set_layer(7); },
       grpc::StatusCode::NOT_FOUND,
       {"layer: 7 is not a MoE layer", "expected one of [0,1,2]"}},
      {"negative layer",
       [](auto* r) { r->set_layer(-1); },
       grpc::StatusCode::NOT_FOUND,
       {"layer: -1"}},
      {"no dtype",
       [](auto* r) { r->mutable_hidden_states()->set_dtype(moe::v1::DTYPE_UNSPECIFIED); },
       grpc::StatusCode::INVALID_ARGUMENT,
       {"hidden_states.dtype", "expected DTYPE_BF16, DTYPE_F16 or DTYPE_F32", "DTYPE_UNSPECIFIED"}},
      {"rank 1",
       [](auto* r) { r->mutable_hidden_states()->mutable_shape()->RemoveLast(); },
       grpc::StatusCode::INVALID_ARGUMENT,
       {"hidden_states.shape", "expected [n_tokens, 64]"}},
      {"wrong hidden",
       [](auto* r) { r->mutable_hidden_states()->set_shape(1, 32); },
       grpc::StatusCode::INVALID_ARGUMENT,
       {"hidden_states.shape[1]", "expected hidden size 64", "got 32"}},
      {"empty batch",
       [](auto* r) {
         r->mutable_hidden_states()->set_shape(0, 0);
         r->mutable_hidden_states()->clear_data();
       },
       grpc::StatusCode::INVALID_ARGUMENT,
       {"hidden_states.shape[0]", "n_tokens >= 1", "got 0"}},
      {"oversize",
       [](auto* r) {
         r->mutable_hidden_states()->set_shape(0, 300);
         r->mutable_hidden_states()->set_data(std::string(300 * 64 * 2, '\0'));
       },
       grpc::StatusCode::INVALID_ARGUMENT,
       {"hidden_states.shape[0]", "n_tokens 300 exceeds max_batch_tokens 256"}},
      {"byte count",
       [](auto* r) { r->mutable_hidden_states()->mutable_data()->resize(100); },
       grpc::StatusCode::INVALID_ARGUMENT,
       {"hidden_states.data", "expected 512 bytes (4 x 64 x BF16)", "got 100"}},
  };
  for (const ErrorCase& c : cases) {
    SCOPED_TRACE(c.name);
    moe::v1::ForwardRequest req = NativeRequest("bad", 0, DType::kBF16, 4, hidden(), 1);
    c.mutate(&req);
    moe::v1::ForwardResponse resp;
    grpc::ClientContext ctx;
    grpc::Status s = d_.native->Forward(&ctx, req, &resp);
    EXPECT_EQ(s.error_code(), c.code) << s.error_message();
    for (const std::string& part : c.message_parts) {
      EXPECT_NE(s.error_message().find(part), std::string::npos)
          << "\"" << s.error_message() << "\" lacks \"" << part << "\"";
    }
  }
  // The daemon still serves good requests afterwards.
  moe::v1::ForwardRequest ok = NativeRequest("ok", 2, DType::kBF16, 2, hidden(), 9);
  moe::v1::ForwardResponse resp;
  grpc::ClientContext ctx;
  EXPECT_TRUE(d_.native->Forward(&ctx, ok, &resp).ok());
}

TEST_F(ServerApiTest, KserveBadRequestsGetPreciseErrors) {
  struct Case {
    std::string name;
    std::function<void(inference::ModelInferRequest*)> mutate;
    grpc::StatusCode code;
    std::vector<std::string> parts;
  };
  std::vector<Case> cases = {
      {"unknown model",
       [](auto* r) { r->set_model_name("tiny"); },
       grpc::StatusCode::NOT_FOUND,
       {"model_name: \"tiny\" is not served", "expected \"tiny.layer<L>\" with L in [0,1,2]"}},
      {"unknown layer",
       [](auto* r) { r->set_model_name("tiny.layer9"); },
       grpc::StatusCode::NOT_FOUND,
       {"tiny.layer9"}},
      {"padded layer",
       [](auto* r) { r->set_model_name("tiny.layer01"); },
       grpc::StatusCode::NOT_FOUND,
       {"tiny.layer01"}},
      {"unknown version",
       [](auto* r) { r->set_model_version("2"); },
       grpc::StatusCode::NOT_FOUND,
       {"model_version: \"2\"", "expected \"1\" or empty"}},
      {"input name",
       [](auto* r) { r->mutable_inputs(0)->set_name("x"); },
       grpc::StatusCode::INVALID_ARGUMENT,
       {"inputs: expected exactly one input named \"input\""}},
      {"two inputs",
       [](auto* r) { *r->add_inputs() = r->inputs(0); },
       grpc::StatusCode::INVALID_ARGUMENT,
       {"inputs: expected exactly one input", "got 2"}},
      {"datatype",
       [](auto* r) { r->mutable_inputs(0)->set_datatype("INT8"); },
       grpc::StatusCode::INVALID_ARGUMENT,
       {"inputs[0].datatype", "expected BF16, FP16 or FP32", "\"INT8\""}},
      {"typed contents",
       [](auto* r) {
         r->clear_raw_input_contents();
         r->mutable_inputs(0)->mutable_contents()->add_fp32_contents(1.0f);
       },
       grpc::StatusCode::INVALID_ARGUMENT,
       {"inputs[0].contents", "raw_input_contents"}},
      {"no raw contents",
       [](auto* r) { r->clear_raw_input_contents(); },
       grpc::StatusCode::INVALID_ARGUMENT,
       {"raw_input_contents: expected 1 entry", "got 0"}},
      {"wrong hidden",
       [](auto* r) { r->mutable_inputs(0)->set_shape(1, 65); },
       grpc::StatusCode::INVALID_ARGUMENT,
       {"inputs[0].shape[1]", "expected hidden size 64"}},
      {"byte count",
       [](auto* r) { r->mutable_raw_input_contents(0)->resize(10); },
       grpc::StatusCode::INVALID_ARGUMENT,
       {"raw_input_contents[0]", "expected 1024 bytes (4 x 64 x F32)", "got 10"}},
      {"unknown output",
       [](auto* r) { r->add_outputs()->set_name("logits"); },
       grpc::StatusCode::INVALID_ARGUMENT,
       {"outputs[0].name", "expected \"output\", \"expert_ids\" or \"expert_weights\""}},
      {"bad timeout",
       [](auto* r) { (*r->mutable_parameters())["timeout"].set_string_param("soon"); },
       grpc::StatusCode::INVALID_ARGUMENT,
       {"parameters.timeout", "non-negative integer"}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    inference::ModelInferRequest req = KserveRequest("bad", 0, "FP32", DType::kF32, 4, hidden(), 2);
    c.mutate(&req);
    inference::ModelInferResponse resp;
    grpc::ClientContext ctx;
    grpc::Status s = d_.kserve->ModelInfer(&ctx, req, &resp);
    EXPECT_EQ(s.error_code(), c.code) << s.error_message();
    for (const std::string& part : c.parts) {
      EXPECT_NE(s.error_message().find(part), std::string::npos)
          << "\"" << s.error_message() << "\" lacks \"" << part << "\"";
    }
  }
}

TEST_F(ServerApiTest, MessagesOverTheLimitAreRefusedByGrpc) {
  // max_message_bytes is 1 MiB in the fixture; 256 tokens x 64 x F32 fits, a 2 MiB blob does not.
  moe::v1::ForwardRequest req = NativeRequest("big", 0, DType::kF32, 4, hidden(), 1);
  req.mutable_hidden_states()->set_data(std::string(2 << 20, '\0'));
  moe::v1::ForwardResponse resp;
  grpc::ClientContext ctx;
  EXPECT_EQ(d_.native->Forward(&ctx, req, &resp).error_code(),
            grpc::StatusCode::RESOURCE_EXHAUSTED);
}

TEST_F(ServerApiTest, ForwardStreamAnswersEveryRequestAndReportsErrorsInBand) {
  grpc::ClientContext ctx;
  auto stream = d_.native->ForwardStream(&ctx);
  std::map<std::string, moe::v1::ForwardRequest> sent;
  for (int i = 0; i < 12; ++i) {
    int layer = i % 3;
    DType dtype = i % 2 == 0 ? DType::kBF16 : DType::kF32;
    moe::v1::ForwardRequest req =
        NativeRequest("s" + std::to_string(i), layer, dtype, 1 + i % 4, hidden(), 100 + i);
    if (i == 4) req.set_layer(42);                                        // NOT_FOUND
    if (i == 7) req.mutable_hidden_states()->mutable_data()->pop_back();  // INVALID_ARGUMENT
    sent[req.request_id()] = req;
    ASSERT_TRUE(stream->Write(req));
  }
  stream->WritesDone();
  moe::v1::ForwardStreamResponse resp;
  std::map<std::string, int> answered;
  while (stream->Read(&resp)) {
    ++answered[resp.request_id()];
    const moe::v1::ForwardRequest& req = sent.at(resp.request_id());
    if (resp.request_id() == "s4") {
      EXPECT_EQ(resp.code(), static_cast<int>(grpc::StatusCode::NOT_FOUND));
      EXPECT_NE(resp.error_message().find("layer: 42"), std::string::npos);
      continue;
    }
    if (resp.request_id() == "s7") {
      EXPECT_EQ(resp.code(), static_cast<int>(grpc::StatusCode::INVALID_ARGUMENT));
      EXPECT_NE(resp.error_message().find("hidden_states.data"), std::string::npos);
      continue;
    }
    ASSERT_EQ(resp.code(), 0) << resp.error_message();
    DType dtype = req.hidden_states().dtype() == moe::v1::DTYPE_F32 ? DType::kF32 : DType::kBF16;
    Daemon::Reference ref =
        d_.Expected(req.layer(), dtype, req.hidden_states().shape(0), req.hidden_states().data());
    EXPECT_TRUE(resp.response().hidden_states().data() == ref.output) << resp.request_id();
    EXPECT_EQ(resp.response().layer(), req.layer());
  }
  EXPECT_TRUE(stream->Finish().ok());
  EXPECT_EQ(answered.size(), sent.size());
  for (const auto& [id, n] : answered) EXPECT_EQ(n, 1) << id << " answered " << n << " times";
}

// Many short streams at once, each mixing answers from the scheduler's thread with refusals made
// inline on gRPC's thread, so the last answers of a stream race its writes and its end. A stream
// that touched its reactor after the RPC finished failed here under ASan (heap-use-after-free).
TEST_F(ServerApiTest, ShortConcurrentStreamsEndCleanly) {
  constexpr int kThreads = 4;
  constexpr int kStreamsPerThread = 60;
  std::vector<std::thread> threads;
  std::atomic<int> answered{0};
  std::atomic<int> bad{0};
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t]() {
      for (int s = 0; s < kStreamsPerThread; ++s) {
        grpc::ClientContext ctx;
        auto stream = d_.native->ForwardStream(&ctx);
        for (int i = 0; i < 4; ++i) {
          moe::v1::ForwardRequest req = NativeRequest(std::to_string(i), i % 3, DType::kBF16, 1,
                                                      hidden(), 1000 * t + 10 * s + i);
          if (i % 2 == 1) req.set_layer(42);  // refused inline
          if (!stream->Write(req)) break;
        }
        stream->WritesDone();
        moe::v1::ForwardStreamResponse resp;
        while (stream->Read(&resp)) {
          ++answered;
          bool refused = resp.request_id() == "1" || resp.request_id() == "3";
          if (refused != (resp.code() == static_cast<int>(grpc::StatusCode::NOT_FOUND))) ++bad;
        }
        if (!stream->Finish().ok()) ++bad;
      }
    });
  }
  for (std::thread& th : threads) th.join();
  EXPECT_EQ(bad.load(), 0);
  EXPECT_EQ(answered.load(), kThreads * kStreamsPerThread * 4);
}

TEST_F(ServerApiTest, ModelStreamInferReportsErrorsInBand) {
  grpc::ClientContext ctx;
  auto stream = d_.kserve->ModelStreamInfer(&ctx);
  std::map<std::string, inference::ModelInferRequest> sent;
  for (int i = 0; i < 6; ++i) {
    inference::ModelInferRequest req =
        KserveRequest("k" + std::to_string(i), i % 3, "BF16", DType::kBF16, 2, hidden(), 50 + i);
    if (i == 2) req.set_model_name("tiny.layer5");
    if (i == 3) req.mutable_inputs(0)->set_datatype("FP64");
    sent[req.id()] = req;
    ASSERT_TRUE(stream->Write(req));
  }
  stream->WritesDone();
  inference::ModelStreamInferResponse resp;
  int n = 0;
  while (stream->Read(&resp)) {
    ++n;
    const std::string& id = resp.infer_response().id();
    const inference::ModelInferRequest& req = sent.at(id);
    if (id == "k2") {
      EXPECT_EQ(resp.error_message().rfind("NOT_FOUND: model_name: \"tiny.layer5\"", 0), 0u)
          << resp.error_message();
      continue;
    }
    if (id == "k3") {
      EXPECT_EQ(resp.error_message().rfind("INVALID_ARGUMENT: inputs[0].datatype", 0), 0u)
          << resp.error_message();
      continue;
    }
    ASSERT_EQ(resp.error_message(), "");
    int layer = std::stoi(req.model_name().substr(std::string("tiny.layer").size()));
    Daemon::Reference ref = d_.Expected(layer, DType::kBF16, 2, req.raw_input_contents(0));
    EXPECT_TRUE(resp.infer_response().raw_output_contents(0) == ref.output) << id;
  }
  EXPECT_EQ(n, 6);
  EXPECT_TRUE(stream->Finish().ok());
}

TEST_F(ServerApiTest, KserveMetadataConfigIndexAndStatistics) {
  {
    grpc::ClientContext ctx;
    inference::ServerLiveResponse r;
    ASSERT_TRUE(d_.kserve->ServerLive(&ctx, {}, &r).ok());
    EXPECT_TRUE(r.live());
  }
  {
    grpc::ClientContext ctx;
    inference::ServerReadyResponse r;
    ASSERT_TRUE(d_.kserve->ServerReady(&ctx, {}, &r).ok());
    EXPECT_TRUE(r.ready());
  }
  {
    grpc::ClientContext ctx;
    inference::ModelReadyRequest q;
    q.set_name("tiny.layer2");
    inference::ModelReadyResponse r;
    ASSERT_TRUE(d_.kserve->ModelReady(&ctx, q, &r).ok());
    EXPECT_TRUE(r.ready());
    grpc::ClientContext ctx2;
    q.set_name("tiny.layer3");
    EXPECT_EQ(d_.kserve->ModelReady(&ctx2, q, &r).error_code(), grpc::StatusCode::NOT_FOUND);
  }
  {
    grpc::ClientContext ctx;
    inference::ServerMetadataResponse r;
    ASSERT_TRUE(d_.kserve->ServerMetadata(&ctx, {}, &r).ok());
    EXPECT_EQ(r.name(), "moe-swarm");
    EXPECT_FALSE(r.version().empty());
  }
  {
    grpc::ClientContext ctx;
    inference::ModelMetadataRequest q;
    q.set_name("tiny.layer0");
    inference::ModelMetadataResponse r;
    ASSERT_TRUE(d_.kserve->ModelMetadata(&ctx, q, &r).ok());
    ASSERT_EQ(r.inputs_size(), 1);
    EXPECT_EQ(r.inputs(0).name(), "input");
    EXPECT_EQ(r.inputs(0).datatype(), "BF16");
    EXPECT_EQ(r.inputs(0).shape(0), -1);
    EXPECT_EQ(r.inputs(0).shape(1), 64);
    ASSERT_EQ(r.outputs_size(), 3);
    EXPECT_EQ(r.outputs(1).name(), "expert_ids");
    EXPECT_EQ(r.outputs(1).shape(1), 2);
  }
  {
    grpc::ClientContext ctx;
    inference::ModelConfigRequest q;
    q.set_name("tiny.layer1");
    inference::ModelConfigResponse r;
    ASSERT_TRUE(d_.kserve->ModelConfig(&ctx, q, &r).ok());
    EXPECT_EQ(r.config().name(), "tiny.layer1");
    EXPECT_EQ(r.config().max_batch_size(), 256);
    EXPECT_EQ(r.config().input(0).data_type(), inference::TYPE_BF16);
    EXPECT_EQ(r.config().output(2).data_type(), inference::TYPE_FP32);
    EXPECT_EQ(r.config().parameters().at("num_experts").string_value(), "8");
    EXPECT_EQ(r.config().parameters().at("layer").string_value(), "1");
    EXPECT_TRUE(r.config().has_dynamic_batching());
  }
  {
    grpc::ClientContext ctx;
    inference::RepositoryIndexResponse r;
    ASSERT_TRUE(d_.kserve->RepositoryIndex(&ctx, {}, &r).ok());
    ASSERT_EQ(r.models_size(), 3);
    for (int i = 0; i < 3; ++i) {
      EXPECT_EQ(r.models(i).name(), "tiny.layer" + std::to_string(i));
      EXPECT_EQ(r.models(i).state(), "READY");
    }
  }
  // Statistics: one success of 3 tokens and one failure on layer 1.
  inference::ModelInferRequest req = KserveRequest("k", 1, "BF16", DType::kBF16, 3, hidden(), 1);
  inference::ModelInferResponse resp;
  {
    grpc::ClientContext ctx;
    ASSERT_TRUE(d_.kserve->ModelInfer(&ctx, req, &resp).ok());
  }
  req.mutable_raw_input_contents(0)->resize(3);
  {
    grpc::ClientContext ctx;
    ASSERT_FALSE(d_.kserve->ModelInfer(&ctx, req, &resp).ok());
  }
  {
    grpc::ClientContext ctx;
    inference::ModelStatisticsRequest q;
    q.set_name("tiny.layer1");
    inference::ModelStatisticsResponse r;
    ASSERT_TRUE(d_.kserve->ModelStatistics(&ctx, q, &r).ok());
    ASSERT_EQ(r.model_stats_size(), 1);
    const inference::ModelStatistics& st = r.model_stats(0);
    EXPECT_EQ(st.name(), "tiny.layer1");
    EXPECT_EQ(st.inference_count(), 3u);
    EXPECT_EQ(st.execution_count(), 1u);
    EXPECT_EQ(st.inference_stats().success().count(), 1u);
    EXPECT_EQ(st.inference_stats().fail().count(), 1u);
    EXPECT_GT(st.last_inference(), 0u);
  }
  {
    grpc::ClientContext ctx;
    inference::ModelStatisticsResponse r;
    ASSERT_TRUE(d_.kserve->ModelStatistics(&ctx, {}, &r).ok());
    EXPECT_EQ(r.model_stats_size(), 3);
  }
}

}  // namespace
}  // namespace moe::server::testing

namespace moe::server::testing {
namespace {

TEST_F(ServerApiTest, RequestIdsAreEchoedAndQuotedInErrors) {
  moe::v1::ForwardRequest req = NativeRequest("r", 0, DType::kBF16, 2, hidden(), 1);
  {
    grpc::ClientContext ctx;
    ctx.AddMetadata("x-request-id", "trace-abc.123");
    moe::v1::ForwardResponse resp;
    ASSERT_TRUE(d_.native->Forward(&ctx, req, &resp).ok());
    auto it = ctx.GetServerInitialMetadata().find("x-request-id");
    ASSERT_NE(it, ctx.GetServerInitialMetadata().end());
    EXPECT_EQ(std::string(it->second.data(), it->second.size()), "trace-abc.123");
  }
  {
    grpc::ClientContext ctx;
    ctx.AddMetadata("x-request-id", "trace-abc.124");
    req.set_layer(99);
    moe::v1::ForwardResponse resp;
    grpc::Status s = d_.native->Forward(&ctx, req, &resp);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND);
    EXPECT_NE(s.error_message().find("[request_id=trace-abc.124]"), std::string::npos)
        << s.error_message();
  }
  {
    // Without one the server makes one up (32 hex digits) and still echoes it.
    grpc::ClientContext ctx;
    inference::ModelInferResponse resp;
    ASSERT_TRUE(
        d_.kserve
            ->ModelInfer(&ctx, KserveRequest("k", 0, "BF16", DType::kBF16, 1, hidden(), 1), &resp)
            .ok());
    auto it = ctx.GetServerInitialMetadata().find("x-request-id");
    ASSERT_NE(it, ctx.GetServerInitialMetadata().end());
    EXPECT_EQ(it->second.size(), 32u);
  }
}

}  // namespace
}  // namespace moe::server::testing
