#include "analysis/fairseq_model.h"

#include <ATen/ATen.h>
#include <sys/stat.h>

#include <cmath>
#include <cstring>
#include <map>
#include <optional>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "analysis/device.h"
#include "analysis/model_files.h"
#include "analysis/status_macros.h"
#include "analysis/torch_checkpoint.h"

namespace factlens {
namespace {

bool FileExists(const std::string& path) {
  struct stat info;
  return stat(path.c_str(), &info) == 0 && S_ISREG(info.st_mode);
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

std::optional<c10::ScalarType> FloatingScalarType(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return c10::ScalarType::Float;
    case DType::kF16:
      return c10::ScalarType::Half;
    case DType::kBF16:
      return c10::ScalarType::BFloat16;
    case DType::kF64:
      return c10::ScalarType::Double;
    default:
      return std::nullopt;
  }
}

// The model's hyper-parameters: `args` (an argparse Namespace) or `cfg.model` (an omegaconf
// DictConfig, whose state maps keys through `_content` to nodes holding `_val`).
class Hyperparameters {
 public:
  explicit Hyperparameters(const PickleValue* config) : config_(config) {}

  const PickleValue* Find(absl::string_view key) const {
    if (config_ == nullptr) return nullptr;
    const PickleValue* value = config_->Get(key);
    if (value == nullptr) {
      if (const PickleValue* content = config_->Get("_content")) value = content->Get(key);
    }
    for (int depth = 0; value != nullptr && depth < 4; ++depth) {
      const PickleValue* inner =
          value->kind == PickleValue::Kind::kObject ? value->Get("_val") : nullptr;
      if (inner == nullptr) break;
      value = inner;
    }
    if (value != nullptr && value->kind == PickleValue::Kind::kNone) return nullptr;
    return value;
  }

  std::optional<int64_t> Int(absl::string_view key) const {
    const PickleValue* v = Find(key);
    if (v != nullptr && v->kind == PickleValue::Kind::kInt) return v->integer;
    return std::nullopt;
  }
  std::optional<bool> Bool(absl::string_view key) const {
    const PickleValue* v = Find(key);
    if (v != nullptr && v->kind == PickleValue::Kind::kBool) return v->boolean;
    if (v != nullptr && v->kind == PickleValue::Kind::kInt) return v->integer != 0;
    return std::nullopt;
  }
  std::optional<std::string> String(absl::string_view key) const {
    const PickleValue* v = Find(key);
    if (v != nullptr && v->kind == PickleValue::Kind::kString) return v->string;
    return std::nullopt;
  }

 private:
  const PickleValue* config_;
};

// The state dict's tensors as stored (CPU, the stored dtype); Model::Load converts them. Each
// storage is read once, so tied parameters (stored once, referenced under several keys) stay
// views of one storage. An aligned storage is a zero-copy view of the mapped file (read-only
// pages); a misaligned one is copied.
class StateDict {
 public:
  StateDict(const TorchCheckpoint& checkpoint, const PickleValue& state,
            std::shared_ptr<const MappedFile> file, std::string path)
      : checkpoint_(checkpoint), file_(std::move(file)), path_(std::move(path)) {
    for (const auto& [key, value] : state.entries) {
      if (key->kind == PickleValue::Kind::kString && value->kind == PickleValue::Kind::kTensor) {
        refs_[key->string] = &value->tensor;
      }
    }
  }

  bool Contains(const std::string& name) const { return refs_.count(name) > 0; }

  // The shape of `name`, empty when absent.
  std::vector<int64_t> Shape(const std::string& name) const {
    const auto it = refs_.find(name);
    return it == refs_.end() ? std::vector<int64_t>() : it->second->shape;
  }

  // The floating dtype most of the weights' bytes use.
  c10::ScalarType MainDType() const {
    std::map<c10::ScalarType, int64_t> bytes;
    for (const auto& [name, ref] : refs_) {
      if (const auto type = FloatingScalarType(ref->dtype)) {
        int64_t numel = 1;
        for (int64_t dim : ref->shape) numel *= dim;
        bytes[*type] += numel * static_cast<int64_t>(DTypeSize(ref->dtype));
      }
    }
    c10::ScalarType best = c10::ScalarType::Float;
    int64_t most = -1;
    for (const auto& [type, count] : bytes) {
      if (count > most) best = type, most = count;
    }
    return best;
  }

  // The tensor `name`, which must exist, be floating and have `shape`.
  absl::StatusOr<at::Tensor> Get(const std::string& name, const std::vector<int64_t>& shape) {
    const auto it = refs_.find(name);
    if (it == refs_.end()) {
      return absl::DataLossError(absl::StrCat(path_, " has no tensor '", name, "'"));
    }
    const PickleValue::TensorRef& ref = *it->second;
    if (ref.shape != shape) {
      return absl::DataLossError(absl::StrCat("tensor '", name, "' in ", path_, " has shape ",
                                              ShapeString(ref.shape), ", expected ",
                                              ShapeString(shape)));
    }
    if (!FloatingScalarType(ref.dtype)) {
      return absl::DataLossError(absl::StrCat("tensor '", name, "' in ", path_, " has dtype ",
                                              DTypeName(ref.dtype), "; weights must be floating"));
    }
    FACTLENS_ASSIGN_OR_RETURN(const at::Tensor storage, Storage(ref));
    return storage.as_strided(ref.shape, ref.stride, ref.storage_offset);
  }

  // The first of `names` that exists (for renamed keys), else DataLoss naming them all.
  absl::StatusOr<std::string> FirstPresent(const std::vector<std::string>& names) const {
    for (const std::string& name : names) {
      if (Contains(name)) return name;
    }
    return absl::DataLossError(
        absl::StrCat(path_, " has none of the tensors ", absl::StrJoin(names, ", ")));
  }

 private:
  absl::StatusOr<at::Tensor> Storage(const PickleValue::TensorRef& ref) {
    const auto cached = storages_.find(ref.storage_key);
    if (cached != storages_.end()) return cached->second;
    const auto found = checkpoint_.storages.find(ref.storage_key);
    if (found == checkpoint_.storages.end()) {
      return absl::DataLossError(
          absl::StrCat(path_, ": storage '", ref.storage_key, "' is referenced but absent"));
    }
    const TorchStorage& storage = found->second;
    const auto options = at::TensorOptions().dtype(*FloatingScalarType(storage.dtype));
    const char* bytes = file_->contents().data() + storage.begin;
    at::Tensor raw;
    if (reinterpret_cast<uintptr_t>(bytes) % DTypeSize(storage.dtype) == 0) {
      std::shared_ptr<const MappedFile> keep = file_;
      raw = at::from_blob(
          const_cast<char*>(bytes), {storage.numel}, [keep](void*) mutable { keep.reset(); },
          options);
    } else {
      raw = at::empty({storage.numel}, options);
      std::memcpy(raw.data_ptr(), bytes, storage.end - storage.begin);
    }
    storages_[ref.storage_key] = raw;
    return raw;
  }

  const TorchCheckpoint& checkpoint_;
  std::shared_ptr<const MappedFile> file_;
  std::string path_;
  std::map<std::string, const PickleValue::TensorRef*> refs_;
  std::map<std::string, at::Tensor> storages_;
};

absl::StatusOr<Activation> ParseActivation(const std::string& name) {
  if (name == "relu") return Activation::kRelu;
  if (name == "gelu") return Activation::kGeluExact;
  if (name == "gelu_accurate") return Activation::kGeluTanh;
  if (name == "swish" || name == "silu") return Activation::kSilu;
  return absl::UnimplementedError(absl::StrCat("fairseq activation_fn '", name,
                                               "' is not supported (relu, gelu, "
                                               "gelu_accurate, swish are)"));
}

// Words in dict.txt (one per non-empty line) plus fairseq's 4 special symbols.
absl::StatusOr<int64_t> DictionarySize(const std::string& path) {
  FACTLENS_ASSIGN_OR_RETURN(const std::string text, ReadTextFile(path));
  int64_t words = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (!line.empty()) ++words;
  }
  return words + 4;
}

// Bands of the adaptive input: embeddings.<b>.0.weight [n_b, d_b], embeddings.<b>.1.weight
// [d, d_b]; or a plain embed_tokens.weight [V, d] (token_embedding).
absl::Status LoadInputEmbedding(StateDict& state, int64_t d, ModelWeights& w) {
  const std::string plain = "decoder.embed_tokens.weight";
  if (state.Contains(plain)) {
    FACTLENS_ASSIGN_OR_RETURN(w.token_embedding, state.Get(plain, state.Shape(plain)));
    return absl::OkStatus();
  }
  int64_t start = 0;
  for (int64_t b = 0;; ++b) {
    const std::string prefix = absl::StrCat("decoder.embed_tokens.embeddings.", b, ".");
    if (!state.Contains(prefix + "0.weight")) break;
    const std::vector<int64_t> shape = state.Shape(prefix + "0.weight");
    if (shape.size() != 2) return absl::DataLossError(prefix + "0.weight must be a matrix");
    AdaptiveInputBand& band = w.input_bands.emplace_back();
    band.start = start;
    FACTLENS_ASSIGN_OR_RETURN(band.embedding, state.Get(prefix + "0.weight", shape));
    FACTLENS_ASSIGN_OR_RETURN(band.projection, state.Get(prefix + "1.weight", {d, shape[1]}));
    start += shape[0];
  }
  if (w.input_bands.empty()) {
    return absl::DataLossError(
        "the checkpoint has neither decoder.embed_tokens.weight nor adaptive input bands "
        "(decoder.embed_tokens.embeddings.0.0.weight)");
  }
  return absl::OkStatus();
}

// The adaptive softmax (tied or not) or a single output projection.
absl::Status LoadOutputLayer(StateDict& state, const Hyperparameters& args, int64_t d,
                             ModelWeights& w) {
  const std::string p = "decoder.adaptive_softmax.";
  if (!state.Contains(p + "head.word_proj.weight") && !state.Contains(p + "head.weight")) {
    FACTLENS_ASSIGN_OR_RETURN(
        const std::string name,
        state.FirstPresent({"decoder.output_projection.weight", "decoder.embed_out",
                            "decoder.embed_tokens.weight"}));
    FACTLENS_ASSIGN_OR_RETURN(w.unembedding, state.Get(name, state.Shape(name)));
    return absl::OkStatus();
  }
  // Tail bands: tail.<b-1>.0.weight (projection) and tail.<b-1>.2.weight [n_b, d_b].
  std::vector<std::vector<int64_t>> tail_shapes;
  for (int64_t b = 0; state.Contains(absl::StrCat(p, "tail.", b, ".2.weight")); ++b) {
    tail_shapes.push_back(state.Shape(absl::StrCat(p, "tail.", b, ".2.weight")));
  }
  const int64_t clusters = static_cast<int64_t>(tail_shapes.size());
  at::Tensor words;
  if (state.Contains(p + "head.word_proj.weight")) {  // tied head: word_proj + class_proj
    const std::vector<int64_t> shape = state.Shape(p + "head.word_proj.weight");
    if (shape.size() != 2 || shape[1] != d) {
      return absl::UnimplementedError(
          absl::StrCat("the adaptive softmax head's words have shape ", ShapeString(shape),
                       "; only a head of dimension d = ", d, " (no head projection) is supported"));
    }
    FACTLENS_ASSIGN_OR_RETURN(words, state.Get(p + "head.word_proj.weight", shape));
    FACTLENS_ASSIGN_OR_RETURN(w.cluster_weight,
                              state.Get(p + "head.class_proj.weight", {clusters, d}));
  } else {  // untied head: one Linear whose last rows are the cluster logits
    const std::vector<int64_t> shape = state.Shape(p + "head.weight");
    if (shape.size() != 2 || shape[1] != d || shape[0] <= clusters) {
      return absl::DataLossError(absl::StrCat(p, "head.weight has shape ", ShapeString(shape)));
    }
    FACTLENS_ASSIGN_OR_RETURN(const at::Tensor head, state.Get(p + "head.weight", shape));
    words = head.narrow(0, 0, shape[0] - clusters);
    w.cluster_weight = head.narrow(0, shape[0] - clusters, clusters);
  }
  w.output_bands.push_back({0, at::Tensor(), words});
  // A tied projection is the input band's P_b [d, d_b], used transposed; an untied one is an
  // nn.Linear(d, d_b) weight [d_b, d]. Square shapes are told apart by the args.
  const bool tie_proj =
      args.Bool("tie_adaptive_proj").value_or(!args.Bool("no_tie_adaptive_proj").value_or(false));
  int64_t start = words.size(0);
  for (int64_t b = 0; b < clusters; ++b) {
    const std::vector<int64_t>& shape = tail_shapes[b];
    if (shape.size() != 2) return absl::DataLossError(absl::StrCat(p, "tail.", b, " is not 2-D"));
    const int64_t dim = shape[1];
    const std::string proj = absl::StrCat(p, "tail.", b, ".0.weight");
    const std::vector<int64_t> proj_shape = state.Shape(proj);
    const bool tied = proj_shape == std::vector<int64_t>{d, dim} && (dim != d || tie_proj);
    AdaptiveSoftmaxBand band;
    band.start = start;
    FACTLENS_ASSIGN_OR_RETURN(band.embedding,
                              state.Get(absl::StrCat(p, "tail.", b, ".2.weight"), shape));
    if (tied) {
      FACTLENS_ASSIGN_OR_RETURN(const at::Tensor projection, state.Get(proj, {d, dim}));
      band.projection = projection.t();
    } else {
      FACTLENS_ASSIGN_OR_RETURN(band.projection, state.Get(proj, {dim, d}));
    }
    start += shape[0];
    w.output_bands.push_back(std::move(band));
  }
  return absl::OkStatus();
}

absl::Status LoadLayer(StateDict& state, const ModelConfig& c, int64_t l, LayerWeights& layer) {
  const int64_t d = c.d_model, n = c.d_ffn;
  const std::string h = absl::StrCat("decoder.layers.", l, ".");
  const std::string a = h + "self_attn.";
  if (state.Contains(h + "encoder_attn.out_proj.weight")) {
    return absl::UnimplementedError(
        "the checkpoint's decoder layers have encoder attention: not a language model");
  }
  if (state.Contains(a + "in_proj_weight")) {  // before fairseq 0.9: rows [q; k; v]
    FACTLENS_ASSIGN_OR_RETURN(const at::Tensor weight, state.Get(a + "in_proj_weight", {3 * d, d}));
    FACTLENS_ASSIGN_OR_RETURN(const at::Tensor bias, state.Get(a + "in_proj_bias", {3 * d}));
    layer.q_weight = weight.narrow(0, 0, d);
    layer.k_weight = weight.narrow(0, d, d);
    layer.v_weight = weight.narrow(0, 2 * d, d);
    layer.q_bias = bias.narrow(0, 0, d);
    layer.k_bias = bias.narrow(0, d, d);
    layer.v_bias = bias.narrow(0, 2 * d, d);
  } else {
    FACTLENS_ASSIGN_OR_RETURN(layer.q_weight, state.Get(a + "q_proj.weight", {d, d}));
    FACTLENS_ASSIGN_OR_RETURN(layer.k_weight, state.Get(a + "k_proj.weight", {d, d}));
    FACTLENS_ASSIGN_OR_RETURN(layer.v_weight, state.Get(a + "v_proj.weight", {d, d}));
    FACTLENS_ASSIGN_OR_RETURN(layer.q_bias, state.Get(a + "q_proj.bias", {d}));
    FACTLENS_ASSIGN_OR_RETURN(layer.k_bias, state.Get(a + "k_proj.bias", {d}));
    FACTLENS_ASSIGN_OR_RETURN(layer.v_bias, state.Get(a + "v_proj.bias", {d}));
  }
  FACTLENS_ASSIGN_OR_RETURN(layer.o_weight, state.Get(a + "out_proj.weight", {d, d}));
  FACTLENS_ASSIGN_OR_RETURN(layer.o_bias, state.Get(a + "out_proj.bias", {d}));
  // fairseq's upgrade maps layer_norms.0 → self_attn_layer_norm, .2 → final_layer_norm (the
  // pre-FFN norm, despite its name).
  FACTLENS_ASSIGN_OR_RETURN(
      const std::string attn_norm,
      state.FirstPresent({h + "self_attn_layer_norm.weight", h + "layer_norms.0.weight"}));
  FACTLENS_ASSIGN_OR_RETURN(
      const std::string ffn_norm,
      state.FirstPresent({h + "final_layer_norm.weight", h + "layer_norms.2.weight"}));
  const auto bias_of = [](const std::string& weight) {
    return weight.substr(0, weight.size() - std::string("weight").size()) + "bias";
  };
  FACTLENS_ASSIGN_OR_RETURN(layer.attn_norm_weight, state.Get(attn_norm, {d}));
  FACTLENS_ASSIGN_OR_RETURN(layer.attn_norm_bias, state.Get(bias_of(attn_norm), {d}));
  FACTLENS_ASSIGN_OR_RETURN(layer.ffn_norm_weight, state.Get(ffn_norm, {d}));
  FACTLENS_ASSIGN_OR_RETURN(layer.ffn_norm_bias, state.Get(bias_of(ffn_norm), {d}));
  FACTLENS_ASSIGN_OR_RETURN(layer.in_weight, state.Get(h + "fc1.weight", {n, d}));
  FACTLENS_ASSIGN_OR_RETURN(layer.in_bias, state.Get(h + "fc1.bias", {n}));
  FACTLENS_ASSIGN_OR_RETURN(layer.out_weight, state.Get(h + "fc2.weight", {d, n}));
  FACTLENS_ASSIGN_OR_RETURN(layer.out_bias, state.Get(h + "fc2.bias", {d}));
  return absl::OkStatus();
}

}  // namespace

bool IsFairseqModelDirectory(const std::string& directory) {
  return FileExists(directory + "/model.pt") && !FileExists(directory + "/config.json");
}

absl::StatusOr<StoredModel> ReadFairseqModel(const std::string& directory,
                                             const LoadOptions& options) {
  const std::string path = directory + "/model.pt";
  FACTLENS_ASSIGN_OR_RETURN(const c10::Device device, ParseDevice(options.device));
  FACTLENS_ASSIGN_OR_RETURN(const std::shared_ptr<const MappedFile> file, MappedFile::Open(path));
  absl::StatusOr<TorchCheckpoint> checkpoint = ParseTorchCheckpoint(file->contents());
  if (!checkpoint.ok()) {
    return absl::Status(checkpoint.status().code(),
                        absl::StrCat(path, ": ", checkpoint.status().message()));
  }
  const PickleValue* root = checkpoint->root.get();
  const PickleValue* state_value = root->Get("model");
  if (state_value == nullptr || state_value->kind != PickleValue::Kind::kDict) {
    return absl::DataLossError(absl::StrCat(path, " has no 'model' state dict"));
  }
  const PickleValue* config = root->Get("args");
  if (config == nullptr || config->kind == PickleValue::Kind::kNone) {
    const PickleValue* cfg = root->Get("cfg");
    config = cfg != nullptr ? Hyperparameters(cfg).Find("model") : nullptr;
  }
  if (config == nullptr) {
    return absl::DataLossError(absl::StrCat(path, " has neither 'args' nor 'cfg.model'"));
  }
  const Hyperparameters args(config);
  StateDict state(*checkpoint, *state_value, file, path);

  ModelConfig c;
  c.family = ModelFamily::kFairseqLm;
  c.architecture = FamilyArchitecture(c.family);
  if (args.Bool("decoder_learned_pos").value_or(false) ||
      args.Bool("no_token_positional_embeddings").value_or(false)) {
    return absl::UnimplementedError(
        absl::StrCat(path,
                     ": only sinusoidal positions are supported (decoder_learned_pos and "
                     "no_token_positional_embeddings must be false)"));
  }
  // Shapes: d from fc1 (every layer has it), layers by counting.
  const std::vector<int64_t> fc1 = state.Shape("decoder.layers.0.fc1.weight");
  if (fc1.size() != 2) {
    return absl::DataLossError(absl::StrCat(path, " has no decoder.layers.0.fc1.weight matrix"));
  }
  c.d_ffn = fc1[0];
  c.d_model = fc1[1];
  while (state.Contains(absl::StrCat("decoder.layers.", c.n_layers, ".fc1.weight"))) ++c.n_layers;
  const std::optional<int64_t> heads = args.Int("decoder_attention_heads");
  if (!heads || *heads < 1 || c.d_model % *heads != 0) {
    return absl::DataLossError(
        absl::StrCat(path, ": the args must give decoder_attention_heads dividing d = ", c.d_model,
                     " (the weights cannot tell the head count)"));
  }
  c.n_heads = c.n_kv_heads = *heads;
  c.head_dim = c.d_model / c.n_heads;
  FACTLENS_ASSIGN_OR_RETURN(c.activation,
                            ParseActivation(args.String("activation_fn").value_or("relu")));
  c.max_positions =
      args.Int("max_target_positions").value_or(args.Int("tokens_per_sample").value_or(3072));
  c.norm_eps = 1e-5;  // torch LayerNorm's default, which fairseq uses
  c.tie_word_embeddings = args.Bool("tie_adaptive_weights").value_or(true);
  c.architecture.final_norm = state.Contains("decoder.layer_norm.weight");
  c.architecture.embedding_scale =
      args.Bool("no_scale_embedding").value_or(false) ? 1.0 : std::sqrt(double(c.d_model));

  c.torch_dtype = state.MainDType() == c10::ScalarType::Half ? "float16" : "float32";
  FACTLENS_ASSIGN_OR_RETURN(const Precision precision,
                            ChoosePrecision(options.dtype, device, state.MainDType()));
  ModelWeights w;
  try {
    FACTLENS_RETURN_IF_ERROR(LoadInputEmbedding(state, c.d_model, w));
    for (int64_t l = 0; l < c.n_layers; ++l) {
      FACTLENS_RETURN_IF_ERROR(LoadLayer(state, c, l, w.layers.emplace_back()));
    }
    if (c.architecture.final_norm) {
      FACTLENS_ASSIGN_OR_RETURN(w.final_norm_weight,
                                state.Get("decoder.layer_norm.weight", {c.d_model}));
      FACTLENS_ASSIGN_OR_RETURN(w.final_norm_bias,
                                state.Get("decoder.layer_norm.bias", {c.d_model}));
    }
    FACTLENS_RETURN_IF_ERROR(LoadOutputLayer(state, args, c.d_model, w));
  } catch (const std::exception& e) {
    return StatusFromException(e, absl::StrCat("loading ", directory), device, FailedWork::kLoad);
  }
  c.vocab_size = 0;
  for (const AdaptiveSoftmaxBand& band : w.output_bands) c.vocab_size += band.embedding.size(0);
  if (w.output_bands.empty()) c.vocab_size = w.unembedding.size(0);
  const int64_t input_vocab =
      w.input_bands.empty() ? w.token_embedding.size(0)
                            : w.input_bands.back().start + w.input_bands.back().embedding.size(0);
  if (input_vocab != c.vocab_size) {
    return absl::DataLossError(absl::StrCat(path, ": the input embedding covers ", input_vocab,
                                            " tokens but the output layer ", c.vocab_size));
  }
  FACTLENS_ASSIGN_OR_RETURN(const int64_t dictionary, DictionarySize(directory + "/dict.txt"));
  if (dictionary != c.vocab_size) {
    return absl::DataLossError(absl::StrCat(
        directory, "/dict.txt has ", dictionary - 4, " words (+ 4 special symbols = ", dictionary,
        ") but the checkpoint's vocabulary has ", c.vocab_size, " tokens"));
  }
  StoredModel stored;
  stored.config = std::move(c);
  stored.weights = std::move(w);
  stored.device = device;
  stored.precision = precision;
  stored.checkpoint_dtype = state.MainDType();
  stored.directory = directory;
  return stored;
}

}  // namespace factlens
