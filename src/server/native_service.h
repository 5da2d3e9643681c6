// moe.v1.MoeService over the callback API: Forward, ForwardStream, GetModel.
//
// Thread safety: gRPC calls the handlers concurrently; the service holds only immutable state and
// a Core (itself thread-safe).
#pragma once

#include "core.h"
#include "moe/v1/moe.grpc.pb.h"

namespace moe::server {

class NativeService final : public moe::v1::MoeService::CallbackService {
 public:
  explicit NativeService(Core* core) : core_(core) {}

  grpc::ServerUnaryReactor* Forward(grpc::CallbackServerContext* context,
                                    const moe::v1::ForwardRequest* request,
                                    moe::v1::ForwardResponse* response) override;
  grpc::ServerBidiReactor<moe::v1::ForwardRequest, moe::v1::ForwardStreamResponse>* ForwardStream(
      grpc::CallbackServerContext* context) override;
  grpc::ServerUnaryReactor* GetModel(grpc::CallbackServerContext* context,
                                     const moe::v1::GetModelRequest* request,
                                     moe::v1::GetModelResponse* response) override;

 private:
  Core* const core_;
};

// Validates `request` against the served model, sizes `response`'s buffers and fills `out` with
// pointers into both. NOT_FOUND / INVALID_ARGUMENT naming the field on failure.
Status PrepareForward(const Catalog& catalog, const moe::v1::ForwardRequest& request,
                      moe::v1::ForwardResponse* response, LayerRequest* out);

}  // namespace moe::server
