// Worker swarm: nothing lost, nothing run twice, counters exact, clean stop in both modes.
#include "moe/swarm/swarm.h"

#include <gtest/gtest.h>

#include <atomic>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#include "swarm/notification.h"

namespace moe {
namespace {

using testing::Notification;

// A task calling `run(worker)` or `abandon(status)`.
class FnTask : public SwarmTask {
 public:
  FnTask(std::function<void(int)> run, std::function<void(const Status&)> abandon)
      : run_(std::move(run)), abandon_(std::move(abandon)) {}
  void Run(int worker) override { run_(worker); }
  void Abandon(const Status& why) override { abandon_(why); }

 private:
  std::function<void(int)> run_;
  std::function<void(const Status&)> abandon_;
};

std::unique_ptr<SwarmTask> MakeTask(std::function<void(int)> run,
                                    std::function<void(const Status&)> abandon) {
  return std::make_unique<FnTask>(std::move(run), std::move(abandon));
}

std::unique_ptr<Swarm> MakeSwarm(int workers) {
  SwarmOptions options;
  options.num_workers = workers;
  options.name = "test";
  auto swarm = Swarm::Create(options);
  EXPECT_TRUE(swarm.ok()) << swarm.status();
  return std::move(swarm).value();
}

TEST(SwarmTest, RejectsBadOptions) {
  SwarmOptions options;
  options.num_workers = 0;
  EXPECT_EQ(Swarm::Create(options).status().code(), absl::StatusCode::kInvalidArgument);
}

// The swarm communicator test: 4 producer threads x 1000 messages -> 4000 received, each once.
TEST(SwarmTest, FourProducersThousandMessagesEachNothingLost) {
  constexpr int kProducers = 4;
  constexpr int kPerProducer = 1000;
  constexpr int kWorkers = 3;
  auto swarm = MakeSwarm(kWorkers);
  std::vector<std::atomic<int>> runs(kProducers * kPerProducer);
  std::vector<std::atomic<int64_t>> per_worker(kWorkers);
  std::atomic<int> abandoned{0};
  std::vector<std::thread> producers;
  for (int p = 0; p < kProducers; ++p) {
    producers.emplace_back([&, p] {
      Swarm::Producer producer(*swarm);
      for (int i = 0; i < kPerProducer; ++i) {
        const int id = p * kPerProducer + i;
        auto task = MakeTask(
            [&, id](int worker) {
              runs[static_cast<size_t>(id)].fetch_add(1);
              ASSERT_GE(worker, 0);
              ASSERT_LT(worker, kWorkers);
              per_worker[static_cast<size_t>(worker)].fetch_add(1);
            },
            [&](const Status&) { abandoned.fetch_add(1); });
        // Half the producers use a token, half the implicit path.
        Status s = (p % 2 == 0) ? swarm->Submit(producer, std::move(task))
                                : swarm->Submit(std::move(task));
        ASSERT_TRUE(s.ok()) << s;
      }
    });
  }
  for (auto& t : producers) t.join();
  swarm->Stop(StopMode::kDrain);

  SwarmStats stats = swarm->Stats();
  EXPECT_EQ(stats.submitted, kProducers * kPerProducer);
  EXPECT_EQ(stats.refused, 0);
  EXPECT_EQ(stats.queued, 0);
  EXPECT_EQ(stats.busy_workers, 0);
  ASSERT_EQ(stats.workers.size(), static_cast<size_t>(kWorkers));
  int64_t received = 0, completed = 0;
  for (int w = 0; w < kWorkers; ++w) {
    const WorkerStats& ws = stats.workers[static_cast<size_t>(w)];
    EXPECT_EQ(ws.received, ws.completed) << "worker " << w;
    EXPECT_EQ(ws.abandoned, 0);
    EXPECT_EQ(ws.completed, per_worker[static_cast<size_t>(w)].load()) << "worker " << w;
    received += ws.received;
    completed += ws.completed;
  }
  EXPECT_EQ(received, kProducers * kPerProducer);
  EXPECT_EQ(completed, kProducers * kPerProducer);
  EXPECT_EQ(abandoned.load(), 0);
  for (size_t id = 0; id < runs.size(); ++id) ASSERT_EQ(runs[id].load(), 1) << "message " << id;
}

// A task that blocks its worker until `gate` is notified, announcing `entered` first.
std::unique_ptr<SwarmTask> GateTask(Notification* entered, Notification* gate,
                                    std::atomic<int>* runs) {
  return MakeTask(
      [=](int) {
        entered->Notify();
        gate->WaitForNotification();
        runs->fetch_add(1);
      },
      [](const Status&) { FAIL() << "the gate task must run"; });
}

TEST(SwarmTest, QueueLengthIsObservable) {
  auto swarm = MakeSwarm(1);
  Notification entered, gate;
  std::atomic<int> runs{0};
  ASSERT_TRUE(swarm->Submit(GateTask(&entered, &gate, &runs)).ok());
  entered.WaitForNotification();
  for (int i = 0; i < 10; ++i) {
    ASSERT_TRUE(
        swarm->Submit(MakeTask([&](int) { runs.fetch_add(1); }, [](const Status&) {})).ok());
  }
  EXPECT_EQ(swarm->queued(), 10);
  SwarmStats stats = swarm->Stats();
  EXPECT_EQ(stats.queued, 10);
  EXPECT_EQ(stats.busy_workers, 1);
  EXPECT_TRUE(stats.workers[0].busy);
  gate.Notify();
  swarm->Stop(StopMode::kDrain);
  EXPECT_EQ(runs.load(), 11);
  EXPECT_EQ(swarm->queued(), 0);
}

TEST(SwarmTest, DrainStopRunsEveryQueuedTask) {
  auto swarm = MakeSwarm(2);
  Notification entered, gate;
  std::atomic<int> runs{0}, abandoned{0};
  ASSERT_TRUE(swarm->Submit(GateTask(&entered, &gate, &runs)).ok());
  entered.WaitForNotification();
  for (int i = 0; i < 100; ++i) {
    ASSERT_TRUE(swarm
                    ->Submit(MakeTask([&](int) { runs.fetch_add(1); },
                                      [&](const Status&) { abandoned.fetch_add(1); }))
                    .ok());
  }
  std::thread stopper([&] { swarm->Stop(StopMode::kDrain); });
  gate.Notify();
  stopper.join();
  EXPECT_EQ(runs.load(), 101);
  EXPECT_EQ(abandoned.load(), 0);
}

TEST(SwarmTest, AbandonStopFailsQueuedTasksExplicitly) {
  auto swarm = MakeSwarm(1);
  Notification entered, gate;
  std::atomic<int> runs{0}, abandoned{0};
  std::atomic<int> wrong_code{0};
  auto counted = [&] {
    return MakeTask([&](int) { runs.fetch_add(1); },
                    [&](const Status& why) {
                      if (why.code() != absl::StatusCode::kUnavailable) wrong_code.fetch_add(1);
                      abandoned.fetch_add(1);
                    });
  };
  ASSERT_TRUE(swarm->Submit(GateTask(&entered, &gate, &runs)).ok());
  entered.WaitForNotification();
  for (int i = 0; i < 50; ++i) ASSERT_TRUE(swarm->Submit(counted()).ok());

  std::thread stopper([&] { swarm->Stop(StopMode::kAbandon); });
  // Probe until Submit is refused: from then on Stop() has begun (abandon mode is set first).
  int accepted_probes = 0;
  for (;;) {
    Status s = swarm->Submit(counted());
    if (!s.ok()) {
      EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable);
      break;
    }
    ++accepted_probes;
    std::this_thread::yield();
  }
  gate.Notify();
  stopper.join();
  // The gate task ran; every other task (the 50, the accepted probes and the refused probe) was
  // abandoned explicitly; nothing ran after Stop(kAbandon) began.
  EXPECT_EQ(runs.load(), 1);
  EXPECT_EQ(abandoned.load(), 50 + accepted_probes + 1);
  EXPECT_EQ(wrong_code.load(), 0);
  SwarmStats stats = swarm->Stats();
  EXPECT_EQ(stats.queued, 0);
  EXPECT_EQ(stats.workers[0].completed, 1);
  EXPECT_EQ(stats.workers[0].abandoned, 50 + accepted_probes);
  EXPECT_EQ(stats.refused, 1);
}

TEST(SwarmTest, SubmitAfterStopIsRefusedAndAbandonedOnCaller) {
  auto swarm = MakeSwarm(2);
  swarm->Stop(StopMode::kDrain);
  swarm->Stop(StopMode::kDrain);  // idempotent
  const std::thread::id caller = std::this_thread::get_id();
  bool abandoned_on_caller = false;
  Status s = swarm->Submit(MakeTask([](int) { FAIL() << "must not run"; },
                                    [&](const Status& why) {
                                      abandoned_on_caller =
                                          std::this_thread::get_id() == caller &&
                                          why.code() == absl::StatusCode::kUnavailable;
                                    }));
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(abandoned_on_caller);
  EXPECT_EQ(swarm->Submit(nullptr).code(), absl::StatusCode::kInvalidArgument);
}

TEST(SwarmTest, DestructorDrains) {
  std::atomic<int> runs{0};
  {
    auto swarm = MakeSwarm(2);
    for (int i = 0; i < 200; ++i) {
      ASSERT_TRUE(
          swarm->Submit(MakeTask([&](int) { runs.fetch_add(1); }, [](const Status&) {})).ok());
    }
  }
  EXPECT_EQ(runs.load(), 200);
}

}  // namespace
}  // namespace moe
