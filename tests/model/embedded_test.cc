// The generated embedded model: deterministic bytes, atomic caching, and the expected spec.
#include "moe/model/embedded.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>

#include "model/tiny_checkpoint.h"
#include "moe/model/model.h"
#include "moe/store/checkpoint.h"

namespace moe {
namespace {

namespace fs = std::filesystem;
using ::moe::testing::ReadFile;
using ::moe::testing::TempDir;

uint64_t Fnv1a64(const std::string& bytes) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : bytes) h = (h ^ c) * 0x100000001b3ull;
  return h;
}

std::vector<std::string> FileNames(const std::string& dir) {
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(dir)) {
    names.push_back(entry.path().filename().string());
  }
  std::sort(names.begin(), names.end());
  return names;
}

SyntheticModelOptions Small() {
  SyntheticModelOptions o;
  o.hidden = 64;
  o.n_layers = 3;
  o.n_experts = 8;
  o.top_k = 2;
  o.moe_intermediate = 32;
  o.shared_intermediate = 48;
  o.n_shards = 2;
  return o;
}

TEST(SyntheticModelTest, SameOptionsGiveSameBytes) {
  TempDir tmp;
  const std::string a = tmp.Sub("a"), b = tmp.Sub("b");
  ASSERT_TRUE(WriteSyntheticQwen2Moe(Small(), a).ok());
  ASSERT_TRUE(WriteSyntheticQwen2Moe(Small(), b).ok());
  const std::vector<std::string> names = FileNames(a);
  EXPECT_EQ(names, (std::vector<std::string>{"config.json", "model-00001-of-00002.safetensors",
                                             "model-00002-of-00002.safetensors",
                                             "model.safetensors.index.json"}));
  EXPECT_EQ(FileNames(b), names);
  for (const std::string& name : names) {
    EXPECT_EQ(ReadFile(store::JoinPath(a, name)), ReadFile(store::JoinPath(b, name))) << name;
  }
  // A different seed gives different weights.
  SyntheticModelOptions other = Small();
  other.seed += 1;
  const std::string c = tmp.Sub("c");
  ASSERT_TRUE(WriteSyntheticQwen2Moe(other, c).ok());
  EXPECT_NE(ReadFile(store::JoinPath(a, names[1])), ReadFile(store::JoinPath(c, names[1])));
}

TEST(SyntheticModelTest, LoadsWithTheRequestedShape) {
  TempDir tmp;
  SyntheticModelOptions o = Small();
  o.n_shards = 1;
  o.dtype = DType::kF32;
  o.norm_topk_prob = true;
  ASSERT_TRUE(WriteSyntheticQwen2Moe(o, tmp.path()).ok());
  auto model = Model::Open(tmp.path());
  ASSERT_TRUE(model.ok()) << model.status();
  const MoeSpec& s = (*model)->spec();
  EXPECT_EQ(s.hidden, 64);
  EXPECT_EQ(s.n_experts(), 8);
  EXPECT_EQ(s.top_k(), 2);
  EXPECT_TRUE(s.routing.norm_topk_prob);
  EXPECT_EQ(s.weight_dtype, DType::kF32);
  EXPECT_EQ(s.moe_layers, (std::vector<int>{0, 1, 2}));
  // Weights are uniform in +-sqrt(3 / fan_in): unit-variance projections.
  const TensorView& down = (*model)->layer(1)->experts[5].down;
  const auto* v = static_cast<const float*>(down.data);
  const float bound = std::sqrt(3.0f / 32.0f);
  double sum = 0, sum_sq = 0;
  for (int64_t i = 0; i < down.numel(); ++i) {
    ASSERT_LE(std::fabs(v[i]), bound);
    sum += v[i];
    sum_sq += double{v[i]} * v[i];
  }
  const double n = static_cast<double>(down.numel());
  EXPECT_NEAR(sum / n, 0.0, 0.1 * bound);
  EXPECT_NEAR(sum_sq / n, bound * bound / 3.0, 0.2 * bound * bound / 3.0);
  EXPECT_FALSE(WriteSyntheticQwen2Moe(SyntheticModelOptions{.top_k = 64}, tmp.Sub("bad")).ok());
}

TEST(EmbeddedModelTest, GeneratesLoadsAndReuses) {
  TempDir tmp;
  auto dir = EnsureEmbeddedModel(tmp.path());
  ASSERT_TRUE(dir.ok()) << dir.status();
  EXPECT_EQ(*dir, store::JoinPath(tmp.path(), kEmbeddedModelName));
  // Nothing but the model is left in the cache directory (no temporary directories).
  EXPECT_EQ(FileNames(tmp.path()), std::vector<std::string>{kEmbeddedModelName});

  const auto start = std::chrono::steady_clock::now();
  auto model = Model::Open(*dir);
  const auto open_us = std::chrono::duration_cast<std::chrono::microseconds>(
                           std::chrono::steady_clock::now() - start)
                           .count();
  ASSERT_TRUE(model.ok()) << model.status();
  std::printf("Model::Open(embedded, %.1f MiB mapped): %lld us\n",
              static_cast<double>((*model)->mapped_bytes()) / (1 << 20),
              static_cast<long long>(open_us));
  const MoeSpec& s = (*model)->spec();
  EXPECT_EQ(s.family, Family::kQwen2Moe);
  EXPECT_EQ(s.architecture, "Qwen2MoeForCausalLM");
  EXPECT_EQ(s.hidden, 512);
  EXPECT_EQ(s.n_layers, 4);
  EXPECT_EQ(s.moe_layers, (std::vector<int>{0, 1, 2, 3}));
  EXPECT_EQ(s.n_experts(), 32);
  EXPECT_EQ(s.top_k(), 4);
  EXPECT_EQ(s.moe_intermediate, 256);
  EXPECT_EQ(s.shared_intermediate, 512);
  EXPECT_TRUE(s.shared_expert_gate);
  EXPECT_FALSE(s.routing.norm_topk_prob);
  EXPECT_EQ(s.routing.scoring, ScoringFunc::kSoftmax);
  EXPECT_EQ(s.weight_dtype, DType::kBF16);
  EXPECT_EQ((*model)->layers().size(), 4u);
  EXPECT_EQ((*model)->layer(3)->experts.size(), 32u);
  EXPECT_TRUE((*model)->layer(0)->shared_gate.has_value());

  auto ckpt = store::Checkpoint::Open(*dir);
  ASSERT_TRUE(ckpt.ok());
  EXPECT_TRUE((*ckpt)->sharded());
  ASSERT_EQ((*ckpt)->shards().size(), 2u);

  // The bytes are pinned: the directory name carries a version, so a cached copy made by an
  // older build must equal a fresh one. Changing the generator requires a new version.
  const std::string shard1 = store::JoinPath(*dir, "model-00001-of-00002.safetensors");
  const std::string shard2 = store::JoinPath(*dir, "model-00002-of-00002.safetensors");
  const uint64_t h1 = Fnv1a64(ReadFile(shard1)), h2 = Fnv1a64(ReadFile(shard2));
  EXPECT_EQ(h1, 0xdb99d1c0aca4dc69ull) << std::hex << h1;
  EXPECT_EQ(h2, 0x9c327aba947d387cull) << std::hex << h2;

  // A second call reuses the complete copy.
  const auto mtime = fs::last_write_time(shard1);
  auto again = EnsureEmbeddedModel(tmp.path());
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(*again, *dir);
  EXPECT_EQ(fs::last_write_time(shard1), mtime);

  // A damaged copy is replaced by a fresh, identical one.
  fs::resize_file(shard2, fs::file_size(shard2) / 2);
  auto repaired = EnsureEmbeddedModel(tmp.path());
  ASSERT_TRUE(repaired.ok()) << repaired.status();
  EXPECT_EQ(Fnv1a64(ReadFile(shard2)), h2);
  EXPECT_EQ(FileNames(tmp.path()), std::vector<std::string>{kEmbeddedModelName});
}

TEST(EmbeddedModelTest, DefaultCacheDirFollowsEnvironment) {
  const char* saved[3] = {std::getenv("MOE_CACHE_DIR"), std::getenv("XDG_CACHE_HOME"),
                          std::getenv("HOME")};
  const std::string saved_values[3] = {saved[0] ? saved[0] : "", saved[1] ? saved[1] : "",
                                       saved[2] ? saved[2] : ""};
  ::setenv("MOE_CACHE_DIR", "/x/cache", 1);
  ::setenv("XDG_CACHE_HOME", "/x/xdg", 1);
  ::setenv("HOME", "/x/home", 1);
  EXPECT_EQ(DefaultCacheDir(), "/x/cache");
  ::unsetenv("MOE_CACHE_DIR");
  EXPECT_EQ(DefaultCacheDir(), "/x/xdg/moe-swarm");
  ::unsetenv("XDG_CACHE_HOME");
  EXPECT_EQ(DefaultCacheDir(), "/x/home/.cache/moe-swarm");
  const char* names[3] = {"MOE_CACHE_DIR", "XDG_CACHE_HOME", "HOME"};
  for (int i = 0; i < 3; ++i) {
    if (saved[i] != nullptr) {
      ::setenv(names[i], saved_values[i].c_str(), 1);
    } else {
      ::unsetenv(names[i]);
    }
  }
}

}  // namespace
}  // namespace moe
