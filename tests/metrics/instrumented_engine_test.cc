// InstrumentedEngine: forwards to the wrapped engine, counts each forward's routed tokens per
// expert into the expert-load metrics, passes caller-requested expert ids through, and records
// nothing for failed forwards.
#include "moe/metrics/instrumented_engine.h"

#include <gtest/gtest.h>

#include <vector>

#include "metrics/collect.h"
#include "moe/metrics/metrics.h"

namespace moe::metrics {
namespace {

using testing::Collected;

constexpr int kExperts = 6;
constexpr int kTopK = 2;
constexpr int kLayers = 3;

// Routes token t of a forward to experts (t + layer) % 6 and (t + layer + 1) % 6; fails on demand.
class FakeEngine final : public Engine {
 public:
  FakeEngine() {
    spec_.n_layers = kLayers;
    spec_.moe_layers = {0, 1, 2};
    spec_.routing.n_experts = kExperts;
    spec_.routing.top_k = kTopK;
  }
  std::string_view name() const override { return "fake"; }
  const MoeSpec& spec() const override { return spec_; }
  int num_slots() const override { return 2; }
  int64_t max_batch_tokens() const override { return 16; }
  Status Forward(const ForwardArgs& args) override {
    ++calls;
    if (fail) return absl::InternalError("fake failure");
    if (args.slot < 0 || args.slot >= num_slots()) return absl::InvalidArgumentError("slot");
    saw_ids = args.expert_ids != nullptr;
    if (args.expert_ids != nullptr) {
      for (int64_t t = 0; t < args.n_tokens; ++t) {
        args.expert_ids[t * kTopK] = static_cast<int32_t>((t + args.layer) % kExperts);
        args.expert_ids[t * kTopK + 1] = static_cast<int32_t>((t + args.layer + 1) % kExperts);
      }
    }
    return absl::OkStatus();
  }
  MoeSpec spec_;
  bool fail = false;
  bool saw_ids = false;
  int calls = 0;
};

struct Fixture {
  Fixture() {
    Metrics::Options options;
    options.imbalance_window_assignments = 1'000'000;  // keep the imbalance gauge out of the way
    metrics = std::move(Metrics::Create(options)).value();
    EXPECT_TRUE(metrics->ConfigureExpertLoad(kLayers, kExperts).ok());
    auto owned = std::make_unique<FakeEngine>();
    fake = owned.get();
    engine = std::move(InstrumentedEngine::Create(std::move(owned), metrics.get())).value();
  }
  double Routed(int layer, int expert) const {
    return Collected(*metrics).Counter(
        "moe_expert_routed_tokens_total",
        {{"layer", std::to_string(layer)}, {"expert", std::to_string(expert)}});
  }
  std::unique_ptr<Metrics> metrics;
  FakeEngine* fake = nullptr;
  std::unique_ptr<Engine> engine;
};

TEST(InstrumentedEngineTest, CountsRoutedTokensPerExpert) {
  Fixture f;
  EXPECT_EQ(f.engine->name(), "fake");
  EXPECT_EQ(f.engine->num_slots(), 2);
  EXPECT_EQ(f.engine->max_batch_tokens(), 16);
  ForwardArgs args;
  args.layer = 1;
  args.n_tokens = 4;  // tokens 0..3 -> experts {1,2},{2,3},{3,4},{4,5}
  args.slot = 1;
  ASSERT_TRUE(f.engine->Forward(args).ok());
  EXPECT_TRUE(f.fake->saw_ids) << "the decorator must ask the engine for expert ids";
  const std::vector<double> want = {0, 1, 2, 2, 2, 1};
  for (int e = 0; e < kExperts; ++e) EXPECT_EQ(f.Routed(1, e), want[e]) << "expert " << e;
  for (int e = 0; e < kExperts; ++e) EXPECT_EQ(f.Routed(0, e), 0.0);
  // A second forward accumulates.
  ASSERT_TRUE(f.engine->Forward(args).ok());
  EXPECT_EQ(f.Routed(1, 3), 4.0);
}

TEST(InstrumentedEngineTest, CallerRequestedIdsArePassedThrough) {
  Fixture f;
  std::vector<int32_t> ids(3 * kTopK, -7);  // poisoned
  ForwardArgs args;
  args.layer = 0;
  args.n_tokens = 3;
  args.expert_ids = ids.data();
  ASSERT_TRUE(f.engine->Forward(args).ok());
  EXPECT_EQ(ids, (std::vector<int32_t>{0, 1, 1, 2, 2, 3}));
  EXPECT_EQ(f.Routed(0, 1), 2.0);
}

TEST(InstrumentedEngineTest, FailuresRecordNothing) {
  Fixture f;
  f.fake->fail = true;
  ForwardArgs args;
  args.layer = 2;
  args.n_tokens = 5;
  const Status s = f.engine->Forward(args);
  EXPECT_EQ(s.code(), absl::StatusCode::kInternal);
  for (int e = 0; e < kExperts; ++e) EXPECT_EQ(f.Routed(2, e), 0.0);
  // Out-of-range slot or size: the wrapped engine decides (and rejects).
  f.fake->fail = false;
  args.slot = 5;
  EXPECT_EQ(f.engine->Forward(args).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(f.fake->saw_ids);
  EXPECT_EQ(f.fake->calls, 2);
  EXPECT_EQ(Collected(*f.metrics).Counter("moe_metrics_dropped_total"), 0.0);
}

TEST(InstrumentedEngineTest, NullArgumentsAreRejected) {
  auto metrics = std::move(Metrics::Create({})).value();
  EXPECT_EQ(InstrumentedEngine::Create(nullptr, metrics.get()).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(InstrumentedEngine::Create(std::make_unique<FakeEngine>(), nullptr).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace moe::metrics
