// The concurrent-clients correctness check (concurrent_clients.h) on the real CPU engine with a
// small random DeepSeek-V3 model: bitwise equal to the engine on each request alone.
#include <gtest/gtest.h>

#include "moe/engine/cpu_engine.h"
#include "scheduler/concurrent_clients.h"

namespace moe::testing {
namespace {

Engines MakeCpuEngines() {
  RandomModelOptions mo;
  mo.family = Family::kDeepseekV3;  // the most involved routing, plus shared experts
  mo.hidden = 32;
  mo.moe_intermediate = 16;
  mo.shared_intermediate = 16;
  mo.n_experts = 8;
  mo.top_k = 2;
  mo.n_group = 4;
  mo.topk_group = 2;
  mo.moe_layers = {1, 3};
  mo.seed = 7;
  std::shared_ptr<const Model> model = RandomModel(mo);
  CpuEngineOptions eo;
  eo.num_threads = 1;  // the machine running tests has 2 cores; parallelism comes from the slots
  eo.num_slots = 2;
  eo.max_batch_tokens = 512;
  auto serving = CpuEngine::Create(model, eo);
  eo.num_slots = 1;
  auto reference = CpuEngine::Create(model, eo);
  EXPECT_TRUE(serving.ok()) << serving.status();
  EXPECT_TRUE(reference.ok()) << reference.status();
  if (!serving.ok() || !reference.ok()) return {};
  return {std::move(serving).value(), std::move(reference).value()};
}

TEST(CpuEngineCorrectnessTest, ConcurrentClientsGetTheirOwnAnswerBitwise) {
  Engines engines = MakeCpuEngines();
  RunConcurrentClients(engines);
}

}  // namespace
}  // namespace moe::testing
