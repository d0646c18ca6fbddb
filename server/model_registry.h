// The models a server keeps resident: loaded once (in the background, before readiness), shared
// read-only by every request, freed only when the last request holding one ends.
#ifndef FACTLENS_SERVER_MODEL_REGISTRY_H_
#define FACTLENS_SERVER_MODEL_REGISTRY_H_

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "analysis/tokenizer/tokenizer.h"
#include "analysis/weights.h"
#include "server/request_queue.h"
#include "server/trace_cache.h"

namespace factlens {

// One model as given on the command line: --model
// NAME=DIR_OR_REPO_ID[,device=cuda:0][,dtype=bfloat16].
struct ModelSpec {
  std::string name;
  std::string source;
  LoadOptions load;
};

// Parses "NAME=SOURCE[,device=D][,dtype=T]". InvalidArgument describing the expected form.
absl::StatusOr<ModelSpec> ParseModelSpec(const std::string& text);

// Per model: admission limits and the forward-trace cache budget.
struct ServingLimits {
  int max_concurrent = 2;
  int max_queued = 16;
  int64_t trace_cache_bytes = int64_t{256} << 20;  // 0: no cache
};

// A resident model with its tokenizer, admission queue and trace cache. Immutable except for the
// queue and the cache (both thread-safe).
struct ServedModel {
  std::string name;
  std::string source;
  std::shared_ptr<const Model> model;
  std::unique_ptr<Tokenizer> tokenizer;
  double load_seconds = 0;
  mutable RequestQueue queue;
  mutable TraceCache traces;
  explicit ServedModel(const ServingLimits& limits)
      : queue(limits.max_concurrent, limits.max_queued), traces(limits.trace_cache_bytes) {}
};

// What loading one model produces.
struct LoadedModel {
  std::shared_ptr<const Model> model;
  std::unique_ptr<Tokenizer> tokenizer;
};
// Loads the model of a spec; called from the registry's loading thread. Errors are reported by
// ModelRegistry::Get as FailedPrecondition and by WaitUntilLoaded as they are.
using ModelLoader = std::function<absl::StatusOr<LoadedModel>(const ModelSpec&)>;

// The production loader: Model::Load(spec.source, spec.load) and the tokenizer of its directory.
absl::StatusOr<LoadedModel> LoadModelFromDisk(const ModelSpec& spec);

// Thread-safe.
class ModelRegistry {
 public:
  ModelRegistry(std::vector<ModelSpec> specs, ServingLimits limits,
                ModelLoader loader = LoadModelFromDisk);
  ~ModelRegistry();

  // Loads every model in a background thread, in order. Call once.
  void StartLoading();
  // Blocks until loading has finished; the first load error, if any.
  absl::Status WaitUntilLoaded();
  // True once every model loaded successfully.
  bool ready() const;

  // The model `name` (empty = the only model, if exactly one is served). NotFound for a name not
  // served; Unavailable while it is loading; FailedPrecondition if its load failed.
  absl::StatusOr<std::shared_ptr<const ServedModel>> Get(const std::string& name) const;
  // The names served, in command-line order, and what is loaded so far.
  const std::vector<ModelSpec>& specs() const { return specs_; }
  std::shared_ptr<const ServedModel> Loaded(const std::string& name) const;

 private:
  void LoadAll();
  const std::vector<ModelSpec> specs_;
  const ServingLimits limits_;
  const ModelLoader load_;
  std::thread loader_;
  mutable absl::Mutex mu_;
  std::map<std::string, std::shared_ptr<const ServedModel>> loaded_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, absl::Status> failed_ ABSL_GUARDED_BY(mu_);
  bool done_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace factlens

#endif  // FACTLENS_SERVER_MODEL_REGISTRY_H_
