// How much host memory this process can still get, from the kernel's own figures: the system's
// MemAvailable, the memory cgroup's limit and the address-space limit (RLIMIT_AS). Model::Load
// compares its estimate with the tightest of them before it allocates, so that a model that
// cannot fit is a clear error instead of an allocator failure or the OOM killer.
#ifndef FACTLENS_ANALYSIS_HOST_MEMORY_H_
#define FACTLENS_ANALYSIS_HOST_MEMORY_H_

#include <cstdint>
#include <optional>
#include <string>

namespace factlens {

// Bytes this process can still get under each limit the kernel applies; nullopt where a limit is
// absent (unlimited) or cannot be read.
struct HostMemoryLimits {
  // /proc/meminfo MemAvailable: free memory plus what the kernel can reclaim (page cache).
  std::optional<uint64_t> mem_available;
  // The memory cgroup's limit minus its usage, with the cgroup's page cache counted as available
  // (as MemAvailable counts it): cgroup v2 memory.max − (memory.current − active_file −
  // inactive_file), or v1 memory.limit_in_bytes − (memory.usage_in_bytes − the same); the tightest
  // over the process's cgroup (from /proc/self/cgroup) and its ancestors.
  std::optional<uint64_t> cgroup_free;
  // RLIMIT_AS minus the address space already mapped (/proc/self/status VmSize): memory-mapped
  // checkpoint files count against it in full.
  std::optional<uint64_t> address_space_free;
};

// The tightest limit: its bytes and a phrase naming it ("the memory cgroup's limit (memory.max or
// memory.limit_in_bytes)").
struct Headroom {
  uint64_t bytes = 0;
  std::string limit;
};
std::optional<Headroom> TightestHeadroom(const HostMemoryLimits& limits);

// Reads the limits from the files under `root` ("/" for this machine; tests pass a directory laid
// out like /proc and /sys/fs/cgroup) and the RLIMIT_AS soft limit `address_space_limit` (nullopt:
// unlimited). Files that are absent or unreadable leave their limit unknown. Thread-safe.
HostMemoryLimits ReadHostMemoryLimits(const std::string& root,
                                      std::optional<uint64_t> address_space_limit);

// This process's limits now (root "/", getrlimit(RLIMIT_AS)). Thread-safe.
HostMemoryLimits CurrentHostMemoryLimits();

}  // namespace factlens

#endif  // FACTLENS_ANALYSIS_HOST_MEMORY_H_
