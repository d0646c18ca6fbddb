// The architecture description of a checkpoint, parsed from a Hugging Face config.json.
#ifndef FACTLENS_ANALYSIS_MODEL_CONFIG_H_
#define FACTLENS_ANALYSIS_MODEL_CONFIG_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace factlens {

// Where a model's weights and config come from; it selects the loader and names the family in
// reports. What the computation does is described by Architecture, never by the family.
enum class ModelFamily { kGpt2, kLlama, kQwen2, kMistral, kFairseqLm };
// "gpt2" / "llama" / "qwen2" / "mistral" / "fairseq_lm"
absl::string_view ModelFamilyName(ModelFamily family);

enum class NormKind {
  kLayerNorm,  // centre, divide by the standard deviation, scale (and shift if a bias exists)
  kRmsNorm,    // divide by the root mean square (in float32 at least, as HF does), scale
};
enum class PositionKind {
  kLearned,     // a trained [P, d] table added to the token embedding
  kRotary,      // RoPE applied to queries and keys (RopeConfig)
  kSinusoidal,  // fairseq's fixed table added to the token embedding: [sin | cos] halves
};
enum class FfnKind {
  kPlain,  // act(W_in·x + b)          → one key per neuron, "in"
  kGated,  // act(W_gate·x) ⊙ (W_up·x) → two keys per neuron, "gate" and "up"
};

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

// The traits the forward pass, the method and the components read: a new family is described here
// (FamilyArchitecture), not by branches on its name. Every layer is pre-norm (norm → attention →
// residual add, norm → FFN → residual add), as in all supported families.
struct Architecture {
  NormKind norm = NormKind::kLayerNorm;
  PositionKind positions = PositionKind::kLearned;
  // The sinusoidal table row of token t is t + position_offset (fairseq: padding_idx + 1 = 2).
  int64_t position_offset = 0;
  FfnKind ffn = FfnKind::kPlain;
  // A norm between the last residual and the output layer. Without one the method has no frozen
  // scale (σ = 1): its log-prob increases are exactly what the model would output.
  bool final_norm = true;
  double embedding_scale = 1.0;  // token embeddings are multiplied by this (fairseq: sqrt(d))
  bool scale_attention = true;   // attention scores × head_dim^-1/2
  bool scale_attention_by_inverse_layer = false;  // × 1/(layer + 1) (a GPT-2 option)
  // Sliding-window attention (Mistral): key j is visible to query i iff i − window < j ≤ i;
  // 0 = every earlier key.
  int64_t sliding_window = 0;
};

// The architecture traits of a family with its defaults (a loader may adjust them from the
// checkpoint's config). Pure function.
Architecture FamilyArchitecture(ModelFamily family);

// Everything the loader and the forward pass need to know about a model. Absent or null optional
// values take the Hugging Face defaults of GPT2Config / LlamaConfig.
struct ModelConfig {
  ModelFamily family = ModelFamily::kGpt2;
  Architecture architecture;
  int64_t vocab_size = 0;
  int64_t d_model = 0;
  int64_t n_layers = 0;
  int64_t n_heads = 0;
  int64_t n_kv_heads = 0;  // == n_heads without grouped-query attention
  int64_t head_dim = 0;
  int64_t d_ffn = 0;
  int64_t max_positions = 0;
  double norm_eps = 1e-5;
  bool tie_word_embeddings = true;
  Activation activation = Activation::kGeluTanh;
  // Which optional biases the checkpoint holds: q/k/v (Llama's attention_bias, always for Qwen2),
  // the attention output (Llama's attention_bias), the MLP (mlp_bias).
  bool attention_bias = false;
  bool attention_output_bias = false;
  bool mlp_bias = false;
  RopeConfig rope;          // read when architecture.positions is kRotary
  std::string torch_dtype;  // as declared ("float16", ...), empty if absent; informational
};

// Parses config.json text. Errors (InvalidArgument, naming the key): not JSON, unknown or missing
// model_type, a value of the wrong type or out of range, inconsistent head counts, an unsupported
// activation or rope type (Unimplemented). Pure function; thread-safe.
absl::StatusOr<ModelConfig> ParseModelConfig(absl::string_view json_text);

}  // namespace factlens

#endif  // FACTLENS_ANALYSIS_MODEL_CONFIG_H_
