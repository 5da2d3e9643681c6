// In-process daemon for the front-end tests: a small synthetic Qwen2-MoE checkpoint (written to a
// temp dir), the CPU engine, the real scheduler behind SchedulerBackend (optionally behind a
// HoldingBackend that parks requests), and the gRPC server on a loopback ephemeral port.
// A second CPU engine computes the reference outputs (the CPU engine is batch invariant, so the
// served output must equal it bit for bit).
#pragma once

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <condition_variable>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <vector>

#include "grpc_health/v1/health.grpc.pb.h"
#include "inference/grpc_service.grpc.pb.h"
#include "moe/engine/cpu_engine.h"
#include "moe/model/embedded.h"
#include "moe/model/model.h"
#include "moe/scheduler/scheduler.h"
#include "moe/server/scheduler_backend.h"
#include "moe/server/server.h"
#include "moe/v1/moe.grpc.pb.h"
#include "moe_test/reflection_wire.pb.h"

namespace moe::server::testing {

// Parks submitted requests while holding; Release() forwards them to the inner backend. Drain()
// waits for the parked ones to be released first (so a test can look at a draining server).
//
// Thread safety: every method may be called from any thread.
class HoldingBackend final : public Backend {
 public:
  explicit HoldingBackend(Backend* inner) : inner_(inner) {}

  StatusOr<uint64_t> Submit(const LayerRequest& request, LayerDone done) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (!holding_) return inner_->Submit(request, std::move(done));
    held_.push_back({request, std::move(done)});
    return uint64_t{0};  // not cancellable while parked
  }
  void Cancel(uint64_t ticket) override {
    if (ticket != 0) inner_->Cancel(ticket);
  }
  int64_t max_request_tokens() const override { return inner_->max_request_tokens(); }
  void Drain(Clock::time_point deadline) override {
    {
      std::unique_lock<std::mutex> lock(mu_);
      idle_.wait(lock, [this] { return held_.empty() && !forwarding_; });
    }
    inner_->Drain(deadline);
  }

  void Hold() {
    std::lock_guard<std::mutex> lock(mu_);
    holding_ = true;
  }
  // Stops holding and forwards everything parked (a refusal is answered through `done`).
  void Release() {
    std::vector<Held> held;
    {
      std::lock_guard<std::mutex> lock(mu_);
      holding_ = false;
      forwarding_ = true;
      held.swap(held_);
    }
    for (Held& h : held) {
      LayerDone done = h.done;
      StatusOr<uint64_t> t = inner_->Submit(h.request, std::move(h.done));
      if (!t.ok()) done(t.status(), LayerTiming{});
    }
    std::lock_guard<std::mutex> lock(mu_);
    forwarding_ = false;
    idle_.notify_all();
  }
  size_t held() {
    std::lock_guard<std::mutex> lock(mu_);
    return held_.size();
  }

 private:
  struct Held {
    LayerRequest request;
    LayerDone done;
  };
  Backend* const inner_;
  std::mutex mu_;
  std::condition_variable idle_;
  bool holding_ ABSL_GUARDED_BY(mu_) = false;
  bool forwarding_ ABSL_GUARDED_BY(mu_) = false;  // Release() is submitting the parked ones
  std::vector<Held> held_ ABSL_GUARDED_BY(mu_);
};

// The small checkpoint every test serves: hidden 64, MoE layers 0..2, 8 experts, top-2, a shared
// expert, BF16 weights.
inline const std::string& TestModelDir() {
  static const std::string* dir = [] {
    std::string base =
        std::filesystem::temp_directory_path() / ("moe-server-test-" + std::to_string(::getpid()));
    SyntheticModelOptions o;
    o.hidden = 64;
    o.n_layers = 3;
    o.n_experts = 8;
    o.top_k = 2;
    o.moe_intermediate = 32;
    o.shared_intermediate = 64;
    o.n_shards = 1;
    Status s = WriteSyntheticQwen2Moe(o, base);
    if (!s.ok()) {
      ADD_FAILURE() << s;
    }
    return new std::string(base);
  }();
  return *dir;
}

struct FixtureOptions {
  int64_t max_batch_tokens = 256;
  int64_t max_queue_delay_us = 200;
  int64_t max_queue_tokens = 4096;
  int64_t drain_timeout_ms = 10000;
  bool hold = false;  // put a HoldingBackend in front of the scheduler
  bool ready = true;  // SetReady(true) after start
};

class Daemon {
 public:
  explicit Daemon(const FixtureOptions& fo = {}) {
    StatusOr<std::unique_ptr<Model>> m = Model::Open(TestModelDir());
    EXPECT_TRUE(m.ok()) << m.status();
    model_ = std::move(*m);
    CpuEngineOptions eo;
    eo.num_threads = 1;
    eo.num_slots = 2;
    eo.max_batch_tokens = fo.max_batch_tokens;
    auto engine = CpuEngine::Create(model_, eo);
    EXPECT_TRUE(engine.ok()) << engine.status();
    engine_ = std::move(*engine);
    eo.num_slots = 1;
    auto ref = CpuEngine::Create(model_, eo);
    EXPECT_TRUE(ref.ok()) << ref.status();
    reference_ = std::move(*ref);

    SchedulerOptions so;
    so.engine = engine_.get();
    so.max_batch_tokens = fo.max_batch_tokens;
    so.max_queue_delay_us = fo.max_queue_delay_us;
    so.max_queue_tokens = fo.max_queue_tokens;
    so.name = "test";
    auto sched = Scheduler::Create(so);
    EXPECT_TRUE(sched.ok()) << sched.status();
    scheduler_ = std::move(*sched);
    sched_backend_ =
        std::make_unique<SchedulerBackend>(scheduler_.get(), spec().top_k(), fo.max_batch_tokens);
    holding_ = std::make_unique<HoldingBackend>(sched_backend_.get());
    if (fo.hold) holding_->Hold();

    Server::Options opts;
    opts.server.address = "127.0.0.1";
    opts.server.port = 0;
    opts.server.drain_timeout_ms = fo.drain_timeout_ms;
    opts.server.max_message_bytes = int64_t{1} << 20;
    opts.scheduler.max_batch_tokens = fo.max_batch_tokens;
    opts.scheduler.max_queue_delay_us = fo.max_queue_delay_us;
    opts.scheduler.max_queue_tokens = fo.max_queue_tokens;
    opts.model.name = "tiny";
    opts.model.spec = model_->spec();
    opts.model.engine = "cpu";
    opts.model.engine_slots = 2;
    opts.backend = holding_.get();
    auto server = Server::Create(opts);
    EXPECT_TRUE(server.ok()) << server.status();
    server_ = std::move(*server);
    if (fo.ready) server_->SetReady(true);

    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(-1);
    args.SetMaxSendMessageSize(-1);
    channel_ =
        grpc::CreateCustomChannel(server_->address(), grpc::InsecureChannelCredentials(), args);
    native = moe::v1::MoeService::NewStub(channel_);
    kserve = inference::GRPCInferenceService::NewStub(channel_);
    health = grpc::health::v1::Health::NewStub(channel_);
  }

  ~Daemon() {
    holding_->Release();
    if (server_ != nullptr) server_->Shutdown();
    server_.reset();
    scheduler_.reset();
  }

  const MoeSpec& spec() const { return model_->spec(); }
  Server& server() { return *server_; }
  Scheduler& scheduler() { return *scheduler_; }
  HoldingBackend& holding() { return *holding_; }

  // Reference output of `layer` for `input` ([n, hidden] of `dtype`).
  struct Reference {
    std::string output;
    std::vector<int32_t> ids;
    std::vector<float> weights;
  };
  Reference Expected(int layer, DType dtype, int64_t n, const std::string& input) {
    Reference r;
    r.output.resize(input.size());
    r.ids.resize(static_cast<size_t>(n * spec().top_k()));
    r.weights.resize(r.ids.size());
    ForwardArgs a;
    a.layer = layer;
    a.dtype = dtype;
    a.n_tokens = n;
    a.input = input.data();
    a.output = r.output.data();
    a.expert_ids = r.ids.data();
    a.expert_weights = r.weights.data();
    Status s = reference_->Forward(a);
    EXPECT_TRUE(s.ok()) << s;
    return r;
  }

  std::unique_ptr<moe::v1::MoeService::Stub> native;
  std::unique_ptr<inference::GRPCInferenceService::Stub> kserve;
  std::unique_ptr<grpc::health::v1::Health::Stub> health;
  const std::shared_ptr<grpc::Channel>& channel() const { return channel_; }

 private:
  std::shared_ptr<const Model> model_;
  std::unique_ptr<CpuEngine> engine_;
  std::unique_ptr<CpuEngine> reference_;
  std::unique_ptr<Scheduler> scheduler_;
  std::unique_ptr<SchedulerBackend> sched_backend_;
  std::unique_ptr<HoldingBackend> holding_;
  std::unique_ptr<Server> server_;
  std::shared_ptr<grpc::Channel> channel_;
};

// N(0, 1) hidden states [n, hidden] of `dtype`, as raw bytes.
inline std::string RandomHidden(int64_t n, int hidden, DType dtype, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> f(static_cast<size_t>(n * hidden));
  for (float& v : f) v = normal(rng);
  std::string bytes(f.size() * DTypeSize(dtype), '\0');
  ConvertFromF32(f.data(), dtype, bytes.data(), f.size());
  return bytes;
}

inline moe::v1::DType Wire(DType d) {
  return d == DType::kF32   ? moe::v1::DTYPE_F32
         : d == DType::kF16 ? moe::v1::DTYPE_F16
                            : moe::v1::DTYPE_BF16;
}

inline moe::v1::ForwardRequest NativeRequest(const std::string& id, int layer, DType dtype,
                                             int64_t n, int hidden, uint64_t seed,
                                             bool routing = true) {
  moe::v1::ForwardRequest r;
  r.set_request_id(id);
  r.set_model("tiny");
  r.set_layer(layer);
  r.set_return_routing(routing);
  moe::v1::Tensor* t = r.mutable_hidden_states();
  t->set_dtype(Wire(dtype));
  t->add_shape(n);
  t->add_shape(hidden);
  t->set_data(RandomHidden(n, hidden, dtype, seed));
  return r;
}

inline inference::ModelInferRequest KserveRequest(const std::string& id, int layer,
                                                  const char* datatype, DType dtype, int64_t n,
                                                  int hidden, uint64_t seed) {
  inference::ModelInferRequest r;
  r.set_model_name("tiny.layer" + std::to_string(layer));
  r.set_id(id);
  auto* in = r.add_inputs();
  in->set_name("input");
  in->set_datatype(datatype);
  in->add_shape(n);
  in->add_shape(hidden);
  r.add_raw_input_contents(RandomHidden(n, hidden, dtype, seed));
  return r;
}

}  // namespace moe::server::testing
