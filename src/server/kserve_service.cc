#include "kserve_service.h"

#include <memory>

#include "moe/server/status_convert.h"
#include "reactors.h"
#include "tensor_check.h"

namespace moe::server {

namespace {

constexpr char kInput[] = "input";
constexpr char kOutput[] = "output";
constexpr char kExpertIds[] = "expert_ids";
constexpr char kExpertWeights[] = "expert_weights";

std::string Label(const inference::ModelInferRequest& r, const std::string& call_id = "") {
  return absl::StrCat("KServe request \"", r.id(), "\" (model \"", r.model_name(), "\")",
                      call_id.empty() ? "" : " [request_id=" + call_id + "]");
}

// An integer request parameter (int64 or uint64 form, as clients differ), or `fallback`.
StatusOr<int64_t> IntParameter(const inference::ModelInferRequest& r, const std::string& name,
                               int64_t fallback) {
  auto it = r.parameters().find(name);
  if (it == r.parameters().end()) return fallback;
  const inference::InferParameter& p = it->second;
  switch (p.parameter_choice_case()) {
    case inference::InferParameter::kInt64Param:
      return p.int64_param();
    case inference::InferParameter::kUint64Param:
      if (p.uint64_param() > static_cast<uint64_t>(INT64_MAX)) break;
      return static_cast<int64_t>(p.uint64_param());
    default:
      break;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("parameters.", name, ": expected a non-negative integer"));
}

}  // namespace

Status PrepareInfer(const Catalog& catalog, const inference::ModelInferRequest& request,
                    inference::ModelInferResponse* response, LayerRequest* out,
                    uint64_t* timeout_us, std::string* scratch) {
  MOE_ASSIGN_OR_RETURN(int layer,
                       catalog.ResolveKserve(request.model_name(), request.model_version()));
  out->layer = layer;
  const MoeSpec& spec = catalog.spec();
  if (request.inputs_size() != 1 || request.inputs(0).name() != kInput) {
    return absl::InvalidArgumentError(
        absl::StrCat("inputs: expected exactly one input named \"input\", got ",
                     request.inputs_size(), request.inputs_size() > 0 ? " starting with \"" : "",
                     request.inputs_size() > 0 ? request.inputs(0).name() + "\"" : ""));
  }
  const auto& in = request.inputs(0);
  MOE_ASSIGN_OR_RETURN(DType dtype, ParseKserveDatatype(in.datatype(), "inputs[0].datatype"));
  if (request.raw_input_contents_size() != 1) {
    if (in.has_contents()) {
      return absl::InvalidArgumentError(
          "inputs[0].contents: typed contents are not supported; send the tensor in "
          "raw_input_contents");
    }
    return absl::InvalidArgumentError(
        absl::StrCat("raw_input_contents: expected 1 entry (one per input), got ",
                     request.raw_input_contents_size()));
  }
  const std::string& raw = request.raw_input_contents(0);
  MOE_ASSIGN_OR_RETURN(int64_t n_tokens,
                       CheckHiddenTensor("inputs[0]", "raw_input_contents[0]", in.shape(), dtype,
                                         raw.size(), spec.hidden, catalog.max_request_tokens()));
  MOE_ASSIGN_OR_RETURN(int64_t priority, IntParameter(request, "priority", 0));
  MOE_ASSIGN_OR_RETURN(int64_t timeout, IntParameter(request, "timeout", 0));
  if (priority < 0 || timeout < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "parameters.", priority < 0 ? "priority" : "timeout", ": expected a non-negative integer"));
  }

  // Requested outputs, in order; none named = all of them (as Triton does).
  std::vector<std::string> names;
  for (int i = 0; i < request.outputs_size(); ++i) {
    const std::string& n = request.outputs(i).name();
    if (n != kOutput && n != kExpertIds && n != kExpertWeights) {
      return absl::InvalidArgumentError(absl::StrCat(
          "outputs[", i,
          "].name: expected \"output\", \"expert_ids\" or \"expert_weights\", got \"", n, "\""));
    }
    if (std::find(names.begin(), names.end(), n) != names.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("outputs[", i, "].name: \"", n, "\" requested twice"));
    }
    names.push_back(n);
  }
  if (names.empty()) names = {kOutput, kExpertIds, kExpertWeights};

  response->set_model_name(request.model_name());
  response->set_model_version("1");
  response->set_id(request.id());
  out->layer = layer;
  out->dtype = dtype;
  out->n_tokens = n_tokens;
  out->input = raw.data();
  // Triton's levels: 0 = the default; 1 is the highest, larger numbers are lower.
  out->priority = priority == 1 ? 1 : priority >= 3 ? -1 : 0;
  *timeout_us = static_cast<uint64_t>(timeout);
  for (const std::string& n : names) {
    auto* o = response->add_outputs();
    o->set_name(n);
    o->add_shape(n_tokens);
    std::string* bytes = response->add_raw_output_contents();
    if (n == kOutput) {
      o->set_datatype(in.datatype());
      o->add_shape(spec.hidden);
      bytes->resize(raw.size());
      out->output = bytes->data();
    } else if (n == kExpertIds) {
      o->set_datatype("INT32");
      o->add_shape(spec.top_k());
      bytes->resize(static_cast<size_t>(n_tokens * spec.top_k()) * sizeof(int32_t));
      out->expert_ids = reinterpret_cast<int32_t*>(bytes->data());
    } else {
      o->set_datatype("FP32");
      o->add_shape(spec.top_k());
      bytes->resize(static_cast<size_t>(n_tokens * spec.top_k()) * sizeof(float));
      out->expert_weights = reinterpret_cast<float*>(bytes->data());
    }
  }
  // The engine always writes the layer output; when not requested it goes to `scratch`.
  if (out->output == nullptr) {
    scratch->resize(raw.size());
    out->output = scratch->data();
  }
  return absl::OkStatus();
}

namespace {

// Finishes a trivial RPC (answered inline) with `status`.
grpc::ServerUnaryReactor* Done(grpc::CallbackServerContext* context, const Status& status) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(ToGrpcStatus(status));
  return reactor;
}

}  // namespace

grpc::ServerUnaryReactor* KserveService::ServerLive(grpc::CallbackServerContext* context,
                                                    const inference::ServerLiveRequest*,
                                                    inference::ServerLiveResponse* response) {
  response->set_live(true);
  return Done(context, absl::OkStatus());
}

grpc::ServerUnaryReactor* KserveService::ServerReady(grpc::CallbackServerContext* context,
                                                     const inference::ServerReadyRequest*,
                                                     inference::ServerReadyResponse* response) {
  response->set_ready(core_->ready());
  return Done(context, absl::OkStatus());
}

grpc::ServerUnaryReactor* KserveService::ModelReady(grpc::CallbackServerContext* context,
                                                    const inference::ModelReadyRequest* request,
                                                    inference::ModelReadyResponse* response) {
  StatusOr<int> layer = core_->catalog().ResolveKserve(request->name(), request->version());
  if (!layer.ok()) return Done(context, layer.status());
  response->set_ready(core_->ready());
  return Done(context, absl::OkStatus());
}

grpc::ServerUnaryReactor* KserveService::ServerMetadata(
    grpc::CallbackServerContext* context, const inference::ServerMetadataRequest*,
    inference::ServerMetadataResponse* response) {
  response->set_name("moe-swarm");
  response->set_version(version_);
  response->add_extensions("statistics");
  response->add_extensions("model_repository");
  response->add_extensions("moe_layers");
  return Done(context, absl::OkStatus());
}

grpc::ServerUnaryReactor* KserveService::ModelMetadata(
    grpc::CallbackServerContext* context, const inference::ModelMetadataRequest* request,
    inference::ModelMetadataResponse* response) {
  StatusOr<int> layer = core_->catalog().ResolveKserve(request->name(), request->version());
  if (!layer.ok()) return Done(context, layer.status());
  core_->catalog().FillMetadata(*layer, response);
  return Done(context, absl::OkStatus());
}

grpc::ServerUnaryReactor* KserveService::ModelConfig(grpc::CallbackServerContext* context,
                                                     const inference::ModelConfigRequest* request,
                                                     inference::ModelConfigResponse* response) {
  StatusOr<int> layer = core_->catalog().ResolveKserve(request->name(), request->version());
  if (!layer.ok()) return Done(context, layer.status());
  core_->catalog().FillConfig(*layer, response->mutable_config());
  return Done(context, absl::OkStatus());
}

grpc::ServerUnaryReactor* KserveService::ModelStatistics(
    grpc::CallbackServerContext* context, const inference::ModelStatisticsRequest* request,
    inference::ModelStatisticsResponse* response) {
  const Catalog& catalog = core_->catalog();
  std::vector<int> layers;
  if (request->name().empty()) {
    layers = catalog.spec().moe_layers;
  } else {
    StatusOr<int> layer = catalog.ResolveKserve(request->name(), request->version());
    if (!layer.ok()) return Done(context, layer.status());
    layers = {*layer};
  }
  for (int layer : layers) {
    inference::ModelStatistics* s = response->add_model_stats();
    s->set_name(catalog.KserveName(layer));
    s->set_version("1");
    core_->stats().Fill(layer, s);
  }
  return Done(context, absl::OkStatus());
}

grpc::ServerUnaryReactor* KserveService::RepositoryIndex(
    grpc::CallbackServerContext* context, const inference::RepositoryIndexRequest* request,
    inference::RepositoryIndexResponse* response) {
  bool ready = core_->ready();
  if (request->ready() && !ready) return Done(context, absl::OkStatus());
  for (const std::string& name : core_->catalog().KserveNames()) {
    auto* m = response->add_models();
    m->set_name(name);
    m->set_version("1");
    m->set_state(ready ? "READY" : "UNAVAILABLE");
    if (!ready) m->set_reason(core_->draining() ? "draining" : "loading");
  }
  return Done(context, absl::OkStatus());
}

grpc::ServerUnaryReactor* KserveService::ModelInfer(grpc::CallbackServerContext* context,
                                                    const inference::ModelInferRequest* request,
                                                    inference::ModelInferResponse* response) {
  auto* call = new UnaryCall(context, core_->backend());
  LayerRequest lr;
  uint64_t timeout_us = 0;
  auto scratch = std::make_shared<std::string>();
  Status s = PrepareInfer(core_->catalog(), *request, response, &lr, &timeout_us, scratch.get());
  if (!s.ok()) {
    core_->RecordRejected(lr.layer, s, call->arrival(), Label(*request, call->request_id()));
    call->FinishWith(s);
    return call;
  }
  lr.arrival = call->arrival();
  lr.deadline = EffectiveDeadline(lr.arrival, timeout_us, core_->catalog().default_timeout_us(),
                                  context->deadline());
  lr.cancel = call->cancel();
  core_->Run(
      lr, Label(*request, call->request_id()),
      [call, scratch](const Status& status, const LayerTiming&) { call->FinishWith(status); });
  return call;
}

grpc::ServerBidiReactor<inference::ModelInferRequest, inference::ModelStreamInferResponse>*
KserveService::ModelStreamInfer(grpc::CallbackServerContext* context) {
  using Call = StreamCall<inference::ModelInferRequest, inference::ModelStreamInferResponse>;
  Core* core = core_;
  auto deadline = context->deadline();
  return new Call(core->backend(), [core, deadline](inference::ModelInferRequest&& request,
                                                    Clock::time_point arrival,
                                                    const std::shared_ptr<CancelScope>& cancel,
                                                    Call::Emit emit) {
    struct Item {
      inference::ModelInferRequest request;
      inference::ModelStreamInferResponse response;
      std::string scratch;  // the layer output when not requested
    };
    auto item = std::make_shared<Item>();
    item->request = std::move(request);
    auto fail = [item, emit](const Status& s) {
      inference::ModelInferResponse* r = item->response.mutable_infer_response();
      r->Clear();
      r->set_model_name(item->request.model_name());
      r->set_model_version(item->request.model_version());
      r->set_id(item->request.id());
      item->response.set_error_message(
          absl::StrCat(absl::StatusCodeToString(s.code()), ": ", std::string(s.message())));
      emit(std::move(item->response));
    };
    LayerRequest lr;
    uint64_t timeout_us = 0;
    Status s = PrepareInfer(core->catalog(), item->request, item->response.mutable_infer_response(),
                            &lr, &timeout_us, &item->scratch);
    if (!s.ok()) {
      core->RecordRejected(lr.layer, s, arrival, Label(item->request));
      fail(s);
      return;
    }
    lr.arrival = arrival;
    lr.deadline =
        EffectiveDeadline(arrival, timeout_us, core->catalog().default_timeout_us(), deadline);
    lr.cancel = cancel;
    core->Run(lr, Label(item->request),
              [item, emit, fail](const Status& status, const LayerTiming&) {
                if (!status.ok()) {
                  fail(status);
                  return;
                }
                emit(std::move(item->response));
              });
  });
}

}  // namespace moe::server
