#include "server/model_registry.h"

#include <chrono>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "analysis/status_macros.h"

namespace factlens {

absl::StatusOr<ModelSpec> ParseModelSpec(const std::string& text) {
  const auto bad = [&](const std::string& why) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--model '", text, "': ", why,
        " (expected "
        "NAME=DIR_OR_REPO_ID[,device=cpu|cuda[:N]][,dtype=float32|float64|float16|bfloat16])"));
  };
  const size_t eq = text.find('=');
  if (eq == std::string::npos || eq == 0) return bad("missing NAME=");
  ModelSpec spec;
  spec.name = text.substr(0, eq);
  std::vector<std::string> parts = absl::StrSplit(text.substr(eq + 1), ',');
  spec.source = parts[0];
  if (spec.source.empty()) return bad("empty source");
  for (size_t i = 1; i < parts.size(); ++i) {
    const size_t e = parts[i].find('=');
    const std::string key = parts[i].substr(0, e),
                      value = e == std::string::npos ? "" : parts[i].substr(e + 1);
    if (key == "device") {
      spec.load.device = value;
    } else if (key == "dtype") {
      absl::StatusOr<c10::ScalarType> dtype = ParseComputeDType(value);
      if (!dtype.ok()) return bad(std::string(dtype.status().message()));
      spec.load.dtype = *dtype;
    } else {
      return bad(absl::StrCat("unknown option '", key, "'"));
    }
  }
  return spec;
}

absl::StatusOr<LoadedModel> LoadModelFromDisk(const ModelSpec& spec) {
  LoadedModel loaded;
  FACTLENS_ASSIGN_OR_RETURN(loaded.model, Model::Load(spec.source, spec.load));
  FACTLENS_ASSIGN_OR_RETURN(loaded.tokenizer,
                            Tokenizer::FromModelDirectory(loaded.model->directory()));
  return loaded;
}

ModelRegistry::ModelRegistry(std::vector<ModelSpec> specs, ServingLimits limits, ModelLoader loader)
    : specs_(std::move(specs)), limits_(limits), load_(std::move(loader)) {}

ModelRegistry::~ModelRegistry() {
  if (loader_.joinable()) loader_.join();
}

void ModelRegistry::StartLoading() {
  loader_ = std::thread([this] { LoadAll(); });
}

void ModelRegistry::LoadAll() {
  for (const ModelSpec& spec : specs_) {
    const auto start = std::chrono::steady_clock::now();
    absl::StatusOr<LoadedModel> loaded = load_(spec);
    absl::MutexLock lock(&mu_);
    if (!loaded.ok()) {
      const absl::Status& status = loaded.status();
      failed_[spec.name] =
          absl::Status(status.code(), absl::StrCat("model '", spec.name, "': ", status.message()));
      continue;
    }
    auto served = std::make_shared<ServedModel>(limits_);
    served->name = spec.name;
    served->source = spec.source;
    served->model = std::move(loaded->model);
    served->tokenizer = std::move(loaded->tokenizer);
    served->load_seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    loaded_[spec.name] = std::move(served);
  }
  absl::MutexLock lock(&mu_);
  done_ = true;
}

absl::Status ModelRegistry::WaitUntilLoaded() {
  absl::MutexLock lock(&mu_);
  mu_.Await(absl::Condition(&done_));
  return failed_.empty() ? absl::OkStatus() : failed_.begin()->second;
}

bool ModelRegistry::ready() const {
  absl::MutexLock lock(&mu_);
  return done_ && failed_.empty();
}

absl::StatusOr<std::shared_ptr<const ServedModel>> ModelRegistry::Get(
    const std::string& requested) const {
  // An empty name means the only model, when there is exactly one.
  const std::string& name = requested.empty() && specs_.size() == 1 ? specs_[0].name : requested;
  absl::MutexLock lock(&mu_);
  if (const auto it = loaded_.find(name); it != loaded_.end()) return it->second;
  if (const auto it = failed_.find(name); it != failed_.end()) {
    return absl::FailedPreconditionError(absl::StrCat("model '", name, "' failed to load"));
  }
  for (const ModelSpec& spec : specs_) {
    if (spec.name == name)
      return absl::UnavailableError(absl::StrCat("model '", name, "' is still loading"));
  }
  std::string names;
  for (const ModelSpec& spec : specs_)
    absl::StrAppend(&names, names.empty() ? "" : ", ", spec.name);
  return absl::NotFoundError(
      absl::StrCat("model: '", name, "' is not served (served: ", names, ")"));
}

std::shared_ptr<const ServedModel> ModelRegistry::Loaded(const std::string& name) const {
  absl::MutexLock lock(&mu_);
  const auto it = loaded_.find(name);
  return it == loaded_.end() ? nullptr : it->second;
}

}  // namespace factlens
