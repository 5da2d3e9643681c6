// Batching rules of the dynamic batching scheduler, each checked on the fake engine by the rows
// (tags) every Engine::Forward call received. Deterministic: ordering tests hold the only worker
// inside the engine (a gate) while they queue requests, so what is queued when the worker frees
// up is known. No test asserts a duration other than lower bounds the rules themselves imply.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>

#include "moe/scheduler/scheduler.h"
#include "scheduler/fake_engine.h"
#include "scheduler/request_state.h"
#include "scheduler/scheduler_test_util.h"

namespace moe {
namespace {

using std::chrono::microseconds;
using testing::Collector;
using testing::FakeEngine;
using testing::FakeEngineOptions;
using testing::TaggedInput;

constexpr int64_t kForever = int64_t{3600} * 1000 * 1000;  // a delay no test waits for

class BatchingTest : public ::testing::Test {
 protected:
  // A failed assertion may leave the worker held: open the gate before the scheduler goes.
  void TearDown() override {
    gate_.Notify();
    sched_.reset();
  }
  void Init(SchedulerOptions o, FakeEngineOptions eo = {}) {
    engine_ = std::make_unique<FakeEngine>(eo);
    o.engine = engine_.get();
    auto s = Scheduler::Create(o);
    ASSERT_TRUE(s.ok()) << s.status();
    sched_ = std::move(s).value();
  }
  // One engine slot (so one worker) and no batching delay: with HoldWorker(), the ordering tests'
  // setting. `o` sets the rest.
  void InitOneWorker(SchedulerOptions o) {
    o.max_queue_delay_us = 0;
    FakeEngineOptions eo;
    eo.num_slots = 1;
    Init(o, eo);
  }
  Request MakeRequest(int tag, int64_t n, Priority p = Priority::kNormal, int layer = 1,
                      DType dtype = DType::kF32) {
    Request r;
    r.layer = layer;
    r.dtype = dtype;
    r.n_tokens = n;
    r.input = TaggedInput(dtype, engine_->spec().hidden, n, tag);
    r.priority = p;
    r.done = collector_.Callback(tag);
    return r;
  }
  RequestId SubmitOk(Request r) {
    auto id = sched_->Submit(std::move(r));
    EXPECT_TRUE(id.ok()) << id.status();
    return id.ok() ? *id : 0;
  }
  // Puts a 1-token request (tag 100) into the engine and keeps the only worker there.
  void HoldWorker() {
    engine_->BlockNextCall(&entered_, &gate_);
    SubmitOk(MakeRequest(100, 1));
    entered_.WaitForNotification();
  }
  std::vector<float> Tags(int tag, int n) {
    return std::vector<float>(static_cast<size_t>(n), float(tag));
  }
  static std::vector<float> Concat(std::vector<float> a, const std::vector<float>& b) {
    a.insert(a.end(), b.begin(), b.end());
    return a;
  }

  std::unique_ptr<FakeEngine> engine_;
  std::unique_ptr<Scheduler> sched_;
  Collector collector_;
  testing::Notification entered_, gate_;
};

TEST(ChooseBatchTokensTest, CutsAtLargestPreferredSize) {
  using sched_internal::ChooseBatchTokens;
  EXPECT_EQ(ChooseBatchTokens(64, {}), 64);
  EXPECT_EQ(ChooseBatchTokens(64, {16, 48}), 48);
  EXPECT_EQ(ChooseBatchTokens(47, {16, 48}), 16);
  EXPECT_EQ(ChooseBatchTokens(48, {16, 48}), 48);
  EXPECT_EQ(ChooseBatchTokens(5, {16, 48}), 5);  // below the smallest: leaves as it is
}

TEST_F(BatchingTest, CreateValidatesOptions) {
  FakeEngineOptions eo;
  eo.max_batch_tokens = 64;
  engine_ = std::make_unique<FakeEngine>(eo);
  SchedulerOptions o;
  EXPECT_EQ(Scheduler::Create(o).status().code(), absl::StatusCode::kInvalidArgument);  // no engine
  o.engine = engine_.get();
  o.max_batch_tokens = 65;
  EXPECT_EQ(Scheduler::Create(o).status().code(), absl::StatusCode::kInvalidArgument);
  o.max_batch_tokens = 32;
  o.preferred_batch_tokens = {16, 33};
  EXPECT_EQ(Scheduler::Create(o).status().code(), absl::StatusCode::kInvalidArgument);
  o.preferred_batch_tokens = {16};
  auto s = Scheduler::Create(o);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ((*s)->options().max_queue_tokens, 64 * 32);
  EXPECT_EQ((*s)->options().max_inflight_batches, eo.num_slots);
}

TEST_F(BatchingTest, SubmitRefusesInvalidRequests) {
  SchedulerOptions o;
  Init(o);
  Request r = MakeRequest(1, 4);
  r.layer = 2;  // not a MoE layer
  EXPECT_EQ(sched_->Submit(std::move(r)).status().code(), absl::StatusCode::kNotFound);
  r = MakeRequest(1, 4);
  r.dtype = DType::kI32;
  EXPECT_EQ(sched_->Submit(std::move(r)).status().code(), absl::StatusCode::kInvalidArgument);
  r = MakeRequest(1, 4);
  r.input.pop_back();  // wrong size
  EXPECT_EQ(sched_->Submit(std::move(r)).status().code(), absl::StatusCode::kInvalidArgument);
  r = MakeRequest(1, 4);
  r.borrowed_input = r.input.data();  // both kinds
  EXPECT_EQ(sched_->Submit(std::move(r)).status().code(), absl::StatusCode::kInvalidArgument);
  r = MakeRequest(1, 4);
  r.done = nullptr;
  EXPECT_EQ(sched_->Submit(std::move(r)).status().code(), absl::StatusCode::kInvalidArgument);
  r = MakeRequest(1, 4);
  r.deadline = std::chrono::steady_clock::now() - microseconds(1);
  EXPECT_EQ(sched_->Submit(std::move(r)).status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(sched_->Stats().refused_invalid, 6);
  EXPECT_EQ(collector_.total(), 0);  // refused requests never get a callback
}

TEST_F(BatchingTest, FullBatchLeavesWithoutWaitingForTheDelay) {
  SchedulerOptions o;
  o.max_batch_tokens = 32;
  o.max_queue_delay_us = kForever;
  Init(o);
  SubmitOk(MakeRequest(1, 20));
  SubmitOk(MakeRequest(2, 12));  // 32 tokens: full
  ASSERT_TRUE(collector_.WaitForCalls(2));
  EXPECT_TRUE(collector_.status(1).ok());
  EXPECT_TRUE(collector_.status(2).ok());
  auto calls = engine_->calls();
  ASSERT_EQ(calls.size(), 1u);
  EXPECT_EQ(calls[0], Concat(Tags(1, 20), Tags(2, 12)));
}

TEST_F(BatchingTest, DelayTimerReleasesAPartialBatch) {
  SchedulerOptions o;
  o.max_batch_tokens = 32;
  o.max_queue_delay_us = 3000;
  Init(o);
  SubmitOk(MakeRequest(1, 5));
  ASSERT_TRUE(collector_.WaitForCalls(1));
  Response r = collector_.take(1);
  EXPECT_TRUE(r.status.ok()) << r.status;
  EXPECT_GE(r.queue_us, 3000);  // the rule: a partial batch leaves only after the delay
  auto calls = engine_->calls();
  ASSERT_EQ(calls.size(), 1u);
  EXPECT_EQ(calls[0], Tags(1, 5));
}

TEST_F(BatchingTest, PreferredSizesCutBatches) {
  SchedulerOptions o;
  o.max_batch_tokens = 64;
  o.preferred_batch_tokens = {48, 16};
  InitOneWorker(o);
  HoldWorker();
  for (int tag = 1; tag <= 10; ++tag) SubmitOk(MakeRequest(tag, 10));  // 100 tokens
  gate_.Notify();
  ASSERT_TRUE(collector_.WaitForCalls(11));
  auto calls = engine_->calls();
  ASSERT_EQ(calls.size(), 4u);
  EXPECT_EQ(calls[0].size(), 1u);   // the held request
  EXPECT_EQ(calls[1].size(), 48u);  // 64 available -> 48
  EXPECT_EQ(calls[2].size(), 48u);  // 52 available -> 48
  EXPECT_EQ(calls[3].size(), 4u);   // 4 < 16: leaves as it is
  for (int tag = 1; tag <= 10; ++tag) EXPECT_TRUE(collector_.status(tag).ok());
}

TEST_F(BatchingTest, HighPriorityGoesFirstAndBatchesPackTokenExactly) {
  SchedulerOptions o;
  o.max_batch_tokens = 8;
  InitOneWorker(o);
  HoldWorker();
  SubmitOk(MakeRequest(1, 8, Priority::kLow));
  SubmitOk(MakeRequest(2, 8, Priority::kNormal));
  SubmitOk(MakeRequest(3, 8, Priority::kHigh));
  SubmitOk(MakeRequest(4, 4, Priority::kLow));
  SubmitOk(MakeRequest(5, 4, Priority::kHigh));
  SchedulerStats st = sched_->Stats();
  EXPECT_EQ(st.queued_tokens, 32);
  EXPECT_EQ(st.queued_tokens_by_priority[0], 12);
  EXPECT_EQ(st.queued_tokens_by_priority[1], 8);
  EXPECT_EQ(st.queued_tokens_by_priority[2], 12);
  gate_.Notify();
  ASSERT_TRUE(collector_.WaitForCalls(6));
  auto calls = engine_->calls();
  ASSERT_EQ(calls.size(), 5u);
  EXPECT_EQ(calls[1], Tags(3, 8));                      // high
  EXPECT_EQ(calls[2], Concat(Tags(5, 4), Tags(2, 4)));  // high, then normal (split)
  EXPECT_EQ(calls[3], Concat(Tags(2, 4), Tags(1, 4)));  // rest of normal, then low (split)
  EXPECT_EQ(calls[4], Concat(Tags(1, 4), Tags(4, 4)));
  for (int tag = 1; tag <= 5; ++tag) EXPECT_TRUE(collector_.status(tag).ok());
  EXPECT_EQ(collector_.take(2).batches, 2);
  EXPECT_EQ(sched_->Stats().split_requests, 2);
}

TEST_F(BatchingTest, BoundedQueueRefusesAtOnceWithRetryHint) {
  SchedulerOptions o;
  o.max_batch_tokens = 32;
  o.max_queue_tokens = 20;
  InitOneWorker(o);
  HoldWorker();
  SubmitOk(MakeRequest(1, 15));
  auto refused = sched_->Submit(MakeRequest(2, 10));
  ASSERT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(std::string(refused.status().message()).find("retry after ~"), std::string::npos)
      << refused.status();
  SubmitOk(MakeRequest(3, 5));  // exactly at the bound
  EXPECT_EQ(sched_->Submit(MakeRequest(4, 21)).status().code(),
            absl::StatusCode::kInvalidArgument);  // could never fit
  SchedulerStats st = sched_->Stats();
  EXPECT_EQ(st.refused_queue_full, 1);
  EXPECT_EQ(st.queued_tokens, 20);
  gate_.Notify();
  ASSERT_TRUE(collector_.WaitForCalls(3));
  EXPECT_EQ(collector_.calls(2), 0);
  EXPECT_TRUE(collector_.status(1).ok());
  EXPECT_TRUE(collector_.status(3).ok());
}

TEST_F(BatchingTest, ExpiredRequestIsNeverComputed) {
  SchedulerOptions o;
  InitOneWorker(o);
  HoldWorker();
  Request r = MakeRequest(1, 6);
  r.deadline = testing::FromNow(microseconds(20000));
  SubmitOk(std::move(r));
  SubmitOk(MakeRequest(2, 3));
  // The only worker is held, so request 1 can only end by expiring in the queue.
  ASSERT_TRUE(collector_.WaitForCalls(1));
  EXPECT_EQ(collector_.status(1).code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(sched_->Stats().queued_tokens, 3);
  gate_.Notify();
  ASSERT_TRUE(collector_.WaitForCalls(3));
  auto calls = engine_->calls();
  ASSERT_EQ(calls.size(), 2u);
  EXPECT_EQ(calls[1], Tags(2, 3));
  EXPECT_EQ(sched_->Stats().expired, 1);
  EXPECT_EQ(collector_.calls(1), 1);
}

TEST_F(BatchingTest, ExpiryStillWorksAfterManyFinishedRequestsWithDeadlines) {
  SchedulerOptions o;
  o.max_batch_tokens = 16;
  o.max_queue_tokens = 1 << 20;
  InitOneWorker(o);
  // Many requests with far deadlines finish first; their deadline entries are compacted away.
  constexpr int kMany = 3000;
  for (int i = 0; i < kMany; ++i) {
    Request r = MakeRequest(1000 + i, 1);
    r.deadline = testing::FromNow(microseconds(kForever));
    SubmitOk(std::move(r));
  }
  ASSERT_TRUE(collector_.WaitForCalls(kMany));
  HoldWorker();
  Request x = MakeRequest(1, 2);
  x.deadline = testing::FromNow(microseconds(20000));
  SubmitOk(std::move(x));
  Request y = MakeRequest(2, 2);
  y.deadline = testing::FromNow(microseconds(kForever));
  SubmitOk(std::move(y));
  ASSERT_TRUE(collector_.WaitForCalls(kMany + 1));
  EXPECT_EQ(collector_.status(1).code(), absl::StatusCode::kDeadlineExceeded);
  gate_.Notify();
  ASSERT_TRUE(collector_.WaitForCalls(kMany + 3));
  EXPECT_TRUE(collector_.status(2).ok());
  EXPECT_EQ(sched_->Stats().completed_ok, kMany + 2);
}

TEST_F(BatchingTest, CancelledRequestIsDroppedBeforeCompute) {
  SchedulerOptions o;
  InitOneWorker(o);
  HoldWorker();
  RequestId a = SubmitOk(MakeRequest(1, 7));
  SubmitOk(MakeRequest(2, 3));
  EXPECT_EQ(sched_->Stats().queued_tokens, 10);
  EXPECT_TRUE(sched_->Cancel(a));
  EXPECT_EQ(sched_->Stats().queued_tokens, 3);  // released at once
  ASSERT_TRUE(collector_.WaitForCalls(1));      // completed while the worker is still held
  EXPECT_EQ(collector_.status(1).code(), absl::StatusCode::kCancelled);
  EXPECT_FALSE(sched_->Cancel(a));       // already completed
  EXPECT_FALSE(sched_->Cancel(123456));  // unknown
  gate_.Notify();
  ASSERT_TRUE(collector_.WaitForCalls(3));
  auto calls = engine_->calls();
  ASSERT_EQ(calls.size(), 2u);
  EXPECT_EQ(calls[1], Tags(2, 3));
  EXPECT_EQ(sched_->Stats().cancelled, 1);
}

TEST_F(BatchingTest, CancelOfAPartlyRunningRequestDropsTheRestAndWaitsForTheRunningPiece) {
  SchedulerOptions o;
  o.max_batch_tokens = 8;
  InitOneWorker(o);
  engine_->BlockNextCall(&entered_, &gate_);
  RequestId a = SubmitOk(MakeRequest(1, 20));  // 8 tokens run (held), 12 stay queued
  entered_.WaitForNotification();
  EXPECT_EQ(sched_->Stats().queued_tokens, 12);
  EXPECT_TRUE(sched_->Cancel(a));
  EXPECT_EQ(sched_->Stats().queued_tokens, 0);
  EXPECT_FALSE(sched_->Cancel(a));  // nothing of it is queued any more
  // Its callback must wait for the running piece (which writes into its buffers).
  EXPECT_EQ(collector_.total(), 0);
  EXPECT_EQ(sched_->Stats().live_requests, 1);
  gate_.Notify();
  ASSERT_TRUE(collector_.WaitForCalls(1));
  EXPECT_EQ(collector_.status(1).code(), absl::StatusCode::kCancelled);
  ASSERT_TRUE(sched_->Shutdown(testing::FromNow(microseconds(kForever))).ok());
  auto calls = engine_->calls();
  ASSERT_EQ(calls.size(), 1u);  // the rest was never computed
  EXPECT_EQ(calls[0], Tags(1, 8));
  EXPECT_EQ(collector_.calls(1), 1);
}

TEST_F(BatchingTest, LargeRequestIsSplitAndReassembledInOrder) {
  SchedulerOptions o;
  o.max_batch_tokens = 16;
  o.max_queue_delay_us = 0;
  FakeEngineOptions eo;
  eo.max_batch_tokens = 128;
  Init(o, eo);
  for (DType dtype : {DType::kF32, DType::kBF16, DType::kF16}) {
    SCOPED_TRACE(std::string(DTypeName(dtype)));
    const int tag = 1 + static_cast<int>(dtype);
    Request r = MakeRequest(tag, 100, Priority::kNormal, 3, dtype);
    r.want_routing = true;
    const std::string input = r.input;
    const int before = collector_.total();
    SubmitOk(std::move(r));
    ASSERT_TRUE(collector_.WaitForCalls(before + 1));
    Response resp = collector_.take(tag);
    ASSERT_TRUE(resp.status.ok()) << resp.status;
    EXPECT_EQ(resp.batches, 7);  // 6 x 16 + 4

    // The request alone on a second engine: bitwise equal output and routing.
    FakeEngine ref(eo);
    std::string out(input.size(), '\0');
    std::vector<int32_t> ids(100 * 2);
    std::vector<float> weights(100 * 2);
    ForwardArgs a;
    a.layer = 3;
    a.dtype = dtype;
    a.n_tokens = 100;
    a.input = input.data();
    a.output = out.data();
    a.expert_ids = ids.data();
    a.expert_weights = weights.data();
    ASSERT_TRUE(ref.Forward(a).ok());
    EXPECT_TRUE(resp.output == out);
    EXPECT_EQ(resp.expert_ids, ids);
    EXPECT_EQ(0, std::memcmp(resp.expert_weights.data(), weights.data(), weights.size() * 4));
  }
  EXPECT_EQ(engine_->slot_overlaps(), 0);
}

TEST_F(BatchingTest, EngineErrorFailsTheRequestsOfTheBatch) {
  SchedulerOptions o;
  o.max_batch_tokens = 8;
  o.max_queue_delay_us = 0;
  FakeEngineOptions eo;
  eo.fail_layer = 3;
  Init(o, eo);
  SubmitOk(MakeRequest(1, 20, Priority::kNormal, 3));  // split over 3 batches, all failing
  SubmitOk(MakeRequest(2, 4, Priority::kNormal, 1));
  ASSERT_TRUE(collector_.WaitForCalls(2));
  Response r1 = collector_.take(1);
  EXPECT_EQ(r1.status.code(), absl::StatusCode::kInternal);
  EXPECT_TRUE(r1.output.empty());
  EXPECT_TRUE(collector_.status(2).ok());
  sched_->Shutdown(testing::FromNow(microseconds(kForever))).IgnoreError();
  EXPECT_EQ(collector_.calls(1), 1);
  EXPECT_EQ(sched_->Stats().failed, 1);
}

TEST_F(BatchingTest, BorrowedBuffersAreReadAndWrittenInPlace) {
  SchedulerOptions o;
  o.max_batch_tokens = 8;
  o.max_queue_delay_us = 0;
  Init(o);
  const int hidden = engine_->spec().hidden;
  std::string input = TaggedInput(DType::kBF16, hidden, 20, 7);
  std::string output(input.size(), '\xff');  // poisoned
  Request r = MakeRequest(7, 20, Priority::kNormal, 1, DType::kBF16);
  r.input.clear();
  r.borrowed_input = input.data();
  r.borrowed_output = output.data();
  SubmitOk(std::move(r));
  ASSERT_TRUE(collector_.WaitForCalls(1));
  Response resp = collector_.take(7);
  ASSERT_TRUE(resp.status.ok());
  EXPECT_TRUE(resp.output.empty());
  FakeEngine ref(FakeEngineOptions{});
  std::string want(input.size(), '\0');
  ForwardArgs a;
  a.layer = 1;
  a.dtype = DType::kBF16;
  a.n_tokens = 20;
  a.input = input.data();
  a.output = want.data();
  ASSERT_TRUE(ref.Forward(a).ok());
  EXPECT_TRUE(output == want);
}

TEST_F(BatchingTest, ShutdownDrainsEverythingExactlyOnce) {
  SchedulerOptions o;
  o.max_batch_tokens = 16;
  o.max_queue_delay_us = kForever;  // only the drain can release partial batches
  o.max_queue_tokens = 1 << 20;
  Init(o);
  constexpr int kThreads = 4, kPerThread = 50;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        const int key = t * kPerThread + i;
        SubmitOk(MakeRequest(key, 1 + key % 7, static_cast<Priority>(key % 3), key % 2 ? 1 : 3));
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_TRUE(sched_->Shutdown(testing::FromNow(microseconds(kForever))).ok());
  EXPECT_EQ(collector_.total(), kThreads * kPerThread);  // all done when Shutdown returns
  for (int key = 0; key < kThreads * kPerThread; ++key) {
    ASSERT_EQ(collector_.calls(key), 1) << key;
    ASSERT_TRUE(collector_.status(key).ok()) << key;
  }
  EXPECT_EQ(sched_->Submit(MakeRequest(999, 1)).status().code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(sched_->Shutdown(testing::FromNow(microseconds(0))).ok());  // idempotent
  SchedulerStats st = sched_->Stats();
  EXPECT_EQ(st.completed_ok, kThreads * kPerThread);
  EXPECT_EQ(st.live_requests, 0);
  EXPECT_EQ(st.queued_tokens, 0);
  EXPECT_EQ(st.refused_shutting_down, 1);
  EXPECT_EQ(engine_->slot_overlaps(), 0);
}

TEST_F(BatchingTest, ShutdownDeadlineFailsQueuedAndFinishesRunning) {
  SchedulerOptions o;
  InitOneWorker(o);
  HoldWorker();
  SubmitOk(MakeRequest(1, 5));
  SubmitOk(MakeRequest(2, 5));
  Status shutdown;
  std::thread stopper([&] { shutdown = sched_->Shutdown(testing::FromNow(microseconds(10000))); });
  // The queued requests are failed at the deadline, while the worker is still held.
  ASSERT_TRUE(collector_.WaitForCalls(2));
  EXPECT_EQ(collector_.status(1).code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(collector_.status(2).code(), absl::StatusCode::kUnavailable);
  gate_.Notify();
  stopper.join();
  EXPECT_EQ(shutdown.code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_TRUE(collector_.status(100).ok());  // the running one finished normally
  EXPECT_EQ(collector_.total(), 3);
  EXPECT_EQ(sched_->Stats().shutdown_failed, 2);
}

// Observer hooks see every refusal, batch and request.
class CountingObserver : public SchedulerObserver {
 public:
  void OnRefused(RefusalReason, int64_t) override { refused.fetch_add(1); }
  void OnRequestDone(const RequestRecord& r) override {
    done.fetch_add(1);
    tokens.fetch_add(r.n_tokens);
  }
  void OnBatchFormed(int, DType, int64_t n, int) override {
    formed.fetch_add(1);
    formed_tokens.fetch_add(n);
  }
  void OnBatchDone(const BatchRecord& b) override {
    batches.fetch_add(1);
    if (!b.status.ok() || b.worker < 0) bad.fetch_add(1);
  }
  std::atomic<int64_t> refused{0}, done{0}, tokens{0}, formed{0}, formed_tokens{0}, batches{0},
      bad{0};
};

TEST_F(BatchingTest, ObserverSeesEveryEvent) {
  CountingObserver obs;
  SchedulerOptions o;
  o.max_batch_tokens = 8;
  o.max_queue_delay_us = 100;
  o.observer = &obs;
  Init(o);
  int64_t tokens = 0;
  for (int i = 0; i < 20; ++i) {
    SubmitOk(MakeRequest(i, 1 + i % 11));
    tokens += 1 + i % 11;
  }
  EXPECT_FALSE(sched_->Submit(MakeRequest(50, 0)).ok());
  ASSERT_TRUE(sched_->Shutdown(testing::FromNow(microseconds(kForever))).ok());
  SchedulerStats st = sched_->Stats();
  EXPECT_EQ(obs.refused.load(), 1);
  EXPECT_EQ(obs.done.load(), 20);
  EXPECT_EQ(obs.tokens.load(), tokens);
  EXPECT_EQ(obs.formed.load(), st.batches_formed);
  EXPECT_EQ(obs.batches.load(), st.batches_formed);
  EXPECT_EQ(obs.formed_tokens.load(), tokens);
  EXPECT_EQ(st.batched_tokens, tokens);
  EXPECT_EQ(obs.bad.load(), 0);
  int64_t received = 0;
  for (const WorkerStats& w : st.swarm.workers) received += w.received;
  EXPECT_EQ(received, st.batches_formed);
}

}  // namespace
}  // namespace moe
