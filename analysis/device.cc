#include "analysis/device.h"

#include <ATen/Context.h>
#include <c10/core/CachingDeviceAllocator.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/Exception.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <new>
#include <optional>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace factlens {
namespace {

// The card a CUDA device names ("cuda" is cuda:0).
c10::DeviceIndex CudaIndex(c10::Device device) { return device.has_index() ? device.index() : 0; }

}  // namespace

absl::StatusOr<c10::Device> ParseDevice(absl::string_view name) {
  std::optional<c10::Device> device;
  try {
    device.emplace(std::string(name));
  } catch (const std::exception&) {
  }
  if (!device || !(device->is_cpu() || device->is_cuda()) ||
      (device->is_cpu() && device->has_index())) {
    return absl::InvalidArgumentError(
        absl::StrCat("device '", name, "' is not one of cpu, cuda, cuda:N"));
  }
  if (device->is_cpu()) return *device;
  const int visible = CudaDeviceCount();
  const int index = CudaIndex(*device);
  if (index >= visible) {
    return absl::FailedPreconditionError(
        absl::StrCat("device '", name, "': this process sees ", visible, " CUDA device(s)",
                     visible == 0 ? " (no GPU or no NVIDIA driver; run on cpu)" : ""));
  }
  return c10::Device(c10::DeviceType::CUDA, static_cast<c10::DeviceIndex>(index));
}

void UseFullPrecisionMatmuls() {
  at::Context& context = at::globalContext();
  context.setFloat32MatmulPrecision("highest");
  context.setAllowFP16ReductionCuBLAS(/*allow_reduced_precision=*/false);
  context.setAllowBF16ReductionCuBLAS(/*allow_reduced_precision=*/false);
  context.setAllowFP16AccumulationCuBLAS(false);
}

int CudaDeviceCount() {
  try {
    return c10::cuda::device_count();  // 0 without a driver; it does not throw for that
  } catch (const std::exception&) {
    return 0;
  }
}

std::vector<GpuMemory> GpuMemoryStats(const std::vector<c10::Device>& devices) {
  std::vector<int> indices;
  for (const c10::Device& device : devices) {
    if (device.is_cuda()) indices.push_back(CudaIndex(device));
  }
  std::sort(indices.begin(), indices.end());
  indices.erase(std::unique(indices.begin(), indices.end()), indices.end());
  std::vector<GpuMemory> out;
  constexpr auto kAll = static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE);
  for (const int index : indices) {
    try {
      const auto stats =
          c10::cuda::CUDACachingAllocator::getDeviceStats(static_cast<c10::DeviceIndex>(index));
      GpuMemory m;
      m.index = index;
      m.allocated = stats.allocated_bytes[kAll].current;
      m.peak_allocated = stats.allocated_bytes[kAll].peak;
      m.reserved = stats.reserved_bytes[kAll].current;
      const c10::cuda::CUDAGuard on_device(static_cast<c10::DeviceIndex>(index));
      size_t free = 0, total = 0;
      if (cudaMemGetInfo(&free, &total) == cudaSuccess) {
        m.free = free;
        m.total = total;
      }
      out.push_back(m);
    } catch (const std::exception&) {
      // The allocator has not been initialised on this device yet: nothing allocated there.
    }
  }
  return out;
}

absl::Status LimitGpuMemory(c10::Device device, double fraction) {
  if (!device.is_cuda()) {
    return absl::InvalidArgumentError(absl::StrCat("no GPU memory to limit on ", device.str()));
  }
  if (!(fraction > 0 && fraction <= 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("GPU memory fraction ", fraction, " is not in (0, 1]"));
  }
  try {
    c10::cuda::CUDACachingAllocator::setMemoryFraction(fraction, CudaIndex(device));
  } catch (const std::exception& e) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot limit GPU memory on ", device.str(), ": ", e.what()));
  }
  return absl::OkStatus();
}

struct DeviceStreamScope::Guard {
  explicit Guard(c10::cuda::CUDAStream stream) : guard(stream) {}
  c10::cuda::CUDAStreamGuard guard;
};

DeviceStreamScope::DeviceStreamScope(c10::Device device) {
  if (device.is_cuda()) {
    guard_ = std::make_unique<Guard>(
        c10::cuda::getStreamFromPool(/*isHighPriority=*/false, CudaIndex(device)));
  }
}

DeviceStreamScope::~DeviceStreamScope() = default;

namespace {

// The message of a libtorch exception without its C++ stack trace.
std::string ShortMessage(const std::exception& e) {
  const auto* error = dynamic_cast<const c10::Error*>(&e);
  return error != nullptr ? error->what_without_backtrace() : e.what();
}

// libtorch's CPU allocator reports failure as a plain c10::Error: "[enforce fail at
// alloc_cpu.cpp:…] … DefaultCPUAllocator: can't allocate memory: you tried to allocate N bytes.
// Error code 12 (Cannot allocate memory)" (older releases: "not enough memory").
bool IsCpuAllocatorFailure(absl::string_view message) {
  return absl::StrContains(message, "DefaultCPUAllocator") &&
         (absl::StrContains(message, "can't allocate memory") ||
          absl::StrContains(message, "not enough memory"));
}

// ", an allocation of 26.8 GiB failed" from "... you tried to allocate N bytes ...", else "".
std::string FailedAllocation(absl::string_view message) {
  constexpr absl::string_view kTried = "tried to allocate ";
  const size_t at = message.find(kTried);
  if (at == absl::string_view::npos) return "";
  absl::string_view rest = message.substr(at + kTried.size());
  uint64_t bytes = 0;
  if (!absl::SimpleAtoi(rest.substr(0, rest.find(' ')), &bytes)) return "";
  return absl::StrFormat(" (an allocation of %.2f GiB failed)",
                         static_cast<double>(bytes) / (uint64_t{1} << 30));
}

}  // namespace

absl::Status StatusFromException(const std::exception& e, absl::string_view what,
                                 c10::Device device, FailedWork work) {
  const std::string message = ShortMessage(e);
  const bool gpu_oom = dynamic_cast<const c10::OutOfMemoryError*>(&e) != nullptr;
  if (gpu_oom || dynamic_cast<const std::bad_alloc*>(&e) != nullptr ||
      IsCpuAllocatorFailure(message)) {
    const absl::string_view advice =
        work == FailedWork::kLoad
            ? "the model needs more memory than this process can get there (load it with "
              "dtype=bfloat16 or float16 to halve its weights, or on a machine with more memory)"
            : "the request needs more memory than is free there now (retry later, or use a "
              "shorter prompt or a smaller top_k)";
    return absl::ResourceExhaustedError(absl::StrCat("out of ", gpu_oom ? "GPU" : "host",
                                                     " memory on ", device.str(), " during ", what,
                                                     FailedAllocation(message), ": ", advice));
  }
  return absl::InternalError(absl::StrCat(what, " failed: ", message));
}

}  // namespace factlens
