// Finding a checkpoint on disk and indexing its tensors, without touching their bytes.
#ifndef FACTLENS_ANALYSIS_MODEL_FILES_H_
#define FACTLENS_ANALYSIS_MODEL_FILES_H_

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "analysis/safetensors.h"

namespace factlens {

// Resolves what a user names as a model to a directory:
//  - an existing directory is used as is;
//  - otherwise a Hugging Face repo id "ORG/NAME" or "NAME", optionally "@REVISION" (a branch/tag in
//    refs/ or a commit hash; default "main"), is looked up in the HF cache: $HF_HUB_CACHE, else
//    $HF_HOME/hub, else $XDG_CACHE_HOME/huggingface/hub, else ~/.cache/huggingface/hub, as
//    models--ORG--NAME/snapshots/<commit>/. Without refs/<revision>, a cache holding exactly one
//    snapshot uses it.
// NotFound (saying where it looked) when neither works. Reads the environment; thread-safe.
absl::StatusOr<std::string> ResolveModelDirectory(absl::string_view reference);

// Where one tensor's bytes are: the mapping that holds them and their description.
struct TensorLocation {
  std::shared_ptr<const MappedFile> file;
  TensorInfo info;
  uint64_t data_offset = 0;  // of the file's data section
  absl::string_view bytes() const {
    return file->contents().substr(data_offset + info.begin, info.end - info.begin);
  }
};

// All tensors of a checkpoint directory: `model.safetensors`, or the shards named by
// `model.safetensors.index.json`. Every file is memory-mapped and its header validated on Open();
// a name the index maps to a shard that lacks it, or a name in two shards, is DataLoss.
// Immutable after Open(); thread-safe.
class Checkpoint {
 public:
  static absl::StatusOr<Checkpoint> Open(const std::string& directory);

  // NotFound naming the tensor and the directory when absent.
  absl::StatusOr<TensorLocation> Find(absl::string_view name) const;
  bool Contains(absl::string_view name) const { return tensors_.count(std::string(name)) > 0; }
  const std::map<std::string, TensorLocation>& tensors() const { return tensors_; }
  const std::string& directory() const { return directory_; }
  // Sum of the sizes of the mapped files.
  uint64_t mapped_bytes() const;

 private:
  std::string directory_;
  std::vector<std::shared_ptr<const MappedFile>> files_;
  std::map<std::string, TensorLocation> tensors_;
};

// Reads a whole (small) text file such as config.json. NotFound if absent.
absl::StatusOr<std::string> ReadTextFile(const std::string& path);

}  // namespace factlens

#endif  // FACTLENS_ANALYSIS_MODEL_FILES_H_
