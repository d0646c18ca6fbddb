#include "analysis/model_config.h"

#include <cmath>
#include <limits>
#include <optional>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "analysis/status_macros.h"
#include "nlohmann/json.hpp"

namespace factlens {
namespace {

using json = nlohmann::json;

// Typed access to optional config keys: a missing or null key yields `fallback`; a present key of
// the wrong type or range is an InvalidArgument error naming it.
class ConfigReader {
 public:
  explicit ConfigReader(const json& object, std::string prefix = "")
      : object_(object), prefix_(std::move(prefix)) {}

  // Present with the value null (HF distinguishes it from absent for some keys).
  bool IsNull(absl::string_view key) const {
    const auto it = object_.find(std::string(key));
    return it != object_.end() && it->is_null();
  }

  const json* Find(absl::string_view key) const {
    const auto it = object_.find(std::string(key));
    if (it == object_.end() || it->is_null()) return nullptr;
    return &*it;
  }

  absl::StatusOr<int64_t> Int(absl::string_view key, int64_t fallback, int64_t min = 1) const {
    const json* value = Find(key);
    if (value == nullptr) return fallback;
    int64_t v = 0;
    if (value->is_number_unsigned()) {
      if (value->get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        return Error(key, "is too large");
      }
      v = value->get<int64_t>();
    } else if (value->is_number_integer()) {
      v = value->get<int64_t>();
    } else {
      return Error(key, "must be an integer");
    }
    if (v < min) return Error(key, absl::StrCat("must be at least ", min, ", got ", v));
    if (v > (int64_t{1} << 40)) return Error(key, absl::StrCat("is implausibly large: ", v));
    return v;
  }

  absl::StatusOr<double> Positive(absl::string_view key, double fallback) const {
    const json* value = Find(key);
    if (value == nullptr) return fallback;
    if (!value->is_number()) return Error(key, "must be a number");
    const double v = value->get<double>();
    if (!std::isfinite(v) || v <= 0) return Error(key, "must be a positive finite number");
    return v;
  }

  absl::StatusOr<bool> Bool(absl::string_view key, bool fallback) const {
    const json* value = Find(key);
    if (value == nullptr) return fallback;
    if (!value->is_boolean()) return Error(key, "must be true or false");
    return value->get<bool>();
  }

  absl::StatusOr<std::string> String(absl::string_view key, std::string fallback) const {
    const json* value = Find(key);
    if (value == nullptr) return fallback;
    if (!value->is_string()) return Error(key, "must be a string");
    return value->get<std::string>();
  }

  absl::Status Error(absl::string_view key, absl::string_view what) const {
    return absl::InvalidArgumentError(absl::StrCat("config.json: '", prefix_, key, "' ", what));
  }

 private:
  const json& object_;
  std::string prefix_;
};

absl::StatusOr<Activation> ParseActivation(const ConfigReader& config, absl::string_view key,
                                           std::string fallback) {
  FACTLENS_ASSIGN_OR_RETURN(const std::string name, config.String(key, std::move(fallback)));
  if (name == "gelu_new" || name == "gelu_pytorch_tanh" || name == "gelu_fast") {
    return Activation::kGeluTanh;
  }
  if (name == "gelu") return Activation::kGeluExact;
  if (name == "quick_gelu") return Activation::kQuickGelu;
  if (name == "relu") return Activation::kRelu;
  if (name == "silu" || name == "swish") return Activation::kSilu;
  return absl::UnimplementedError(
      absl::StrCat("config.json: activation '", name, "' of '", key, "' is not supported"));
}

absl::Status ParseGpt2(const ConfigReader& c, ModelConfig& m) {
  FACTLENS_ASSIGN_OR_RETURN(m.vocab_size, c.Int("vocab_size", 50257));
  FACTLENS_ASSIGN_OR_RETURN(m.max_positions, c.Int("n_positions", 1024));
  FACTLENS_ASSIGN_OR_RETURN(m.d_model, c.Int("n_embd", 768));
  FACTLENS_ASSIGN_OR_RETURN(m.n_layers, c.Int("n_layer", 12));
  FACTLENS_ASSIGN_OR_RETURN(m.n_heads, c.Int("n_head", 12));
  FACTLENS_ASSIGN_OR_RETURN(m.d_ffn, c.Int("n_inner", 4 * m.d_model));
  FACTLENS_ASSIGN_OR_RETURN(m.activation, ParseActivation(c, "activation_function", "gelu_new"));
  FACTLENS_ASSIGN_OR_RETURN(m.norm_eps, c.Positive("layer_norm_epsilon", 1e-5));
  FACTLENS_ASSIGN_OR_RETURN(m.tie_word_embeddings, c.Bool("tie_word_embeddings", true));
  FACTLENS_ASSIGN_OR_RETURN(m.architecture.scale_attention, c.Bool("scale_attn_weights", true));
  FACTLENS_ASSIGN_OR_RETURN(m.architecture.scale_attention_by_inverse_layer,
                            c.Bool("scale_attn_by_inverse_layer_idx", false));
  if (m.d_model % m.n_heads != 0) return c.Error("n_embd", "must be divisible by n_head");
  m.n_kv_heads = m.n_heads;
  m.head_dim = m.d_model / m.n_heads;
  return absl::OkStatus();
}

absl::Status ParseRope(const ConfigReader& top, ModelConfig& m) {
  FACTLENS_ASSIGN_OR_RETURN(m.rope.theta, top.Positive("rope_theta", 10000.0));
  // transformers 5 writes `rope_parameters` (with rope_theta inside); older files `rope_scaling`.
  const char* key = top.Find("rope_parameters") != nullptr ? "rope_parameters" : "rope_scaling";
  const json* params = top.Find(key);
  if (params == nullptr) return absl::OkStatus();
  if (!params->is_object()) return top.Error(key, "must be an object");
  const ConfigReader rope(*params, absl::StrCat(key, "."));
  FACTLENS_ASSIGN_OR_RETURN(m.rope.theta, rope.Positive("rope_theta", m.rope.theta));
  FACTLENS_ASSIGN_OR_RETURN(std::string type, rope.String("type", "default"));
  FACTLENS_ASSIGN_OR_RETURN(type, rope.String("rope_type", type));
  if (type == "default") {
    m.rope.type = RopeType::kDefault;
  } else if (type == "linear") {
    m.rope.type = RopeType::kLinear;
    FACTLENS_ASSIGN_OR_RETURN(m.rope.factor, rope.Positive("factor", 1.0));
  } else if (type == "llama3") {
    m.rope.type = RopeType::kLlama3;
    FACTLENS_ASSIGN_OR_RETURN(m.rope.factor, rope.Positive("factor", 8.0));
    FACTLENS_ASSIGN_OR_RETURN(m.rope.low_freq_factor, rope.Positive("low_freq_factor", 1.0));
    FACTLENS_ASSIGN_OR_RETURN(m.rope.high_freq_factor, rope.Positive("high_freq_factor", 4.0));
    FACTLENS_ASSIGN_OR_RETURN(m.rope.original_max_position_embeddings,
                              rope.Int("original_max_position_embeddings", 8192));
    if (m.rope.high_freq_factor <= m.rope.low_freq_factor) {
      return rope.Error("high_freq_factor", "must exceed low_freq_factor");
    }
  } else {
    return absl::UnimplementedError(absl::StrCat(
        "config.json: rope type '", type, "' is not supported (default, linear, llama3 are)"));
  }
  return absl::OkStatus();
}

// The Hugging Face defaults of a Llama-like config class (LlamaConfig, Qwen2Config,
// MistralConfig) where they differ.
struct LlamaLikeDefaults {
  int64_t vocab_size, d_model, d_ffn, n_kv_heads, max_positions;  // n_kv_heads 0 = n_heads
};

absl::Status ParseLlamaLike(const ConfigReader& c, const LlamaLikeDefaults& defaults,
                            ModelConfig& m) {
  FACTLENS_ASSIGN_OR_RETURN(m.vocab_size, c.Int("vocab_size", defaults.vocab_size));
  FACTLENS_ASSIGN_OR_RETURN(m.d_model, c.Int("hidden_size", defaults.d_model));
  FACTLENS_ASSIGN_OR_RETURN(m.d_ffn, c.Int("intermediate_size", defaults.d_ffn));
  FACTLENS_ASSIGN_OR_RETURN(m.n_layers, c.Int("num_hidden_layers", 32));
  FACTLENS_ASSIGN_OR_RETURN(m.n_heads, c.Int("num_attention_heads", 32));
  FACTLENS_ASSIGN_OR_RETURN(
      m.n_kv_heads,
      c.Int("num_key_value_heads", defaults.n_kv_heads > 0 ? defaults.n_kv_heads : m.n_heads));
  FACTLENS_ASSIGN_OR_RETURN(m.max_positions,
                            c.Int("max_position_embeddings", defaults.max_positions));
  FACTLENS_ASSIGN_OR_RETURN(m.norm_eps, c.Positive("rms_norm_eps", 1e-6));
  FACTLENS_ASSIGN_OR_RETURN(m.tie_word_embeddings, c.Bool("tie_word_embeddings", false));
  FACTLENS_ASSIGN_OR_RETURN(m.activation, ParseActivation(c, "hidden_act", "silu"));
  FACTLENS_ASSIGN_OR_RETURN(m.attention_bias, c.Bool("attention_bias", false));
  m.attention_output_bias = m.attention_bias;
  FACTLENS_ASSIGN_OR_RETURN(m.mlp_bias, c.Bool("mlp_bias", false));
  if (c.Find("head_dim") == nullptr && m.d_model % m.n_heads != 0) {
    return c.Error("hidden_size", "must be divisible by num_attention_heads");
  }
  FACTLENS_ASSIGN_OR_RETURN(m.head_dim, c.Int("head_dim", m.d_model / m.n_heads));
  if (m.n_heads % m.n_kv_heads != 0) {
    return c.Error("num_attention_heads", "must be a multiple of num_key_value_heads");
  }
  if (m.head_dim % 2 != 0) return c.Error("head_dim", "must be even for rotary embeddings");
  return ParseRope(c, m);
}

absl::Status ParseLlama(const ConfigReader& c, ModelConfig& m) {
  return ParseLlamaLike(c, {32000, 4096, 11008, 0, 2048}, m);
}

// Qwen2: Llama with q/k/v biases (and none on the output projection).
absl::Status ParseQwen2(const ConfigReader& c, ModelConfig& m) {
  FACTLENS_RETURN_IF_ERROR(ParseLlamaLike(c, {151936, 4096, 22016, 32, 32768}, m));
  m.attention_bias = true;
  m.attention_output_bias = false;
  FACTLENS_ASSIGN_OR_RETURN(const bool sliding, c.Bool("use_sliding_window", false));
  if (sliding) {  // per-layer windows (max_window_layers) are not implemented
    return absl::UnimplementedError(
        "config.json: Qwen2 with use_sliding_window=true is not supported");
  }
  return absl::OkStatus();
}

// Mistral: Llama with sliding-window attention.
absl::Status ParseMistral(const ConfigReader& c, ModelConfig& m) {
  FACTLENS_RETURN_IF_ERROR(ParseLlamaLike(c, {32000, 4096, 14336, 8, 131072}, m));
  // MistralConfig's default is 4096; null turns the window off.
  if (!c.IsNull("sliding_window")) {
    FACTLENS_ASSIGN_OR_RETURN(m.architecture.sliding_window, c.Int("sliding_window", 4096));
  }
  return absl::OkStatus();
}

}  // namespace

absl::string_view ModelFamilyName(ModelFamily family) {
  switch (family) {
    case ModelFamily::kGpt2:
      return "gpt2";
    case ModelFamily::kLlama:
      return "llama";
    case ModelFamily::kQwen2:
      return "qwen2";
    case ModelFamily::kMistral:
      return "mistral";
    case ModelFamily::kFairseqLm:
      return "fairseq_lm";
  }
  return "?";
}

Architecture FamilyArchitecture(ModelFamily family) {
  Architecture a;
  switch (family) {
    case ModelFamily::kGpt2:  // LayerNorm, learned positions, GELU MLP, ln_f
      break;
    case ModelFamily::kLlama:    // RMSNorm, RoPE, SwiGLU, final RMSNorm
    case ModelFamily::kQwen2:    // the same; q/k/v biases are a loader matter
    case ModelFamily::kMistral:  // the same; its sliding window comes from config.json
      a.norm = NormKind::kRmsNorm;
      a.positions = PositionKind::kRotary;
      a.ffn = FfnKind::kGated;
      break;
    case ModelFamily::kFairseqLm:  // transformer_lm (Baevski & Auli): no final norm by default
      a.positions = PositionKind::kSinusoidal;
      a.position_offset = 2;
      a.final_norm = false;
      break;
  }
  return a;
}

absl::StatusOr<ModelConfig> ParseModelConfig(absl::string_view json_text) {
  const json root =
      json::parse(json_text.begin(), json_text.end(), nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded() || !root.is_object()) {
    return absl::InvalidArgumentError("config.json is not a JSON object");
  }
  const ConfigReader config(root);
  FACTLENS_ASSIGN_OR_RETURN(const std::string model_type, config.String("model_type", ""));
  ModelConfig m;
  if (model_type == "gpt2") {
    m.family = ModelFamily::kGpt2;
    m.architecture = FamilyArchitecture(m.family);
    FACTLENS_RETURN_IF_ERROR(ParseGpt2(config, m));
  } else if (model_type == "llama") {
    m.family = ModelFamily::kLlama;
    m.architecture = FamilyArchitecture(m.family);
    FACTLENS_RETURN_IF_ERROR(ParseLlama(config, m));
  } else if (model_type == "qwen2") {
    m.family = ModelFamily::kQwen2;
    m.architecture = FamilyArchitecture(m.family);
    FACTLENS_RETURN_IF_ERROR(ParseQwen2(config, m));
  } else if (model_type == "mistral") {
    m.family = ModelFamily::kMistral;
    m.architecture = FamilyArchitecture(m.family);
    FACTLENS_RETURN_IF_ERROR(ParseMistral(config, m));
  } else if (model_type.empty()) {
    return absl::InvalidArgumentError("config.json has no 'model_type'");
  } else {
    return absl::UnimplementedError(
        absl::StrCat("config.json: model_type '", model_type,
                     "' is not supported (gpt2, llama, qwen2 and mistral are)"));
  }
  // transformers 5 writes "dtype"; older files "torch_dtype".
  FACTLENS_ASSIGN_OR_RETURN(m.torch_dtype, config.String("torch_dtype", ""));
  FACTLENS_ASSIGN_OR_RETURN(m.torch_dtype, config.String("dtype", m.torch_dtype));
  return m;
}

}  // namespace factlens
