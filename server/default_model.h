// Where the binaries find the demo model when no --model is given: relative to the executable
// (/proc/self/exe), never a path compiled in. An installed binary (cmake --install, the Docker
// image) finds <prefix>/share/factlens/models/gpt2-facts-tiny next to <prefix>/bin; a build tree
// has the same layout (<build>/share/factlens/models links to the source tree's models/, made at
// configure time), so build/server/factlens_server and build/tools/* find it too.
#ifndef FACTLENS_SERVER_DEFAULT_MODEL_H_
#define FACTLENS_SERVER_DEFAULT_MODEL_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace factlens {

// The demo model's name, as the server serves it by default.
inline constexpr char kDefaultModelName[] = "gpt2-facts-tiny";

// The directories searched for the demo model, in order.
std::vector<std::string> DefaultModelCandidates();

// The first candidate that holds a model (config.json), or NotFound naming every path tried and
// saying to pass --model.
absl::StatusOr<std::string> DefaultModelDirectory();

// DefaultModelDirectory(), or "" where there is none (for a flag's default value).
std::string DefaultModelDirectoryOrEmpty();

// `model` (a --model value) when it is not empty, else DefaultModelDirectory() with its error.
absl::StatusOr<std::string> ModelOrDefault(const std::string& model);

}  // namespace factlens

#endif  // FACTLENS_SERVER_DEFAULT_MODEL_H_
