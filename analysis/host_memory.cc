#include "analysis/host_memory.h"

#include <sys/resource.h>

#include <algorithm>
#include <fstream>
#include <limits>
#include <sstream>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"

namespace factlens {
namespace {

// Above this a cgroup v1 limit means "unlimited" (the kernel reports 2^63 rounded to a page).
constexpr uint64_t kUnlimitedCgroupV1 = uint64_t{1} << 62;

std::optional<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return std::nullopt;
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

std::optional<uint64_t> ParseBytes(absl::string_view text) {
  uint64_t value = 0;
  if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(text), &value)) return std::nullopt;
  return value;
}

std::optional<uint64_t> ReadBytes(const std::string& path) {
  const std::optional<std::string> text = ReadFile(path);
  return text ? ParseBytes(*text) : std::nullopt;
}

// "Key:   123 kB" lines of /proc/meminfo and /proc/self/status, in bytes.
std::optional<uint64_t> KilobyteField(const std::string& text, absl::string_view key) {
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (!absl::ConsumePrefix(&line, key) || !absl::ConsumePrefix(&line, ":")) continue;
    line = absl::StripAsciiWhitespace(line);
    if (!absl::ConsumeSuffix(&line, "kB")) return std::nullopt;
    const std::optional<uint64_t> kb = ParseBytes(line);
    return kb ? std::optional<uint64_t>(*kb * 1024) : std::nullopt;
  }
  return std::nullopt;
}

// The "key value" lines of a cgroup memory.stat file.
std::optional<uint64_t> StatField(const std::string& text, absl::string_view key) {
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    const std::vector<absl::string_view> parts = absl::StrSplit(line, ' ', absl::SkipEmpty());
    if (parts.size() == 2 && parts[0] == key) return ParseBytes(parts[1]);
  }
  return std::nullopt;
}

// Page cache charged to a cgroup (reclaimable), from its memory.stat; 0 when unknown.
uint64_t CgroupFileCache(const std::string& dir, bool v1) {
  const std::optional<std::string> stat = ReadFile(dir + "/memory.stat");
  if (!stat) return 0;
  uint64_t bytes = 0;
  for (const char* key : {"active_file", "inactive_file"}) {
    // v1 keeps the hierarchical totals under total_*.
    std::optional<uint64_t> value =
        v1 ? StatField(*stat, std::string("total_") + key) : std::nullopt;
    if (!value) value = StatField(*stat, key);
    bytes += value.value_or(0);
  }
  return bytes;
}

// limit − (usage − page cache) for one cgroup directory; nullopt when it has no limit.
std::optional<uint64_t> CgroupDirFree(const std::string& dir, bool v1) {
  std::optional<uint64_t> limit, usage;
  if (v1) {
    limit = ReadBytes(dir + "/memory.limit_in_bytes");
    if (limit && *limit >= kUnlimitedCgroupV1) limit.reset();
    usage = ReadBytes(dir + "/memory.usage_in_bytes");
  } else {
    limit = ReadBytes(dir + "/memory.max");  // "max" (unlimited) does not parse
    usage = ReadBytes(dir + "/memory.current");
  }
  if (!limit) return std::nullopt;
  const uint64_t cache = CgroupFileCache(dir, v1);
  const uint64_t used = usage ? *usage - std::min(*usage, cache) : 0;
  return *limit - std::min(*limit, used);
}

// The tightest free memory over the cgroup at `path` (relative to the controller's mount `mount`)
// and its ancestors up to the mount. A path the mount does not show (a cgroup namespace shows
// its own root as "/") is walked all the same: absent directories are skipped.
std::optional<uint64_t> CgroupFree(const std::string& mount, absl::string_view path, bool v1) {
  std::optional<uint64_t> tightest;
  std::string dir(absl::StripSuffix(path, "/"));
  while (true) {
    if (const std::optional<uint64_t> free = CgroupDirFree(mount + dir, v1)) {
      tightest = std::min(tightest.value_or(*free), *free);
    }
    if (dir.empty()) break;
    dir = dir.substr(0, dir.rfind('/'));
  }
  return tightest;
}

std::optional<uint64_t> ProcessCgroupFree(const std::string& root) {
  const std::optional<std::string> cgroups = ReadFile(root + "/proc/self/cgroup");
  if (!cgroups) return std::nullopt;
  std::optional<uint64_t> tightest;
  auto keep = [&](std::optional<uint64_t> free) {
    if (free) tightest = std::min(tightest.value_or(*free), *free);
  };
  // "hierarchy-id:controllers:path": v2 is "0::/path"; v1 lists its controllers ("4:memory:/path").
  for (absl::string_view line : absl::StrSplit(*cgroups, '\n')) {
    const std::vector<absl::string_view> fields = absl::StrSplit(line, absl::MaxSplits(':', 2));
    if (fields.size() != 3) continue;
    if (fields[0] == "0" && fields[1].empty()) {
      keep(CgroupFree(root + "/sys/fs/cgroup", fields[2], /*v1=*/false));
    } else {
      const std::vector<absl::string_view> controllers = absl::StrSplit(fields[1], ',');
      if (std::find(controllers.begin(), controllers.end(), "memory") != controllers.end()) {
        keep(CgroupFree(root + "/sys/fs/cgroup/memory", fields[2], /*v1=*/true));
      }
    }
  }
  return tightest;
}

}  // namespace

std::optional<Headroom> TightestHeadroom(const HostMemoryLimits& limits) {
  std::optional<Headroom> tightest;
  auto consider = [&](const std::optional<uint64_t>& bytes, const char* limit) {
    if (bytes && (!tightest || *bytes < tightest->bytes)) tightest = Headroom{*bytes, limit};
  };
  consider(limits.mem_available, "the memory available on this machine (MemAvailable)");
  consider(limits.cgroup_free, "the memory cgroup's limit (memory.max or memory.limit_in_bytes)");
  consider(limits.address_space_free,
           "the address-space limit (RLIMIT_AS, ulimit -v) less what is already mapped");
  return tightest;
}

HostMemoryLimits ReadHostMemoryLimits(const std::string& root,
                                      std::optional<uint64_t> address_space_limit) {
  HostMemoryLimits limits;
  if (const std::optional<std::string> meminfo = ReadFile(root + "/proc/meminfo")) {
    limits.mem_available = KilobyteField(*meminfo, "MemAvailable");
  }
  limits.cgroup_free = ProcessCgroupFree(root);
  if (address_space_limit) {
    const std::optional<std::string> status = ReadFile(root + "/proc/self/status");
    const uint64_t mapped = status ? KilobyteField(*status, "VmSize").value_or(0) : 0;
    limits.address_space_free = *address_space_limit - std::min(*address_space_limit, mapped);
  }
  return limits;
}

HostMemoryLimits CurrentHostMemoryLimits() {
  std::optional<uint64_t> address_space_limit;
  struct rlimit limit {};
  if (getrlimit(RLIMIT_AS, &limit) == 0 && limit.rlim_cur != RLIM_INFINITY) {
    address_space_limit = static_cast<uint64_t>(limit.rlim_cur);
  }
  return ReadHostMemoryLimits("/", address_space_limit);
}

}  // namespace factlens
