// KServe v2 / Open Inference Protocol (Triton's inference.GRPCInferenceService) over the callback
// API. One KServe model per MoE layer, "<model>.layer<L>" (docs/API.md).
//
// Thread safety: gRPC calls the handlers concurrently; the service holds only immutable state and
// a Core (itself thread-safe).
#pragma once

#include "core.h"
#include "inference/grpc_service.grpc.pb.h"

namespace moe::server {

class KserveService final : public inference::GRPCInferenceService::CallbackService {
 public:
  KserveService(Core* core, std::string server_version)
      : core_(core), version_(std::move(server_version)) {}

  grpc::ServerUnaryReactor* ServerLive(grpc::CallbackServerContext*,
                                       const inference::ServerLiveRequest*,
                                       inference::ServerLiveResponse*) override;
  grpc::ServerUnaryReactor* ServerReady(grpc::CallbackServerContext*,
                                        const inference::ServerReadyRequest*,
                                        inference::ServerReadyResponse*) override;
  grpc::ServerUnaryReactor* ModelReady(grpc::CallbackServerContext*,
                                       const inference::ModelReadyRequest*,
                                       inference::ModelReadyResponse*) override;
  grpc::ServerUnaryReactor* ServerMetadata(grpc::CallbackServerContext*,
                                           const inference::ServerMetadataRequest*,
                                           inference::ServerMetadataResponse*) override;
  grpc::ServerUnaryReactor* ModelMetadata(grpc::CallbackServerContext*,
                                          const inference::ModelMetadataRequest*,
                                          inference::ModelMetadataResponse*) override;
  grpc::ServerUnaryReactor* ModelInfer(grpc::CallbackServerContext*,
                                       const inference::ModelInferRequest*,
                                       inference::ModelInferResponse*) override;
  grpc::ServerBidiReactor<inference::ModelInferRequest, inference::ModelStreamInferResponse>*
  ModelStreamInfer(grpc::CallbackServerContext*) override;
  grpc::ServerUnaryReactor* ModelConfig(grpc::CallbackServerContext*,
                                        const inference::ModelConfigRequest*,
                                        inference::ModelConfigResponse*) override;
  grpc::ServerUnaryReactor* ModelStatistics(grpc::CallbackServerContext*,
                                            const inference::ModelStatisticsRequest*,
                                            inference::ModelStatisticsResponse*) override;
  grpc::ServerUnaryReactor* RepositoryIndex(grpc::CallbackServerContext*,
                                            const inference::RepositoryIndexRequest*,
                                            inference::RepositoryIndexResponse*) override;

 private:
  Core* const core_;
  const std::string version_;
};

// Validates `request`, sizes `response`'s outputs and fills `out` (pointers into both) and
// `timeout_us` (the "timeout" parameter, 0 if absent); the layer output goes to `scratch` when
// the request did not ask for it. `out->layer` is set as soon as the model name resolves.
// NOT_FOUND / INVALID_ARGUMENT naming the field on failure.
Status PrepareInfer(const Catalog& catalog, const inference::ModelInferRequest& request,
                    inference::ModelInferResponse* response, LayerRequest* out,
                    uint64_t* timeout_us, std::string* scratch);

}  // namespace moe::server
