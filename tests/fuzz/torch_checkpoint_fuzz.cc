// libFuzzer target: the torch.save checkpoint parser on arbitrary bytes. Any input must yield a
// value or an error status; a parsed checkpoint must keep the promises of torch_checkpoint.h:
// every storage lies inside the file with numel × element size bytes, and every tensor reachable
// from the root reads only elements of its storage.
#include <cstdint>
#include <cstdlib>
#include <unordered_set>
#include <vector>

#include "analysis/torch_checkpoint.h"

namespace {

void CheckTensor(const factlens::TorchCheckpoint& checkpoint,
                 const factlens::PickleValue::TensorRef& ref) {
  const auto it = checkpoint.storages.find(ref.storage_key);
  if (it == checkpoint.storages.end()) std::abort();
  if (ref.shape.size() != ref.stride.size() || ref.storage_offset < 0) std::abort();
  unsigned __int128 last = static_cast<uint64_t>(ref.storage_offset);
  for (size_t i = 0; i < ref.shape.size(); ++i) {
    if (ref.shape[i] < 0 || ref.stride[i] < 0) std::abort();
    if (ref.shape[i] == 0) return;  // empty
    last += static_cast<unsigned __int128>(ref.shape[i] - 1) * static_cast<uint64_t>(ref.stride[i]);
  }
  const uint64_t bytes = it->second.end - it->second.begin;
  if ((last + 1) * factlens::DTypeSize(ref.dtype) > bytes) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const absl::string_view bytes(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<factlens::TorchCheckpoint> checkpoint = factlens::ParseTorchCheckpoint(bytes);
  if (!checkpoint.ok()) {
    const absl::StatusCode code = checkpoint.status().code();
    if (code != absl::StatusCode::kDataLoss && code != absl::StatusCode::kUnimplemented) {
      std::abort();
    }
    return 0;
  }
  for (const auto& [key, storage] : checkpoint->storages) {
    if (storage.begin > storage.end || storage.end > size || storage.numel < 0) std::abort();
    if (storage.end - storage.begin !=
        static_cast<uint64_t>(storage.numel) * factlens::DTypeSize(storage.dtype)) {
      std::abort();
    }
  }
  // Walk the DAG once per node.
  if (checkpoint->root == nullptr) std::abort();
  std::unordered_set<const factlens::PickleValue*> seen;
  std::vector<const factlens::PickleValue*> todo = {checkpoint->root.get()};
  while (!todo.empty()) {
    const factlens::PickleValue* value = todo.back();
    todo.pop_back();
    if (value == nullptr) std::abort();
    if (!seen.insert(value).second) continue;
    if (value->kind == factlens::PickleValue::Kind::kTensor)
      CheckTensor(*checkpoint, value->tensor);
    for (const auto& item : value->items) todo.push_back(item.get());
    for (const auto& [k, v] : value->entries) {
      todo.push_back(k.get());
      todo.push_back(v.get());
    }
  }
  return 0;
}
