#include "analysis/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace factlens {
namespace {

using json = nlohmann::json;

struct DTypeEntry {
  DType dtype;
  absl::string_view name;
  size_t size;
};

constexpr DTypeEntry kDTypes[] = {
    {DType::kF32, "F32", 4},   {DType::kF16, "F16", 2}, {DType::kBF16, "BF16", 2},
    {DType::kF64, "F64", 8},   {DType::kI64, "I64", 8}, {DType::kI32, "I32", 4},
    {DType::kI16, "I16", 2},   {DType::kI8, "I8", 1},   {DType::kU8, "U8", 1},
    {DType::kBool, "BOOL", 1},
};

const DTypeEntry& Entry(DType dtype) {
  for (const auto& e : kDTypes) {
    if (e.dtype == dtype) return e;
  }
  return kDTypes[0];  // unreachable: every enumerator is listed
}

// Reads a non-negative JSON integer that fits in int64.
bool ReadNonNegative(const json& value, uint64_t* out) {
  if (!value.is_number_unsigned()) return false;
  const uint64_t v = value.get<uint64_t>();
  if (v > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return false;
  *out = v;
  return true;
}

absl::StatusOr<TensorInfo> ParseEntry(const std::string& name, const json& entry,
                                      uint64_t data_size) {
  auto bad = [&](absl::string_view what) {
    return absl::DataLossError(absl::StrCat("safetensors entry '", name, "': ", what));
  };
  if (!entry.is_object()) return bad("not an object");
  const auto dtype_it = entry.find("dtype");
  const auto shape_it = entry.find("shape");
  const auto offsets_it = entry.find("data_offsets");
  if (dtype_it == entry.end() || !dtype_it->is_string()) return bad("missing string 'dtype'");
  if (shape_it == entry.end() || !shape_it->is_array()) return bad("missing array 'shape'");
  if (offsets_it == entry.end() || !offsets_it->is_array() || offsets_it->size() != 2) {
    return bad("'data_offsets' must be [begin, end]");
  }
  TensorInfo info;
  const std::string& dtype_name = dtype_it->get_ref<const std::string&>();
  const DTypeEntry* dtype = nullptr;
  for (const auto& e : kDTypes) {
    if (e.name == dtype_name) dtype = &e;
  }
  if (dtype == nullptr) return bad(absl::StrCat("unsupported dtype '", dtype_name, "'"));
  info.dtype = dtype->dtype;

  for (const json& dim : *shape_it) {
    uint64_t d = 0;
    if (!ReadNonNegative(dim, &d)) return bad("shape dimensions must be non-negative integers");
    info.shape.push_back(static_cast<int64_t>(d));
  }
  // numel × element size, computed without overflow: it may not exceed the data section.
  uint64_t bytes = 0;
  if (std::find(info.shape.begin(), info.shape.end(), 0) == info.shape.end()) {
    bytes = dtype->size;
    for (int64_t d : info.shape) {
      if (bytes > data_size / static_cast<uint64_t>(d)) return bad("shape larger than the file");
      bytes *= static_cast<uint64_t>(d);
    }
  }
  if (!ReadNonNegative((*offsets_it)[0], &info.begin) ||
      !ReadNonNegative((*offsets_it)[1], &info.end)) {
    return bad("data offsets must be non-negative integers");
  }
  if (info.begin > info.end) return bad("data offsets are reversed");
  if (info.end > data_size) {
    return bad(absl::StrCat("data offsets [", info.begin, ", ", info.end,
                            ") run past the end of the data section (", data_size, " bytes)"));
  }
  if (info.end - info.begin != bytes) {
    return bad(absl::StrCat("holds ", info.end - info.begin, " bytes but its dtype and shape need ",
                            bytes));
  }
  return info;
}

}  // namespace

size_t DTypeSize(DType dtype) { return Entry(dtype).size; }
absl::string_view DTypeName(DType dtype) { return Entry(dtype).name; }

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

absl::StatusOr<SafetensorsHeader> ParseSafetensorsHeader(absl::string_view file) {
  if (file.size() < 8) {
    return absl::DataLossError(
        absl::StrCat("safetensors file is truncated: ", file.size(), " bytes, need at least 8"));
  }
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) {
    header_len = (header_len << 8) | static_cast<unsigned char>(file[i]);
  }
  if (header_len > kMaxSafetensorsHeaderBytes) {
    return absl::DataLossError(absl::StrCat("safetensors header length ", header_len,
                                            " exceeds the limit of ", kMaxSafetensorsHeaderBytes));
  }
  if (header_len > file.size() - 8) {
    return absl::DataLossError(absl::StrCat("safetensors header length ", header_len,
                                            " runs past the end of the file (", file.size(),
                                            " bytes): the file is truncated or not safetensors"));
  }
  const json header = json::parse(file.begin() + 8, file.begin() + 8 + header_len, /*cb=*/nullptr,
                                  /*allow_exceptions=*/false);
  if (header.is_discarded() || !header.is_object()) {
    // The 8-byte length was plausible, so this is a damaged file (or one of another format).
    return absl::DataLossError(
        "safetensors header is not a JSON object: the file is damaged or not safetensors");
  }
  SafetensorsHeader result;
  result.data_offset = 8 + header_len;
  const uint64_t data_size = file.size() - result.data_offset;
  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") {
      if (!entry.is_object())
        return absl::DataLossError("safetensors __metadata__ is not an object");
      for (const auto& [key, value] : entry.items()) {
        if (!value.is_string()) {
          return absl::DataLossError(
              absl::StrCat("safetensors __metadata__ value '", key, "' is not a string"));
        }
        result.metadata[key] = value.get<std::string>();
      }
      continue;
    }
    absl::StatusOr<TensorInfo> info = ParseEntry(name, entry, data_size);
    if (!info.ok()) return info.status();
    result.tensors.emplace(name, *std::move(info));
  }

  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  ranges.reserve(result.tensors.size());
  for (const auto& [name, info] : result.tensors) ranges.emplace_back(info.begin, info.end);
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i) {
    if (ranges[i].first < ranges[i - 1].second) {
      return absl::DataLossError(absl::StrCat("safetensors tensors overlap at byte ",
                                              ranges[i].first, " of the data section"));
    }
  }
  return result;
}

absl::StatusOr<std::map<std::string, std::string>> ParseSafetensorsIndex(absl::string_view text) {
  const json index = json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (index.is_discarded() || !index.is_object()) {
    return absl::InvalidArgumentError("safetensors index is not a JSON object");
  }
  const auto map_it = index.find("weight_map");
  if (map_it == index.end() || !map_it->is_object()) {
    return absl::InvalidArgumentError("safetensors index has no object 'weight_map'");
  }
  std::map<std::string, std::string> weight_map;
  for (const auto& [name, file] : map_it->items()) {
    if (!file.is_string()) {
      return absl::InvalidArgumentError(
          absl::StrCat("safetensors index: shard of '", name, "' is not a string"));
    }
    const std::string& shard = file.get_ref<const std::string&>();
    if (shard.empty() || shard == "." || shard == ".." || shard.find('/') != std::string::npos ||
        shard.find('\\') != std::string::npos || shard.find('\0') != std::string::npos) {
      return absl::InvalidArgumentError(absl::StrCat("safetensors index: shard '", shard, "' of '",
                                                     name, "' is not a plain file name"));
    }
    weight_map.emplace(name, shard);
  }
  if (weight_map.empty()) return absl::InvalidArgumentError("safetensors index maps no tensors");
  return weight_map;
}

absl::StatusOr<std::shared_ptr<const MappedFile>> MappedFile::Open(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    const std::string message = absl::StrCat("cannot open '", path, "': ", std::strerror(err));
    return err == ENOENT ? absl::NotFoundError(message) : absl::PermissionDeniedError(message);
  }
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return absl::FailedPreconditionError(absl::StrCat("'", path, "' is not a regular file"));
  }
  const size_t size = static_cast<size_t>(st.st_size);
  void* data = nullptr;
  if (size > 0) {
    data = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (data == MAP_FAILED) {
      const int err = errno;
      ::close(fd);
      return absl::ResourceExhaustedError(
          absl::StrCat("cannot map '", path, "': ", std::strerror(err)));
    }
  }
  ::close(fd);
  return std::shared_ptr<const MappedFile>(new MappedFile(path, data, size));
}

MappedFile::~MappedFile() {
  if (data_ != nullptr) ::munmap(data_, size_);
}

}  // namespace factlens
