// Model::Open on tiny checkpoints of every family, in both layouts, and every way they can be
// wrong.
#include "moe/model/loader.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include "model/tiny_checkpoint.h"
#include "moe/model/model.h"

namespace moe {
namespace {

using ::moe::testing::TempDir;
using ::moe::testing::TinyCheckpoint;
using ::moe::testing::TinyOptions;
using ::moe::testing::TinyValue;

constexpr int kH = TinyCheckpoint::kHidden, kI = TinyCheckpoint::kInter,
              kE = TinyCheckpoint::kExperts;

float First(const TensorView& v) {
  switch (v.dtype) {
    case DType::kBF16:
      return Bf16ToF32(*static_cast<const uint16_t*>(v.data));
    case DType::kF16:
      return F16ToF32(*static_cast<const uint16_t*>(v.data));
    default:
      return *static_cast<const float*>(v.data);
  }
}

std::string Block(const TinyOptions& o, int layer) {
  const bool bsm = o.family == Family::kMixtral && !o.mixtral_mlp_prefix;
  return "model.layers." + std::to_string(layer) + (bsm ? ".block_sparse_moe" : ".mlp");
}

StatusOr<std::unique_ptr<Model>> WriteAndOpen(const TinyCheckpoint& tiny, const TempDir& dir,
                                              int n_shards = 1) {
  EXPECT_TRUE(tiny.Write(dir.path(), n_shards));
  return Model::Open(dir.path());
}

void ExpectError(const StatusOr<std::unique_ptr<Model>>& result, absl::StatusCode code,
                 std::vector<std::string> parts) {
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), code) << result.status();
  const std::string message(result.status().message());
  for (const std::string& p : parts) EXPECT_NE(message.find(p), std::string::npos) << message;
}

struct Case {
  Family family;
  bool fused;
  bool mixtral_mlp_prefix;
  int n_shards;
};

class LoaderFamilyTest : public ::testing::TestWithParam<Case> {};

TEST_P(LoaderFamilyTest, LoadsEveryExpertView) {
  const Case c = GetParam();
  TinyOptions o;
  o.family = c.family;
  o.fused = c.fused;
  o.mixtral_mlp_prefix = c.mixtral_mlp_prefix;
  TinyCheckpoint tiny(o);
  TempDir dir;
  auto model_or = WriteAndOpen(tiny, dir, c.n_shards);
  ASSERT_TRUE(model_or.ok()) << model_or.status();
  const Model& model = **model_or;
  const MoeSpec& s = model.spec();
  EXPECT_EQ(s.family, c.family);
  EXPECT_EQ(s.hidden, kH);
  EXPECT_EQ(s.moe_intermediate, kI);
  EXPECT_EQ(s.n_experts(), kE);
  EXPECT_EQ(s.weight_dtype, DType::kBF16);
  EXPECT_EQ(model.dir(), dir.path());
  EXPECT_GT(model.mapped_bytes(), 0);
  ASSERT_EQ(model.layers().size(), s.moe_layers.size());
  for (int layer = 0; layer < TinyCheckpoint::kLayers; ++layer) {
    EXPECT_EQ(model.layer(layer) != nullptr, s.IsMoeLayer(layer)) << layer;
  }
  for (const MoeLayerWeights& w : model.layers()) {
    const std::string b = Block(o, w.layer);
    EXPECT_EQ(w.router.name, b + ".gate.weight");
    EXPECT_EQ(w.router.shape, (std::vector<int64_t>{kE, kH}));
    EXPECT_EQ(First(w.router), TinyValue(w.router.name, 0));
    ASSERT_EQ(w.experts.size(), static_cast<size_t>(kE));
    for (int e = 0; e < kE; ++e) {
      const ExpertWeights& x = w.experts[static_cast<size_t>(e)];
      EXPECT_EQ(x.gate.shape, (std::vector<int64_t>{kI, kH}));
      EXPECT_EQ(x.up.shape, (std::vector<int64_t>{kI, kH}));
      EXPECT_EQ(x.down.shape, (std::vector<int64_t>{kH, kI}));
      EXPECT_EQ(x.intermediate(), kI);
      EXPECT_EQ(x.gate.nbytes, kI * kH * 2);
      EXPECT_FALSE(x.gate_scale.has_value());
      if (c.fused) {
        const std::string gu = b + ".experts.gate_up_proj", dn = b + ".experts.down_proj";
        EXPECT_EQ(First(x.gate), TinyValue(gu, int64_t{e} * 2 * kI * kH));
        EXPECT_EQ(First(x.up), TinyValue(gu, (int64_t{e} * 2 * kI + kI) * kH));
        EXPECT_EQ(First(x.down), TinyValue(dn, int64_t{e} * kH * kI));
        // The last element of the up slice is the last row of expert e's gate_up block.
        const auto* up = static_cast<const uint16_t*>(x.up.data);
        EXPECT_EQ(Bf16ToF32(up[kI * kH - 1]), TinyValue(gu, (int64_t{e} + 1) * 2 * kI * kH - 1));
        EXPECT_NE(x.gate.name.find(gu), std::string::npos);
      } else {
        const bool mixtral = c.family == Family::kMixtral;
        const std::string p = b + ".experts." + std::to_string(e) + ".";
        EXPECT_EQ(x.gate.name, p + (mixtral ? "w1" : "gate_proj") + ".weight");
        EXPECT_EQ(x.up.name, p + (mixtral ? "w3" : "up_proj") + ".weight");
        EXPECT_EQ(x.down.name, p + (mixtral ? "w2" : "down_proj") + ".weight");
        EXPECT_EQ(First(x.gate), TinyValue(x.gate.name, 0));
        EXPECT_EQ(First(x.up), TinyValue(x.up.name, 0));
        EXPECT_EQ(First(x.down), TinyValue(x.down.name, 0));
      }
    }
    EXPECT_EQ(w.correction_bias.has_value(), c.family == Family::kDeepseekV3);
    if (w.correction_bias) {
      EXPECT_EQ(w.correction_bias->dtype, DType::kF32);
      EXPECT_EQ(First(*w.correction_bias), TinyValue(b + ".gate.e_score_correction_bias", 0));
    }
    const bool has_shared = c.family == Family::kQwen2Moe || c.family == Family::kDeepseekV2 ||
                            c.family == Family::kDeepseekV3;
    ASSERT_EQ(w.shared.has_value(), has_shared);
    if (has_shared) {
      EXPECT_EQ(w.shared->intermediate(), s.shared_intermediate);
      EXPECT_EQ(w.shared->down.shape, (std::vector<int64_t>{kH, s.shared_intermediate}));
      EXPECT_EQ(First(w.shared->up), TinyValue(w.shared->up.name, 0));
    }
    EXPECT_EQ(w.shared_gate.has_value(), c.family == Family::kQwen2Moe);
    if (w.shared_gate) {
      EXPECT_EQ(w.shared_gate->shape, (std::vector<int64_t>{1, kH}));
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Families, LoaderFamilyTest,
    ::testing::Values(
        Case{Family::kMixtral, false, false, 1}, Case{Family::kMixtral, true, false, 1},
        Case{Family::kMixtral, false, true, 1}, Case{Family::kMixtral, true, true, 2},
        Case{Family::kQwen2Moe, false, false, 1}, Case{Family::kQwen2Moe, true, false, 3},
        Case{Family::kQwen3Moe, false, false, 2}, Case{Family::kQwen3Moe, true, false, 1},
        Case{Family::kDeepseekV2, false, false, 1}, Case{Family::kDeepseekV2, true, false, 2},
        Case{Family::kDeepseekV3, false, false, 3}, Case{Family::kDeepseekV3, true, false, 1},
        Case{Family::kOlmoe, false, false, 1}, Case{Family::kOlmoe, true, false, 2}),
    [](const ::testing::TestParamInfo<Case>& info) {
      std::string name(FamilyName(info.param.family));
      name += info.param.fused ? "_fused" : "_per_expert";
      if (info.param.mixtral_mlp_prefix) name += "_mlp";
      return name + "_" + std::to_string(info.param.n_shards) + "shards";
    });

// Open() must not read tensor bytes: a 384 MiB checkpoint whose data section is a hole in a
// sparse file opens with none of its data pages resident (mincore), so nothing faulted them in.
TEST(LoaderTest, OpenDoesNotTouchTensorBytes) {
  constexpr int64_t kBigH = 1024, kBigI = 1024, kBigE = 64;
  TempDir dir;
  nlohmann::json config = {{"model_type", "qwen3_moe"}, {"hidden_size", kBigH},
                           {"num_hidden_layers", 1},    {"moe_intermediate_size", kBigI},
                           {"num_experts", kBigE},      {"num_experts_per_tok", 2}};
  ::moe::testing::WriteFile(store::JoinPath(dir.path(), "config.json"), config.dump());
  store::SafetensorsWriter w;
  auto never = [](void*, size_t) { FAIL() << "tensor bytes generated"; };
  ASSERT_TRUE(w.AddGenerated("model.layers.0.mlp.experts.gate_up_proj", DType::kBF16,
                             {kBigE, 2 * kBigI, kBigH}, never)
                  .ok());
  ASSERT_TRUE(w.AddGenerated("model.layers.0.mlp.experts.down_proj", DType::kBF16,
                             {kBigE, kBigH, kBigI}, never)
                  .ok());
  ASSERT_TRUE(
      w.AddGenerated("model.layers.0.mlp.gate.weight", DType::kBF16, {kBigE, kBigH}, never).ok());
  const std::string path = store::JoinPath(dir.path(), "model.safetensors");
  {
    const std::string header = w.Header();
    std::string prefix;
    for (int i = 0; i < 8; ++i)
      prefix.push_back(static_cast<char>((header.size() >> (8 * i)) & 0xff));
    const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::write(fd, prefix.data(), 8), 8);
    ASSERT_EQ(::write(fd, header.data(), header.size()), static_cast<ssize_t>(header.size()));
    ASSERT_EQ(::ftruncate(fd, w.FileSize()), 0);  // the data section is a hole
    ::close(fd);
  }
  auto model = Model::Open(dir.path());
  ASSERT_TRUE(model.ok()) << model.status();
  const MoeLayerWeights* layer = (*model)->layer(0);
  ASSERT_NE(layer, nullptr);
  EXPECT_EQ(layer->experts[63].down.shape, (std::vector<int64_t>{kBigH, kBigI}));

  const uintptr_t page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(layer->experts[0].gate.data) + page) &
                          ~(page - 1);  // skip the page shared with the header
  const uintptr_t end = reinterpret_cast<uintptr_t>(layer->router.data) & ~(page - 1);
  ASSERT_GT(end, begin);
  std::vector<unsigned char> resident((end - begin) / page);
  ASSERT_EQ(::mincore(reinterpret_cast<void*>(begin), end - begin, resident.data()), 0);
  size_t touched = 0;
  for (unsigned char r : resident) touched += r & 1;
  EXPECT_EQ(touched, 0u) << "of " << resident.size() << " pages";
}

TEST(LoaderTest, MissingDirectoryIsNotFound) {
  ExpectError(Model::Open("/nonexistent/model"), absl::StatusCode::kNotFound, {"config.json"});
}

TEST(LoaderTest, MissingRouterIsNotFound) {
  TinyCheckpoint tiny(TinyOptions{});
  ASSERT_TRUE(tiny.Remove("model.layers.2.mlp.gate.weight"));
  TempDir dir;
  ExpectError(WriteAndOpen(tiny, dir), absl::StatusCode::kNotFound,
              {"model.layers.2.mlp.gate.weight", "layer 2", dir.path()});
}

TEST(LoaderTest, MixtralMissingRouterNamesBothPrefixes) {
  TinyOptions o;
  o.family = Family::kMixtral;
  TinyCheckpoint tiny(o);
  ASSERT_TRUE(tiny.Remove("model.layers.0.block_sparse_moe.gate.weight"));
  TempDir dir;
  ExpectError(WriteAndOpen(tiny, dir), absl::StatusCode::kNotFound,
              {"model.layers.0.block_sparse_moe.gate.weight", "model.layers.0.mlp.gate.weight"});
}

TEST(LoaderTest, MissingExpertTensorIsNotFound) {
  TinyCheckpoint tiny(TinyOptions{});
  ASSERT_TRUE(tiny.Remove("model.layers.2.mlp.experts.3.up_proj.weight"));
  TempDir dir;
  ExpectError(WriteAndOpen(tiny, dir, 2), absl::StatusCode::kNotFound,
              {"model.layers.2.mlp.experts.3.up_proj.weight", "qwen2_moe"});
}

TEST(LoaderTest, MissingFamilyTensorsAreNotFound) {
  {
    TinyOptions o;
    o.family = Family::kDeepseekV3;
    TinyCheckpoint tiny(o);
    ASSERT_TRUE(tiny.Remove("model.layers.1.mlp.gate.e_score_correction_bias"));
    TempDir dir;
    ExpectError(WriteAndOpen(tiny, dir), absl::StatusCode::kNotFound,
                {"model.layers.1.mlp.gate.e_score_correction_bias"});
  }
  {
    TinyCheckpoint tiny(TinyOptions{});
    ASSERT_TRUE(tiny.Remove("model.layers.0.mlp.shared_expert_gate.weight"));
    TempDir dir;
    ExpectError(WriteAndOpen(tiny, dir), absl::StatusCode::kNotFound,
                {"model.layers.0.mlp.shared_expert_gate.weight"});
  }
  {
    TinyOptions o;
    o.family = Family::kDeepseekV2;
    TinyCheckpoint tiny(o);
    ASSERT_TRUE(tiny.Remove("model.layers.2.mlp.shared_experts.down_proj.weight"));
    TempDir dir;
    ExpectError(WriteAndOpen(tiny, dir), absl::StatusCode::kNotFound,
                {"model.layers.2.mlp.shared_experts.down_proj.weight"});
  }
  {
    TinyOptions o;
    o.fused = true;
    TinyCheckpoint tiny(o);
    ASSERT_TRUE(tiny.Remove("model.layers.0.mlp.experts.down_proj"));
    TempDir dir;
    ExpectError(WriteAndOpen(tiny, dir), absl::StatusCode::kNotFound,
                {"model.layers.0.mlp.experts.down_proj"});
  }
}

TEST(LoaderTest, TensorShapeDisagreeingWithConfigIsInvalid) {
  TinyCheckpoint tiny(TinyOptions{});
  tiny.Find("model.layers.0.mlp.experts.1.down_proj.weight")->shape = {kH, kI - 1};
  TempDir dir;
  ExpectError(
      WriteAndOpen(tiny, dir), absl::StatusCode::kInvalidArgument,
      {"model.layers.0.mlp.experts.1.down_proj.weight", "[16, 7]", "[16, 8]", "model.safetensors"});
}

TEST(LoaderTest, ConfigDisagreeingWithTensorsIsInvalid) {
  for (const char* key :
       {"moe_intermediate_size", "hidden_size", "num_experts", "shared_expert_intermediate_size"}) {
    TinyCheckpoint tiny(TinyOptions{});
    tiny.config[key] = tiny.config.value(key, 0) + 2;
    TempDir dir;
    ExpectError(WriteAndOpen(tiny, dir), absl::StatusCode::kInvalidArgument, {"has shape"});
  }
  TinyOptions o;
  o.fused = true;
  TinyCheckpoint fused(o);
  fused.Find("model.layers.2.mlp.experts.gate_up_proj")->shape = {kE, 2 * kI + 1, kH};
  TempDir dir;
  ExpectError(WriteAndOpen(fused, dir), absl::StatusCode::kInvalidArgument,
              {"model.layers.2.mlp.experts.gate_up_proj", "[4, 17, 16]", "[4, 16, 16]"});
}

TEST(LoaderTest, MoreExpertsThanConfigIsInvalid) {
  TinyCheckpoint tiny(TinyOptions{});
  tiny.config["num_experts"] = kE - 1;
  tiny.Find("model.layers.0.mlp.gate.weight")->shape = {kE - 1, kH};
  tiny.Find("model.layers.2.mlp.gate.weight")->shape = {kE - 1, kH};
  TempDir dir;
  ExpectError(WriteAndOpen(tiny, dir), absl::StatusCode::kInvalidArgument,
              {"model.layers.0.mlp.experts.3.gate_proj.weight", "only 3 experts"});
}

TEST(LoaderTest, MoeTensorsInDenseOrMissingLayersAreInvalid) {
  {
    TinyOptions o;
    o.family = Family::kDeepseekV2;
    TinyCheckpoint tiny(o);
    tiny.Add("model.layers.0.mlp.experts.0.gate_proj.weight", DType::kBF16, {kI, kH});
    TempDir dir;
    ExpectError(WriteAndOpen(tiny, dir), absl::StatusCode::kInvalidArgument,
                {"model.layers.0.mlp.experts.0.gate_proj.weight", "dense"});
  }
  {
    TinyCheckpoint tiny(TinyOptions{});
    tiny.Add("model.layers.7.mlp.gate.weight", DType::kBF16, {kE, kH});
    TempDir dir;
    ExpectError(WriteAndOpen(tiny, dir), absl::StatusCode::kInvalidArgument,
                {"model.layers.7.mlp.gate.weight", "num_hidden_layers 3"});
  }
}

TEST(LoaderTest, DeepseekMtpLayersAreIgnored) {
  TinyOptions o;
  o.family = Family::kDeepseekV3;
  TinyCheckpoint tiny(o);
  tiny.config["num_nextn_predict_layers"] = 1;
  // As published, DeepSeek-V3 stores its MTP module as decoder layer num_hidden_layers.
  tiny.Add("model.layers.3.mlp.gate.weight", DType::kBF16, {kE, kH});
  tiny.Add("model.layers.3.mlp.experts.0.gate_proj.weight", DType::kBF16, {kI, kH});
  TempDir dir;
  auto model = WriteAndOpen(tiny, dir);
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ((*model)->spec().n_mtp_layers, 1);
  EXPECT_EQ((*model)->spec().moe_layers, (std::vector<int>{1, 2}));
  EXPECT_EQ((*model)->layer(3), nullptr);
  tiny.Add("model.layers.4.mlp.gate.weight", DType::kBF16, {kE, kH});
  TempDir dir2;
  ExpectError(WriteAndOpen(tiny, dir2), absl::StatusCode::kInvalidArgument,
              {"model.layers.4.mlp.gate.weight"});
}

TEST(LoaderTest, MixedExpertDtypesAreInvalid) {
  TinyCheckpoint tiny(TinyOptions{});
  tiny.Find("model.layers.2.mlp.experts.1.gate_proj.weight")->dtype = DType::kF16;
  TempDir dir;
  ExpectError(WriteAndOpen(tiny, dir), absl::StatusCode::kInvalidArgument,
              {"model.layers.2.mlp.experts.1.gate_proj.weight", "F16", "BF16"});
}

TEST(LoaderTest, NonFloatRouterIsInvalid) {
  TinyCheckpoint tiny(TinyOptions{});
  tiny.Find("model.layers.0.mlp.gate.weight")->dtype = DType::kI32;
  TempDir dir;
  ExpectError(WriteAndOpen(tiny, dir), absl::StatusCode::kInvalidArgument,
              {"model.layers.0.mlp.gate.weight", "I32"});
}

TEST(LoaderTest, F32ExpertsLoad) {
  TinyOptions o;
  o.family = Family::kOlmoe;
  o.dtype = DType::kF32;
  TinyCheckpoint tiny(o);
  TempDir dir;
  auto model = WriteAndOpen(tiny, dir);
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ((*model)->spec().weight_dtype, DType::kF32);
  const ExpertWeights& x = (*model)->layer(1)->experts[2];
  EXPECT_EQ(First(x.down), TinyValue(x.down.name, 0));
}

TEST(LoaderTest, BothLayoutsInOneLayerAreInvalid) {
  TinyCheckpoint tiny(TinyOptions{});
  tiny.Add("model.layers.0.mlp.experts.gate_up_proj", DType::kBF16, {kE, 2 * kI, kH});
  TempDir dir;
  ExpectError(WriteAndOpen(tiny, dir), absl::StatusCode::kInvalidArgument, {"both"});
}

TEST(LoaderTest, F8WeightsWithScalesLoad) {
  TinyOptions o;
  o.family = Family::kDeepseekV3;
  o.dtype = DType::kF8E4M3;
  TinyCheckpoint tiny(o);
  TempDir dir;
  auto model = WriteAndOpen(tiny, dir, 2);
  ASSERT_TRUE(model.ok()) << model.status();
  const MoeSpec& s = (*model)->spec();
  EXPECT_EQ(s.weight_dtype, DType::kF8E4M3);
  EXPECT_EQ(s.quant_block_out, 4);
  EXPECT_EQ(s.quant_block_in, 8);
  EXPECT_EQ(s.BytesPerExpert(), 3 * kH * kI);
  const MoeLayerWeights* w = (*model)->layer(1);
  ASSERT_NE(w, nullptr);
  const ExpertWeights& x = w->experts[3];
  EXPECT_EQ(x.gate.dtype, DType::kF8E4M3);
  ASSERT_TRUE(x.gate_scale.has_value());
  EXPECT_EQ(x.gate_scale->shape, (std::vector<int64_t>{2, 2}));  // [8/4, 16/8]
  ASSERT_TRUE(x.down_scale.has_value());
  EXPECT_EQ(x.down_scale->shape, (std::vector<int64_t>{4, 1}));  // [16/4, 8/8]
  EXPECT_EQ(x.down_scale->name, "model.layers.1.mlp.experts.3.down_proj.weight_scale_inv");
  ASSERT_TRUE(w->shared.has_value());
  EXPECT_TRUE(w->shared->up_scale.has_value());
  EXPECT_EQ(w->router.dtype, DType::kBF16);
}

TEST(LoaderTest, F8WeightWithoutScaleIsNotFound) {
  TinyOptions o;
  o.family = Family::kDeepseekV3;
  o.dtype = DType::kF8E4M3;
  TinyCheckpoint tiny(o);
  ASSERT_TRUE(tiny.Remove("model.layers.2.mlp.experts.0.up_proj.weight_scale_inv"));
  TempDir dir;
  ExpectError(WriteAndOpen(tiny, dir), absl::StatusCode::kNotFound,
              {"model.layers.2.mlp.experts.0.up_proj.weight_scale_inv"});
}

TEST(LoaderTest, F8FusedIsUnimplemented) {
  TinyOptions o;
  o.family = Family::kQwen3Moe;
  o.dtype = DType::kF8E4M3;
  o.fused = true;
  TinyCheckpoint tiny(o);
  TempDir dir;
  ExpectError(WriteAndOpen(tiny, dir), absl::StatusCode::kUnimplemented, {"fused"});
}

TEST(LoaderTest, ReportsLayoutsAndNotes) {
  TinyOptions o;
  o.family = Family::kMixtral;
  o.fused = true;
  o.mixtral_mlp_prefix = true;
  TinyCheckpoint tiny(o);
  tiny.config.erase("architectures");
  TempDir dir;
  ASSERT_TRUE(tiny.Write(dir.path()));
  auto ckpt = store::Checkpoint::Open(dir.path());
  ASSERT_TRUE(ckpt.ok());
  LoadReport report;
  auto model =
      ModelLoader::Load(std::shared_ptr<const store::Checkpoint>(std::move(*ckpt)), &report);
  ASSERT_TRUE(model.ok()) << model.status();
  ASSERT_EQ(report.layouts.size(), 3u);
  EXPECT_NE(report.layouts[0].find("model.layers.0.mlp.experts.{gate_up_proj,down_proj}"),
            std::string::npos)
      << report.layouts[0];
  ASSERT_FALSE(report.notes.empty());
  EXPECT_NE(report.notes[0].find("architectures"), std::string::npos);
}

}  // namespace
}  // namespace moe
