// Parsing of the safetensors format (https://github.com/huggingface/safetensors) and of sharded
// checkpoint indexes (model.safetensors.index.json). Torch-free: this layer only validates bytes
// and describes where each tensor lives; analysis/weights.h turns descriptions into tensors.
#ifndef FACTLENS_ANALYSIS_SAFETENSORS_H_
#define FACTLENS_ANALYSIS_SAFETENSORS_H_

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace factlens {

enum class DType { kF32, kF16, kBF16, kF64, kI64, kI32, kI16, kI8, kU8, kBool };

// Size in bytes of one element of `dtype`.
size_t DTypeSize(DType dtype);
// The safetensors spelling ("F32", "BF16", ...).
absl::string_view DTypeName(DType dtype);

// One tensor entry of a safetensors header. `begin`/`end` are byte offsets relative to the start of
// the data section (after the 8-byte length and the JSON header).
struct TensorInfo {
  DType dtype;
  std::vector<int64_t> shape;
  uint64_t begin = 0;
  uint64_t end = 0;
  int64_t numel() const;
};

// A validated header: every entry has a known dtype, non-negative dims, offsets inside the data
// section, a byte length equal to numel × dtype size, and no two entries overlap.
struct SafetensorsHeader {
  std::map<std::string, TensorInfo> tensors;
  std::map<std::string, std::string> metadata;  // the optional "__metadata__" string map
  uint64_t data_offset = 0;                     // 8 + header length
};

// Largest JSON header accepted (the reference implementation's limit).
inline constexpr uint64_t kMaxSafetensorsHeaderBytes = 100'000'000;

// Parses and validates the header of a safetensors file whose complete contents are `file`
// (only the first 8 + header-length bytes are parsed; the size of `file` bounds the offsets).
// Errors: DataLoss for truncated or inconsistent files, InvalidArgument for malformed JSON.
// Pure function; thread-safe.
absl::StatusOr<SafetensorsHeader> ParseSafetensorsHeader(absl::string_view file);

// The weight map of a sharded checkpoint: tensor name -> shard file name (a plain file name in the
// same directory; names with path separators or ".." are rejected). Pure function; thread-safe.
absl::StatusOr<std::map<std::string, std::string>> ParseSafetensorsIndex(absl::string_view json);

// A read-only memory mapping of a whole file; unmapped when the last reference goes away.
// Immutable after Open(); safe to share across threads.
class MappedFile {
 public:
  static absl::StatusOr<std::shared_ptr<const MappedFile>> Open(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  absl::string_view contents() const { return {static_cast<const char*>(data_), size_}; }
  const std::string& path() const { return path_; }

 private:
  MappedFile(std::string path, void* data, size_t size)
      : path_(std::move(path)), data_(data), size_(size) {}
  std::string path_;
  void* data_;
  size_t size_;
};

}  // namespace factlens

#endif  // FACTLENS_ANALYSIS_SAFETENSORS_H_
