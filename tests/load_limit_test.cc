// A real load under a real address-space limit (RLIMIT_AS, what `ulimit -v` and `prlimit --as`
// set): the float32 load of an fp16 checkpoint that cannot fit is refused before it allocates,
// with a message that names the way out, and the way out (dtype=float16: the weights used in place
// from the file) then loads and runs under the same limit. Its own binary: the limit applies to the
// whole process, and is lifted again before the test ends.
#include <ATen/ATen.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/stat.h>

#include <fstream>
#include <sstream>
#include <string>

#include "analysis/forward.h"
#include "analysis/weights.h"
#include "tests/support/random_gpt2.h"
#include "tests/testing.h"

namespace factlens {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::Not;

// /proc/self/status VmSize, in bytes.
uint64_t MappedBytes() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmSize:", 0) == 0) return std::stoull(line.substr(7)) * 1024;
  }
  return 0;
}

// Sets RLIMIT_AS's soft limit while alive, then restores the previous one.
class ScopedAddressSpaceLimit {
 public:
  explicit ScopedAddressSpaceLimit(uint64_t bytes) {
    getrlimit(RLIMIT_AS, &previous_);
    struct rlimit limit = previous_;
    limit.rlim_cur = bytes;
    ok_ = setrlimit(RLIMIT_AS, &limit) == 0;
  }
  ~ScopedAddressSpaceLimit() { setrlimit(RLIMIT_AS, &previous_); }
  bool ok() const { return ok_; }

 private:
  struct rlimit previous_ {};
  bool ok_ = false;
};

TEST(LoadLimitTest, TooLargeForTheAddressSpaceIsRefusedAndTheWayOutLoads) {
  const testing::ScopedTempDir tmp;
  const std::string dir = tmp.path() + "/llama-fp16";
  testing::RandomLlamaShape shape;
  shape.vocab = 32000;
  shape.d_model = 512;
  shape.layers = 4;
  shape.heads = 8;
  shape.kv_heads = 8;
  shape.ffn = 2048;
  shape.positions = 64;
  ASSERT_TRUE(testing::WriteRandomLlamaStreamed(dir, shape, /*seed=*/7, DType::kF16).ok());
  struct stat file {};
  ASSERT_EQ(stat((dir + "/model.safetensors").c_str(), &file), 0);

  LoadOptions half;
  half.dtype = at::kHalf;
  absl::StatusOr<LoadFootprint> float32 = EstimateLoad(dir);
  absl::StatusOr<LoadFootprint> float16 = EstimateLoad(dir, half);
  ASSERT_TRUE(float32.ok() && float16.ok()) << float32.status();
  // float32 converts ~50M weights (198 MB); float16 uses them in place.
  ASSERT_GT(float32->total(), float16->total() + (uint64_t{150} << 20));
  // Room for the checkpoint's mapping and halfway between the two needs.
  const uint64_t room = (float32->total() + float16->total()) / 2;

  absl::Status refused;
  absl::StatusOr<std::shared_ptr<const Model>> way_out;
  absl::StatusOr<ForwardTrace> trace;
  {
    const ScopedAddressSpaceLimit limit(MappedBytes() + static_cast<uint64_t>(file.st_size) + room);
    ASSERT_TRUE(limit.ok());
    refused = Model::Load(dir).status();
    way_out = Model::Load(dir, half);
    if (way_out.ok()) trace = Forward(**way_out, {1, 2, 3, 4}, LogitsAt(-1));
  }
  EXPECT_EQ(refused.code(), absl::StatusCode::kResourceExhausted) << refused;
  EXPECT_THAT(
      std::string(refused.message()),
      AllOf(
          HasSubstr("cannot load " + dir + " with dtype=float32"), HasSubstr("RLIMIT_AS"),
          HasSubstr("GiB"),
          HasSubstr("load it with dtype=float16 (the checkpoint's own dtype: its matrices used in "
                    "place)"),
          Not(HasSubstr("frame #"))));
  ASSERT_TRUE(way_out.ok()) << way_out.status();
  EXPECT_EQ((*way_out)->weights_dtype(), at::kHalf);
  ASSERT_TRUE(trace.ok()) << trace.status();
  EXPECT_TRUE(at::isfinite(trace->logits).all().item<bool>());
}

}  // namespace
}  // namespace factlens
