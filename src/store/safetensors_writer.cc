#include "moe/store/safetensors_writer.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "nlohmann/json.hpp"

namespace moe::store {

namespace {

void AppendU64Le(uint64_t v, std::string* out) {
  for (int i = 0; i < 8; ++i) out->push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

// Writes all of `data` to `fd`; false with errno set on failure.
bool WriteAll(int fd, const void* data, size_t n) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    const ssize_t w = ::write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

}  // namespace

Status SafetensorsWriter::Check(const std::string& name, DType dtype,
                                const std::vector<int64_t>& shape, int64_t* nbytes) const {
  if (name.empty() || name == "__metadata__") {
    return absl::InvalidArgumentError(absl::StrCat("invalid tensor name '", name, "'"));
  }
  for (const Pending& t : tensors_) {
    if (t.name == name) {
      return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "' added twice"));
    }
  }
  int64_t n = static_cast<int64_t>(DTypeSize(dtype));
  for (int64_t d : shape) {
    if (d < 0 || __builtin_mul_overflow(n, d, &n)) {
      return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "': bad shape"));
    }
  }
  *nbytes = n;
  return absl::OkStatus();
}

Status SafetensorsWriter::Add(const std::string& name, DType dtype, std::vector<int64_t> shape,
                              const void* data, size_t nbytes) {
  int64_t expected = 0;
  MOE_RETURN_IF_ERROR(Check(name, dtype, shape, &expected));
  if (static_cast<int64_t>(nbytes) != expected) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor '", name, "': ", nbytes, " bytes given, shape and dtype need ", expected));
  }
  Pending t{name, dtype, std::move(shape), expected, std::string(), nullptr};
  if (nbytes > 0) t.bytes.assign(static_cast<const char*>(data), nbytes);
  tensors_.push_back(std::move(t));
  return absl::OkStatus();
}

Status SafetensorsWriter::AddGenerated(const std::string& name, DType dtype,
                                       std::vector<int64_t> shape, FillFn fill) {
  int64_t expected = 0;
  MOE_RETURN_IF_ERROR(Check(name, dtype, shape, &expected));
  if (!fill) return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "': no fill"));
  tensors_.push_back(
      Pending{name, dtype, std::move(shape), expected, std::string(), std::move(fill)});
  return absl::OkStatus();
}

std::string SafetensorsWriter::Header() const {
  nlohmann::ordered_json root = nlohmann::ordered_json::object();
  if (!metadata_.empty()) {
    nlohmann::ordered_json meta = nlohmann::ordered_json::object();
    for (const auto& [k, v] : metadata_) meta[k] = v;
    root["__metadata__"] = std::move(meta);
  }
  int64_t offset = 0;
  for (const Pending& t : tensors_) {
    nlohmann::ordered_json entry;
    entry["dtype"] = std::string(DTypeName(t.dtype));
    entry["shape"] = t.shape;
    entry["data_offsets"] = {offset, offset + t.nbytes};
    offset += t.nbytes;
    root[t.name] = std::move(entry);
  }
  std::string text = root.dump();
  // 8 (length prefix) + header is a multiple of 8, so data starts 8-byte aligned.
  while (text.size() % 8 != 0) text.push_back(' ');
  return text;
}

int64_t SafetensorsWriter::FileSize() const {
  int64_t size = 8 + static_cast<int64_t>(Header().size());
  for (const Pending& t : tensors_) size += t.nbytes;
  return size;
}

std::vector<std::string> SafetensorsWriter::names() const {
  std::vector<std::string> out;
  out.reserve(tensors_.size());
  for (const Pending& t : tensors_) out.push_back(t.name);
  return out;
}

std::string SafetensorsWriter::Serialize() const {
  const std::string header = Header();
  std::string out;
  out.reserve(static_cast<size_t>(FileSize()));
  AppendU64Le(header.size(), &out);
  out += header;
  for (const Pending& t : tensors_) {
    if (t.fill) {
      const size_t at = out.size();
      out.resize(at + static_cast<size_t>(t.nbytes));
      t.fill(out.data() + at, static_cast<size_t>(t.nbytes));
    } else {
      out += t.bytes;
    }
  }
  return out;
}

Status SafetensorsWriter::Write(const std::string& path) const {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    return absl::InternalError(absl::StrCat("cannot create ", path, ": ", std::strerror(errno)));
  }
  const std::string header = Header();
  std::string prefix;
  AppendU64Le(header.size(), &prefix);
  bool ok =
      WriteAll(fd, prefix.data(), prefix.size()) && WriteAll(fd, header.data(), header.size());
  std::string buffer;
  for (const Pending& t : tensors_) {
    if (!ok) break;
    if (t.fill) {
      buffer.resize(static_cast<size_t>(t.nbytes));
      t.fill(buffer.data(), buffer.size());
      ok = WriteAll(fd, buffer.data(), buffer.size());
    } else {
      ok = WriteAll(fd, t.bytes.data(), t.bytes.size());
    }
  }
  const int write_errno = errno;
  if (::close(fd) != 0 && ok) {
    return absl::InternalError(absl::StrCat("cannot close ", path, ": ", std::strerror(errno)));
  }
  if (!ok) {
    return absl::InternalError(
        absl::StrCat("cannot write ", path, ": ", std::strerror(write_errno)));
  }
  return absl::OkStatus();
}

}  // namespace moe::store
