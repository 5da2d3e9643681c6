// Registrable ranges of the host tier from /proc/self/maps, and kAuto's host-memory check.
#include "experts/host_tier_mappings.h"

#include <algorithm>
#include <charconv>
#include <fstream>
#include <map>
#include <sstream>

#include "absl/strings/str_cat.h"

namespace moe::experts::host_tier_internal {
namespace {

// Splits off the next space-separated field of `rest`.
std::string_view NextField(std::string_view* rest) {
  size_t i = 0;
  while (i < rest->size() && (*rest)[i] == ' ') ++i;
  size_t j = i;
  while (j < rest->size() && (*rest)[j] != ' ') ++j;
  const std::string_view field = rest->substr(i, j - i);
  rest->remove_prefix(j);
  return field;
}

template <typename T>
bool ParseNumber(std::string_view s, int base, T* out) {
  if (s.empty()) return false;
  const auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), *out, base);
  return ec == std::errc() && ptr == s.data() + s.size();
}

std::string_view Trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r'))
    s.remove_suffix(1);
  return s;
}

// The merged mapping that contains address `p`, or nullptr.
const Mapping* Containing(std::span<const Mapping> mappings, uintptr_t p) {
  auto it = std::upper_bound(mappings.begin(), mappings.end(), p,
                             [](uintptr_t v, const Mapping& m) { return v < m.begin; });
  if (it == mappings.begin()) return nullptr;
  --it;
  return p < it->end ? &*it : nullptr;
}

// A decimal integer followed by optional whitespace ("max" and garbage fail).
bool ParseInt(const std::string& text, int64_t* out) {
  const char* end = text.data() + text.size();
  const auto [ptr, ec] = std::from_chars(text.data(), end, *out);
  if (ec != std::errc() || ptr == text.data()) return false;
  for (const char* p = ptr; p < end; ++p) {
    if (*p != '\n' && *p != ' ') return false;
  }
  return true;
}

}  // namespace

StatusOr<std::vector<Mapping>> ParseProcMaps(std::string_view text) {
  std::vector<Mapping> out;
  while (!text.empty()) {
    const size_t nl = text.find('\n');
    std::string_view line = text.substr(0, nl);
    text.remove_prefix(nl == std::string_view::npos ? text.size() : nl + 1);
    if (Trim(line).empty()) continue;
    const std::string_view whole = line;
    auto bad = [&]() {
      return absl::InvalidArgumentError(
          absl::StrCat("malformed /proc/self/maps line: '", std::string(whole), "'"));
    };
    Mapping m;
    const std::string_view range = NextField(&line);
    const std::string_view perms = NextField(&line);
    const std::string_view offset = NextField(&line);
    const std::string_view device = NextField(&line);
    const std::string_view inode = NextField(&line);
    const size_t dash = range.find('-');
    if (dash == std::string_view::npos || perms.size() != 4 ||
        !ParseNumber(range.substr(0, dash), 16, &m.begin) ||
        !ParseNumber(range.substr(dash + 1), 16, &m.end) || m.end < m.begin ||
        !ParseNumber(offset, 16, &m.offset) || device.empty() ||
        !ParseNumber(inode, 10, &m.inode)) {
      return bad();
    }
    m.readable = perms[0] == 'r';
    m.writable = perms[1] == 'w';
    m.shared = perms[3] == 's';
    m.device = std::string(device);
    m.path = std::string(Trim(line));
    out.push_back(std::move(m));
  }
  return out;
}

std::vector<Mapping> MergeMappings(std::vector<Mapping> mappings) {
  std::sort(mappings.begin(), mappings.end(),
            [](const Mapping& a, const Mapping& b) { return a.begin < b.begin; });
  std::vector<Mapping> out;
  for (Mapping& m : mappings) {
    if (!out.empty()) {
      Mapping& last = out.back();
      if (last.inode != 0 && last.end == m.begin && last.inode == m.inode &&
          last.device == m.device && last.readable == m.readable && last.writable == m.writable &&
          last.shared == m.shared && last.offset + (last.end - last.begin) == m.offset) {
        last.end = m.end;
        continue;
      }
    }
    out.push_back(std::move(m));
  }
  return out;
}

StatusOr<std::vector<RegisterRange>> RangesToRegister(const HostCopyPlan& plan,
                                                      std::span<const Mapping> mappings,
                                                      int64_t page_bytes) {
  if (page_bytes <= 0 || (page_bytes & (page_bytes - 1)) != 0) {
    return absl::InvalidArgumentError(absl::StrCat("bad page size ", page_bytes));
  }
  // Hull of the copies inside each mapping: mapping index -> [lo, hi).
  std::map<size_t, std::pair<uintptr_t, uintptr_t>> hulls;
  for (int32_t layer : plan.layers()) {
    for (int32_t e = 0; e < plan.n_experts(); ++e) {
      const ExpertKey key{layer, e};
      MOE_ASSIGN_OR_RETURN(std::span<const HostCopy> copies, plan.Copies(key));
      for (const HostCopy& c : copies) {
        const uintptr_t lo = reinterpret_cast<uintptr_t>(c.src);
        const uintptr_t hi = lo + static_cast<uintptr_t>(c.bytes);
        const Mapping* m = Containing(mappings, lo);
        if (m == nullptr || hi > m->end) {
          return absl::FailedPreconditionError(
              absl::StrCat("host tier: ", ToString(key),
                           " is not inside one file mapping (heap or test memory?): only the "
                           "read-only MAP_SHARED mmaps of a checkpoint can be registered"));
        }
        if (m->inode == 0 || !m->readable || m->writable || !m->shared) {
          return absl::FailedPreconditionError(absl::StrCat(
              "host tier: ", ToString(key), " lies in a mapping of '", m->path, "' that is ",
              m->inode == 0 ? "anonymous" : (!m->shared ? "MAP_PRIVATE" : "writable or unreadable"),
              "; only read-only MAP_SHARED file mappings are registered"));
        }
        const size_t idx = static_cast<size_t>(m - mappings.data());
        auto [it, inserted] = hulls.try_emplace(idx, lo, hi);
        if (!inserted) {
          it->second.first = std::min(it->second.first, lo);
          it->second.second = std::max(it->second.second, hi);
        }
      }
    }
  }
  std::vector<RegisterRange> out;
  const uintptr_t page = static_cast<uintptr_t>(page_bytes);
  for (const auto& [idx, hull] : hulls) {
    const Mapping& m = mappings[idx];
    const uintptr_t lo = std::max(m.begin, hull.first / page * page);
    const uintptr_t hi = std::min(m.end, (hull.second + page - 1) / page * page);
    out.push_back(
        RegisterRange{reinterpret_cast<const uint8_t*>(lo), static_cast<int64_t>(hi - lo), m.path});
  }
  return out;
}

StatusOr<HostMemory> ParseMemInfo(std::string_view text) {
  HostMemory mem;
  bool total = false, available = false;
  while (!text.empty()) {
    const size_t nl = text.find('\n');
    std::string_view line = text.substr(0, nl);
    text.remove_prefix(nl == std::string_view::npos ? text.size() : nl + 1);
    const size_t colon = line.find(':');
    if (colon == std::string_view::npos) continue;
    const std::string_view key = line.substr(0, colon);
    std::string_view rest = line.substr(colon + 1);
    const std::string_view number = NextField(&rest);
    const std::string_view unit = NextField(&rest);
    int64_t v = 0;
    if (!ParseNumber(number, 10, &v)) continue;
    if (unit == "kB") v *= 1024;
    if (key == "MemTotal") {
      mem.total_bytes = v;
      total = true;
    } else if (key == "MemAvailable") {
      mem.available_bytes = v;
      available = true;
    }
  }
  if (!total || !available) {
    return absl::InvalidArgumentError("/proc/meminfo lacks MemTotal or MemAvailable");
  }
  return mem;
}

std::string CheckFitsInHostMemory(int64_t bytes, const HostMemory& memory) {
  const int64_t reserve = std::max<int64_t>(int64_t{1} << 30, memory.total_bytes / 16);
  if (bytes + reserve > memory.available_bytes) {
    return absl::StrCat("the experts' ", bytes, " bytes plus a reserve of ", reserve,
                        " exceed the host's available memory (", memory.available_bytes, " bytes)");
  }
  if (memory.cgroup_free_bytes >= 0 && bytes + reserve > memory.cgroup_free_bytes) {
    return absl::StrCat("the experts' ", bytes, " bytes plus a reserve of ", reserve,
                        " exceed the cgroup's free memory (", memory.cgroup_free_bytes, " bytes)");
  }
  return "";
}

std::string ReadProcFile(const char* path) {
  std::ifstream in(path);
  if (!in) return "";
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

StatusOr<HostMemory> ReadHostMemory() {
  MOE_ASSIGN_OR_RETURN(HostMemory mem, ParseMemInfo(ReadProcFile("/proc/meminfo")));
  // cgroup v2 limit of this process's cgroup, when the usual mount shows one.
  const std::string max = ReadProcFile("/sys/fs/cgroup/memory.max");
  const std::string current = ReadProcFile("/sys/fs/cgroup/memory.current");
  int64_t limit = 0, used = 0;
  if (ParseInt(max, &limit) && ParseInt(current, &used)) {
    mem.cgroup_free_bytes = std::max<int64_t>(0, limit - used);
  }
  return mem;
}

}  // namespace moe::experts::host_tier_internal
