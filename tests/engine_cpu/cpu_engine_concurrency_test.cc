// Forward() from several slots at once gives the same bits as one slot at a time (also run under
// ThreadSanitizer: label tsan).
#include <gtest/gtest.h>

#include <thread>
#include <vector>

#include "engine_cpu/engine_test_util.h"
#include "moe/engine/cpu_engine.h"

namespace moe {
namespace {

using testing::MakeActivations;
using testing::RandomModel;
using testing::RandomModelOptions;
using testing::RunForward;
using testing::RunResult;

TEST(CpuEngineConcurrency, SlotsRunConcurrentlyWithSerialResults) {
  RandomModelOptions o;
  o.family = Family::kDeepseekV3;
  o.n_experts = 16;
  o.top_k = 4;
  auto model = RandomModel(o);
  CpuEngineOptions options;
  options.num_threads = 3;
  options.num_slots = 3;
  auto engine_or = CpuEngine::Create(model, options);
  ASSERT_TRUE(engine_or.ok()) << engine_or.status();
  CpuEngine& engine = **engine_or;
  const int64_t h = model->spec().hidden;
  constexpr int kRounds = 6;
  std::vector<testing::RandomActivations> inputs;
  std::vector<int64_t> sizes;
  for (int i = 0; i < 3 * kRounds; ++i) {
    sizes.push_back(1 + (i * 37) % 90);
    inputs.push_back(MakeActivations(DType::kBF16, sizes.back() * h, static_cast<uint64_t>(i)));
  }
  // Serial results first.
  std::vector<RunResult> serial;
  for (int i = 0; i < 3 * kRounds; ++i) {
    serial.push_back(RunForward(engine, 1 + 2 * (i % 2), DType::kBF16,
                                inputs[static_cast<size_t>(i)].bytes.data(),
                                sizes[static_cast<size_t>(i)]));
    ASSERT_TRUE(serial.back().status.ok()) << serial.back().status;
  }
  std::vector<RunResult> concurrent(serial.size());
  std::vector<std::thread> threads;
  for (int slot = 0; slot < 3; ++slot) {
    threads.emplace_back([&, slot] {
      for (int round = 0; round < kRounds; ++round) {
        const int i = round * 3 + slot;
        concurrent[static_cast<size_t>(i)] = RunForward(engine, 1 + 2 * (i % 2), DType::kBF16,
                                                        inputs[static_cast<size_t>(i)].bytes.data(),
                                                        sizes[static_cast<size_t>(i)], slot);
      }
    });
  }
  for (std::thread& t : threads) t.join();
  for (size_t i = 0; i < serial.size(); ++i) {
    ASSERT_TRUE(concurrent[i].status.ok()) << concurrent[i].status;
    EXPECT_EQ(concurrent[i].out, serial[i].out) << "input " << i;
    EXPECT_EQ(concurrent[i].ids, serial[i].ids) << "input " << i;
  }
}

}  // namespace
}  // namespace moe
