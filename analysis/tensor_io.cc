#include "analysis/tensor_io.h"

#include <ATen/ATen.h>

#include <cstring>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "analysis/status_macros.h"
#include "nlohmann/json.hpp"

namespace factlens {
namespace {

struct DTypePair {
  DType dtype;
  c10::ScalarType scalar_type;
};

constexpr DTypePair kPairs[] = {
    {DType::kF32, c10::ScalarType::Float},     {DType::kF16, c10::ScalarType::Half},
    {DType::kBF16, c10::ScalarType::BFloat16}, {DType::kF64, c10::ScalarType::Double},
    {DType::kI64, c10::ScalarType::Long},      {DType::kI32, c10::ScalarType::Int},
    {DType::kI16, c10::ScalarType::Short},     {DType::kI8, c10::ScalarType::Char},
    {DType::kU8, c10::ScalarType::Byte},       {DType::kBool, c10::ScalarType::Bool},
};

}  // namespace

absl::StatusOr<at::Tensor> TensorFromLocation(const TensorLocation& location) {
  const DTypePair* pair = nullptr;
  for (const auto& p : kPairs) {
    if (p.dtype == location.info.dtype) pair = &p;
  }
  if (pair == nullptr) {
    return absl::DataLossError(
        absl::StrCat("dtype ", DTypeName(location.info.dtype), " cannot be held by a tensor"));
  }
  const absl::string_view bytes = location.bytes();
  const auto options = at::TensorOptions().dtype(pair->scalar_type).device(at::kCPU);
  if (reinterpret_cast<uintptr_t>(bytes.data()) % DTypeSize(location.info.dtype) == 0) {
    std::shared_ptr<const MappedFile> keep = location.file;
    return at::from_blob(
        const_cast<char*>(bytes.data()), location.info.shape,
        [keep](void*) mutable { keep.reset(); }, options);
  }
  at::Tensor copy = at::empty(location.info.shape, options);
  std::memcpy(copy.data_ptr(), bytes.data(), bytes.size());
  return copy;
}

absl::StatusOr<std::map<std::string, at::Tensor>> ReadSafetensorsFile(const std::string& path) {
  FACTLENS_ASSIGN_OR_RETURN(std::shared_ptr<const MappedFile> file, MappedFile::Open(path));
  FACTLENS_ASSIGN_OR_RETURN(const SafetensorsHeader header,
                            ParseSafetensorsHeader(file->contents()));
  std::map<std::string, at::Tensor> tensors;
  for (const auto& [name, info] : header.tensors) {
    FACTLENS_ASSIGN_OR_RETURN(tensors[name],
                              TensorFromLocation(TensorLocation{file, info, header.data_offset}));
  }
  return tensors;
}

absl::Status WriteSafetensorsFile(const std::string& path,
                                  const std::map<std::string, at::Tensor>& tensors) {
  std::vector<TensorToWrite> stream;
  for (const auto& [name, tensor] : tensors) {
    stream.push_back(
        {name, tensor.scalar_type(), tensor.sizes().vec(), [&tensor = tensor] { return tensor; }});
  }
  return WriteSafetensorsStream(path, stream);
}

absl::Status WriteSafetensorsStream(const std::string& path,
                                    const std::vector<TensorToWrite>& tensors) {
  nlohmann::json header = nlohmann::json::object();
  header["__metadata__"] = {{"format", "pt"}};
  uint64_t offset = 0;
  for (const TensorToWrite& t : tensors) {
    const DTypePair* pair = nullptr;
    for (const auto& p : kPairs) {
      if (p.scalar_type == t.dtype) pair = &p;
    }
    if (pair == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor '", t.name, "' has an unsupported dtype"));
    }
    uint64_t bytes = c10::elementSize(t.dtype);
    for (const int64_t dim : t.shape) bytes *= static_cast<uint64_t>(dim);
    header[t.name] = {{"dtype", std::string(DTypeName(pair->dtype))},
                      {"shape", t.shape},
                      {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string header_text = header.dump();
  header_text.append((8 - header_text.size() % 8) % 8, ' ');
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) return absl::PermissionDeniedError(absl::StrCat("cannot write '", path, "'"));
  char length[8];
  uint64_t n = header_text.size();
  for (int i = 0; i < 8; ++i, n >>= 8) length[i] = static_cast<char>(n & 0xff);
  out.write(length, 8);
  out.write(header_text.data(), static_cast<std::streamsize>(header_text.size()));
  for (const TensorToWrite& t : tensors) {
    const at::Tensor made = t.make().to(at::kCPU).contiguous();
    if (made.scalar_type() != t.dtype || made.sizes().vec() != t.shape) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor '", t.name, "' was made with another dtype or shape"));
    }
    out.write(static_cast<const char*>(made.data_ptr()),
              static_cast<std::streamsize>(made.numel() * made.element_size()));
  }
  out.close();
  if (!out) return absl::DataLossError(absl::StrCat("error writing '", path, "'"));
  return absl::OkStatus();
}

}  // namespace factlens
