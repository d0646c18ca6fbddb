#include "analysis/weights.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <set>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "analysis/device.h"
#include "analysis/fairseq_model.h"
#include "analysis/model_files.h"
#include "analysis/status_macros.h"
#include "analysis/tensor_io.h"

namespace factlens {

namespace {
constexpr std::pair<c10::ScalarType, std::string_view> kComputeDTypes[] = {
    {c10::ScalarType::Float, "float32"},
    {c10::ScalarType::Double, "float64"},
    {c10::ScalarType::Half, "float16"},
    {c10::ScalarType::BFloat16, "bfloat16"},
};
}  // namespace

absl::StatusOr<c10::ScalarType> ParseComputeDType(std::string_view name) {
  for (const auto& [dtype, dtype_name] : kComputeDTypes) {
    if (dtype_name == name) return dtype;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown dtype '", std::string(name), "' (expected float32, float64, float16 or bfloat16)"));
}

std::string_view ComputeDTypeName(c10::ScalarType dtype) {
  for (const auto& [d, name] : kComputeDTypes) {
    if (d == dtype) return name;
  }
  return "unknown";
}
namespace {

std::string ShapeString(at::IntArrayRef shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

bool IsFloating(DType dtype) {
  return dtype == DType::kF32 || dtype == DType::kF16 || dtype == DType::kBF16;
}

// Turns checkpoint entries into CPU tensors in their stored dtype, checking each shape: views of
// the mapped file where aligned (the usual case), copies otherwise. HoldWeights converts them.
class WeightReader {
 public:
  explicit WeightReader(const Checkpoint& checkpoint) : checkpoint_(checkpoint) {}

  // The tensor `name`, which must exist and have `shape`.
  absl::StatusOr<at::Tensor> Required(const std::string& name, std::vector<int64_t> shape) {
    absl::StatusOr<TensorLocation> found = checkpoint_.Find(name);
    if (!found.ok()) return absl::DataLossError(found.status().message());
    const TensorLocation& location = *found;
    if (location.info.shape != shape) {
      return absl::DataLossError(absl::StrCat("tensor '", name, "' in ", checkpoint_.directory(),
                                              " has shape ", ShapeString(location.info.shape),
                                              " but the config implies ", ShapeString(shape)));
    }
    if (!IsFloating(location.info.dtype)) {
      return absl::DataLossError(absl::StrCat("tensor '", name, "' has dtype ",
                                              DTypeName(location.info.dtype),
                                              "; weights must be F32, F16 or BF16"));
    }
    return TensorFromLocation(location);
  }

  // The tensor if `present`, else an undefined one; a present tensor must exist.
  absl::StatusOr<at::Tensor> If(bool present, const std::string& name, std::vector<int64_t> shape) {
    if (!present) return at::Tensor();
    return Required(name, std::move(shape));
  }

 private:
  const Checkpoint& checkpoint_;
};

absl::Status LoadGpt2(const ModelConfig& c, const Checkpoint& checkpoint, WeightReader& r,
                      ModelWeights& w) {
  // Hub checkpoints of gpt2 / gpt2-medium have no "transformer." prefix.
  const std::string p = checkpoint.Contains("transformer.wte.weight") ? "transformer." : "";
  const int64_t d = c.d_model, n = c.d_ffn;
  FACTLENS_ASSIGN_OR_RETURN(w.token_embedding, r.Required(p + "wte.weight", {c.vocab_size, d}));
  FACTLENS_ASSIGN_OR_RETURN(w.position_embedding,
                            r.Required(p + "wpe.weight", {c.max_positions, d}));
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const std::string h = absl::StrCat(p, "h.", l, ".");
    LayerWeights& layer = w.layers.emplace_back();
    FACTLENS_ASSIGN_OR_RETURN(layer.attn_norm_weight, r.Required(h + "ln_1.weight", {d}));
    FACTLENS_ASSIGN_OR_RETURN(layer.attn_norm_bias, r.Required(h + "ln_1.bias", {d}));
    // Conv1D stores [in, out]; c_attn's output is q | k | v.
    FACTLENS_ASSIGN_OR_RETURN(at::Tensor qkv_weight,
                              r.Required(h + "attn.c_attn.weight", {d, 3 * d}));
    FACTLENS_ASSIGN_OR_RETURN(at::Tensor qkv_bias, r.Required(h + "attn.c_attn.bias", {3 * d}));
    const at::Tensor qkv_t = qkv_weight.t();
    layer.q_weight = qkv_t.narrow(0, 0, d);
    layer.k_weight = qkv_t.narrow(0, d, d);
    layer.v_weight = qkv_t.narrow(0, 2 * d, d);
    layer.q_bias = qkv_bias.narrow(0, 0, d);
    layer.k_bias = qkv_bias.narrow(0, d, d);
    layer.v_bias = qkv_bias.narrow(0, 2 * d, d);
    FACTLENS_ASSIGN_OR_RETURN(at::Tensor o_weight, r.Required(h + "attn.c_proj.weight", {d, d}));
    layer.o_weight = o_weight.t();
    FACTLENS_ASSIGN_OR_RETURN(layer.o_bias, r.Required(h + "attn.c_proj.bias", {d}));
    FACTLENS_ASSIGN_OR_RETURN(layer.ffn_norm_weight, r.Required(h + "ln_2.weight", {d}));
    FACTLENS_ASSIGN_OR_RETURN(layer.ffn_norm_bias, r.Required(h + "ln_2.bias", {d}));
    FACTLENS_ASSIGN_OR_RETURN(at::Tensor in_weight, r.Required(h + "mlp.c_fc.weight", {d, n}));
    layer.in_weight = in_weight.t();
    FACTLENS_ASSIGN_OR_RETURN(layer.in_bias, r.Required(h + "mlp.c_fc.bias", {n}));
    FACTLENS_ASSIGN_OR_RETURN(at::Tensor out_weight, r.Required(h + "mlp.c_proj.weight", {n, d}));
    layer.out_weight = out_weight.t();
    FACTLENS_ASSIGN_OR_RETURN(layer.out_bias, r.Required(h + "mlp.c_proj.bias", {d}));
  }
  FACTLENS_ASSIGN_OR_RETURN(w.final_norm_weight, r.Required(p + "ln_f.weight", {d}));
  FACTLENS_ASSIGN_OR_RETURN(w.final_norm_bias, r.Required(p + "ln_f.bias", {d}));
  if (c.tie_word_embeddings) {
    w.unembedding = w.token_embedding;
  } else {
    FACTLENS_ASSIGN_OR_RETURN(w.unembedding, r.Required("lm_head.weight", {c.vocab_size, d}));
  }
  return absl::OkStatus();
}

// Llama and the families that share its tensor names (Qwen2, Mistral).
absl::Status LoadLlama(const ModelConfig& c, WeightReader& r, ModelWeights& w) {
  const int64_t d = c.d_model, n = c.d_ffn;
  const int64_t q_dim = c.n_heads * c.head_dim, kv_dim = c.n_kv_heads * c.head_dim;
  FACTLENS_ASSIGN_OR_RETURN(w.token_embedding,
                            r.Required("model.embed_tokens.weight", {c.vocab_size, d}));
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const std::string h = absl::StrCat("model.layers.", l, ".");
    const std::string a = h + "self_attn.", m = h + "mlp.";
    LayerWeights& layer = w.layers.emplace_back();
    FACTLENS_ASSIGN_OR_RETURN(layer.attn_norm_weight,
                              r.Required(h + "input_layernorm.weight", {d}));
    FACTLENS_ASSIGN_OR_RETURN(layer.q_weight, r.Required(a + "q_proj.weight", {q_dim, d}));
    FACTLENS_ASSIGN_OR_RETURN(layer.k_weight, r.Required(a + "k_proj.weight", {kv_dim, d}));
    FACTLENS_ASSIGN_OR_RETURN(layer.v_weight, r.Required(a + "v_proj.weight", {kv_dim, d}));
    FACTLENS_ASSIGN_OR_RETURN(layer.o_weight, r.Required(a + "o_proj.weight", {d, q_dim}));
    FACTLENS_ASSIGN_OR_RETURN(layer.q_bias, r.If(c.attention_bias, a + "q_proj.bias", {q_dim}));
    FACTLENS_ASSIGN_OR_RETURN(layer.k_bias, r.If(c.attention_bias, a + "k_proj.bias", {kv_dim}));
    FACTLENS_ASSIGN_OR_RETURN(layer.v_bias, r.If(c.attention_bias, a + "v_proj.bias", {kv_dim}));
    FACTLENS_ASSIGN_OR_RETURN(layer.o_bias, r.If(c.attention_output_bias, a + "o_proj.bias", {d}));
    FACTLENS_ASSIGN_OR_RETURN(layer.ffn_norm_weight,
                              r.Required(h + "post_attention_layernorm.weight", {d}));
    FACTLENS_ASSIGN_OR_RETURN(layer.gate_weight, r.Required(m + "gate_proj.weight", {n, d}));
    FACTLENS_ASSIGN_OR_RETURN(layer.in_weight, r.Required(m + "up_proj.weight", {n, d}));
    FACTLENS_ASSIGN_OR_RETURN(layer.out_weight, r.Required(m + "down_proj.weight", {d, n}));
    FACTLENS_ASSIGN_OR_RETURN(layer.gate_bias, r.If(c.mlp_bias, m + "gate_proj.bias", {n}));
    FACTLENS_ASSIGN_OR_RETURN(layer.in_bias, r.If(c.mlp_bias, m + "up_proj.bias", {n}));
    FACTLENS_ASSIGN_OR_RETURN(layer.out_bias, r.If(c.mlp_bias, m + "down_proj.bias", {d}));
  }
  FACTLENS_ASSIGN_OR_RETURN(w.final_norm_weight, r.Required("model.norm.weight", {d}));
  if (c.tie_word_embeddings) {
    w.unembedding = w.token_embedding;
  } else {
    FACTLENS_ASSIGN_OR_RETURN(w.unembedding, r.Required("lm_head.weight", {c.vocab_size, d}));
  }
  return absl::OkStatus();
}

// The floating dtype most of the checkpoint's tensors use.
c10::ScalarType CheckpointDType(const Checkpoint& checkpoint) {
  std::map<DType, uint64_t> bytes;
  for (const auto& [name, location] : checkpoint.tensors()) {
    bytes[location.info.dtype] += location.info.end - location.info.begin;
  }
  if (bytes[DType::kBF16] > bytes[DType::kF32] && bytes[DType::kBF16] >= bytes[DType::kF16]) {
    return c10::ScalarType::BFloat16;
  }
  return bytes[DType::kF16] > bytes[DType::kF32] ? c10::ScalarType::Half : c10::ScalarType::Float;
}

// Calls f(tensor, role) for every tensor slot of `w` (undefined ones included): the one list of
// which weights are large matrices and which are small (WeightRole).
template <typename Weights, typename F>
void ForEachWeight(Weights& w, F&& f) {
  constexpr WeightRole kMatrix = WeightRole::kMatrix, kSmall = WeightRole::kSmall;
  f(w.token_embedding, kMatrix);
  f(w.position_embedding, kSmall);
  f(w.final_norm_weight, kSmall);
  f(w.final_norm_bias, kSmall);
  f(w.unembedding, kMatrix);
  f(w.cluster_weight, kSmall);
  for (auto& band : w.input_bands) {
    f(band.embedding, kMatrix);
    f(band.projection, kMatrix);
  }
  for (auto& band : w.output_bands) {
    f(band.embedding, kMatrix);
    f(band.projection, kMatrix);
  }
  for (auto& l : w.layers) {
    for (auto* t : {&l.q_weight, &l.k_weight, &l.v_weight, &l.o_weight, &l.in_weight,
                    &l.gate_weight, &l.out_weight}) {
      f(*t, kMatrix);
    }
    for (auto* t :
         {&l.attn_norm_weight, &l.attn_norm_bias, &l.q_bias, &l.k_bias, &l.v_bias, &l.o_bias,
          &l.ffn_norm_weight, &l.ffn_norm_bias, &l.in_bias, &l.gate_bias, &l.out_bias}) {
      f(*t, kSmall);
    }
  }
}

// Puts weight tensors on a device in the dtype their role takes. A matrix is converted with its
// whole storage, once, and rebuilt as the same view of the converted storage: tied tensors stay
// one tensor, GPT-2's q/k/v stay views of one c_attn matrix, strides are kept. A tensor already on
// the device in its dtype is kept as it is (no copy: mapped tensors stay mapped).
class WeightConverter {
 public:
  WeightConverter(c10::Device device, const Precision& precision)
      : device_(device), precision_(precision) {}

  at::Tensor Hold(const at::Tensor& t, WeightRole role) {
    const c10::ScalarType dtype = precision_.For(role);
    if (InPlace(t, dtype)) return t;
    if (role == WeightRole::kSmall) return t.to(device_, dtype);
    at::Tensor& base = converted_[{t.storage().unsafeGetStorageImpl(), dtype}];
    if (!base.defined()) {
      const int64_t n = static_cast<int64_t>(t.storage().nbytes()) / t.element_size();
      base = at::empty({0}, t.options()).set_(t.storage(), 0, {n}, {1}).to(device_, dtype);
    }
    return base.as_strided(t.sizes(), t.strides(), t.storage_offset());
  }

  // The bytes Hold(t, role) allocates, counting each matrix storage once over the calls.
  uint64_t Bytes(const at::Tensor& t, WeightRole role) {
    const c10::ScalarType dtype = precision_.For(role);
    if (InPlace(t, dtype)) return 0;
    const uint64_t element = c10::elementSize(dtype);
    if (role == WeightRole::kSmall) return static_cast<uint64_t>(t.numel()) * element;
    if (!counted_.insert({t.storage().unsafeGetStorageImpl(), dtype}).second) return 0;
    return t.storage().nbytes() / t.element_size() * element;
  }

 private:
  bool InPlace(const at::Tensor& t, c10::ScalarType dtype) const {
    return !t.defined() || (t.device() == device_ && t.scalar_type() == dtype);
  }

  using Key = std::pair<const c10::StorageImpl*, c10::ScalarType>;
  c10::Device device_;
  Precision precision_;
  std::map<Key, at::Tensor> converted_;
  std::set<Key> counted_;
};

// Converts every tensor of `w` as its role takes under `precision`, on `device`.
void HoldWeights(ModelWeights& w, c10::Device device, const Precision& precision) {
  WeightConverter converter(device, precision);
  ForEachWeight(w, [&](at::Tensor& t, WeightRole role) { t = converter.Hold(t, role); });
}

// Bytes of the float64 tensors the output head prepares from `w` (output_head.h), from shapes.
uint64_t OutputHeadBytes(const ModelWeights& w) {
  if (w.output_bands.empty()) return static_cast<uint64_t>(w.unembedding.numel()) * 8;
  int64_t values = w.output_bands[0].embedding.numel() +
                   (w.cluster_weight.defined() ? w.cluster_weight.numel() : 0);
  for (size_t b = 1; b < w.output_bands.size(); ++b) {
    values += w.output_bands[b].embedding.numel() + w.output_bands[b].projection.numel();
  }
  return static_cast<uint64_t>(values) * 8;
}

constexpr uint64_t kLoadMarginBytes = uint64_t{256} << 20;

LoadFootprint Footprint(const StoredModel& stored, const Precision& precision) {
  LoadFootprint need;
  WeightConverter converter(stored.device, precision);
  ForEachWeight(stored.weights, [&](const at::Tensor& t, WeightRole role) {
    need.weights += converter.Bytes(t, role);
  });
  need.output_head = OutputHeadBytes(stored.weights);
  int64_t largest_layer_matrix = 0;
  for (const LayerWeights& l : stored.weights.layers) {
    for (const at::Tensor* t : {&l.q_weight, &l.k_weight, &l.v_weight, &l.o_weight, &l.in_weight,
                                &l.gate_weight, &l.out_weight}) {
      if (t->defined()) largest_layer_matrix = std::max(largest_layer_matrix, t->numel());
    }
  }
  need.margin =
      need.output_head + 2 * static_cast<uint64_t>(largest_layer_matrix) * 4 + kLoadMarginBytes;
  return need;
}

std::string GiB(uint64_t bytes) {
  return absl::StrFormat("%.1f GiB", static_cast<double>(bytes) / (uint64_t{1} << 30));
}

// Bytes of every distinct storage the weights and the prepared head hold (views and tied tensors
// counted once).
uint64_t DistinctStorageBytes(const ModelWeights& w, const OutputHead& head) {
  std::set<const void*> seen;
  uint64_t bytes = 0;
  auto add = [&](const at::Tensor& t) {
    if (t.defined() && seen.insert(t.storage().unsafeGetStorageImpl()).second) {
      bytes += t.storage().nbytes();
    }
  };
  ForEachWeight(w, [&](const at::Tensor& t, WeightRole) { add(t); });
  for (const at::Tensor& t : head.PreparedTensors()) add(t);
  return bytes;
}

}  // namespace

absl::StatusOr<Precision> ChoosePrecision(std::optional<c10::ScalarType> requested,
                                          c10::Device device, c10::ScalarType checkpoint_dtype) {
  const c10::ScalarType dtype =
      requested.value_or(device.is_cpu() ? c10::ScalarType::Float : checkpoint_dtype);
  if (dtype != c10::ScalarType::Float && dtype != c10::ScalarType::BFloat16 &&
      dtype != c10::ScalarType::Half && dtype != c10::ScalarType::Double) {
    return absl::InvalidArgumentError("dtype must be float32, float64, float16 or bfloat16");
  }
  if (device.is_cpu() && (dtype == c10::ScalarType::BFloat16 || dtype == c10::ScalarType::Half)) {
    return Precision{c10::ScalarType::Float, dtype};
  }
  return Precision{dtype, dtype};
}

absl::Status CheckLoadFits(
    std::string_view name, c10::ScalarType dtype, const LoadFootprint& need,
    const HostMemoryLimits& limits, c10::ScalarType checkpoint_dtype,
    const std::vector<std::pair<c10::ScalarType, LoadFootprint>>& alternatives) {
  const std::optional<Headroom> headroom = TightestHeadroom(limits);
  if (!headroom || need.total() <= headroom->bytes) return absl::OkStatus();
  std::string message = absl::StrCat(
      "cannot load ", std::string(name), " with dtype=", std::string(ComputeDTypeName(dtype)),
      ": it needs ", GiB(need.total()), " of host memory (weights ", GiB(need.weights),
      ", float64 output head ", GiB(need.output_head), ", working margin ", GiB(need.margin),
      ") but ", headroom->limit, " leaves this process ", GiB(headroom->bytes));
  const std::pair<c10::ScalarType, LoadFootprint>* way_out = nullptr;
  for (const auto& alternative : alternatives) {
    if (alternative.second.total() >= need.total()) continue;
    if (alternative.second.total() <= headroom->bytes) {
      way_out = &alternative;
      break;
    }
    if (!way_out || alternative.second.total() < way_out->second.total()) way_out = &alternative;
  }
  if (way_out == nullptr) {
    absl::StrAppend(&message, "; no dtype needs less: use a machine with more memory");
  } else {
    const bool fits = way_out->second.total() <= headroom->bytes;
    const std::string other(ComputeDTypeName(way_out->first));
    const std::string in_place = way_out->first == checkpoint_dtype
                                     ? " (the checkpoint's own dtype: its matrices used in place)"
                                     : "";
    absl::StrAppend(&message, fits ? absl::StrCat("; load it with dtype=", other, in_place,
                                                  ", which needs ", GiB(way_out->second.total()))
                                   : absl::StrCat("; even dtype=", other, in_place, " needs ",
                                                  GiB(way_out->second.total()),
                                                  ": use a machine with more memory"));
  }
  return absl::ResourceExhaustedError(message);
}

namespace {

// The HF half of ReadStoredModel.
absl::StatusOr<StoredModel> ReadHuggingFaceModel(const std::string& directory,
                                                 const LoadOptions& options) {
  FACTLENS_ASSIGN_OR_RETURN(const std::string config_text,
                            ReadTextFile(directory + "/config.json"));
  absl::StatusOr<ModelConfig> config = ParseModelConfig(config_text);
  if (!config.ok()) {
    return absl::Status(config.status().code(),
                        absl::StrCat(directory, "/", config.status().message()));
  }
  StoredModel stored;
  stored.directory = directory;
  stored.config = *std::move(config);
  FACTLENS_ASSIGN_OR_RETURN(stored.device, ParseDevice(options.device));
  FACTLENS_ASSIGN_OR_RETURN(const Checkpoint checkpoint, Checkpoint::Open(directory));
  stored.checkpoint_dtype = CheckpointDType(checkpoint);
  FACTLENS_ASSIGN_OR_RETURN(stored.precision,
                            ChoosePrecision(options.dtype, stored.device, stored.checkpoint_dtype));
  WeightReader reader(checkpoint);
  try {
    switch (stored.config.family) {
      case ModelFamily::kGpt2:
        FACTLENS_RETURN_IF_ERROR(LoadGpt2(stored.config, checkpoint, reader, stored.weights));
        break;
      case ModelFamily::kLlama:
      case ModelFamily::kQwen2:
      case ModelFamily::kMistral:
        FACTLENS_RETURN_IF_ERROR(LoadLlama(stored.config, reader, stored.weights));
        break;
      case ModelFamily::kFairseqLm:  // never from a config.json
        return absl::InternalError("a fairseq model has no config.json loader");
    }
  } catch (const std::exception& e) {
    return StatusFromException(e, absl::StrCat("loading ", directory), stored.device,
                               FailedWork::kLoad);
  }
  return stored;
}

// A checkpoint's config and weights as stored (StoredModel), for Load and EstimateLoad.
absl::StatusOr<StoredModel> ReadStoredModel(const std::string& reference,
                                            const LoadOptions& options) {
  FACTLENS_ASSIGN_OR_RETURN(const std::string directory, ResolveModelDirectory(reference));
  if (IsFairseqModelDirectory(directory)) return ReadFairseqModel(directory, options);
  return ReadHuggingFaceModel(directory, options);
}

// Load's check on CPU: the footprint against this process's limits, with the other dtypes as the
// way out (CheckLoadFits names the first that needs less and fits: the checkpoint's own dtype
// first, whose matrices are used in place).
absl::Status CheckFitsOnHost(const StoredModel& stored) {
  const LoadFootprint need = Footprint(stored, stored.precision);
  std::vector<std::pair<c10::ScalarType, LoadFootprint>> alternatives;
  for (const c10::ScalarType dtype : {stored.checkpoint_dtype, c10::ScalarType::BFloat16,
                                      c10::ScalarType::Half, c10::ScalarType::Float}) {
    if (dtype == stored.precision.storage) continue;
    if (std::any_of(alternatives.begin(), alternatives.end(),
                    [&](const auto& a) { return a.first == dtype; })) {
      continue;
    }
    const absl::StatusOr<Precision> precision =
        ChoosePrecision(dtype, stored.device, stored.checkpoint_dtype);
    if (precision.ok()) alternatives.emplace_back(dtype, Footprint(stored, *precision));
  }
  return CheckLoadFits(stored.directory, stored.precision.storage, need, CurrentHostMemoryLimits(),
                       stored.checkpoint_dtype, alternatives);
}

}  // namespace

absl::Status Model::PrepareForAnalysis() {
  if (device_.is_cuda()) UseFullPrecisionMatmuls();  // for every GPU model, however it was made
  const ModelWeights& w = weights_;
  const Architecture& a = config_.architecture;
  const at::Tensor final_norm_weight = a.final_norm ? w.final_norm_weight : at::Tensor();
  const at::Tensor final_norm_bias = a.final_norm ? w.final_norm_bias : at::Tensor();
  try {
    if (w.output_bands.empty()) {
      output_head_ = MakeUnembeddingHead(a.norm, config_.norm_eps, final_norm_weight,
                                         final_norm_bias, w.unembedding);
    } else {
      output_head_ = MakeAdaptiveSoftmaxHead(a.norm, config_.norm_eps, final_norm_weight,
                                             final_norm_bias, w.output_bands, w.cluster_weight);
    }
  } catch (const std::exception& e) {
    return StatusFromException(e, absl::StrCat("preparing ", directory_, " for analysis"), device_,
                               FailedWork::kLoad);
  }
  resident_bytes_ = DistinctStorageBytes(w, *output_head_);
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<const Model>> Model::Load(const std::string& reference,
                                                         const LoadOptions& options) {
  FACTLENS_ASSIGN_OR_RETURN(StoredModel stored, ReadStoredModel(reference, options));
  if (stored.device.is_cpu()) FACTLENS_RETURN_IF_ERROR(CheckFitsOnHost(stored));
  std::shared_ptr<Model> model(new Model(std::move(stored.config), stored.device));
  model->directory_ = std::move(stored.directory);
  model->precision_ = stored.precision;
  try {
    HoldWeights(stored.weights, model->device_, model->precision_);
  } catch (const std::exception& e) {
    return StatusFromException(e, absl::StrCat("loading ", model->directory_), model->device_,
                               FailedWork::kLoad);
  }
  model->weights_ = std::move(stored.weights);
  FACTLENS_RETURN_IF_ERROR(model->PrepareForAnalysis());
  return std::shared_ptr<const Model>(std::move(model));
}

absl::StatusOr<LoadFootprint> EstimateLoad(const std::string& reference,
                                           const LoadOptions& options) {
  FACTLENS_ASSIGN_OR_RETURN(const StoredModel stored, ReadStoredModel(reference, options));
  return Footprint(stored, stored.precision);
}

absl::StatusOr<std::shared_ptr<const Model>> Model::FromWeights(ModelConfig config,
                                                                ModelWeights weights,
                                                                std::string name) {
  const at::Tensor& output =
      weights.output_bands.empty() ? weights.unembedding : weights.output_bands[0].embedding;
  if (!output.defined() || weights.layers.size() != static_cast<size_t>(config.n_layers)) {
    return absl::InvalidArgumentError(
        "weights lack an output layer or disagree with the config's layers");
  }
  const c10::Device device = output.device();
  std::shared_ptr<Model> model(new Model(std::move(config), device));
  model->directory_ = std::move(name);
  FACTLENS_ASSIGN_OR_RETURN(model->precision_,
                            ChoosePrecision(output.scalar_type(), device, output.scalar_type()));
  try {
    HoldWeights(weights, device, model->precision_);
  } catch (const std::exception& e) {
    return StatusFromException(e, absl::StrCat("holding the weights of ", model->directory_),
                               device, FailedWork::kLoad);
  }
  model->weights_ = std::move(weights);
  FACTLENS_RETURN_IF_ERROR(model->PrepareForAnalysis());
  return std::shared_ptr<const Model>(std::move(model));
}

const Model::OutputNorms& Model::output_norms() const {
  std::call_once(output_norms_->once, [this] {
    for (const LayerWeights& layer : weights_.layers) {
      output_norms_->ffn.push_back(layer.out_weight.to(at::kFloat).t().norm(2, 1));
      output_norms_->attention.push_back(layer.o_weight.to(at::kFloat).t().norm(2, 1));
    }
  });
  return *output_norms_;
}

const std::vector<at::Tensor>& Model::FfnOutputNorms() const { return output_norms().ffn; }

const std::vector<at::Tensor>& Model::AttentionOutputNorms() const {
  return output_norms().attention;
}

}  // namespace factlens
