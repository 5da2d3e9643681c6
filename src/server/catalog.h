// Names of what is served and their descriptions, for both APIs.
//
// Native API: model "<name>" (or "" when one model is served) + a layer index.
// KServe v2: one model per MoE layer, "<name>.layer<L>", version "1" (or "").
//
// Thread safety: immutable after construction.
#pragma once

#include <string>
#include <vector>

#include "inference/grpc_service.pb.h"
#include "moe/config/options.h"
#include "moe/server/server.h"
#include "moe/v1/moe.pb.h"

namespace moe::server {

class Catalog {
 public:
  Catalog(ServedModel model, config::ServerOptions server, config::SchedulerOptions scheduler,
          int64_t max_request_tokens);

  const ServedModel& model() const { return model_; }
  const MoeSpec& spec() const { return model_.spec; }
  int64_t max_request_tokens() const { return max_request_tokens_; }
  // Timeout of requests that set none (0 = none).
  uint64_t default_timeout_us() const {
    return static_cast<uint64_t>(scheduler_.default_timeout_us);
  }

  // NOT_FOUND unless `model` is "" or the served name and `layer` is one of its MoE layers.
  Status ResolveNative(const std::string& model, int layer) const;
  // The layer a KServe model name addresses. NOT_FOUND for an unknown name or version.
  StatusOr<int> ResolveKserve(const std::string& name, const std::string& version) const;

  // "<name>.layer<L>".
  std::string KserveName(int layer) const;
  // Every KServe model name, by ascending layer.
  std::vector<std::string> KserveNames() const;

  void FillModelInfo(bool ready, moe::v1::ModelInfo* info) const;
  void FillMetadata(int layer, inference::ModelMetadataResponse* out) const;
  void FillConfig(int layer, inference::ModelConfig* out) const;

 private:
  std::string LayerList() const;

  const ServedModel model_;
  const config::ServerOptions server_;
  const config::SchedulerOptions scheduler_;
  const int64_t max_request_tokens_;
};

// KServe datatype names <-> our dtypes ("BF16", "FP16", "FP32").
const char* KserveDatatype(DType dtype);
StatusOr<DType> ParseKserveDatatype(const std::string& name, const std::string& field);

}  // namespace moe::server
