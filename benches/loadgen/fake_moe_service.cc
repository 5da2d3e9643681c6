// Echo implementation of moe.v1 MoeService for the load generator's tests.
#include "fake_moe_service.h"

namespace moe::loadgen {

grpc::Status FakeMoeService::Echo(const v1::ForwardRequest& req, v1::ForwardResponse* resp) {
  const v1::Tensor& in = req.hidden_states();
  if (in.shape_size() != 2 || in.shape(1) != options_.hidden) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "shape must be [n, hidden]");
  }
  const int64_t n = in.shape(0);
  if (options_.fail_tokens.count(n) > 0) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "injected failure");
  }
  forwards_.fetch_add(1);
  tokens_.fetch_add(n);
  resp->set_request_id(req.request_id());
  resp->set_model("fake");
  resp->set_layer(req.layer());
  *resp->mutable_hidden_states() = in;
  v1::Timing* t = resp->mutable_timing();
  t->set_queue_us(1);
  t->set_compute_us(2);
  t->set_total_us(3);
  t->set_batches(1);
  return grpc::Status::OK;
}

grpc::ServerUnaryReactor* FakeMoeService::Forward(grpc::CallbackServerContext* ctx,
                                                  const v1::ForwardRequest* req,
                                                  v1::ForwardResponse* resp) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  reactor->Finish(Echo(*req, resp));
  return reactor;
}

namespace {

// Reads a request, writes its response, reads the next: one message at a time.
class EchoStream final
    : public grpc::ServerBidiReactor<v1::ForwardRequest, v1::ForwardStreamResponse> {
 public:
  explicit EchoStream(FakeMoeService* service) : service_(service) { StartRead(&req_); }
  void OnReadDone(bool ok) override {
    if (!ok) {
      Finish(grpc::Status::OK);  // the client half-closed
      return;
    }
    resp_.Clear();
    resp_.set_request_id(req_.request_id());
    grpc::Status s = service_->Echo(req_, resp_.mutable_response());
    resp_.set_code(static_cast<int>(s.error_code()));
    resp_.set_error_message(s.error_message());
    if (!s.ok()) resp_.clear_response();
    StartWrite(&resp_);
  }
  void OnWriteDone(bool ok) override {
    if (!ok) {
      Finish(grpc::Status(grpc::StatusCode::UNKNOWN, "write failed"));
      return;
    }
    StartRead(&req_);
  }
  void OnDone() override { delete this; }

 private:
  FakeMoeService* service_;
  v1::ForwardRequest req_;
  v1::ForwardStreamResponse resp_;
};

}  // namespace

grpc::ServerBidiReactor<v1::ForwardRequest, v1::ForwardStreamResponse>*
FakeMoeService::ForwardStream(grpc::CallbackServerContext* ctx) {
  return new EchoStream(this);
}

grpc::ServerUnaryReactor* FakeMoeService::GetModel(grpc::CallbackServerContext* ctx,
                                                   const v1::GetModelRequest* req,
                                                   v1::GetModelResponse* resp) {
  v1::ModelInfo* m = resp->mutable_model();
  m->set_name("fake");
  m->set_family("qwen2_moe");
  m->set_hidden(options_.hidden);
  m->set_num_layers(options_.num_layers);
  for (int i = 0; i < options_.num_layers; ++i) m->add_moe_layers(i);
  m->set_engine("fake");
  m->mutable_limits()->set_max_batch_tokens(4096);
  m->set_ready(true);
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

}  // namespace moe::loadgen
