// `moe-swarm client`: a one-line way to try a daemon. Asks GetModel for the spec, sends random
// (or file-given) hidden states to one MoE layer over the native or the KServe API, and prints
// the latency, each token's routing and a summary of the output.
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <iostream>
#include <iterator>
#include <random>

#include "commands.h"
#include "inference/grpc_service.grpc.pb.h"
#include "moe/common/dtype.h"
#include "moe/server/status_convert.h"
#include "moe/v1/moe.grpc.pb.h"

namespace moe::cli {

namespace {

using Clock = std::chrono::steady_clock;

struct Wire {
  DType dtype;
  moe::v1::DType native;
  const char* kserve;
};

StatusOr<Wire> ParseDtype(const std::string& s) {
  if (s == "bf16") return Wire{DType::kBF16, moe::v1::DTYPE_BF16, "BF16"};
  if (s == "f16") return Wire{DType::kF16, moe::v1::DTYPE_F16, "FP16"};
  if (s == "f32") return Wire{DType::kF32, moe::v1::DTYPE_F32, "FP32"};
  return absl::InvalidArgumentError(absl::StrCat("--dtype: expected bf16, f16 or f32, got ", s));
}

int Fail(const Status& s) {
  std::cerr << "moe-swarm client: " << server::StatusCodeName(static_cast<int>(s.code())) << ": "
            << s.message() << "\n";
  return 1;
}

}  // namespace

int RunClient(const ClientOptions& o) {
  StatusOr<Wire> wire = ParseDtype(o.dtype);
  if (!wire.ok()) return Fail(wire.status());
  if (o.tokens < 1) return Fail(absl::InvalidArgumentError("--tokens: expected >= 1"));
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(-1);
  args.SetMaxSendMessageSize(-1);
  auto channel = grpc::CreateCustomChannel(o.address, grpc::InsecureChannelCredentials(), args);
  auto native = moe::v1::MoeService::NewStub(channel);
  auto deadline = [&] {
    return std::chrono::system_clock::now() + std::chrono::milliseconds(o.timeout_ms);
  };

  // The model's spec.
  moe::v1::GetModelResponse info;
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(deadline());
    moe::v1::GetModelRequest req;
    req.set_model(o.model);
    grpc::Status s = native->GetModel(&ctx, req, &info);
    if (!s.ok()) return Fail(server::FromGrpcStatus(s));
  }
  const moe::v1::ModelInfo& m = info.model();
  int layer = o.layer >= 0 ? o.layer : (m.moe_layers_size() > 0 ? m.moe_layers(0) : 0);
  std::cout << "model " << m.name() << " (" << m.family() << "), hidden " << m.hidden() << ", "
            << m.num_experts() << " experts, top-" << m.top_k() << ", engine " << m.engine()
            << (m.ready() ? ", ready" : ", NOT ready") << "\n";

  // Input: a file of raw bytes, or N(0, 1) values.
  size_t elems = static_cast<size_t>(o.tokens) * static_cast<size_t>(m.hidden());
  size_t nbytes = elems * DTypeSize(wire->dtype);
  std::string input;
  if (!o.input.empty()) {
    std::ifstream in(o.input, std::ios::binary);
    if (!in) return Fail(absl::NotFoundError(absl::StrCat("--input: cannot read ", o.input)));
    input.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    if (input.size() != nbytes) {
      return Fail(absl::InvalidArgumentError(
          absl::StrCat("--input: expected ", nbytes, " bytes (", o.tokens, " x ", m.hidden(), " x ",
                       o.dtype, "), the file has ", input.size())));
    }
  } else {
    std::mt19937_64 rng(o.seed);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::vector<float> f(elems);
    for (float& v : f) v = normal(rng);
    input.resize(nbytes);
    ConvertFromF32(f.data(), wire->dtype, input.data(), elems);
  }

  std::vector<double> latencies_ms;
  std::string output;
  std::vector<int32_t> ids;
  std::vector<float> weights;
  int top_k = m.top_k();
  for (int i = 0; i < std::max(1, o.repeat); ++i) {
    grpc::ClientContext ctx;
    ctx.set_deadline(deadline());
    grpc::Status s;
    Clock::time_point t0 = Clock::now();
    if (o.api == "kserve") {
      auto kserve = inference::GRPCInferenceService::NewStub(channel);
      inference::ModelInferRequest req;
      req.set_model_name(absl::StrCat(m.name(), ".layer", layer));
      req.set_id(absl::StrCat("client-", i));
      auto* in = req.add_inputs();
      in->set_name("input");
      in->set_datatype(wire->kserve);
      in->add_shape(o.tokens);
      in->add_shape(m.hidden());
      req.add_raw_input_contents(input);
      req.add_outputs()->set_name("output");
      if (o.routing) {
        req.add_outputs()->set_name("expert_ids");
        req.add_outputs()->set_name("expert_weights");
      }
      inference::ModelInferResponse resp;
      s = kserve->ModelInfer(&ctx, req, &resp);
      if (s.ok()) {
        output = resp.raw_output_contents(0);
        if (o.routing) {
          const std::string& a = resp.raw_output_contents(1);
          const std::string& b = resp.raw_output_contents(2);
          ids.resize(a.size() / 4);
          weights.resize(b.size() / 4);
          std::memcpy(ids.data(), a.data(), a.size());
          std::memcpy(weights.data(), b.data(), b.size());
        }
      }
    } else if (o.api == "native") {
      moe::v1::ForwardRequest req;
      req.set_request_id(absl::StrCat("client-", i));
      req.set_model(m.name());
      req.set_layer(layer);
      req.set_return_routing(o.routing);
      auto* t = req.mutable_hidden_states();
      t->set_dtype(wire->native);
      t->add_shape(o.tokens);
      t->add_shape(m.hidden());
      t->set_data(input);
      moe::v1::ForwardResponse resp;
      s = native->Forward(&ctx, req, &resp);
      if (s.ok()) {
        output = resp.hidden_states().data();
        ids.assign(resp.routing().expert_ids().begin(), resp.routing().expert_ids().end());
        weights.assign(resp.routing().expert_weights().begin(),
                       resp.routing().expert_weights().end());
      }
    } else {
      return Fail(absl::InvalidArgumentError("--api: expected native or kserve"));
    }
    double ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
    if (!s.ok()) return Fail(server::FromGrpcStatus(s));
    latencies_ms.push_back(ms);
  }

  std::sort(latencies_ms.begin(), latencies_ms.end());
  std::cout << "layer " << layer << ", " << o.tokens << " tokens " << o.dtype << " over " << o.api
            << ": latency min " << latencies_ms.front() << " ms, median "
            << latencies_ms[latencies_ms.size() / 2] << " ms, max " << latencies_ms.back()
            << " ms (" << latencies_ms.size() << " requests)\n";
  if (o.routing && !ids.empty()) {
    for (int64_t tkn = 0; tkn < o.tokens; ++tkn) {
      std::cout << "  token " << tkn << ":";
      for (int j = 0; j < top_k; ++j) {
        size_t k = static_cast<size_t>(tkn * top_k + j);
        std::cout << " expert " << ids[k] << " (" << weights[k] << ")";
      }
      std::cout << "\n";
    }
  }
  std::vector<float> f(elems);
  ConvertToF32(wire->dtype, output.data(), f.data(), elems);
  double sq = 0;
  for (float v : f) sq += static_cast<double>(v) * v;
  std::cout << "output [" << o.tokens << ", " << m.hidden() << "]: rms "
            << std::sqrt(sq / static_cast<double>(elems)) << ", first values";
  for (size_t i = 0; i < std::min<size_t>(4, elems); ++i) std::cout << " " << f[i];
  std::cout << "\n";
  if (!o.output.empty()) {
    std::ofstream out(o.output, std::ios::binary);
    out.write(output.data(), static_cast<std::streamsize>(output.size()));
    if (!out) return Fail(absl::InternalError(absl::StrCat("--output: cannot write ", o.output)));
  }
  return 0;
}

}  // namespace moe::cli
