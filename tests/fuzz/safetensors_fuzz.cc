// libFuzzer target: the safetensors header parser and the sharded-index parser on arbitrary bytes.
// Any input must yield a value or an error status; a parsed header must be self-consistent.
#include <cstdint>
#include <cstdlib>

#include "analysis/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const absl::string_view bytes(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<factlens::SafetensorsHeader> header = factlens::ParseSafetensorsHeader(bytes);
  if (header.ok()) {
    for (const auto& [name, info] : header->tensors) {
      // The promises the loader relies on: the bytes lie inside the file and match the shape.
      if (header->data_offset + info.end > size) std::abort();
      if (info.end - info.begin != info.numel() * factlens::DTypeSize(info.dtype)) std::abort();
    }
  }
  (void)factlens::ParseSafetensorsIndex(bytes);
  return 0;
}
