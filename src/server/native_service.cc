#include "native_service.h"

#include <memory>

#include "moe/server/status_convert.h"
#include "reactors.h"
#include "tensor_check.h"

namespace moe::server {

namespace {

StatusOr<DType> FromWire(moe::v1::DType d) {
  switch (d) {
    case moe::v1::DTYPE_BF16:
      return DType::kBF16;
    case moe::v1::DTYPE_F16:
      return DType::kF16;
    case moe::v1::DTYPE_F32:
      return DType::kF32;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("hidden_states.dtype: expected DTYPE_BF16, DTYPE_F16 or DTYPE_F32, got ",
                       moe::v1::DType_Name(d).empty() ? absl::StrCat(static_cast<int>(d))
                                                      : moe::v1::DType_Name(d)));
  }
}

std::string Label(const moe::v1::ForwardRequest& r, const std::string& call_id = "") {
  return absl::StrCat("moe.v1 request \"", r.request_id(), "\" (layer ", r.layer(), ")",
                      call_id.empty() ? "" : " [request_id=" + call_id + "]");
}

void FillTiming(const LayerTiming& t, Clock::time_point arrival, moe::v1::Timing* out) {
  out->set_queue_us(static_cast<uint64_t>(std::max<int64_t>(0, t.queue_ns / 1000)));
  out->set_compute_us(static_cast<uint64_t>(std::max<int64_t>(0, t.compute_ns / 1000)));
  out->set_total_us(static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - arrival).count()));
  out->set_batches(static_cast<uint32_t>(t.batches));
}

}  // namespace

Status PrepareForward(const Catalog& catalog, const moe::v1::ForwardRequest& request,
                      moe::v1::ForwardResponse* response, LayerRequest* out) {
  MOE_RETURN_IF_ERROR(catalog.ResolveNative(request.model(), request.layer()));
  const MoeSpec& spec = catalog.spec();
  const moe::v1::Tensor& in = request.hidden_states();
  MOE_ASSIGN_OR_RETURN(DType dtype, FromWire(in.dtype()));
  MOE_ASSIGN_OR_RETURN(
      int64_t n_tokens,
      CheckHiddenTensor("hidden_states", "hidden_states.data", in.shape(), dtype, in.data().size(),
                        spec.hidden, catalog.max_request_tokens()));
  response->set_request_id(request.request_id());
  response->set_model(catalog.model().name);
  response->set_layer(request.layer());
  moe::v1::Tensor* o = response->mutable_hidden_states();
  o->set_dtype(in.dtype());
  o->add_shape(n_tokens);
  o->add_shape(spec.hidden);
  o->mutable_data()->resize(in.data().size());

  out->layer = request.layer();
  out->dtype = dtype;
  out->n_tokens = n_tokens;
  out->input = in.data().data();
  out->output = o->mutable_data()->data();
  if (request.return_routing()) {
    moe::v1::Routing* r = response->mutable_routing();
    int64_t n = n_tokens * spec.top_k();
    r->set_top_k(spec.top_k());
    r->mutable_expert_ids()->Resize(static_cast<int>(n), -1);
    r->mutable_expert_weights()->Resize(static_cast<int>(n), 0.0f);
    out->expert_ids = r->mutable_expert_ids()->mutable_data();
    out->expert_weights = r->mutable_expert_weights()->mutable_data();
  }
  out->priority = request.parameters().priority();
  return absl::OkStatus();
}

grpc::ServerUnaryReactor* NativeService::Forward(grpc::CallbackServerContext* context,
                                                 const moe::v1::ForwardRequest* request,
                                                 moe::v1::ForwardResponse* response) {
  auto* call = new UnaryCall(context, core_->backend());
  LayerRequest lr;
  Status s = PrepareForward(core_->catalog(), *request, response, &lr);
  if (!s.ok()) {
    core_->RecordRejected(
        core_->catalog().spec().IsMoeLayer(request->layer()) ? request->layer() : -1, s,
        call->arrival(), Label(*request, call->request_id()));
    call->FinishWith(s);
    return call;
  }
  lr.arrival = call->arrival();
  lr.deadline = EffectiveDeadline(lr.arrival, request->parameters().timeout_us(),
                                  core_->catalog().default_timeout_us(), context->deadline());
  lr.cancel = call->cancel();
  core_->Run(lr, Label(*request, call->request_id()),
             [call, response](const Status& status, const LayerTiming& t) {
               if (status.ok()) {
                 FillTiming(t, call->arrival(), response->mutable_timing());
                 call->Finish(grpc::Status::OK);
               } else {
                 call->FinishWith(status);
               }
             });
  return call;
}

grpc::ServerBidiReactor<moe::v1::ForwardRequest, moe::v1::ForwardStreamResponse>*
NativeService::ForwardStream(grpc::CallbackServerContext* context) {
  using Call = StreamCall<moe::v1::ForwardRequest, moe::v1::ForwardStreamResponse>;
  Core* core = core_;
  auto deadline = context->deadline();
  return new Call(
      core->backend(),
      [core, deadline](moe::v1::ForwardRequest&& request, Clock::time_point arrival,
                       const std::shared_ptr<CancelScope>& cancel, Call::Emit emit) {
        // The request and its response live here until the response is emitted.
        struct Item {
          moe::v1::ForwardRequest request;
          moe::v1::ForwardStreamResponse response;
        };
        auto item = std::make_shared<Item>();
        item->request = std::move(request);
        item->response.set_request_id(item->request.request_id());
        auto fail = [item, emit](const Status& s) {
          item->response.clear_response();
          item->response.set_code(static_cast<int>(s.code()));
          item->response.set_error_message(std::string(s.message()));
          emit(std::move(item->response));
        };
        LayerRequest lr;
        Status s =
            PrepareForward(core->catalog(), item->request, item->response.mutable_response(), &lr);
        if (!s.ok()) {
          int layer = item->request.layer();
          core->RecordRejected(core->catalog().spec().IsMoeLayer(layer) ? layer : -1, s, arrival,
                               Label(item->request));
          fail(s);
          return;
        }
        lr.arrival = arrival;
        lr.deadline = EffectiveDeadline(arrival, item->request.parameters().timeout_us(),
                                        core->catalog().default_timeout_us(), deadline);
        lr.cancel = cancel;
        core->Run(lr, Label(item->request),
                  [item, emit, fail, arrival](const Status& status, const LayerTiming& t) {
                    if (!status.ok()) {
                      fail(status);
                      return;
                    }
                    FillTiming(t, arrival, item->response.mutable_response()->mutable_timing());
                    emit(std::move(item->response));
                  });
      });
}

grpc::ServerUnaryReactor* NativeService::GetModel(grpc::CallbackServerContext* context,
                                                  const moe::v1::GetModelRequest* request,
                                                  moe::v1::GetModelResponse* response) {
  grpc::ServerUnaryReactor* call = context->DefaultReactor();
  const Catalog& catalog = core_->catalog();
  if (!request->model().empty() && request->model() != catalog.model().name) {
    call->Finish(ToGrpcStatus(absl::NotFoundError(absl::StrCat("model: \"", request->model(),
                                                               "\" is not served; expected \"",
                                                               catalog.model().name, "\""))));
    return call;
  }
  catalog.FillModelInfo(core_->ready(), response->mutable_model());
  call->Finish(grpc::Status::OK);
  return call;
}

}  // namespace moe::server
