// Writes safetensors files (the format read by safetensors.h) for tests and for the generated
// embedded model. Tensors are laid out in the order they are added; the JSON header keeps that
// order and is padded with spaces to a multiple of 8 bytes, so every tensor is 8-byte aligned.
//
// Thread safety: none; use one writer from one thread.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "moe/common/dtype.h"
#include "moe/common/status.h"

namespace moe::store {

class SafetensorsWriter {
 public:
  // Fills `nbytes` bytes at `dst` with a tensor's contents.
  using FillFn = std::function<void(void* dst, size_t nbytes)>;

  // Adds a tensor whose bytes are copied now. INVALID_ARGUMENT if `nbytes` is not
  // numel(shape) * DTypeSize(dtype), the name is empty, "__metadata__" or already added.
  Status Add(const std::string& name, DType dtype, std::vector<int64_t> shape, const void* data,
             size_t nbytes);
  // Adds a tensor whose bytes `fill` produces while the file is written (large generated
  // tensors are never held in memory all at once). Same errors as Add().
  Status AddGenerated(const std::string& name, DType dtype, std::vector<int64_t> shape,
                      FillFn fill);
  // Sets a "__metadata__" entry (e.g. {"format": "pt"}).
  void SetMetadata(const std::string& key, const std::string& value) { metadata_[key] = value; }

  // The JSON header without the length prefix, padded to a multiple of 8 bytes.
  std::string Header() const;
  // Size of the file Write() produces.
  int64_t FileSize() const;
  // Names of the tensors added so far, in order.
  std::vector<std::string> names() const;

  // The whole file in memory (tests that corrupt bytes start from this).
  std::string Serialize() const;
  // Writes the file to `path` (created or truncated). INTERNAL with the path on I/O errors.
  Status Write(const std::string& path) const;

 private:
  struct Pending {
    std::string name;
    DType dtype;
    std::vector<int64_t> shape;
    int64_t nbytes = 0;
    std::string bytes;  // copied contents, or empty when `fill` is set
    FillFn fill;
  };
  Status Check(const std::string& name, DType dtype, const std::vector<int64_t>& shape,
               int64_t* nbytes) const;

  std::vector<Pending> tensors_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace moe::store
