#include "analysis/model_files.h"

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <system_error>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "analysis/status_macros.h"

namespace factlens {
namespace {

namespace fs = std::filesystem;

bool IsDirectory(const fs::path& path) {
  std::error_code ec;
  return fs::is_directory(path, ec);
}

std::string EnvOr(const char* name, std::string fallback) {
  const char* value = std::getenv(name);
  return (value != nullptr && *value != '\0') ? std::string(value) : fallback;
}

fs::path HubCacheDirectory() {
  const std::string hub_cache = EnvOr("HF_HUB_CACHE", "");
  if (!hub_cache.empty()) return hub_cache;
  const std::string hf_home = EnvOr("HF_HOME", "");
  if (!hf_home.empty()) return fs::path(hf_home) / "hub";
  const std::string xdg = EnvOr("XDG_CACHE_HOME", "");
  if (!xdg.empty()) return fs::path(xdg) / "huggingface" / "hub";
  return fs::path(EnvOr("HOME", "/root")) / ".cache" / "huggingface" / "hub";
}

bool IsPlausibleRepoPart(absl::string_view part) {
  if (part.empty() || part == "." || part == "..") return false;
  for (char c : part) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.')) {
      return false;
    }
  }
  return true;
}

}  // namespace

absl::StatusOr<std::string> ReadTextFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read '", path, "'"));
  std::ostringstream contents;
  contents << in.rdbuf();
  if (in.bad()) return absl::DataLossError(absl::StrCat("error reading '", path, "'"));
  return contents.str();
}

absl::StatusOr<std::string> ResolveModelDirectory(absl::string_view reference) {
  if (reference.empty()) return absl::InvalidArgumentError("model reference is empty");
  if (IsDirectory(fs::path(std::string(reference)))) return std::string(reference);

  absl::string_view repo = reference;
  std::string revision = "main";
  if (const size_t at = reference.rfind('@'); at != absl::string_view::npos) {
    repo = reference.substr(0, at);
    revision = std::string(reference.substr(at + 1));
  }
  const std::vector<absl::string_view> parts = absl::StrSplit(repo, '/');
  bool valid_repo = parts.size() <= 2 && IsPlausibleRepoPart(revision);
  for (absl::string_view part : parts) valid_repo = valid_repo && IsPlausibleRepoPart(part);
  if (!valid_repo) {
    return absl::NotFoundError(
        absl::StrCat("model '", reference, "' is neither a directory nor a Hugging Face repo id"));
  }
  const fs::path cache = HubCacheDirectory();
  const fs::path repo_dir = cache / absl::StrCat("models--", absl::StrJoin(parts, "--"));
  const fs::path snapshots = repo_dir / "snapshots";
  std::string commit = revision;
  if (absl::StatusOr<std::string> ref = ReadTextFile((repo_dir / "refs" / revision).string());
      ref.ok()) {
    commit = std::string(absl::StripAsciiWhitespace(*ref));
  }
  if (IsDirectory(snapshots / commit)) return (snapshots / commit).string();
  if (revision == "main" && IsDirectory(snapshots)) {
    std::vector<fs::path> found;
    std::error_code ec;
    for (const auto& entry : fs::directory_iterator(snapshots, ec)) {
      if (entry.is_directory(ec)) found.push_back(entry.path());
    }
    if (found.size() == 1) return found[0].string();
  }
  return absl::NotFoundError(absl::StrCat("model '", reference,
                                          "' is not a directory and was not found in the Hugging "
                                          "Face cache (looked for ",
                                          (snapshots / commit).string(), ")"));
}

absl::StatusOr<Checkpoint> Checkpoint::Open(const std::string& directory) {
  Checkpoint checkpoint;
  checkpoint.directory_ = directory;
  const fs::path dir(directory);
  std::map<std::string, std::string> expected;  // tensor -> shard, for sharded checkpoints
  std::vector<std::string> shard_names;
  if (fs::exists(dir / "model.safetensors.index.json")) {
    FACTLENS_ASSIGN_OR_RETURN(const std::string index_text,
                              ReadTextFile((dir / "model.safetensors.index.json").string()));
    absl::StatusOr<std::map<std::string, std::string>> index = ParseSafetensorsIndex(index_text);
    if (!index.ok()) {
      return absl::DataLossError(
          absl::StrCat(directory, "/model.safetensors.index.json: ", index.status().message()));
    }
    expected = *std::move(index);
    std::set<std::string> unique;
    for (const auto& [name, shard] : expected) unique.insert(shard);
    shard_names.assign(unique.begin(), unique.end());
  } else if (fs::exists(dir / "model.safetensors")) {
    shard_names.push_back("model.safetensors");
  } else {
    return absl::NotFoundError(
        absl::StrCat("no model.safetensors or model.safetensors.index.json in '", directory,
                     "' (only safetensors checkpoints are supported)"));
  }
  for (const std::string& shard : shard_names) {
    const std::string path = (dir / shard).string();
    FACTLENS_ASSIGN_OR_RETURN(std::shared_ptr<const MappedFile> file, MappedFile::Open(path));
    absl::StatusOr<SafetensorsHeader> header = ParseSafetensorsHeader(file->contents());
    if (!header.ok()) {
      return absl::Status(header.status().code(),
                          absl::StrCat(path, ": ", header.status().message()));
    }
    for (auto& [name, info] : header->tensors) {
      if (!expected.empty()) {
        const auto it = expected.find(name);
        if (it == expected.end() || it->second != shard) continue;  // the index decides
      }
      const auto [_, inserted] = checkpoint.tensors_.emplace(
          name, TensorLocation{file, std::move(info), header->data_offset});
      if (!inserted) {
        return absl::DataLossError(
            absl::StrCat("tensor '", name, "' appears twice in ", directory));
      }
    }
    checkpoint.files_.push_back(std::move(file));
  }
  for (const auto& [name, shard] : expected) {
    if (checkpoint.tensors_.count(name) == 0) {
      return absl::DataLossError(
          absl::StrCat("the index maps '", name, "' to ", shard, ", which does not hold it"));
    }
  }
  return checkpoint;
}

absl::StatusOr<TensorLocation> Checkpoint::Find(absl::string_view name) const {
  const auto it = tensors_.find(std::string(name));
  if (it == tensors_.end()) {
    return absl::NotFoundError(absl::StrCat("tensor '", name, "' is missing from ", directory_));
  }
  return it->second;
}

uint64_t Checkpoint::mapped_bytes() const {
  uint64_t total = 0;
  for (const auto& file : files_) total += file->contents().size();
  return total;
}

}  // namespace factlens
