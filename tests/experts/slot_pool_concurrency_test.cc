// ExpertSlotPool under concurrent batches (built and run under ThreadSanitizer too).
#include <gtest/gtest.h>

#include <atomic>
#include <random>
#include <thread>

#include "moe/experts/slot_pool.h"

namespace moe::experts {
namespace {

TEST(ExpertSlotPoolConcurrency, BatchesOnSeveralThreadsKeepPinsAndCountsConsistent) {
  ShapeClass cls{/*expert_bytes=*/64, /*n_experts=*/16, {0, 1, 2}};
  ExpertSlotPool::Options options;
  options.budget_bytes = 12 * 64;
  options.shape_classes = {cls};
  auto created = ExpertSlotPool::Create(options);
  ASSERT_TRUE(created.ok());
  ExpertSlotPool& pool = **created;

  constexpr int kThreads = 4;
  constexpr int kSteps = 400;
  std::atomic<uint64_t> demanded{0};
  std::atomic<uint64_t> prefetches{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 rng(t + 1);
      for (int step = 0; step < kSteps; ++step) {
        const int32_t layer = step % 3;
        std::vector<ExpertKey> pending;
        for (int i = 0; i < 5; ++i) pending.push_back({layer, static_cast<int32_t>(rng() % 16)});
        std::sort(pending.begin(), pending.end());
        pending.erase(std::unique(pending.begin(), pending.end()), pending.end());
        demanded += pending.size();
        while (!pending.empty()) {
          auto round = pool.Acquire(pending);
          if (!round.ok()) {  // every slot pinned by the other threads: retry
            ASSERT_EQ(round.status().code(), absl::StatusCode::kResourceExhausted);
            std::this_thread::yield();
            continue;
          }
          for (const RoundEntry& e : round->entries) {
            const SlotInfo info = pool.Inspect(e.slot);
            ASSERT_GE(info.pins, 1);
            ASSERT_EQ(info.key, e.key);
            if (e.source == SlotSource::kLoad) {
              ASSERT_TRUE(pool.MarkLoaded(e.slot).ok());
            }
          }
          auto loads = pool.Prefetch(std::vector<ExpertKey>{{(layer + 1) % 3, t}}, 1);
          ASSERT_TRUE(loads.ok());
          for (const PrefetchLoad& l : *loads) ASSERT_TRUE(pool.MarkLoaded(l.slot).ok());
          prefetches += loads->size();
          ASSERT_TRUE(pool.Release(*round, step).ok());
          pending = round->deferred;
        }
      }
    });
  }
  for (auto& th : threads) th.join();

  const ExpertCacheCounters c = pool.Counters();
  EXPECT_EQ(c.Demanded(), demanded.load());
  EXPECT_EQ(c.prefetch_issued, prefetches.load());
  EXPECT_EQ(c.bytes_copied, (c.misses + c.prefetch_issued) * 64);
  int resident = 0;
  for (int32_t i = 0; i < pool.SlotCount(0); ++i) {
    const SlotInfo info = pool.Inspect({0, i});
    EXPECT_EQ(info.pins, 0);
    EXPECT_NE(info.state, SlotState::kLoading);
    resident += info.state == SlotState::kReady;
  }
  int per_layer = 0;
  for (int32_t n : c.resident_per_layer) per_layer += n;
  EXPECT_EQ(per_layer, resident);
}

}  // namespace
}  // namespace moe::experts
