// Strict reader of the safetensors format (https://github.com/huggingface/safetensors):
//
//   [8 bytes: N, little-endian u64] [N bytes: JSON header] [data section]
//
// The header maps tensor names to {"dtype", "shape", "data_offsets": [begin, end]} (offsets
// relative to the data section) plus an optional "__metadata__" object of string -> string.
// Validation rejects, with a message naming the file, the tensor and the problem:
//   - a file too short for the length prefix, a header length past the end of the file or above
//     kMaxSafetensorsHeaderBytes, a header that is not a JSON object, duplicate keys;
//   - an unknown dtype, a shape that is not a list of non-negative integers, byte counts that
//     overflow, end - begin != numel * dtype size;
//   - offsets out of range, overlapping, leaving gaps, or not covering the data section exactly;
//   - tensor data not aligned to its element size within the file (views would be misaligned).
// Status codes: DATA_LOSS for a malformed file, NOT_FOUND for a missing file.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "moe/common/dtype.h"
#include "moe/common/status.h"
#include "moe/store/mapped_file.h"

namespace moe::store {

// Headers above this are refused (real checkpoints have headers of a few hundred KiB).
inline constexpr int64_t kMaxSafetensorsHeaderBytes = int64_t{100} << 20;

// One tensor of a safetensors file.
struct SafetensorsEntry {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;  // row-major
  int64_t begin = 0;           // byte offsets into the data section, [begin, end)
  int64_t end = 0;

  int64_t nbytes() const { return end - begin; }
  int64_t numel() const;
};

struct SafetensorsHeader {
  int64_t header_bytes = 0;                     // N, the JSON length
  int64_t data_offset = 0;                      // 8 + N: file offset of the data section
  std::vector<SafetensorsEntry> tensors;        // sorted by begin offset
  std::map<std::string, std::string> metadata;  // "__metadata__"
};

// Parses and validates the header of the safetensors file whose first `file_size` bytes are at
// `bytes` (only the length prefix and the JSON are read). `file_name` appears in messages.
StatusOr<SafetensorsHeader> ParseSafetensorsHeader(const uint8_t* bytes, int64_t file_size,
                                                   const std::string& file_name);

// A validated, mmap'd safetensors file. Tensor data is addressed in place, never copied.
//
// Thread safety: immutable after Open(); every const method is safe from any thread.
class SafetensorsFile {
 public:
  // Maps `path` and validates its header (see the top of this file for what is rejected).
  static StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);

  const std::string& path() const { return file_->path(); }
  int64_t file_size() const { return file_->size(); }
  const SafetensorsHeader& header() const { return header_; }
  const std::vector<SafetensorsEntry>& tensors() const { return header_.tensors; }
  const std::map<std::string, std::string>& metadata() const { return header_.metadata; }

  // The entry named `name`, or nullptr.
  const SafetensorsEntry* Find(const std::string& name) const;
  // Address of the entry's first byte inside the mapping (valid while this object lives).
  const void* Data(const SafetensorsEntry& entry) const {
    return file_->data() + header_.data_offset + entry.begin;
  }

 private:
  SafetensorsFile(std::unique_ptr<MappedFile> file, SafetensorsHeader header);

  std::unique_ptr<MappedFile> file_;
  SafetensorsHeader header_;
  std::unordered_map<std::string, size_t> by_name_;  // name -> index in header_.tensors
};

}  // namespace moe::store
