// THE scheduler correctness check: many concurrent clients submit requests of different sizes,
// layers, dtypes and priorities; the scheduler merges, splits and reorders them into batches; every
// response must be bitwise what the engine computes for that request alone (output, expert ids,
// expert weights). Used with the fake engine (correctness_test.cc, row-wise by construction) and
// the real CPU engine (cpu_engine_correctness_test.cc, batch-invariant by its fixed-order kernels).
#pragma once

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "engine_cpu/random_model.h"
#include "moe/scheduler/scheduler.h"
#include "scheduler/scheduler_test_util.h"

namespace moe::testing {

constexpr int kClients = 8;
constexpr int kPerClient = 50;
constexpr int64_t kMaxTokens = 300;

// The engine the scheduler drives and a second one, same model, for the references.
struct Engines {
  std::unique_ptr<Engine> serving;
  std::unique_ptr<Engine> reference;
};

// One request of the test with its expected answer.
struct Case {
  int layer = 1;
  DType dtype = DType::kF32;
  int64_t n_tokens = 0;
  Priority priority = Priority::kNormal;
  bool want_routing = false;
  bool borrow_input = false;
  bool borrow_output = false;
  std::string input;
  std::string want_output;
  std::vector<int32_t> want_ids;
  std::vector<float> want_weights;
  // Filled by the callback.
  std::string borrowed_output;
  Response response;
  int calls = 0;
};

// Counts batches that merged pieces of several requests.
class MergeObserver : public SchedulerObserver {
 public:
  void OnBatchFormed(int, DType, int64_t, int n_segments) override {
    if (n_segments > 1) merged.fetch_add(1);
  }
  std::atomic<int64_t> merged{0};
};

// Runs kClients threads x kPerClient requests through a scheduler on `engines.serving` and checks
// every response bitwise against `engines.reference` run on that request alone.
inline void RunConcurrentClients(Engines& engines) {
  ASSERT_NE(engines.serving, nullptr);
  const MoeSpec& spec = engines.serving->spec();
  const int k = spec.top_k();

  // Requests and their references (each request alone on the reference engine, slot 0).
  std::vector<Case> cases(kClients * kPerClient);
  std::mt19937_64 rng(2024);
  const DType dtypes[] = {DType::kF32, DType::kBF16, DType::kF16};
  for (size_t i = 0; i < cases.size(); ++i) {
    Case& c = cases[i];
    c.layer = spec.moe_layers[rng() % spec.moe_layers.size()];
    c.dtype = dtypes[rng() % 3];
    c.n_tokens = 1 + static_cast<int64_t>(rng() % kMaxTokens);
    c.priority = static_cast<Priority>(rng() % kNumPriorities);
    c.want_routing = rng() % 2 == 0;
    c.borrow_input = rng() % 2 == 0;
    c.borrow_output = rng() % 3 == 0;
    auto act = MakeActivations(c.dtype, c.n_tokens * spec.hidden, 1000 + i);
    c.input.assign(reinterpret_cast<const char*>(act.bytes.data()), act.bytes.size());
    c.want_output.assign(c.input.size(), '\0');
    c.want_ids.assign(static_cast<size_t>(c.n_tokens * k), -1);
    c.want_weights.assign(static_cast<size_t>(c.n_tokens * k), -1.0f);
    ForwardArgs a;
    a.layer = c.layer;
    a.dtype = c.dtype;
    a.n_tokens = c.n_tokens;
    a.input = c.input.data();
    a.output = c.want_output.data();
    a.expert_ids = c.want_ids.data();
    a.expert_weights = c.want_weights.data();
    ASSERT_TRUE(engines.reference->Forward(a).ok());
    if (c.borrow_output) c.borrowed_output.assign(c.input.size(), '\x7f');  // poisoned
  }

  SchedulerOptions o;
  o.engine = engines.serving.get();
  o.max_batch_tokens = 64;  // most requests are split
  o.preferred_batch_tokens = {16, 32, 48};
  o.max_queue_delay_us = 200;
  o.max_queue_tokens = 1 << 20;
  MergeObserver observer;
  o.observer = &observer;
  auto sched_or = Scheduler::Create(o);
  ASSERT_TRUE(sched_or.ok()) << sched_or.status();
  std::unique_ptr<Scheduler> sched = std::move(sched_or).value();

  std::mutex mu;
  std::condition_variable cv;
  int done = 0;
  std::vector<std::thread> clients;
  for (int t = 0; t < kClients; ++t) {
    clients.emplace_back([&, t] {
      for (int i = 0; i < kPerClient; ++i) {
        Case& c = cases[static_cast<size_t>(t * kPerClient + i)];
        Request r;
        r.layer = c.layer;
        r.dtype = c.dtype;
        r.n_tokens = c.n_tokens;
        if (c.borrow_input) {
          r.borrowed_input = c.input.data();
        } else {
          r.input = c.input;  // a copy the scheduler owns
        }
        if (c.borrow_output) r.borrowed_output = c.borrowed_output.data();
        r.want_routing = c.want_routing;
        r.priority = c.priority;
        r.done = [&mu, &cv, &done, &c](Response&& resp) {
          std::lock_guard<std::mutex> lock(mu);
          c.response = std::move(resp);
          ++c.calls;
          ++done;
          cv.notify_all();
        };
        auto id = sched->Submit(std::move(r));
        ASSERT_TRUE(id.ok()) << id.status();
      }
    });
  }
  for (auto& th : clients) th.join();
  {
    std::unique_lock<std::mutex> lock(mu);
    ASSERT_TRUE(cv.wait_for(lock, std::chrono::seconds(60),
                            [&] { return done == static_cast<int>(cases.size()); }));
  }
  ASSERT_TRUE(sched->Shutdown(FromNow(std::chrono::seconds(60))).ok());

  int split = 0;
  for (size_t i = 0; i < cases.size(); ++i) {
    Case& c = cases[i];
    SCOPED_TRACE(::testing::Message() << "request " << i << ": layer " << c.layer << " "
                                      << DTypeName(c.dtype) << " x " << c.n_tokens);
    ASSERT_EQ(c.calls, 1);
    ASSERT_TRUE(c.response.status.ok()) << c.response.status;
    const std::string& got = c.borrow_output ? c.borrowed_output : c.response.output;
    ASSERT_EQ(got.size(), c.want_output.size());
    ASSERT_EQ(0, std::memcmp(got.data(), c.want_output.data(), got.size()));
    if (c.want_routing) {
      ASSERT_EQ(c.response.expert_ids, c.want_ids);
      ASSERT_EQ(c.response.expert_weights.size(), c.want_weights.size());
      ASSERT_EQ(0, std::memcmp(c.response.expert_weights.data(), c.want_weights.data(),
                               c.want_weights.size() * sizeof(float)));
    } else {
      EXPECT_TRUE(c.response.expert_ids.empty());
    }
    if (c.response.batches > 1) ++split;
  }
  SchedulerStats st = sched->Stats();
  EXPECT_EQ(st.completed_ok, static_cast<int64_t>(cases.size()));
  EXPECT_EQ(st.split_requests, split);
  EXPECT_GT(split, 0);
  EXPECT_GT(st.batches_formed, 0);
  EXPECT_GT(observer.merged.load(), 0);  // requests were merged, not run one by one
}

}  // namespace moe::testing
