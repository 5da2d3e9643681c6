#include "moe/store/checkpoint.h"

#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>

#include "nlohmann/json.hpp"

namespace moe::store {

namespace {

bool IsRegularFile(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

}  // namespace

std::string JoinPath(const std::string& dir, const std::string& name) {
  if (dir.empty()) return name;
  if (dir.back() == '/') return dir + name;
  return dir + "/" + name;
}

StatusOr<std::string> ReadSmallFile(const std::string& path, int64_t max_bytes) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) {
    const int err = errno;
    std::string message = absl::StrCat("cannot stat ", path, ": ", std::strerror(err));
    return err == ENOENT ? absl::NotFoundError(message) : absl::InternalError(message);
  }
  if (!S_ISREG(st.st_mode)) {
    return absl::InvalidArgumentError(absl::StrCat(path, " is not a regular file"));
  }
  if (st.st_size > max_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, " is ", st.st_size, " bytes, above the limit of ", max_bytes));
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::InternalError(absl::StrCat("cannot read ", path));
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) return absl::InternalError(absl::StrCat("cannot read ", path));
  return text.str();
}

StatusOr<std::unique_ptr<Checkpoint>> Checkpoint::Open(const std::string& dir) {
  std::unique_ptr<Checkpoint> ckpt(new Checkpoint());
  ckpt->dir_ = dir;
  auto config = ReadSmallFile(JoinPath(dir, kConfigFile));
  if (!config.ok()) {
    if (absl::IsNotFound(config.status())) {
      return absl::NotFoundError(absl::StrCat("no ", kConfigFile, " in ", dir,
                                              " (expected a Hugging Face checkpoint directory)"));
    }
    return config.status();
  }
  ckpt->config_json_ = std::move(*config);
  if (IsRegularFile(JoinPath(dir, kSingleFile))) {
    MOE_RETURN_IF_ERROR(ckpt->OpenSingle());
  } else if (IsRegularFile(JoinPath(dir, kIndexFile))) {
    MOE_RETURN_IF_ERROR(ckpt->OpenIndexed());
  } else {
    return absl::NotFoundError(
        absl::StrCat("neither ", kSingleFile, " nor ", kIndexFile, " in ", dir));
  }
  return ckpt;
}

const TensorLocation* Checkpoint::Find(const std::string& name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

Status Checkpoint::AddShard(const std::string& file_name) {
  MOE_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> file,
                       SafetensorsFile::Open(JoinPath(dir_, file_name)));
  mapped_bytes_ += file->file_size();
  for (const SafetensorsEntry& entry : file->tensors()) {
    auto [it, inserted] = tensors_.emplace(entry.name, TensorLocation{file.get(), &entry});
    if (!inserted) {
      return absl::DataLossError(absl::StrCat("tensor '", entry.name, "' appears in both ",
                                              it->second.file->path(), " and ", file->path()));
    }
  }
  shards_.push_back(std::move(file));
  return absl::OkStatus();
}

Status Checkpoint::OpenSingle() {
  sharded_ = false;
  return AddShard(kSingleFile);
}

Status Checkpoint::OpenIndexed() {
  sharded_ = true;
  const std::string index_path = JoinPath(dir_, kIndexFile);
  MOE_ASSIGN_OR_RETURN(std::string text, ReadSmallFile(index_path));
  nlohmann::json index;
  try {
    index = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    return absl::DataLossError(absl::StrCat(index_path, ": invalid JSON: ", e.what()));
  }
  if (!index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object()) {
    return absl::DataLossError(absl::StrCat(index_path, ": no \"weight_map\" object"));
  }
  // Validate the map before opening anything.
  std::map<std::string, std::string> weight_map;  // tensor -> shard
  std::set<std::string> shard_names;
  for (const auto& [tensor, shard] : index["weight_map"].items()) {
    if (!shard.is_string()) {
      return absl::DataLossError(
          absl::StrCat(index_path, ": tensor '", tensor, "' maps to a non-string shard"));
    }
    const std::string name = shard.get<std::string>();
    if (name.empty() || name.find('/') != std::string::npos || name == "." || name == "..") {
      return absl::DataLossError(absl::StrCat(index_path, ": tensor '", tensor,
                                              "' maps to invalid shard name '", name, "'"));
    }
    weight_map[tensor] = name;
    shard_names.insert(name);
  }
  if (shard_names.empty())
    return absl::DataLossError(absl::StrCat(index_path, ": empty weight_map"));
  for (const std::string& name : shard_names) {
    Status s = AddShard(name);
    if (absl::IsNotFound(s)) {
      return absl::NotFoundError(
          absl::StrCat(index_path, " lists shard ", name, ", which is missing: ", s.message()));
    }
    MOE_RETURN_IF_ERROR(s);
  }
  for (const auto& [tensor, shard] : weight_map) {
    const TensorLocation* where = Find(tensor);
    if (where == nullptr) {
      return absl::DataLossError(absl::StrCat("tensor '", tensor, "' is listed in ", index_path,
                                              " for shard ", shard, " but missing from it"));
    }
    const std::string expected = JoinPath(dir_, shard);
    if (where->file->path() != expected) {
      return absl::DataLossError(absl::StrCat("tensor '", tensor, "' is listed in ", index_path,
                                              " for shard ", shard, " but found in ",
                                              where->file->path()));
    }
  }
  int64_t tensor_bytes = 0;
  for (const auto& [name, where] : tensors_) {
    tensor_bytes += where.entry->nbytes();
    if (!weight_map.contains(name)) {
      warnings_.push_back(absl::StrCat("tensor '", name, "' in ", where.file->path(),
                                       " is not listed in ", kIndexFile));
    }
  }
  if (index.contains("metadata") && index["metadata"].is_object() &&
      index["metadata"].contains("total_size") &&
      index["metadata"]["total_size"].is_number_integer()) {
    const int64_t total = index["metadata"]["total_size"].get<int64_t>();
    if (total != tensor_bytes) {
      warnings_.push_back(absl::StrCat(kIndexFile, " metadata.total_size is ", total,
                                       " but the shards hold ", tensor_bytes, " tensor bytes"));
    }
  }
  return absl::OkStatus();
}

}  // namespace moe::store
