// A whole file mapped read-only into memory (mmap, PROT_READ, MAP_SHARED).
//
// The mapping is what TensorViews point into: nothing is copied and no page is touched until a
// reader touches it. The file must not be modified while mapped (doing so is undefined, as with
// any MAP_SHARED mapping).
//
// Thread safety: immutable after Create(); every const method is safe from any thread.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "moe/common/status.h"

namespace moe::store {

class MappedFile {
 public:
  // Maps `path` whole. NOT_FOUND if it does not exist, INVALID_ARGUMENT if it is not a regular
  // file, INTERNAL for other open/fstat/mmap failures; the message names the file. An empty file
  // is valid: data() is nullptr and size() 0.
  static StatusOr<std::unique_ptr<MappedFile>> Create(const std::string& path);

  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const std::string& path() const { return path_; }
  const uint8_t* data() const { return data_; }
  int64_t size() const { return size_; }

 private:
  MappedFile(std::string path, const uint8_t* data, int64_t size)
      : path_(std::move(path)), data_(data), size_(size) {}

  std::string path_;
  const uint8_t* data_ = nullptr;
  int64_t size_ = 0;
};

}  // namespace moe::store
