// How moe-loadgen sends one Forward: a unary RPC per request (`--api unary`), or a message on a
// long-lived ForwardStream per channel (`--api stream`, responses matched by request_id).
#pragma once

#include <grpcpp/grpcpp.h>

#include <functional>
#include <memory>

#include "moe/common/status.h"
#include "moe/v1/moe.grpc.pb.h"

namespace moe::loadgen {

// One request's buffers, owned by the caller from Forward() until its `done` has run.
struct RpcBuffers {
  v1::ForwardRequest req;
  v1::ForwardResponse resp;
  std::unique_ptr<grpc::ClientContext> ctx;  // unary only: a fresh context per RPC
};

// Thread safety: Forward() may be called from any thread, also from inside a `done` callback.
class Transport {
 public:
  virtual ~Transport() = default;
  // Sends `b->req` (request_id must be unique among requests in flight on this transport) with a
  // deadline of `timeout_s`; runs `done(status)` exactly once on a gRPC thread, with `b->resp`
  // filled when the status is OK. `b->req` may be consumed.
  virtual void Forward(RpcBuffers* b, double timeout_s,
                       std::function<void(const grpc::Status&)> done) = 0;
  // Call after every `done` has run: ends the stream (half-close, then waits for the server to
  // finish it) and returns its final status; OK for unary.
  virtual Status Close() = 0;
};

std::unique_ptr<Transport> MakeUnaryTransport(std::shared_ptr<grpc::Channel> channel);
// Opens the stream now. Requests carry the deadline as parameters.timeout_us; the stream itself
// has none.
std::unique_ptr<Transport> MakeStreamTransport(std::shared_ptr<grpc::Channel> channel);

}  // namespace moe::loadgen
