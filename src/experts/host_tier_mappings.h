// Which host ranges the host tier may page-lock in place (kRegisteredMmap), decided from the
// kernel's own view of the process's mappings (/proc/self/maps): every expert copy must lie in a
// file mapping that is shared and read-only (never MAP_PRIVATE: registering one was seen to hang;
// never writable: cudaHostRegisterReadOnly is what makes a read-only mapping registrable). Also
// the host-memory check of kAuto. Pure functions over text, so CPU tests cover them.
//
// Thread safety: stateless functions.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "moe/common/status.h"
#include "moe/experts/host_tier_layout.h"

namespace moe::experts::host_tier_internal {

// One line of /proc/<pid>/maps (adjacent lines of one file mapping merged by MergeMappings).
struct Mapping {
  uintptr_t begin = 0;  // [begin, end)
  uintptr_t end = 0;
  bool readable = false;
  bool writable = false;
  bool shared = false;  // 's' (MAP_SHARED) rather than 'p' (MAP_PRIVATE)
  uint64_t offset = 0;  // file offset of `begin`
  std::string device;   // "major:minor"
  uint64_t inode = 0;   // 0 for anonymous mappings
  std::string path;     // may be empty
};

// Parses the text of /proc/<pid>/maps. InvalidArgument (with the line) on a malformed line.
StatusOr<std::vector<Mapping>> ParseProcMaps(std::string_view text);

// Merges mappings that continue each other (same file, permissions and contiguous addresses and
// offsets), sorted by address.
std::vector<Mapping> MergeMappings(std::vector<Mapping> mappings);

// A page-aligned host range to register with cudaHostRegister.
struct RegisterRange {
  const uint8_t* begin = nullptr;
  int64_t bytes = 0;
  std::string path;  // the mapped file (messages)
};

// The page-aligned ranges, one per mapping that holds experts, covering every copy of `plan`
// (each copy then lies inside one registered range), sorted by address. FailedPrecondition
// naming the expert and the mapping when a copy is not inside one readable, shared, non-writable
// file mapping of `mappings` (merged, sorted).
StatusOr<std::vector<RegisterRange>> RangesToRegister(const HostCopyPlan& plan,
                                                      std::span<const Mapping> mappings,
                                                      int64_t page_bytes);

// Host memory as the kernel (and the cgroup, when limited) reports it.
struct HostMemory {
  int64_t total_bytes = 0;         // MemTotal
  int64_t available_bytes = 0;     // MemAvailable (page cache counts as available)
  int64_t cgroup_free_bytes = -1;  // memory.max - memory.current, or -1 when unlimited
};

// MemTotal and MemAvailable from the text of /proc/meminfo. InvalidArgument when missing.
StatusOr<HostMemory> ParseMemInfo(std::string_view text);

// Whole small file (/proc, /sys), or "" when unreadable.
std::string ReadProcFile(const char* path);

// This host's memory: /proc/meminfo, and the cgroup v2 limit where the usual mount shows one.
StatusOr<HostMemory> ReadHostMemory();

// Whether page-locking `bytes` of mapped file leaves the host a reserve: bytes + reserve <=
// available (and <= the cgroup's free bytes), reserve = max(1 GiB, total / 16). Empty when it
// fits, else the reason.
std::string CheckFitsInHostMemory(int64_t bytes, const HostMemory& memory);

}  // namespace moe::experts::host_tier_internal
