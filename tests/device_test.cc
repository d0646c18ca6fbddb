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

using ::testing::HasSubstr;

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

}  // namespace
}  // namespace factlens
