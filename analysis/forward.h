// Forward passes of GPT-2 and Llama that capture the residual stream and its components.
#ifndef FACTLENS_ANALYSIS_FORWARD_H_
#define FACTLENS_ANALYSIS_FORWARD_H_

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "analysis/weights.h"

namespace factlens {

// What a forward pass keeps. Capturing everything for a 7B model and a long prompt costs gigabytes,
// so an analysis asks only for the kinds and positions it needs.
struct CaptureOptions {
  bool residuals = true;          // residual_in/attn_out/residual_mid/ffn_out per layer, final
  bool ffn_coefficients = false;  // input of the FFN output projection
  bool head_outputs = false;      // per-head attention outputs before the output projection
  bool attention_probs = false;   // softmax attention weights
  bool values = false;            // value vectors (one per key/value head)
  bool keys = false;              // key vectors after rotary embedding (one per key/value head)
  bool logits = true;
  // Query positions whose rows are kept (in this order); empty keeps all. Values always keep every
  // source position. Negative entries count from the end (-1 = last token).
  std::vector<int64_t> positions;
};

// Only the logits, at one query position (negative counts from the end).
CaptureOptions LogitsAt(int64_t position);

// Per-layer captures; tensors not asked for are undefined. P = kept positions, T = all positions.
// All captured tensors are float32 on the model's device, except the logits (float64, see below).
struct LayerTrace {
  at::Tensor residual_in;       // [P, d]
  at::Tensor attn_out;          // [P, d], includes the output-projection bias
  at::Tensor residual_mid;      // [P, d]
  at::Tensor ffn_out;           // [P, d], includes the output-projection bias
  at::Tensor ffn_coefficients;  // [P, N]: act(x·W_in) (GPT-2), silu(gate)·up (Llama)
  at::Tensor head_outputs;      // [P, H, Dh]
  at::Tensor attention_probs;   // [H, P, T]
  at::Tensor values;            // [T, KV, Dh], including the value bias if any
  at::Tensor keys;              // [T, KV, Dh], including the key bias and rotary embedding
};

struct ForwardTrace {
  std::vector<int64_t> positions;  // the kept query positions, resolved to [0, T)
  int64_t num_tokens = 0;          // T
  std::vector<LayerTrace> layers;
  at::Tensor embedding;       // [P, d] token (+ position) embedding = layers[0].residual_in
  at::Tensor final_residual;  // [P, d] residual before the final norm
  // [P, V] float64: the float32 normed final residual through the float64 unembedding
  // (ModelWeights::unembedding64), whatever the compute dtype.
  at::Tensor logits;
};

// A component to remove (scale 0) or scale during a forward pass, for causal checks.
enum class AblationTarget {
  kAttentionLayer,   // the attention output of `layer` (with its bias)
  kFfnLayer,         // the FFN output of `layer` (with its bias)
  kHead,             // head `head`'s output before W_O
  kHeadPosition,     // head `head`'s attention to `source_position`
  kFfnNeuron,        // FFN neuron `index`'s coefficient
  kAttentionNeuron,  // dim `index` of head `head`'s value at `source_position`
};

struct Ablation {
  AblationTarget target = AblationTarget::kFfnNeuron;
  int64_t layer = 0;
  int64_t head = 0;
  int64_t source_position = 0;
  int64_t index = 0;
  // The query position whose computation changes; nullopt changes every position.
  std::optional<int64_t> position;
  double scale = 0.0;
};

// Runs the model on `token_ids` (no batching), applying `ablations`. InvalidArgument, naming the
// field, for an empty sequence, a sequence longer than the model's positions, ids outside the
// vocabulary, a capture position out of range, or an ablation index out of range.
// Thread-safe: any number of forward passes may run on one Model at once.
absl::StatusOr<ForwardTrace> Forward(const Model& model, absl::Span<const int64_t> token_ids,
                                     const CaptureOptions& capture = {},
                                     absl::Span<const Ablation> ablations = {});

// The float64 logits [V] at `position` of `token_ids` with `ablations`: what
// Forward(model, token_ids, LogitsAt(position), ablations).logits[0] computes. When every ablation
// is at that query position and `reference` is an unablated trace of the same tokens with
// residuals, keys and values at every position (FullCapture()) of a model computing in float32 or
// narrower (the trace is then lossless), only that position's row is recomputed, from the first
// ablated layer on, reading earlier positions' keys and values from `reference`: about one row's
// share of a forward pass. The result then differs from the full pass by float32 rounding only (a
// one-row product rounds differently from a T-row one). Otherwise it runs the full pass. Errors:
// those of Forward. Thread-safe.
absl::StatusOr<at::Tensor> AblatedLogitsAt(const Model& model, absl::Span<const int64_t> token_ids,
                                           const ForwardTrace& reference, int64_t position,
                                           absl::Span<const Ablation> ablations);

// The RoPE inverse frequencies [head_dim / 2] in `dtype`, as HF computes them (in float32) for the
// model's rope config. Llama only.
at::Tensor RotaryInverseFrequencies(const ModelConfig& config,
                                    c10::ScalarType dtype = c10::ScalarType::Float);

}  // namespace factlens

#endif  // FACTLENS_ANALYSIS_FORWARD_H_
