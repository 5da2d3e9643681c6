// The front end's request path without gRPC (so ThreadSanitizer sees every synchronisation: the
// Debian gRPC libraries are not instrumented, which makes the RPC-level tests unusable under TSan):
// many threads run requests through Core -> SchedulerBackend -> Scheduler -> CpuEngine while others
// cancel them and a drain begins. Every request is answered exactly once, successful ones equal
// the engine's own output bit for bit, and nothing is in flight afterwards.
#include <atomic>
#include <random>
#include <thread>

#include "server/catalog.h"
#include "server/core.h"
#include "server_fixture.h"

namespace moe::server::testing {
namespace {

struct Slot {
  int layer = 0;
  DType dtype = DType::kBF16;
  int64_t n = 0;
  std::string input;
  std::string output;
  std::vector<int32_t> ids;
  std::vector<float> weights;
  std::shared_ptr<CancelScope> cancel;
  std::atomic<int> answers{0};
  Status status;
};

TEST(CoreConcurrencyTest, ConcurrentRequestsCancelsAndDrainAnswerEachRequestOnce) {
  std::shared_ptr<const Model> model = std::move(Model::Open(TestModelDir())).value();
  const MoeSpec& spec = model->spec();
  CpuEngineOptions eo;
  eo.num_threads = 1;
  eo.num_slots = 2;
  eo.max_batch_tokens = 64;
  std::unique_ptr<CpuEngine> engine = std::move(CpuEngine::Create(model, eo)).value();
  eo.num_slots = 1;
  std::unique_ptr<CpuEngine> reference = std::move(CpuEngine::Create(model, eo)).value();
  SchedulerOptions so;
  so.engine = engine.get();
  so.max_batch_tokens = 64;
  so.max_queue_delay_us = 300;
  so.name = "core";
  std::unique_ptr<Scheduler> scheduler = std::move(Scheduler::Create(so)).value();
  SchedulerBackend backend(scheduler.get(), spec.top_k(), 64);
  ServedModel served{"tiny", spec, "cpu", 2};
  Catalog catalog(served, config::ServerOptions{}, config::SchedulerOptions{}, 64);
  Core core(&catalog, &backend, nullptr);
  core.SetReady(true);

  constexpr int kThreads = 4;
  constexpr int kPerThread = 40;
  std::vector<std::unique_ptr<Slot>> slots;
  std::mt19937 rng(42);
  for (int i = 0; i < kThreads * kPerThread; ++i) {
    auto s = std::make_unique<Slot>();
    s->layer = spec.moe_layers[static_cast<size_t>(i) % spec.moe_layers.size()];
    s->dtype = i % 3 == 0 ? DType::kF32 : DType::kBF16;
    s->n = 1 + static_cast<int64_t>(rng() % 8);
    s->input = RandomHidden(s->n, spec.hidden, s->dtype, 1000 + static_cast<uint64_t>(i));
    s->output.assign(s->input.size(), '\x7f');  // poison
    s->ids.assign(static_cast<size_t>(s->n * spec.top_k()), -7);
    s->weights.assign(s->ids.size(), -7.0f);
    s->cancel = std::make_shared<CancelScope>(&backend);
    slots.push_back(std::move(s));
  }

  std::atomic<int> submitted{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int k = 0; k < kPerThread; ++k) {
        Slot* s = slots[static_cast<size_t>(t * kPerThread + k)].get();
        LayerRequest r;
        r.layer = s->layer;
        r.dtype = s->dtype;
        r.n_tokens = s->n;
        r.input = s->input.data();
        r.output = s->output.data();
        r.expert_ids = s->ids.data();
        r.expert_weights = s->weights.data();
        r.priority = k % 3 - 1;
        r.arrival = Clock::now();
        r.cancel = s->cancel;
        core.Run(r, "test", [s](const Status& status, const LayerTiming&) {
          s->status = status;
          s->answers.fetch_add(1, std::memory_order_acq_rel);
        });
        submitted.fetch_add(1);
      }
    });
  }
  // A canceller racing the submitters: every fifth request.
  threads.emplace_back([&] {
    for (size_t i = 0; i < slots.size(); i += 5) {
      while (submitted.load() < static_cast<int>(i)) std::this_thread::yield();
      slots[i]->cancel->Cancel();
    }
  });
  for (std::thread& t : threads) t.join();

  core.BeginDrain();
  backend.Drain(Clock::now() + std::chrono::seconds(60));
  ASSERT_TRUE(core.WaitIdle(Clock::now() + std::chrono::seconds(60)));
  EXPECT_EQ(core.inflight(), 0);

  int ok = 0, cancelled = 0;
  for (size_t i = 0; i < slots.size(); ++i) {
    Slot& s = *slots[i];
    ASSERT_EQ(s.answers.load(), 1) << "request " << i;
    if (s.status.ok()) {
      ++ok;
      std::string out(s.input.size(), '\0');
      std::vector<int32_t> ids(s.ids.size());
      std::vector<float> w(s.ids.size());
      ForwardArgs a;
      a.layer = s.layer;
      a.dtype = s.dtype;
      a.n_tokens = s.n;
      a.input = s.input.data();
      a.output = out.data();
      a.expert_ids = ids.data();
      a.expert_weights = w.data();
      ASSERT_TRUE(reference->Forward(a).ok());
      EXPECT_TRUE(out == s.output) << "request " << i;
      EXPECT_EQ(ids, s.ids) << "request " << i;
      EXPECT_EQ(w, s.weights) << "request " << i;
    } else {
      EXPECT_EQ(s.status.code(), absl::StatusCode::kCancelled) << i << ": " << s.status;
      EXPECT_EQ(i % 5, 0u) << "only cancelled requests may fail: " << s.status;
      ++cancelled;
    }
  }
  EXPECT_GT(ok, 0);
  EXPECT_EQ(ok + cancelled, static_cast<int>(slots.size()));

  // After the drain began, requests are refused inline with UNAVAILABLE.
  std::string in = RandomHidden(1, spec.hidden, DType::kBF16, 1);
  std::string out(in.size(), '\0');
  LayerRequest r;
  r.layer = spec.moe_layers[0];
  r.n_tokens = 1;
  r.input = in.data();
  r.output = out.data();
  r.arrival = Clock::now();
  Status refused;
  core.Run(r, "late", [&](const Status& s, const LayerTiming&) { refused = s; });
  EXPECT_EQ(refused.code(), absl::StatusCode::kUnavailable);
}

TEST(CoreConcurrencyTest, CancelScopeCancelsArmedTicketsOnceAndLateArmsAtOnce) {
  struct Recorder final : Backend {
    StatusOr<uint64_t> Submit(const LayerRequest&, LayerDone) override { return 1; }
    void Cancel(uint64_t ticket) override {
      std::lock_guard<std::mutex> lock(mu);
      cancelled.push_back(ticket);
    }
    int64_t max_request_tokens() const override { return 1; }
    void Drain(Clock::time_point) override {}
    std::mutex mu;
    std::vector<uint64_t> cancelled;
  } backend;
  CancelScope scope(&backend);
  uint64_t a = scope.Reserve();
  uint64_t b = scope.Reserve();
  uint64_t c = scope.Reserve();
  scope.Arm(a, 11);
  scope.Arm(b, 12);
  scope.Release(b);  // done before the cancel: not cancelled
  std::vector<std::thread> threads;
  for (int i = 0; i < 4; ++i) threads.emplace_back([&] { scope.Cancel(); });
  for (auto& t : threads) t.join();
  EXPECT_TRUE(scope.cancelled());
  scope.Arm(c, 13);  // armed after the cancel: cancelled at once
  scope.Release(a);
  scope.Arm(a, 14);  // released: nothing happens
  std::lock_guard<std::mutex> lock(backend.mu);
  EXPECT_EQ(backend.cancelled, (std::vector<uint64_t>{11, 13}));
}

}  // namespace
}  // namespace moe::server::testing
