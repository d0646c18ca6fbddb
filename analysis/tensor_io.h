// Reading and writing whole safetensors files as libtorch tensors.
#ifndef FACTLENS_ANALYSIS_TENSOR_IO_H_
#define FACTLENS_ANALYSIS_TENSOR_IO_H_

#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>

#include <functional>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "analysis/model_files.h"

namespace factlens {

// A CPU tensor holding the located bytes in their stored dtype. Aligned data is a zero-copy view
// that keeps the mapping alive (read-only pages: never write to it); misaligned data is copied.
// DataLoss for dtypes libtorch cannot hold. Thread-safe.
absl::StatusOr<at::Tensor> TensorFromLocation(const TensorLocation& location);

// Every tensor of one safetensors file, as CPU tensors in their stored dtypes.
absl::StatusOr<std::map<std::string, at::Tensor>> ReadSafetensorsFile(const std::string& path);

// Writes CPU tensors (F32/F16/BF16/F64/I64/I32/I16/I8/U8/BOOL) as one safetensors file, with the
// header padded to a multiple of 8 bytes as the reference writer does.
absl::Status WriteSafetensorsFile(const std::string& path,
                                  const std::map<std::string, at::Tensor>& tensors);

// One tensor of WriteSafetensorsStream: its name, dtype and shape, and what makes it when its turn
// comes (a tensor of that dtype and shape).
struct TensorToWrite {
  std::string name;
  c10::ScalarType dtype;
  std::vector<int64_t> shape;
  std::function<at::Tensor()> make;
};

// Writes a safetensors file as WriteSafetensorsFile does, its data in the order of `tensors`,
// making each tensor only when it is written: memory holds one at a time (checkpoints larger than
// memory). InvalidArgument for an unsupported dtype or a made tensor of another dtype or shape.
absl::Status WriteSafetensorsStream(const std::string& path,
                                    const std::vector<TensorToWrite>& tensors);

}  // namespace factlens

#endif  // FACTLENS_ANALYSIS_TENSOR_IO_H_
