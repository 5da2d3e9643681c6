// The two reactor shapes every RPC of the front end uses (gRPC callback API, one object per RPC):
//   UnaryCall     a unary RPC finished later, from whatever thread completes its work;
//   StreamCall    a bidirectional stream of independent requests, each answered by exactly one
//                 response, in completion order; failures are answered in-band and the stream
//                 stays up.
// Neither ever blocks a gRPC thread: work completes through callbacks.
#pragma once

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "moe/common/logging.h"
#include "moe/server/backend.h"
#include "moe/server/status_convert.h"

namespace moe::server {

// Thread safety: cancelled() may be read from any thread; Finish() once, from any thread.
class UnaryCall : public grpc::ServerUnaryReactor {
 public:
  // Takes the request id from the client's `x-request-id` / `traceparent` metadata (or makes one)
  // and echoes it in the response's initial metadata as `x-request-id`.
  UnaryCall(grpc::CallbackServerContext* context, Backend* backend)
      : arrival_(Clock::now()),
        cancel_(std::make_shared<CancelScope>(backend)),
        request_id_(RequestIdOf(*context)) {
    context->AddInitialMetadata("x-request-id", request_id_);
  }
  const std::shared_ptr<CancelScope>& cancel() const { return cancel_; }
  Clock::time_point arrival() const { return arrival_; }
  const std::string& request_id() const { return request_id_; }

  // Finish() with errors annotated " [request_id=<id>]" so a client can quote it.
  void FinishWith(const Status& status) {
    Finish(ToGrpcStatus(log::AnnotateWithRequestId(status, request_id_)));
  }

  void OnCancel() override { cancel_->Cancel(); }
  void OnDone() override { delete this; }

 private:
  static std::string RequestIdOf(const grpc::CallbackServerContext& context) {
    auto get = [&](const char* key) {
      auto it = context.client_metadata().find(key);
      return it == context.client_metadata().end()
                 ? std::string()
                 : std::string(it->second.data(), it->second.size());
    };
    return log::RequestIdFromMetadata(get("traceparent"), get("x-request-id"));
  }

  const Clock::time_point arrival_;
  const std::shared_ptr<CancelScope> cancel_;
  const std::string request_id_;
};

// Thread safety: gRPC may run OnReadDone and OnWriteDone at once, on different threads, and Emit
// (the completion of each request) comes from any thread; `mu_` guards the write queue and the
// counters. Each decision to finish is taken in the same critical section as the state change
// that allows it, so exactly one thread finishes and none touches the reactor afterwards.
template <class Request, class Response>
class StreamCall : public grpc::ServerBidiReactor<Request, Response> {
 public:
  // Answers one request: calls `emit` exactly once, from any thread, possibly inline.
  using Emit = std::function<void(Response&&)>;
  using Handle = std::function<void(Request&& request, Clock::time_point arrival,
                                    const std::shared_ptr<CancelScope>& cancel, Emit emit)>;

  StreamCall(Backend* backend, Handle handle)
      : handle_(std::move(handle)), cancel_(std::make_shared<CancelScope>(backend)) {
    this->StartRead(&incoming_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      bool finish;
      {
        std::lock_guard<std::mutex> lock(mu_);
        reads_done_ = true;
        finish = TakeFinishLocked();
      }
      if (finish) this->Finish(grpc::Status::OK);
      return;
    }
    Clock::time_point arrival = Clock::now();
    Request request = std::move(incoming_);
    incoming_.Clear();
    bool read_more;
    {
      std::lock_guard<std::mutex> lock(mu_);
      ++outstanding_;
      read_more = outstanding_ < kMaxOutstanding;
      if (!read_more) read_paused_ = true;
    }
    handle_(std::move(request), arrival, cancel_,
            [this](Response&& response) { Enqueue(std::move(response)); });
    if (read_more) this->StartRead(&incoming_);
  }

  void OnWriteDone(bool ok) override {
    Response* next = nullptr;
    bool resume_read = false;
    bool finish = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      queue_.pop_front();  // the one just written
      --outstanding_;
      if (!ok) {
        broken_ = true;
        outstanding_ -= static_cast<int64_t>(queue_.size());
        queue_.clear();
      }
      if (!queue_.empty()) {
        next = &queue_.front();
      } else {
        writing_ = false;
      }
      // Resume a paused reader when the backlog halves, or when responses can no longer be
      // written (the read then ends the stream).
      if (read_paused_ && (outstanding_ < kMaxOutstanding / 2 || broken_)) {
        read_paused_ = false;
        resume_read = true;
      }
      finish = TakeFinishLocked();
    }
    if (next != nullptr) this->StartWrite(next);
    if (resume_read) this->StartRead(&incoming_);
    if (finish) this->Finish(grpc::Status::OK);
  }

  void OnCancel() override { cancel_->Cancel(); }
  void OnDone() override { delete this; }

 private:
  // At most this many requests of one stream in flight; reading pauses beyond it.
  static constexpr int64_t kMaxOutstanding = 4096;

  // After the lock is released, `this` is touched only by the thread that holds a reason to keep
  // the RPC open: the writer it just started (`writing_` blocks the finish), or the one thread that
  // finishes. Any other access races the finish: another thread's OnWriteDone may finish the RPC
  // and gRPC then deletes the reactor (OnDone).
  void Enqueue(Response&& response) {
    Response* start = nullptr;
    bool finish = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (broken_) {
        --outstanding_;
        finish = TakeFinishLocked();
      } else {
        queue_.push_back(std::move(response));
        if (!writing_) {
          writing_ = true;
          start = &queue_.front();
        }
      }
    }
    // std::deque keeps element addresses stable under push_back/pop_front.
    if (start != nullptr) this->StartWrite(start);
    if (finish) this->Finish(grpc::Status::OK);
  }

  // True once (then `finished_`) when nothing is left to read, answer or write.
  bool TakeFinishLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (reads_done_ && outstanding_ == 0 && !writing_ && !finished_) {
      finished_ = true;
      return true;
    }
    return false;
  }

  const Handle handle_;
  const std::shared_ptr<CancelScope> cancel_;
  Request incoming_;

  std::mutex mu_;
  std::deque<Response> queue_ ABSL_GUARDED_BY(mu_);  // front is being written while writing_
  int64_t outstanding_ ABSL_GUARDED_BY(mu_) = 0;     // read, not yet written (or dropped)
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool reads_done_ ABSL_GUARDED_BY(mu_) = false;
  bool read_paused_ ABSL_GUARDED_BY(mu_) = false;
  bool broken_ ABSL_GUARDED_BY(mu_) = false;  // a write failed: responses are dropped
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace moe::server
