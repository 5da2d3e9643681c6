// Echo implementation of moe.v1 MoeService for the load generator's tests.
#include "fake_moe_service.h"

namespace moe::loadgen {

grpc::ServerUnaryReactor* FakeMoeService::Forward(grpc::CallbackServerContext* ctx,
                                                  const v1::ForwardRequest* req,
                                                  v1::ForwardResponse* resp) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  const v1::Tensor& in = req->hidden_states();
  if (in.shape_size() != 2 || in.shape(1) != options_.hidden) {
    reactor->Finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "shape must be [n, hidden]"));
    return reactor;
  }
  const int64_t n = in.shape(0);
  if (options_.fail_tokens.count(n) > 0) {
    reactor->Finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "injected failure"));
    return reactor;
  }
  forwards_.fetch_add(1);
  tokens_.fetch_add(n);
  resp->set_request_id(req->request_id());
  resp->set_model("fake");
  resp->set_layer(req->layer());
  *resp->mutable_hidden_states() = in;
  v1::Timing* t = resp->mutable_timing();
  t->set_queue_us(1);
  t->set_compute_us(2);
  t->set_total_us(3);
  t->set_batches(1);
  reactor->Finish(grpc::Status::OK);
  return reactor;
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
