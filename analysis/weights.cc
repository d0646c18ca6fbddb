#include "analysis/weights.h"

#include <ATen/ATen.h>

#include <cstring>
#include <set>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
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

// Turns checkpoint entries into tensors on the target device and dtype, checking each shape.
class WeightReader {
 public:
  WeightReader(const Checkpoint& checkpoint, c10::Device device, c10::ScalarType dtype)
      : checkpoint_(checkpoint), device_(device), dtype_(dtype) {}

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
    FACTLENS_ASSIGN_OR_RETURN(at::Tensor tensor, TensorFromLocation(location));
    return tensor.to(device_, dtype_);
  }

  // The tensor if `present`, else an undefined one; a present tensor must exist.
  absl::StatusOr<at::Tensor> If(bool present, const std::string& name, std::vector<int64_t> shape) {
    if (!present) return at::Tensor();
    return Required(name, std::move(shape));
  }

 private:
  const Checkpoint& checkpoint_;
  c10::Device device_;
  c10::ScalarType dtype_;
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
  for (const at::Tensor* t : {&w.token_embedding, &w.position_embedding, &w.final_norm_weight,
                              &w.final_norm_bias, &w.unembedding, &w.cluster_weight}) {
    add(*t);
  }
  for (const AdaptiveInputBand& band : w.input_bands) {
    add(band.embedding);
    add(band.projection);
  }
  for (const AdaptiveSoftmaxBand& band : w.output_bands) {
    add(band.embedding);
    add(band.projection);
  }
  for (const at::Tensor& t : head.PreparedTensors()) add(t);
  for (const LayerWeights& l : w.layers) {
    for (const at::Tensor* t :
         {&l.attn_norm_weight, &l.attn_norm_bias, &l.q_weight, &l.k_weight, &l.v_weight, &l.q_bias,
          &l.k_bias, &l.v_bias, &l.o_weight, &l.o_bias, &l.ffn_norm_weight, &l.ffn_norm_bias,
          &l.in_weight, &l.in_bias, &l.gate_weight, &l.gate_bias, &l.out_weight, &l.out_bias}) {
      add(*t);
    }
  }
  return bytes;
}

}  // namespace

absl::StatusOr<c10::ScalarType> ComputeDType(std::optional<c10::ScalarType> requested,
                                             c10::Device device, c10::ScalarType checkpoint_dtype) {
  const c10::ScalarType dtype =
      requested.value_or(device.is_cpu() ? c10::ScalarType::Float : checkpoint_dtype);
  if (dtype != c10::ScalarType::Float && dtype != c10::ScalarType::BFloat16 &&
      dtype != c10::ScalarType::Half && dtype != c10::ScalarType::Double) {
    return absl::InvalidArgumentError("dtype must be float32, float64, float16 or bfloat16");
  }
  if (device.is_cpu() && dtype == c10::ScalarType::Half) {
    return absl::InvalidArgumentError("float16 compute is not supported on CPU; use float32");
  }
  return dtype;
}

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
    return StatusFromException(e, absl::StrCat("preparing ", directory_, " for analysis"), device_);
  }
  resident_bytes_ = DistinctStorageBytes(w, *output_head_);
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<const Model>> Model::Load(const std::string& reference,
                                                         const LoadOptions& options) {
  FACTLENS_ASSIGN_OR_RETURN(const std::string directory, ResolveModelDirectory(reference));
  if (IsFairseqModelDirectory(directory)) return LoadFairseqModel(directory, options);
  FACTLENS_ASSIGN_OR_RETURN(const std::string config_text,
                            ReadTextFile(directory + "/config.json"));
  absl::StatusOr<ModelConfig> config = ParseModelConfig(config_text);
  if (!config.ok()) {
    return absl::Status(config.status().code(),
                        absl::StrCat(directory, "/", config.status().message()));
  }
  FACTLENS_ASSIGN_OR_RETURN(const c10::Device device, ParseDevice(options.device));
  FACTLENS_ASSIGN_OR_RETURN(const Checkpoint checkpoint, Checkpoint::Open(directory));
  FACTLENS_ASSIGN_OR_RETURN(const c10::ScalarType dtype,
                            ComputeDType(options.dtype, device, CheckpointDType(checkpoint)));

  std::shared_ptr<Model> model(new Model(*std::move(config), device));
  model->directory_ = directory;
  model->dtype_ = dtype;
  WeightReader reader(checkpoint, device, dtype);
  try {
    switch (model->config_.family) {
      case ModelFamily::kGpt2:
        FACTLENS_RETURN_IF_ERROR(LoadGpt2(model->config_, checkpoint, reader, model->weights_));
        break;
      case ModelFamily::kLlama:
      case ModelFamily::kQwen2:
      case ModelFamily::kMistral:
        FACTLENS_RETURN_IF_ERROR(LoadLlama(model->config_, reader, model->weights_));
        break;
      case ModelFamily::kFairseqLm:  // never from a config.json
        return absl::InternalError("a fairseq model has no config.json loader");
    }
  } catch (const std::exception& e) {
    return StatusFromException(e, absl::StrCat("loading ", directory), device);
  }
  FACTLENS_RETURN_IF_ERROR(model->PrepareForAnalysis());
  return std::shared_ptr<const Model>(std::move(model));
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
  FACTLENS_ASSIGN_OR_RETURN(const c10::ScalarType dtype,
                            ComputeDType(output.scalar_type(), device, output.scalar_type()));
  std::shared_ptr<Model> model(new Model(std::move(config), device));
  model->directory_ = std::move(name);
  model->dtype_ = dtype;
  model->weights_ = std::move(weights);
  FACTLENS_RETURN_IF_ERROR(model->PrepareForAnalysis());
  return std::shared_ptr<const Model>(std::move(model));
}

}  // namespace factlens
