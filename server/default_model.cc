#include "server/default_model.h"

#include <filesystem>
#include <system_error>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace factlens {

std::vector<std::string> DefaultModelCandidates() {
  std::error_code error;
  const std::filesystem::path exe = std::filesystem::read_symlink("/proc/self/exe", error);
  if (error || exe.empty()) return {};
  // <prefix>/bin/factlens_server -> <prefix>/share/factlens/models/gpt2-facts-tiny
  const std::filesystem::path prefix = exe.parent_path().parent_path();
  return {(prefix / "share" / "factlens" / "models" / kDefaultModelName).string()};
}

absl::StatusOr<std::string> DefaultModelDirectory() {
  const std::vector<std::string> candidates = DefaultModelCandidates();
  for (const std::string& candidate : candidates) {
    std::error_code error;
    if (std::filesystem::is_regular_file(std::filesystem::path(candidate) / "config.json", error))
      return candidate;
  }
  return absl::NotFoundError(absl::StrCat(
      "no default model: the demo model ", kDefaultModelName, " is not at ",
      candidates.empty() ? "(the executable's path could not be read from /proc/self/exe)"
                         : absl::StrJoin(candidates, " or "),
      " (installed with the binary by cmake --install, or linked into the build tree by cmake); "
      "pass --model"));
}

std::string DefaultModelDirectoryOrEmpty() {
  absl::StatusOr<std::string> directory = DefaultModelDirectory();
  return directory.ok() ? *directory : std::string();
}

absl::StatusOr<std::string> ModelOrDefault(const std::string& model) {
  if (!model.empty()) return model;
  return DefaultModelDirectory();
}

}  // namespace factlens
