// Checkpoint directories: single file, sharded index, and every way the index can lie.
#include "moe/store/checkpoint.h"

#include <gtest/gtest.h>

#include <filesystem>

#include "model/tiny_checkpoint.h"

namespace moe::store {
namespace {

using ::moe::testing::TempDir;
using ::moe::testing::TinyCheckpoint;
using ::moe::testing::TinyOptions;
using ::moe::testing::WriteFile;

void ExpectError(const StatusOr<std::unique_ptr<Checkpoint>>& result, absl::StatusCode code,
                 std::vector<std::string> parts) {
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), code) << result.status();
  const std::string message(result.status().message());
  for (const std::string& p : parts) EXPECT_NE(message.find(p), std::string::npos) << message;
}

TEST(CheckpointTest, OpensSingleFile) {
  TempDir dir;
  TinyCheckpoint tiny(TinyOptions{});
  ASSERT_TRUE(tiny.Write(dir.path()));
  auto ckpt = Checkpoint::Open(dir.path());
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  EXPECT_FALSE((*ckpt)->sharded());
  EXPECT_EQ((*ckpt)->shards().size(), 1u);
  EXPECT_EQ((*ckpt)->tensors().size(), tiny.tensors.size());
  EXPECT_NE((*ckpt)->config_json().find("qwen2_moe"), std::string::npos);
  EXPECT_TRUE((*ckpt)->warnings().empty());
  EXPECT_EQ((*ckpt)->mapped_bytes(),
            static_cast<int64_t>(std::filesystem::file_size(JoinPath(dir.path(), kSingleFile))));
}

TEST(CheckpointTest, OpensShardsThroughIndex) {
  TempDir dir;
  TinyCheckpoint tiny(TinyOptions{});
  ASSERT_TRUE(tiny.Write(dir.path(), 3));
  auto ckpt = Checkpoint::Open(dir.path());
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  EXPECT_TRUE((*ckpt)->sharded());
  EXPECT_EQ((*ckpt)->shards().size(), 3u);
  EXPECT_EQ((*ckpt)->tensors().size(), tiny.tensors.size());
  const TensorLocation* where = (*ckpt)->Find(tiny.tensors[1].name);
  ASSERT_NE(where, nullptr);
  EXPECT_NE(where->file->path().find("model-00002-of-00003.safetensors"), std::string::npos);
  const float first = Bf16ToF32(*static_cast<const uint16_t*>(where->data()));
  EXPECT_EQ(first, ::moe::testing::TinyValue(tiny.tensors[1].name, 0));
}

TEST(CheckpointTest, MissingConfigOrWeightsIsNotFound) {
  TempDir dir;
  ExpectError(Checkpoint::Open(dir.path()), absl::StatusCode::kNotFound, {"config.json"});
  WriteFile(JoinPath(dir.path(), "config.json"), "{}");
  ExpectError(Checkpoint::Open(dir.path()), absl::StatusCode::kNotFound,
              {"model.safetensors", dir.path()});
}

TEST(CheckpointTest, IndexListingTensorMissingFromShardIsDataLoss) {
  TempDir dir;
  TinyCheckpoint tiny(TinyOptions{});
  ASSERT_TRUE(tiny.Write(dir.path(), 2));
  const std::string index_path = JoinPath(dir.path(), kIndexFile);
  auto index = nlohmann::json::parse(::moe::testing::ReadFile(index_path));
  index["weight_map"]["model.layers.0.mlp.experts.99.up_proj.weight"] =
      "model-00002-of-00002.safetensors";
  WriteFile(index_path, index.dump());
  ExpectError(Checkpoint::Open(dir.path()), absl::StatusCode::kDataLoss,
              {"model.layers.0.mlp.experts.99.up_proj.weight", "model-00002-of-00002.safetensors",
               "missing"});
}

TEST(CheckpointTest, IndexNamingMissingShardIsNotFound) {
  TempDir dir;
  TinyCheckpoint tiny(TinyOptions{});
  ASSERT_TRUE(tiny.Write(dir.path(), 2));
  std::filesystem::remove(JoinPath(dir.path(), "model-00002-of-00002.safetensors"));
  ExpectError(Checkpoint::Open(dir.path()), absl::StatusCode::kNotFound,
              {"model-00002-of-00002.safetensors"});
}

TEST(CheckpointTest, IndexMappingTensorToWrongShardIsDataLoss) {
  TempDir dir;
  TinyCheckpoint tiny(TinyOptions{});
  ASSERT_TRUE(tiny.Write(dir.path(), 2));
  const std::string index_path = JoinPath(dir.path(), kIndexFile);
  auto index = nlohmann::json::parse(::moe::testing::ReadFile(index_path));
  index["weight_map"][tiny.tensors[0].name] = "model-00002-of-00002.safetensors";
  WriteFile(index_path, index.dump());
  ExpectError(Checkpoint::Open(dir.path()), absl::StatusCode::kDataLoss,
              {tiny.tensors[0].name, "model-00002-of-00002.safetensors"});
}

TEST(CheckpointTest, RejectsBadIndexes) {
  TempDir dir;
  TinyCheckpoint tiny(TinyOptions{});
  ASSERT_TRUE(tiny.Write(dir.path(), 2));
  const std::string index_path = JoinPath(dir.path(), kIndexFile);
  WriteFile(index_path, "{\"weight_map\": ");
  ExpectError(Checkpoint::Open(dir.path()), absl::StatusCode::kDataLoss, {kIndexFile, "JSON"});
  WriteFile(index_path, R"({"metadata": {}})");
  ExpectError(Checkpoint::Open(dir.path()), absl::StatusCode::kDataLoss, {"weight_map"});
  WriteFile(index_path, R"({"weight_map": {"x": "../model-00001-of-00002.safetensors"}})");
  ExpectError(Checkpoint::Open(dir.path()), absl::StatusCode::kDataLoss, {"invalid shard name"});
}

TEST(CheckpointTest, TensorInTwoShardsIsDataLoss) {
  TempDir dir;
  TinyCheckpoint tiny(TinyOptions{});
  ASSERT_TRUE(tiny.Write(dir.path(), 2));
  // Shard 2 rewritten to also hold shard 1's first tensor.
  SafetensorsWriter w;
  uint16_t v[TinyCheckpoint::kHidden * TinyCheckpoint::kHidden] = {};
  ASSERT_TRUE(
      w.Add(tiny.tensors[0].name, tiny.tensors[0].dtype, tiny.tensors[0].shape, v, sizeof(v)).ok());
  ASSERT_EQ(tiny.tensors[0].shape, (std::vector<int64_t>{16, 16}));
  ASSERT_TRUE(w.Write(JoinPath(dir.path(), "model-00002-of-00002.safetensors")).ok());
  ExpectError(Checkpoint::Open(dir.path()), absl::StatusCode::kDataLoss,
              {tiny.tensors[0].name, "appears in both"});
}

TEST(CheckpointTest, WarnsAboutUnlistedTensorsAndWrongTotalSize) {
  TempDir dir;
  TinyCheckpoint tiny(TinyOptions{});
  ASSERT_TRUE(tiny.Write(dir.path(), 2));
  const std::string index_path = JoinPath(dir.path(), kIndexFile);
  auto index = nlohmann::json::parse(::moe::testing::ReadFile(index_path));
  index["weight_map"].erase(tiny.tensors[0].name);
  index["metadata"]["total_size"] = 1;
  WriteFile(index_path, index.dump());
  auto ckpt = Checkpoint::Open(dir.path());
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  ASSERT_EQ((*ckpt)->warnings().size(), 2u);
  EXPECT_NE((*ckpt)->warnings()[0].find("not listed"), std::string::npos);
  EXPECT_NE((*ckpt)->warnings()[1].find("total_size"), std::string::npos);
}

TEST(CheckpointTest, CorruptShardNamesFile) {
  TempDir dir;
  TinyCheckpoint tiny(TinyOptions{});
  ASSERT_TRUE(tiny.Write(dir.path(), 2));
  const std::string shard = JoinPath(dir.path(), "model-00001-of-00002.safetensors");
  std::string bytes = ::moe::testing::ReadFile(shard);
  bytes.resize(bytes.size() / 2);
  WriteFile(shard, bytes);
  ExpectError(Checkpoint::Open(dir.path()), absl::StatusCode::kDataLoss,
              {"model-00001-of-00002.safetensors"});
}

}  // namespace
}  // namespace moe::store
