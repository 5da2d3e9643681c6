// A stand-in for the daemon's moe.v1 service, for testing moe-loadgen without `moe-swarm serve`:
// Forward echoes the input hidden states (no compute) and reports a Timing of 1 batch;
// ForwardStream does the same per message (one at a time, failures as a non-OK `code`); GetModel
// describes a model of the configured hidden size. Requests whose token
// count is in `fail_tokens` get INVALID_ARGUMENT, so error accounting can be tested.
//
// Thread safety: the service's handlers may run concurrently; counters are atomics and the
// options are immutable after construction.
#pragma once

#include <atomic>
#include <cstdint>
#include <set>

#include "moe/v1/moe.grpc.pb.h"

namespace moe::loadgen {

struct FakeServiceOptions {
  int hidden = 64;
  int num_layers = 2;
  std::set<int64_t> fail_tokens;  // token counts answered with INVALID_ARGUMENT
};

class FakeMoeService final : public v1::MoeService::CallbackService {
 public:
  explicit FakeMoeService(const FakeServiceOptions& options) : options_(options) {}

  grpc::ServerUnaryReactor* Forward(grpc::CallbackServerContext* ctx, const v1::ForwardRequest* req,
                                    v1::ForwardResponse* resp) override;
  grpc::ServerBidiReactor<v1::ForwardRequest, v1::ForwardStreamResponse>* ForwardStream(
      grpc::CallbackServerContext* ctx) override;
  grpc::ServerUnaryReactor* GetModel(grpc::CallbackServerContext* ctx,
                                     const v1::GetModelRequest* req,
                                     v1::GetModelResponse* resp) override;

  // The echo of one request (shared by Forward and ForwardStream).
  grpc::Status Echo(const v1::ForwardRequest& req, v1::ForwardResponse* resp);

  int64_t forwards() const { return forwards_.load(); }
  int64_t tokens() const { return tokens_.load(); }

 private:
  const FakeServiceOptions options_;
  std::atomic<int64_t> forwards_{0};
  std::atomic<int64_t> tokens_{0};
};

}  // namespace moe::loadgen
