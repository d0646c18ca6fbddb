// The architecture description of a checkpoint, parsed from a Hugging Face config.json.
#ifndef FACTLENS_ANALYSIS_MODEL_CONFIG_H_
#define FACTLENS_ANALYSIS_MODEL_CONFIG_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace factlens {

enum class ModelFamily { kGpt2, kLlama };
absl::string_view ModelFamilyName(ModelFamily family);  // "gpt2" / "llama"

// FFN activations, named as HF's ACT2FN keys map to them.
enum class Activation {
  kGeluTanh,   // gelu_new, gelu_pytorch_tanh, gelu_fast
  kGeluExact,  // gelu
  kQuickGelu,  // quick_gelu: x·sigmoid(1.702x)
  kRelu,       // relu
  kSilu,       // silu, swish
};

enum class RopeType { kDefault, kLinear, kLlama3 };

// Rotary embedding parameters (Llama only), from either the classic `rope_theta` + `rope_scaling`
// layout or the transformers-5 `rope_parameters` layout.
struct RopeConfig {
  RopeType type = RopeType::kDefault;
  double theta = 10000.0;
  double factor = 1.0;                              // linear, llama3
  double low_freq_factor = 1.0;                     // llama3
  double high_freq_factor = 4.0;                    // llama3
  int64_t original_max_position_embeddings = 8192;  // llama3
};

// Everything the loader and the forward pass need to know about an architecture. Absent or null
// optional values take the Hugging Face defaults of GPT2Config / LlamaConfig.
struct ModelConfig {
  ModelFamily family = ModelFamily::kGpt2;
  int64_t vocab_size = 0;
  int64_t d_model = 0;
  int64_t n_layers = 0;
  int64_t n_heads = 0;
  int64_t n_kv_heads = 0;  // == n_heads for GPT-2 and MHA Llama
  int64_t head_dim = 0;
  int64_t d_ffn = 0;
  int64_t max_positions = 0;
  double norm_eps = 1e-5;
  bool tie_word_embeddings = true;
  Activation activation = Activation::kGeluTanh;
  // GPT-2 only.
  bool scale_attn_weights = true;
  bool scale_attn_by_inverse_layer_idx = false;
  // Llama only.
  bool attention_bias = false;
  bool mlp_bias = false;
  RopeConfig rope;
  std::string torch_dtype;  // as declared ("float16", ...), empty if absent; informational
};

// Parses config.json text. Errors (InvalidArgument, naming the key): not JSON, unknown or missing
// model_type, a value of the wrong type or out of range, inconsistent head counts, an unsupported
// activation or rope type (Unimplemented). Pure function; thread-safe.
absl::StatusOr<ModelConfig> ParseModelConfig(absl::string_view json_text);

}  // namespace factlens

#endif  // FACTLENS_ANALYSIS_MODEL_CONFIG_H_
