// A Hugging Face checkpoint directory as published: config.json plus either model.safetensors or
// the shards listed by model.safetensors.index.json ({"metadata": {...}, "weight_map":
// {tensor name: shard file name}}). Every shard is mmap'd read-only and its header validated
// (safetensors.h); tensor bytes are not read.
//
// Thread safety: immutable after Open(); every const method is safe from any thread.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "moe/common/status.h"
#include "moe/store/safetensors.h"

namespace moe::store {

inline constexpr char kConfigFile[] = "config.json";
inline constexpr char kSingleFile[] = "model.safetensors";
inline constexpr char kIndexFile[] = "model.safetensors.index.json";

// Where a tensor lives.
struct TensorLocation {
  const SafetensorsFile* file = nullptr;
  const SafetensorsEntry* entry = nullptr;
  const void* data() const { return file->Data(*entry); }
};

class Checkpoint {
 public:
  // Opens `dir`. model.safetensors is used when present (as transformers does), else the index.
  // Fails with NOT_FOUND when config.json or both weight files are missing, or a shard named by
  // the index is missing; DATA_LOSS when a shard is malformed, the index is not valid JSON, names
  // a shard with a path in it, lists a tensor its shard lacks, or a tensor appears in two shards.
  // Messages name the file and the tensor.
  static StatusOr<std::unique_ptr<Checkpoint>> Open(const std::string& dir);

  const std::string& dir() const { return dir_; }
  // Text of config.json.
  const std::string& config_json() const { return config_json_; }
  // True when the weights came from model.safetensors.index.json.
  bool sharded() const { return sharded_; }
  // The mapped weight files, sorted by file name.
  const std::vector<std::unique_ptr<SafetensorsFile>>& shards() const { return shards_; }
  // Every tensor by name.
  const std::map<std::string, TensorLocation>& tensors() const { return tensors_; }
  // The tensor named `name`, or nullptr.
  const TensorLocation* Find(const std::string& name) const;
  // Total bytes of the mapped files.
  int64_t mapped_bytes() const { return mapped_bytes_; }
  // Inconsistencies that did not stop loading (e.g. a tensor in a shard but not in the index).
  const std::vector<std::string>& warnings() const { return warnings_; }

 private:
  Checkpoint() = default;
  Status OpenSingle();
  Status OpenIndexed();
  Status AddShard(const std::string& file_name);

  std::string dir_;
  std::string config_json_;
  bool sharded_ = false;
  std::vector<std::unique_ptr<SafetensorsFile>> shards_;
  std::map<std::string, TensorLocation> tensors_;
  int64_t mapped_bytes_ = 0;
  std::vector<std::string> warnings_;
};

// Reads a small text file whole (config.json, the index). NOT_FOUND if missing; INVALID_ARGUMENT
// above `max_bytes`.
StatusOr<std::string> ReadSmallFile(const std::string& path, int64_t max_bytes = int64_t{64} << 20);

// `dir` + "/" + `name` (no separator doubled).
std::string JoinPath(const std::string& dir, const std::string& name);

}  // namespace moe::store
