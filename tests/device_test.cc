// The device seam without a GPU: device names, the CPU side of streams and memory figures, and
// which exceptions become RESOURCE_EXHAUSTED. (The CUDA side is in gpu_test.cc.)
#include "analysis/device.h"

#include <ATen/ATen.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <new>
#include <stdexcept>
#include <string>

namespace factlens {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::Not;

TEST(DeviceTest, DeviceNamesAreCheckedAgainstTheVisibleDevices) {
  EXPECT_TRUE(ParseDevice("cpu").ok());
  EXPECT_EQ(ParseDevice("tpu").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseDevice("cpu:1").status().code(), absl::StatusCode::kInvalidArgument);
  const std::string beyond = "cuda:" + std::to_string(CudaDeviceCount());
  const absl::Status refused = ParseDevice(beyond).status();
  EXPECT_EQ(refused.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(refused.message()),
              HasSubstr("sees " + std::to_string(CudaDeviceCount()) + " CUDA device"));
  EXPECT_TRUE(GpuMemoryStats({c10::Device("cpu")}).empty());
  const DeviceStreamScope on_cpu(c10::Device("cpu"));  // a no-op, must not throw
}

TEST(DeviceTest, ExceptionsMapToResourceExhaustedOnlyForOutOfMemory) {
  const c10::Device cpu("cpu");
  const absl::Status oom = StatusFromException(std::bad_alloc(), "the forward pass", cpu);
  EXPECT_EQ(oom.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(oom.message()), HasSubstr("out of host memory on cpu"));
  const absl::Status bug =
      StatusFromException(std::runtime_error("shape mismatch"), "the forward pass", cpu);
  EXPECT_EQ(bug.code(), absl::StatusCode::kInternal);
  EXPECT_THAT(std::string(bug.message()), HasSubstr("shape mismatch"));
  try {
    (void)at::ones({2, 3}).matmul(at::ones({2, 3}));  // a real libtorch error, not an OOM
    ADD_FAILURE() << "no exception";
  } catch (const std::exception& e) {
    EXPECT_EQ(StatusFromException(e, "x", cpu).code(), absl::StatusCode::kInternal);
  }
}

// libtorch's CPU allocator throws a plain c10::Error whose what() carries a C++ stack trace: the
// status is RESOURCE_EXHAUSTED with a short message (no trace), the size, and advice for the work.
TEST(DeviceTest, CpuAllocatorFailureIsResourceExhaustedWithoutStackTrace) {
  const c10::Device cpu("cpu");
  try {
    // 1 PiB: refused by the kernel at once, nothing is touched.
    (void)at::empty({int64_t{1} << 50}, at::kByte);
    GTEST_SKIP() << "this machine granted a 1 PiB allocation";
  } catch (const std::exception& e) {
    const absl::Status request = StatusFromException(e, "the forward pass", cpu);
    EXPECT_EQ(request.code(), absl::StatusCode::kResourceExhausted) << request;
    EXPECT_THAT(
        std::string(request.message()),
        AllOf(HasSubstr("out of host memory on cpu during the forward pass"),
              HasSubstr("an allocation of 1048576.00 GiB failed"), HasSubstr("smaller top_k"),
              Not(HasSubstr("frame #")), Not(HasSubstr("alloc_cpu"))));
    const absl::Status load = StatusFromException(e, "loading /m", cpu, FailedWork::kLoad);
    EXPECT_EQ(load.code(), absl::StatusCode::kResourceExhausted);
    EXPECT_THAT(std::string(load.message()), HasSubstr("dtype=bfloat16 or float16"));
    EXPECT_LT(load.message().size(), 400u);
  }
}

TEST(DeviceTest, LibtorchErrorsKeepTheirMessageWithoutTheStackTrace) {
  try {
    (void)at::ones({2, 3}).matmul(at::ones({2, 3}));
    ADD_FAILURE() << "no exception";
  } catch (const std::exception& e) {
    const absl::Status status = StatusFromException(e, "x", c10::Device("cpu"));
    EXPECT_EQ(status.code(), absl::StatusCode::kInternal);
    EXPECT_THAT(std::string(status.message()),
                AllOf(HasSubstr("cannot be multiplied"), Not(HasSubstr("frame #"))));
  }
}

}  // namespace
}  // namespace factlens
