// Where a model computes: device names, GPU memory figures, the stream a request runs on, and the
// one place that tells an out-of-memory failure from other libtorch exceptions.
//
// The CUDA half lives in device.cc and is compiled in every build (libtorch is always the CUDA
// build, see CMakeLists.txt); on a machine without a GPU it reports no devices and every CUDA
// device name is refused with FailedPrecondition.
#ifndef FACTLENS_ANALYSIS_DEVICE_H_
#define FACTLENS_ANALYSIS_DEVICE_H_

#include <c10/core/Device.h>
#include <c10/core/Stream.h>

#include <cstdint>
#include <exception>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace factlens {

// "cpu", "cuda" (= cuda:0) or "cuda:N". Errors: InvalidArgument for any other name;
// FailedPrecondition for a CUDA device this process cannot see (no GPU, or N >= the number of
// visible GPUs; the message says how many are visible). Thread-safe.
absl::StatusOr<c10::Device> ParseDevice(absl::string_view name);

// Makes libtorch's CUDA matrix products as accurate as the method's error bounds assume: float32
// products without TF32, and float16 / bfloat16 products accumulated in float32 without
// reduced-precision reductions. Process-wide and idempotent; Model::Load calls it for CUDA models
// (libtorch's own defaults already keep TF32 off; this pins it against a process that turned it
// on).
void UseFullPrecisionMatmuls();

// Number of CUDA devices this process can use (0 without a GPU or driver). Thread-safe.
int CudaDeviceCount();

// Memory of one CUDA device as libtorch's caching allocator sees it, in bytes.
struct GpuMemory {
  int index = 0;
  uint64_t allocated = 0;       // held by live tensors now
  uint64_t reserved = 0;        // held by the allocator (allocated + cached): what nvidia-smi shows
  uint64_t peak_allocated = 0;  // largest `allocated` since the process started
  uint64_t free = 0;            // free on the card (all processes), from the driver
  uint64_t total = 0;           // the card's memory
};

// One entry per distinct CUDA device among `devices` on which libtorch has allocated (CPU devices
// are skipped); empty without a GPU. Thread-safe.
std::vector<GpuMemory> GpuMemoryStats(const std::vector<c10::Device>& devices);

// Caps the GPU memory libtorch's caching allocator may hold on `device` at `fraction` of the card
// (0 < fraction ≤ 1; 1 lifts the cap): beyond it an allocation fails as out-of-memory, which a
// request reports as ResourceExhausted. For sharing a card with other processes. Errors:
// InvalidArgument for a CPU device or a fraction outside (0, 1]; FailedPrecondition when libtorch
// has not allocated on that device yet (call it after loading a model there). Thread-safe.
absl::Status LimitGpuMemory(c10::Device device, double fraction);

// While alive, libtorch work issued by this thread for `device` goes to a stream of its own from
// libtorch's pool, so that concurrent requests on one card overlap instead of queueing on the
// default stream (the caching allocator keeps each stream's memory apart, weights are read-only).
// A no-op for CPU devices. Construct and destroy on the same thread; not copyable.
class DeviceStreamScope {
 public:
  explicit DeviceStreamScope(c10::Device device);
  ~DeviceStreamScope();
  DeviceStreamScope(const DeviceStreamScope&) = delete;
  DeviceStreamScope& operator=(const DeviceStreamScope&) = delete;

 private:
  struct Guard;
  std::unique_ptr<Guard> guard_;
};

// What was being done when libtorch threw: the advice an out-of-memory message gives.
enum class FailedWork {
  kRequest,  // retry later, or a shorter prompt / smaller top_k
  kLoad,     // a smaller dtype, or a machine with more memory
};

// The status for an exception thrown by libtorch while doing `what` (e.g. "forward pass") on
// `device`: ResourceExhausted with a short message that says which memory ran out, the size of
// the allocation that failed when libtorch says it, and what to try, when it is an out-of-memory
// (c10::OutOfMemoryError, std::bad_alloc, or the CPU allocator's c10::Error "can't allocate
// memory"); Internal carrying the exception's message otherwise — a bug, whose details the server
// logs and never sends to clients (status_mapping). Messages never carry libtorch's C++ stack
// trace (c10::Error::what_without_backtrace).
absl::Status StatusFromException(const std::exception& e, absl::string_view what,
                                 c10::Device device, FailedWork work = FailedWork::kRequest);

}  // namespace factlens

#endif  // FACTLENS_ANALYSIS_DEVICE_H_
