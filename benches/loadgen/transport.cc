// Unary and bidi-stream transports of moe-loadgen over the gRPC callback API.
#include "transport.h"

#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"

namespace moe::loadgen {
namespace {

class UnaryTransport final : public Transport {
 public:
  explicit UnaryTransport(std::shared_ptr<grpc::Channel> channel)
      : stub_(v1::MoeService::NewStub(std::move(channel))) {}

  void Forward(RpcBuffers* b, double timeout_s,
               std::function<void(const grpc::Status&)> done) override {
    b->ctx = std::make_unique<grpc::ClientContext>();
    b->ctx->set_deadline(std::chrono::system_clock::now() +
                         std::chrono::microseconds(static_cast<int64_t>(timeout_s * 1e6)));
    stub_->async()->Forward(b->ctx.get(), &b->req, &b->resp,
                            [done = std::move(done)](grpc::Status s) { done(s); });
  }
  Status Close() override { return absl::OkStatus(); }

 private:
  std::unique_ptr<v1::MoeService::Stub> stub_;
};

// One ForwardStream. Writes go out one at a time from a queue; reads are always pending, and
// each response is matched to its request by request_id.
//
// Thread safety: Forward() runs on any thread; the reactions run on gRPC threads, possibly at
// the same time as each other. The queue, the pending map and the end state are guarded by mu_.
class StreamTransport final
    : public Transport,
      public grpc::ClientBidiReactor<v1::ForwardRequest, v1::ForwardStreamResponse> {
 public:
  explicit StreamTransport(std::shared_ptr<grpc::Channel> channel)
      : stub_(v1::MoeService::NewStub(std::move(channel))) {
    stub_->async()->ForwardStream(&ctx_, this);
    AddHold();  // writes start from outside reactions until Close()
    StartRead(&incoming_);
    StartCall();
  }

  void Forward(RpcBuffers* b, double timeout_s,
               std::function<void(const grpc::Status&)> done) override {
    b->req.mutable_parameters()->set_timeout_us(static_cast<uint64_t>(timeout_s * 1e6));
    auto req = std::make_unique<v1::ForwardRequest>(std::move(b->req));
    const v1::ForwardRequest* first = nullptr;
    bool accepted = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!read_side_over_) {
        accepted = true;
        pending_[req->request_id()] = Pending{b, std::move(done)};
        queue_.push_back(std::move(req));
        if (!writing_) {
          writing_ = true;
          first = queue_.front().get();
        }
      }
    }
    if (!accepted) {
      done(grpc::Status(grpc::StatusCode::UNAVAILABLE, "stream is over"));
      return;
    }
    // No write is in flight, so nothing pops the queue before this write starts.
    if (first != nullptr) StartWrite(first);
  }

  Status Close() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      closing_ = true;
      if (!writing_ && !writes_done_) {
        writes_done_ = true;
        StartWritesDoneLocked();
      }
    }
    RemoveHold();
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [this] { return finished_; });
    return final_status_;
  }

  void OnWriteDone(bool ok) override {
    const v1::ForwardRequest* next = nullptr;
    {
      std::lock_guard<std::mutex> lock(mu_);
      queue_.pop_front();
      if (ok && !queue_.empty()) {
        next = queue_.front().get();
      } else {
        writing_ = false;
        if (closing_ && !writes_done_) {
          writes_done_ = true;
          StartWritesDoneLocked();
        }
      }
    }
    if (next != nullptr) StartWrite(next);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      // The stream is over (the server finished it or it broke): no reply will come for what is
      // pending. Fail it now, so the driver can drain and Close() can release the hold.
      FailPending(grpc::Status(grpc::StatusCode::UNAVAILABLE, "stream ended before the reply"));
      return;
    }
    Pending p;
    bool found = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = pending_.find(incoming_.request_id());
      if (it != pending_.end()) {
        p = std::move(it->second);
        pending_.erase(it);
        found = true;
      }
    }
    if (found) {
      const grpc::Status status(static_cast<grpc::StatusCode>(incoming_.code()),
                                incoming_.error_message());
      if (status.ok()) p.buffers->resp.Swap(incoming_.mutable_response());
      p.done(status);
    }
    incoming_.Clear();
    StartRead(&incoming_);
  }

  void OnDone(const grpc::Status& status) override {
    FailPending(status.ok() ? grpc::Status(grpc::StatusCode::UNAVAILABLE, "stream ended") : status);
    std::lock_guard<std::mutex> lock(mu_);
    final_status_ = status.ok() ? absl::OkStatus()
                                : absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                                               status.error_message());
    finished_ = true;
    cv_.notify_all();
  }

 private:
  struct Pending {
    RpcBuffers* buffers = nullptr;
    std::function<void(const grpc::Status&)> done;
  };

  void FailPending(const grpc::Status& status) {
    absl::flat_hash_map<std::string, Pending> left;
    {
      std::lock_guard<std::mutex> lock(mu_);
      read_side_over_ = true;
      left.swap(pending_);
    }
    for (auto& [id, p] : left) p.done(status);
  }
  void StartWritesDoneLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { StartWritesDone(); }

  std::unique_ptr<v1::MoeService::Stub> stub_;
  grpc::ClientContext ctx_;
  v1::ForwardStreamResponse incoming_;  // touched only by the one outstanding read

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::unique_ptr<v1::ForwardRequest>> queue_ ABSL_GUARDED_BY(mu_);  // front: writing
  absl::flat_hash_map<std::string, Pending> pending_ ABSL_GUARDED_BY(mu_);
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool closing_ ABSL_GUARDED_BY(mu_) = false;
  bool writes_done_ ABSL_GUARDED_BY(mu_) = false;
  bool read_side_over_ ABSL_GUARDED_BY(mu_) = false;  // no more replies will be read
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  Status final_status_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

std::unique_ptr<Transport> MakeUnaryTransport(std::shared_ptr<grpc::Channel> channel) {
  return std::make_unique<UnaryTransport>(std::move(channel));
}

std::unique_ptr<Transport> MakeStreamTransport(std::shared_ptr<grpc::Channel> channel) {
  return std::make_unique<StreamTransport>(std::move(channel));
}

}  // namespace moe::loadgen
