// `inspect` output for a good checkpoint, an F8 one, and broken ones.
#include "moe/model/inspect.h"

#include <gtest/gtest.h>

#include <sstream>

#include "model/tiny_checkpoint.h"

namespace moe {
namespace {

using ::moe::testing::TempDir;
using ::moe::testing::TinyCheckpoint;
using ::moe::testing::TinyOptions;

void ExpectContains(const std::string& text, const std::vector<std::string>& parts) {
  for (const std::string& p : parts)
    EXPECT_NE(text.find(p), std::string::npos) << p << "\n" << text;
}

TEST(InspectTest, DescribesAGoodCheckpoint) {
  TinyCheckpoint tiny(TinyOptions{});
  TempDir dir;
  ASSERT_TRUE(tiny.Write(dir.path(), 2));
  std::ostringstream out;
  ASSERT_TRUE(Inspect(dir.path(), out).ok()) << out.str();
  ExpectContains(out.str(), {"qwen2_moe", "Qwen2MoeForCausalLM", "hidden        16",
                             "MoE layers served: 0, 2 (2)", "4 routed, top-2, width 8", "softmax",
                             "norm_topk_prob false", "width 12, scaled by sigmoid", "BF16",
                             "bytes/expert  768",
                             "model.layers.0.mlp.experts.<e>.{gate_proj,up_proj,"
                             "down_proj} (per-expert)",
                             "2 file(s)", "model-00002-of-00002.safetensors", "routed expert",
                             "attention", "shared expert gate", "dense MLP", "embedding"});
  EXPECT_EQ(out.str().find("problem"), std::string::npos);
}

TEST(InspectTest, ShowsF8AsLoadableButNotRunnable) {
  TinyOptions o;
  o.family = Family::kDeepseekV3;
  o.dtype = DType::kF8E4M3;
  TinyCheckpoint tiny(o);
  TempDir dir;
  ASSERT_TRUE(tiny.Write(dir.path()));
  std::ostringstream out;
  ASSERT_TRUE(Inspect(dir.path(), out).ok()) << out.str();
  ExpectContains(out.str(), {"deepseek_v3", "sigmoid", "noaux_tc (n_group 2, topk_group 1)",
                             "e_score_correction_bias", "F8_E4M3", "block 4x8", "NOT runnable",
                             "quantisation scale", "bytes/expert  384"});
}

TEST(InspectTest, PrintsWhatItCanAndTheProblem) {
  TinyCheckpoint tiny(TinyOptions{});
  ASSERT_TRUE(tiny.Remove("model.layers.2.mlp.experts.1.down_proj.weight"));
  TempDir dir;
  ASSERT_TRUE(tiny.Write(dir.path()));
  std::ostringstream out;
  const Status s = Inspect(dir.path(), out);
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  ExpectContains(out.str(), {"qwen2_moe", "routed expert",
                             "problem: ", "model.layers.2.mlp.experts.1.down_proj.weight"});

  std::ostringstream missing;
  EXPECT_EQ(Inspect("/nonexistent/ckpt", missing).code(), absl::StatusCode::kNotFound);
  ExpectContains(missing.str(), {"problem: ", "config.json"});
}

}  // namespace
}  // namespace moe
