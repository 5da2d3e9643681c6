// CpuEngine against the double reference for every family and dtype, odd shapes, batch invariance,
// the OpenBLAS backend, and the errors Create() and Forward() return.
#include "moe/engine/cpu_engine.h"

#include <gtest/gtest.h>

#include <set>
#include <tuple>

#include "engine_cpu/engine_test_util.h"

namespace moe {
namespace {

using testing::ExpectMatchesReference;
using testing::ExpectSameToken;
using testing::MakeActivations;
using testing::RandomModel;
using testing::RandomModelOptions;
using testing::RunForward;
using testing::RunResult;

std::unique_ptr<CpuEngine> MakeEngine(std::shared_ptr<const Model> model,
                                      CpuEngineOptions options = {}) {
  if (options.num_threads == 0) options.num_threads = 2;
  auto engine = CpuEngine::Create(std::move(model), options);
  EXPECT_TRUE(engine.ok()) << engine.status();
  return engine.ok() ? std::move(engine).value() : nullptr;
}

RandomModelOptions FamilyOptions(Family family, DType weight_dtype) {
  RandomModelOptions o;
  o.family = family;
  o.weight_dtype = weight_dtype;
  if (family == Family::kDeepseekV2 || family == Family::kDeepseekV3) {
    o.n_experts = 16;
    o.top_k = 4;
  }
  if (family == Family::kQwen2Moe) o.norm_topk_prob = false;
  return o;
}

// ---- Every family x weight dtype x activation dtype. ----
class FamilyDtypeTest : public ::testing::TestWithParam<std::tuple<Family, DType, DType>> {};

TEST_P(FamilyDtypeTest, MatchesReference) {
  const auto [family, weight_dtype, act_dtype] = GetParam();
  auto model = RandomModel(FamilyOptions(family, weight_dtype));
  auto engine = MakeEngine(model);
  ASSERT_NE(engine, nullptr);
  const int64_t n = 37;
  for (int layer : model->spec().moe_layers) {
    const auto x =
        MakeActivations(act_dtype, n * model->spec().hidden, 100 + static_cast<uint64_t>(layer));
    const RunResult r = RunForward(*engine, layer, act_dtype, x.bytes.data(), n);
    ExpectMatchesReference(*model, layer, act_dtype, x.values, n, r);
  }
}

std::string DTypeParamName(DType d) { return std::string(DTypeName(d)); }

INSTANTIATE_TEST_SUITE_P(
    All, FamilyDtypeTest,
    ::testing::Combine(::testing::Values(Family::kMixtral, Family::kQwen2Moe, Family::kQwen3Moe,
                                         Family::kDeepseekV2, Family::kDeepseekV3, Family::kOlmoe),
                       ::testing::Values(DType::kF32, DType::kBF16, DType::kF16),
                       ::testing::Values(DType::kF32, DType::kBF16, DType::kF16)),
    [](const auto& info) {
      return std::string(FamilyName(std::get<0>(info.param))) + "_w" +
             DTypeParamName(std::get<1>(info.param)) + "_a" +
             DTypeParamName(std::get<2>(info.param));
    });

// ---- Odd shapes. ----
void RunShape(const RandomModelOptions& o, DType act, int64_t n, int* distinct_experts = nullptr) {
  auto model = RandomModel(o);
  auto engine = MakeEngine(model);
  ASSERT_NE(engine, nullptr);
  const int layer = model->spec().moe_layers[0];
  const auto x = MakeActivations(act, n * o.hidden, 7);
  const RunResult r = RunForward(*engine, layer, act, x.bytes.data(), n);
  ExpectMatchesReference(*model, layer, act, x.values, n, r);
  if (distinct_experts != nullptr)
    *distinct_experts = static_cast<int>(std::set<int32_t>(r.ids.begin(), r.ids.end()).size());
}

TEST(CpuEngineShapes, SingleToken) {
  RandomModelOptions o = FamilyOptions(Family::kQwen2Moe, DType::kBF16);
  RunShape(o, DType::kBF16, 1);
  RunShape(o, DType::kF32, 1);
}

TEST(CpuEngineShapes, ThirtyOneExpertsTopOneOddHidden) {
  RandomModelOptions o;
  o.family = Family::kMixtral;
  o.n_experts = 31;
  o.top_k = 1;
  o.hidden = 67;  // not a multiple of 8
  o.moe_intermediate = 45;
  int distinct = 0;
  RunShape(o, DType::kF32, 12, &distinct);
  EXPECT_LT(distinct, 31) << "some experts should get no token";
}

TEST(CpuEngineShapes, HundredTwentyNineExpertsGroupLimited) {
  RandomModelOptions o;
  o.family = Family::kDeepseekV2;
  o.n_experts = 129;
  o.n_group = 3;
  o.topk_group = 2;
  o.top_k = 6;
  o.hidden = 60;
  o.moe_intermediate = 20;
  o.weight_dtype = DType::kF32;
  int distinct = 0;
  RunShape(o, DType::kF32, 9, &distinct);
  EXPECT_LT(distinct, 129);
  RunShape(o, DType::kBF16, 9);
}

TEST(CpuEngineShapes, HundredTwentyNineExpertsNoAuxTc) {
  RandomModelOptions o;
  o.family = Family::kDeepseekV3;
  o.n_experts = 129;
  o.n_group = 3;
  o.topk_group = 1;
  o.top_k = 8;
  o.hidden = 44;
  o.moe_intermediate = 24;
  o.shared_intermediate = 40;
  RunShape(o, DType::kF32, 21);
}

TEST(CpuEngineShapes, TopOneWithoutRenormalisation) {
  RandomModelOptions o = FamilyOptions(Family::kQwen3Moe, DType::kF16);
  o.top_k = 1;
  o.norm_topk_prob = false;
  RunShape(o, DType::kF16, 25);
}

TEST(CpuEngineShapes, BatchLargerThanOneChunk) {
  // 600 tokens run as chunks of 512 + 88.
  RunShape(FamilyOptions(Family::kDeepseekV3, DType::kBF16), DType::kBF16, 600);
}

// ---- Batch invariance, bit for bit. ----
class BatchInvarianceTest : public ::testing::TestWithParam<std::tuple<Family, DType>> {};

TEST_P(BatchInvarianceTest, TokenAloneEqualsTokenInAnyBatch) {
  const auto [family, dtype] = GetParam();
  auto model = RandomModel(FamilyOptions(family, DType::kBF16));
  const MoeSpec& spec = model->spec();
  const int64_t h = spec.hidden;
  const int k = spec.top_k();
  const int64_t row_bytes = h * static_cast<int64_t>(DTypeSize(dtype));
  auto engine = MakeEngine(model);
  CpuEngineOptions one_thread;
  one_thread.num_threads = 1;
  auto serial_engine = MakeEngine(model, one_thread);
  ASSERT_NE(engine, nullptr);
  ASSERT_NE(serial_engine, nullptr);
  const int layer = spec.moe_layers.back();
  const auto token = MakeActivations(dtype, h, 1);
  const RunResult alone = RunForward(*engine, layer, dtype, token.bytes.data(), 1);
  ASSERT_TRUE(alone.status.ok()) << alone.status;
  uint64_t seed = 10;
  for (int64_t batch : {2, 5, 64, 130, 600}) {
    for (int64_t pos : {int64_t{0}, batch / 2, batch - 1}) {
      auto others = MakeActivations(dtype, batch * h, seed++);
      std::copy_n(token.bytes.data(), row_bytes, others.bytes.data() + pos * row_bytes);
      const RunResult r = RunForward(*engine, layer, dtype, others.bytes.data(), batch);
      ASSERT_TRUE(r.status.ok()) << r.status;
      SCOPED_TRACE(::testing::Message() << "batch " << batch << " position " << pos);
      ExpectSameToken(alone, 0, r, pos, row_bytes, k);
    }
  }
  // The thread count does not change the bits either.
  const RunResult serial = RunForward(*serial_engine, layer, dtype, token.bytes.data(), 1);
  ExpectSameToken(alone, 0, serial, 0, row_bytes, k);
}

INSTANTIATE_TEST_SUITE_P(Families, BatchInvarianceTest,
                         ::testing::Combine(::testing::Values(Family::kMixtral, Family::kQwen2Moe,
                                                              Family::kDeepseekV2,
                                                              Family::kDeepseekV3),
                                            ::testing::Values(DType::kBF16, DType::kF32)),
                         [](const auto& info) {
                           return std::string(FamilyName(std::get<0>(info.param))) + "_" +
                                  DTypeParamName(std::get<1>(info.param));
                         });

// ---- The OpenBLAS backend: same math, not batch invariant. ----
TEST(CpuEngineOpenBlas, MatchesReference) {
  CpuEngineOptions options;
  options.gemm = CpuEngineOptions::GemmBackend::kOpenBlas;
  for (Family family : {Family::kQwen2Moe, Family::kDeepseekV3, Family::kMixtral}) {
    auto model = RandomModel(FamilyOptions(family, DType::kBF16));
    auto engine = MakeEngine(model, options);
    ASSERT_NE(engine, nullptr);
    for (DType act : {DType::kF32, DType::kBF16}) {
      const int64_t n = 150;
      const int layer = model->spec().moe_layers[0];
      const auto x = MakeActivations(act, n * model->spec().hidden, 3);
      const RunResult r = RunForward(*engine, layer, act, x.bytes.data(), n);
      ExpectMatchesReference(*model, layer, act, x.values, n, r);
    }
  }
}

// ---- Reported sizes. ----
TEST(CpuEngineInfo, WeightBytesAndFlops) {
  RandomModelOptions o = FamilyOptions(Family::kQwen2Moe, DType::kBF16);  // hidden 64, inter 32
  auto model = RandomModel(o);
  auto engine = MakeEngine(model);
  ASSERT_NE(engine, nullptr);
  EXPECT_EQ(engine->name(), "cpu");
  EXPECT_EQ(engine->num_threads(), 2);
  // Per layer: router + gate row [9 -> 32 padded, 64]; 8 experts x (gate, up [32, 64] + down
  // [64, 32]); shared (gate, up [64, 64] + down [64, 64]). All fp32.
  const int64_t per_layer = 32 * 64 + 8 * (2 * 32 * 64 + 64 * 32) + 3 * 64 * 64;
  EXPECT_EQ(engine->weight_bytes(), 2 * per_layer * 4);
  EXPECT_DOUBLE_EQ(engine->FlopsPerForward(10), 2.0 * 10 * 64 * (8 + 3.0 * 2 * 32 + 3.0 * 64));
  EXPECT_GT(engine->workspace_bytes(), 0);
}

TEST(CpuEngineTiming, ReportsRoutingTime) {
  std::shared_ptr<const Model> model = RandomModel(FamilyOptions(Family::kMixtral, DType::kBF16));
  std::unique_ptr<CpuEngine> engine = MakeEngine(model);
  ASSERT_NE(engine, nullptr);
  const int64_t n = 9;
  testing::RandomActivations x = MakeActivations(DType::kF32, n * model->spec().hidden, 7);
  std::vector<float> out(static_cast<size_t>(n * model->spec().hidden));
  ForwardArgs args;
  args.layer = model->spec().moe_layers[0];
  args.dtype = DType::kF32;
  args.n_tokens = n;
  args.input = x.bytes.data();
  args.output = out.data();
  double routing_seconds = -1.0;
  args.routing_seconds = &routing_seconds;
  ASSERT_TRUE(engine->Forward(args).ok());
  EXPECT_GE(routing_seconds, 0.0);
  EXPECT_LT(routing_seconds, 10.0);
}

// ---- Errors. ----
TEST(CpuEngineErrors, RejectsF8Weights) {
  RandomModelOptions o;
  o.weight_dtype = DType::kF8E4M3;
  auto status = CpuEngine::Create(RandomModel(o), {}).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("F8_E4M3 weights are not supported by the CPU engine yet"),
            std::string::npos)
      << status;
  // One F8 tensor in an otherwise BF16 model.
  auto model = RandomModel(RandomModelOptions{});
  std::vector<MoeLayerWeights> layers = model->layers();
  layers[0].experts[3].up.dtype = DType::kF8E4M3;
  auto mixed = std::shared_ptr<const Model>(Model::FromWeights(model->spec(), layers, model));
  status = CpuEngine::Create(mixed, {}).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("F8_E4M3 weights are not supported by the CPU engine yet"),
            std::string::npos)
      << status;
}

TEST(CpuEngineErrors, RejectsInconsistentWeights) {
  auto model = RandomModel(FamilyOptions(Family::kDeepseekV3, DType::kBF16));
  auto rebuilt = [&](auto edit) {
    std::vector<MoeLayerWeights> layers = model->layers();
    MoeSpec spec = model->spec();
    edit(spec, layers[0]);
    return CpuEngine::Create(std::shared_ptr<const Model>(Model::FromWeights(spec, layers, model)),
                             {})
        .status();
  };
  EXPECT_EQ(rebuilt([](MoeSpec&, MoeLayerWeights& w) {
              w.router.shape = {15, 64};
            }).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(rebuilt([](MoeSpec&, MoeLayerWeights& w) { w.experts.pop_back(); }).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(rebuilt([](MoeSpec&, MoeLayerWeights& w) {
              w.experts[2].down.shape = {32, 64};
            }).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(rebuilt([](MoeSpec&, MoeLayerWeights& w) { w.shared.reset(); }).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(rebuilt([](MoeSpec&, MoeLayerWeights& w) { w.correction_bias.reset(); }).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(rebuilt([](MoeSpec& s, MoeLayerWeights&) { s.routing.top_k = 17; }).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(rebuilt([](MoeSpec& s, MoeLayerWeights&) { s.moe_layers.push_back(7); }).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(rebuilt([](MoeSpec&, MoeLayerWeights& w) { w.router.dtype = DType::kI32; }).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(rebuilt([](MoeSpec&, MoeLayerWeights&) {}).ok());
}

TEST(CpuEngineErrors, RejectsBadOptions) {
  auto model = RandomModel(RandomModelOptions{});
  CpuEngineOptions o;
  o.num_slots = 0;
  EXPECT_EQ(CpuEngine::Create(model, o).status().code(), absl::StatusCode::kInvalidArgument);
  o = {};
  o.num_threads = -1;
  EXPECT_EQ(CpuEngine::Create(model, o).status().code(), absl::StatusCode::kInvalidArgument);
  o = {};
  o.max_batch_tokens = 0;
  EXPECT_EQ(CpuEngine::Create(model, o).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CpuEngine::Create(nullptr, {}).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(CpuEngineErrors, RejectsBadForwardArgs) {
  auto model = RandomModel(RandomModelOptions{});  // MoE layers 1 and 3
  CpuEngineOptions options;
  options.num_slots = 2;
  options.max_batch_tokens = 8;
  auto engine = MakeEngine(model, options);
  ASSERT_NE(engine, nullptr);
  const auto x = MakeActivations(DType::kBF16, 9 * 64, 1);
  EXPECT_TRUE(RunForward(*engine, 1, DType::kBF16, x.bytes.data(), 8).status.ok());
  EXPECT_TRUE(RunForward(*engine, 3, DType::kBF16, x.bytes.data(), 8, 1).status.ok());
  EXPECT_EQ(RunForward(*engine, 2, DType::kBF16, x.bytes.data(), 8).status.code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(RunForward(*engine, 1, DType::kBF16, x.bytes.data(), 9).status.code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(RunForward(*engine, 1, DType::kBF16, x.bytes.data(), 0).status.code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(RunForward(*engine, 1, DType::kBF16, nullptr, 4).status.code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(RunForward(*engine, 1, DType::kBF16, x.bytes.data(), 4, 2).status.code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(RunForward(*engine, 1, DType::kF64, x.bytes.data(), 4).status.code(),
            absl::StatusCode::kInvalidArgument);
  // ids and weights are optional.
  std::vector<uint16_t> out(64);
  ForwardArgs args;
  args.layer = 1;
  args.dtype = DType::kBF16;
  args.n_tokens = 1;
  args.input = x.bytes.data();
  args.output = out.data();
  EXPECT_TRUE(engine->Forward(args).ok());
}

}  // namespace
}  // namespace moe
