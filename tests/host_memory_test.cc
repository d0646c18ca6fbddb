// How much host memory a process can get (analysis/host_memory.h), read from fake /proc and
// /sys/fs/cgroup trees, and the decision Model::Load makes with it (CheckLoadFits), with injected
// limits: no test here allocates what it pretends.
#include "analysis/host_memory.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "analysis/weights.h"
#include "tests/testing.h"

namespace factlens {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::Not;

constexpr uint64_t kGiB = uint64_t{1} << 30;

// A directory laid out like the root of a Linux file system, for ReadHostMemoryLimits.
class FakeRoot {
 public:
  void Write(const std::string& relative, const std::string& contents) const {
    const std::filesystem::path path = std::filesystem::path(dir_.path()) / relative;
    std::filesystem::create_directories(path.parent_path());
    std::ofstream(path) << contents;
  }
  const std::string& path() const { return dir_.path(); }

 private:
  testing::ScopedTempDir dir_;
};

constexpr char kMeminfo[] =
    "MemTotal:       24576000 kB\n"
    "MemFree:         1000000 kB\n"
    "MemAvailable:   20971520 kB\n"  // 20 GiB
    "Buffers:            2048 kB\n";

TEST(HostMemoryTest, ReadsMemAvailableCgroupV2AndAddressSpace) {
  FakeRoot root;
  root.Write("proc/meminfo", kMeminfo);
  root.Write("proc/self/cgroup", "0::/user.slice/factlens.service\n");
  root.Write("proc/self/status", "Name:\tfactlens\nVmPeak:\t 9000 kB\nVmSize:\t 4194304 kB\n");
  // 16 GiB limit, 10 GiB charged of which 3 GiB is page cache: 9 GiB free.
  root.Write("sys/fs/cgroup/user.slice/factlens.service/memory.max", "17179869184\n");
  root.Write("sys/fs/cgroup/user.slice/factlens.service/memory.current", "10737418240\n");
  root.Write("sys/fs/cgroup/user.slice/factlens.service/memory.stat",
             "anon 7516192768\nfile 3221225472\nactive_file 1073741824\n"
             "inactive_file 2147483648\n");
  root.Write("sys/fs/cgroup/user.slice/memory.max", "max\n");
  root.Write("sys/fs/cgroup/user.slice/memory.current", "10737418240\n");

  const HostMemoryLimits limits = ReadHostMemoryLimits(root.path(), 20 * kGiB);
  EXPECT_EQ(limits.mem_available, 20 * kGiB);
  EXPECT_EQ(limits.cgroup_free, 9 * kGiB);
  EXPECT_EQ(limits.address_space_free, 16 * kGiB);  // 20 GiB − 4 GiB mapped
  const std::optional<Headroom> tightest = TightestHeadroom(limits);
  ASSERT_TRUE(tightest.has_value());
  EXPECT_EQ(tightest->bytes, 9 * kGiB);
  EXPECT_THAT(tightest->limit, HasSubstr("cgroup"));

  // Unlimited address space: that limit is absent, the others unchanged.
  EXPECT_FALSE(ReadHostMemoryLimits(root.path(), std::nullopt).address_space_free.has_value());
}

TEST(HostMemoryTest, CgroupV1TakesTheTightestAncestorAndIgnoresUnlimited) {
  FakeRoot root;
  root.Write("proc/meminfo", kMeminfo);
  root.Write("proc/self/cgroup", "5:cpu,cpuacct:/\n4:memory:/pods/pod1/box\n0::/\n");
  // The process's own cgroup: unlimited (2^63 rounded to a page).
  root.Write("sys/fs/cgroup/memory/pods/pod1/box/memory.limit_in_bytes", "9223372036854771712\n");
  root.Write("sys/fs/cgroup/memory/pods/pod1/box/memory.usage_in_bytes", "1073741824\n");
  // Its parent: 8 GiB, 6 GiB used of which 1 GiB page cache (hierarchical total_*): 3 GiB free.
  root.Write("sys/fs/cgroup/memory/pods/pod1/memory.limit_in_bytes", "8589934592\n");
  root.Write("sys/fs/cgroup/memory/pods/pod1/memory.usage_in_bytes", "6442450944\n");
  root.Write("sys/fs/cgroup/memory/pods/pod1/memory.stat",
             "cache 5\nactive_file 1\ninactive_file 2\ntotal_active_file 536870912\n"
             "total_inactive_file 536870912\n");
  // The grandparent: 32 GiB, nearly empty.
  root.Write("sys/fs/cgroup/memory/pods/memory.limit_in_bytes", "34359738368\n");
  root.Write("sys/fs/cgroup/memory/pods/memory.usage_in_bytes", "6442450944\n");

  const HostMemoryLimits limits = ReadHostMemoryLimits(root.path(), std::nullopt);
  EXPECT_EQ(limits.cgroup_free, 3 * kGiB);
  EXPECT_EQ(limits.mem_available, 20 * kGiB);
}

TEST(HostMemoryTest, MissingFilesLeaveLimitsUnknown) {
  FakeRoot root;
  const HostMemoryLimits limits = ReadHostMemoryLimits(root.path(), std::nullopt);
  EXPECT_FALSE(limits.mem_available.has_value());
  EXPECT_FALSE(limits.cgroup_free.has_value());
  EXPECT_FALSE(limits.address_space_free.has_value());
  EXPECT_FALSE(TightestHeadroom(limits).has_value());
  // Garbage is unknown too, never a huge or zero figure.
  root.Write("proc/meminfo", "MemAvailable: lots\n");
  root.Write("proc/self/cgroup", "0::/x\n");
  root.Write("sys/fs/cgroup/x/memory.max", "max\n");
  EXPECT_FALSE(ReadHostMemoryLimits(root.path(), std::nullopt).mem_available.has_value());
  EXPECT_FALSE(ReadHostMemoryLimits(root.path(), std::nullopt).cgroup_free.has_value());
}

TEST(HostMemoryTest, ThisProcessHasMemAvailable) {
  const HostMemoryLimits limits = CurrentHostMemoryLimits();
  ASSERT_TRUE(limits.mem_available.has_value());  // Linux ≥ 3.14
  EXPECT_GT(*limits.mem_available, 0u);
}

constexpr c10::ScalarType kFp16Checkpoint = c10::ScalarType::Half;

// A footprint of weights, output head and margin in GiB.
LoadFootprint Footprint(double weights_gib, double head_gib, double margin_gib) {
  LoadFootprint f;
  f.weights = static_cast<uint64_t>(weights_gib * kGiB);
  f.output_head = static_cast<uint64_t>(head_gib * kGiB);
  f.margin = static_cast<uint64_t>(margin_gib * kGiB);
  return f;
}

TEST(CheckLoadFitsTest, RefusesWithTheNeedTheLimitAndTheWayOut) {
  HostMemoryLimits limits;
  limits.mem_available = 22 * kGiB;
  limits.address_space_free = 6 * kGiB;  // 20 GB limit − 12.6 GiB of mapped checkpoint and code
  const LoadFootprint float32 = Footprint(25.1, 0.98, 1.6);
  const LoadFootprint bfloat16 = Footprint(12.6, 0.98, 1.6);
  const LoadFootprint float16 = Footprint(0, 0.98, 1.6);  // the checkpoint's own dtype, in place

  const absl::Status refused =
      CheckLoadFits("/models/llama-7b", c10::ScalarType::Float, float32, limits, kFp16Checkpoint,
                    {{c10::ScalarType::Half, float16}, {c10::ScalarType::BFloat16, bfloat16}});
  EXPECT_EQ(refused.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(
      std::string(refused.message()),
      AllOf(
          HasSubstr("/models/llama-7b"), HasSubstr("dtype=float32"), HasSubstr("needs 27.7 GiB"),
          HasSubstr("weights 25.1 GiB"), HasSubstr("leaves this process 6.0 GiB"),
          HasSubstr("RLIMIT_AS"),
          HasSubstr("load it with dtype=float16 (the checkpoint's own dtype: its matrices used in "
                    "place), which needs 2.6 GiB"),
          Not(HasSubstr("frame #"))));

  // Under a looser limit bfloat16 fits: the first alternative that fits is named.
  limits.address_space_free = 18 * kGiB;
  const absl::Status bf16_fits =
      CheckLoadFits("/models/llama-7b", c10::ScalarType::Float, float32, limits, kFp16Checkpoint,
                    {{c10::ScalarType::BFloat16, bfloat16}});
  EXPECT_THAT(std::string(bf16_fits.message()),
              HasSubstr("load it with dtype=bfloat16, which needs 15.2 GiB"));

  // Nothing fits: the smallest need is named, and that it does not fit either.
  limits.address_space_free = 1 * kGiB;
  const absl::Status nothing =
      CheckLoadFits("/models/llama-7b", c10::ScalarType::Float, float32, limits, kFp16Checkpoint,
                    {{c10::ScalarType::BFloat16, bfloat16}, {c10::ScalarType::Half, float16}});
  EXPECT_THAT(
      std::string(nothing.message()),
      HasSubstr("even dtype=float16 (the checkpoint's own dtype: its matrices used in place) needs "
                "2.6 GiB: use a machine with more memory"));
  const absl::Status no_alternative = CheckLoadFits("/models/llama-7b", c10::ScalarType::Half,
                                                    float16, limits, kFp16Checkpoint, {});
  EXPECT_THAT(std::string(no_alternative.message()), HasSubstr("no dtype needs less"));
}

TEST(CheckLoadFitsTest, FitsWhenTheNeedIsWithinEveryLimit) {
  HostMemoryLimits limits;
  limits.mem_available = 22 * kGiB;
  limits.cgroup_free = 18 * kGiB;
  EXPECT_TRUE(CheckLoadFits("m", c10::ScalarType::BFloat16, Footprint(12.6, 0.98, 1.6), limits,
                            kFp16Checkpoint, {})
                  .ok());
  EXPECT_TRUE(
      CheckLoadFits("m", c10::ScalarType::Float, Footprint(18, 0, 0), limits, kFp16Checkpoint, {})
          .ok());
  const absl::Status over = CheckLoadFits("m", c10::ScalarType::Float, Footprint(18, 0, 1.0 / 1024),
                                          limits, kFp16Checkpoint, {});
  EXPECT_EQ(over.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(over.message()), HasSubstr("cgroup"));
  // No limit known: nothing to refuse on.
  EXPECT_TRUE(CheckLoadFits("m", c10::ScalarType::Float, Footprint(1e6, 0, 0), HostMemoryLimits{},
                            kFp16Checkpoint, {})
                  .ok());
}

}  // namespace
}  // namespace factlens
