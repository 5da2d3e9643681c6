#include "moe/store/safetensors.h"

#include <algorithm>
#include <limits>
#include <set>

#include "nlohmann/json.hpp"

namespace moe::store {

namespace {

using nlohmann::json;

Status FileError(const std::string& file, const std::string& problem) {
  return absl::DataLossError(absl::StrCat("safetensors file ", file, ": ", problem));
}

Status TensorError(const std::string& file, const std::string& tensor, const std::string& problem) {
  return absl::DataLossError(
      absl::StrCat("safetensors file ", file, ": tensor '", tensor, "': ", problem));
}

uint64_t ReadU64Le(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

// A non-negative JSON integer that fits int64, else an error message.
bool AsNonNegativeInt64(const json& v, int64_t* out) {
  if (!v.is_number_unsigned()) return false;
  const uint64_t u = v.get<uint64_t>();
  if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return false;
  *out = static_cast<int64_t>(u);
  return true;
}

StatusOr<SafetensorsEntry> ParseEntry(const std::string& file, const std::string& name,
                                      const json& value) {
  if (!value.is_object()) return TensorError(file, name, "header entry is not a JSON object");
  for (const auto& [key, unused] : value.items()) {
    if (key != "dtype" && key != "shape" && key != "data_offsets") {
      return TensorError(file, name, absl::StrCat("unexpected field '", key, "'"));
    }
  }
  SafetensorsEntry entry;
  entry.name = name;

  auto dtype_it = value.find("dtype");
  if (dtype_it == value.end() || !dtype_it->is_string()) {
    return TensorError(file, name, "missing or non-string 'dtype'");
  }
  auto dtype = ParseSafetensorsDType(dtype_it->get<std::string>());
  if (!dtype.ok()) return TensorError(file, name, std::string(dtype.status().message()));
  entry.dtype = *dtype;

  auto shape_it = value.find("shape");
  if (shape_it == value.end() || !shape_it->is_array()) {
    return TensorError(file, name, "missing or non-list 'shape'");
  }
  int64_t numel = 1;
  for (const json& d : *shape_it) {
    int64_t dim = 0;
    if (!AsNonNegativeInt64(d, &dim)) {
      return TensorError(file, name,
                         absl::StrCat("shape ", shape_it->dump(),
                                      " has a non-integer or negative "
                                      "dimension"));
    }
    if (__builtin_mul_overflow(numel, dim, &numel)) {
      return TensorError(file, name, absl::StrCat("shape ", shape_it->dump(), " overflows"));
    }
    entry.shape.push_back(dim);
  }
  int64_t expected_bytes = 0;
  if (__builtin_mul_overflow(numel, static_cast<int64_t>(DTypeSize(entry.dtype)),
                             &expected_bytes)) {
    return TensorError(file, name, absl::StrCat("shape ", shape_it->dump(), " overflows"));
  }

  auto offsets_it = value.find("data_offsets");
  if (offsets_it == value.end() || !offsets_it->is_array() || offsets_it->size() != 2 ||
      !AsNonNegativeInt64((*offsets_it)[0], &entry.begin) ||
      !AsNonNegativeInt64((*offsets_it)[1], &entry.end)) {
    return TensorError(file, name, "'data_offsets' must be two non-negative integers");
  }
  if (entry.end < entry.begin) {
    return TensorError(
        file, name,
        absl::StrCat("data_offsets [", entry.begin, ", ", entry.end, "] end before they begin"));
  }
  if (entry.nbytes() != expected_bytes) {
    return TensorError(file, name,
                       absl::StrCat("byte size ", entry.nbytes(), " does not match dtype ",
                                    std::string(DTypeName(entry.dtype)), " x shape ",
                                    shape_it->dump(), " = ", expected_bytes, " bytes"));
  }
  return entry;
}

}  // namespace

int64_t SafetensorsEntry::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

StatusOr<SafetensorsHeader> ParseSafetensorsHeader(const uint8_t* bytes, int64_t file_size,
                                                   const std::string& file) {
  if (file_size < 8) {
    return FileError(
        file, absl::StrCat("is ", file_size, " bytes, too short for the 8-byte header length"));
  }
  const uint64_t n = ReadU64Le(bytes);
  if (n > static_cast<uint64_t>(kMaxSafetensorsHeaderBytes)) {
    return FileError(file, absl::StrCat("header length ", n, " exceeds the limit of ",
                                        kMaxSafetensorsHeaderBytes, " bytes"));
  }
  if (static_cast<int64_t>(n) > file_size - 8) {
    return FileError(file, absl::StrCat("header length ", n, " runs past the end of the file (",
                                        file_size, " bytes); truncated?"));
  }
  SafetensorsHeader header;
  header.header_bytes = static_cast<int64_t>(n);
  header.data_offset = 8 + header.header_bytes;
  const int64_t data_bytes = file_size - header.data_offset;

  const char* text = reinterpret_cast<const char*>(bytes + 8);
  if (n == 0 || text[0] != '{') return FileError(file, "header does not start with '{'");

  // Duplicate top-level keys would silently shadow each other in the parsed object.
  std::set<std::string> seen;
  std::string duplicate;
  auto callback = [&](int depth, json::parse_event_t event, json& parsed) {
    if (event == json::parse_event_t::key && depth == 1) {
      const std::string& key = parsed.get_ref<const std::string&>();
      if (!seen.insert(key).second && duplicate.empty()) duplicate = key;
    }
    return true;
  };
  json root;
  try {
    root = json::parse(text, text + n, callback);
  } catch (const json::exception& e) {
    return FileError(file, absl::StrCat("invalid JSON header: ", e.what()));
  }
  if (!root.is_object()) return FileError(file, "JSON header is not an object");
  if (!duplicate.empty()) return TensorError(file, duplicate, "appears twice in the header");

  for (const auto& [name, value] : root.items()) {
    if (name == "__metadata__") {
      if (!value.is_object()) return FileError(file, "__metadata__ is not a JSON object");
      for (const auto& [key, v] : value.items()) {
        if (!v.is_string()) {
          return FileError(file, absl::StrCat("__metadata__ value of '", key, "' is not a string"));
        }
        header.metadata[key] = v.get<std::string>();
      }
      continue;
    }
    MOE_ASSIGN_OR_RETURN(SafetensorsEntry entry, ParseEntry(file, name, value));
    header.tensors.push_back(std::move(entry));
  }

  // The tensors must tile the data section exactly: sorted by offset, each begins where the
  // previous one ends, the first at 0 and the last at the end of the file.
  std::sort(header.tensors.begin(), header.tensors.end(),
            [](const SafetensorsEntry& a, const SafetensorsEntry& b) {
              return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
            });
  int64_t cursor = 0;
  const SafetensorsEntry* previous = nullptr;
  for (const SafetensorsEntry& e : header.tensors) {
    if (e.end > data_bytes) {
      return TensorError(
          file, e.name,
          absl::StrCat("data_offsets [", e.begin, ", ", e.end, "] run past the data section (",
                       data_bytes, " bytes); truncated?"));
    }
    if (e.begin < cursor) {
      return TensorError(
          file, e.name,
          absl::StrCat("data_offsets [", e.begin, ", ", e.end, "] overlap tensor '", previous->name,
                       "' [", previous->begin, ", ", previous->end, "]"));
    }
    if (e.begin > cursor) {
      return TensorError(file, e.name,
                         absl::StrCat("data_offsets [", e.begin, ", ", e.end, "] leave a gap of ",
                                      e.begin - cursor, " bytes after ",
                                      previous ? absl::StrCat("tensor '", previous->name, "'")
                                               : std::string("the header")));
    }
    const int64_t align = static_cast<int64_t>(DTypeSize(e.dtype));
    if (e.nbytes() > 0 && (header.data_offset + e.begin) % align != 0) {
      return TensorError(file, e.name,
                         absl::StrCat("data at file offset ", header.data_offset + e.begin,
                                      " is not aligned to its ", align, "-byte elements"));
    }
    cursor = e.end;
    previous = &e;
  }
  if (cursor != data_bytes) {
    return FileError(file, absl::StrCat("tensors cover ", cursor, " bytes of a ", data_bytes,
                                        "-byte data section (trailing bytes)"));
  }
  return header;
}

StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  MOE_ASSIGN_OR_RETURN(std::unique_ptr<MappedFile> file, MappedFile::Create(path));
  MOE_ASSIGN_OR_RETURN(SafetensorsHeader header,
                       ParseSafetensorsHeader(file->data(), file->size(), path));
  return std::unique_ptr<SafetensorsFile>(new SafetensorsFile(std::move(file), std::move(header)));
}

SafetensorsFile::SafetensorsFile(std::unique_ptr<MappedFile> file, SafetensorsHeader header)
    : file_(std::move(file)), header_(std::move(header)) {
  by_name_.reserve(header_.tensors.size());
  for (size_t i = 0; i < header_.tensors.size(); ++i) by_name_[header_.tensors[i].name] = i;
}

const SafetensorsEntry* SafetensorsFile::Find(const std::string& name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : &header_.tensors[it->second];
}

}  // namespace moe::store
