// The concurrent-clients correctness check (concurrent_clients.h) on the fake engine: fast, and
// run under ThreadSanitizer.
#include <gtest/gtest.h>

#include "scheduler/concurrent_clients.h"
#include "scheduler/fake_engine.h"

namespace moe::testing {
namespace {

TEST(CorrectnessTest, ConcurrentClientsGetTheirOwnAnswerBitwiseOnFakeEngine) {
  FakeEngineOptions o;
  o.hidden = 24;
  o.num_slots = 3;
  o.max_batch_tokens = 512;
  auto serving = std::make_unique<FakeEngine>(o);
  FakeEngine* fake = serving.get();
  Engines engines{std::move(serving), std::make_unique<FakeEngine>(o)};
  RunConcurrentClients(engines);
  EXPECT_EQ(fake->slot_overlaps(), 0);
}

}  // namespace
}  // namespace moe::testing
