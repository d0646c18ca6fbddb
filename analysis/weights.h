// A loaded model: its config and its weights as tensors on one device, in one compute dtype.
#ifndef FACTLENS_ANALYSIS_WEIGHTS_H_
#define FACTLENS_ANALYSIS_WEIGHTS_H_

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "analysis/model_config.h"
#include "analysis/output_head.h"

namespace factlens {

// One transformer block. Projection weights use the nn.Linear layout [out, in] for every family
// (GPT-2's Conv1D [in, out] tensors are held as transposed views). Tensors a family or config
// lacks are undefined (e.g. GPT-2 has no gate; Llama has no norm biases unless configured).
struct LayerWeights {
  at::Tensor attn_norm_weight, attn_norm_bias;  // ln_1 / input_layernorm
  at::Tensor q_weight, k_weight, v_weight;      // [H·Dh, d], [KV·Dh, d], [KV·Dh, d]
  at::Tensor q_bias, k_bias, v_bias;
  at::Tensor o_weight, o_bias;                // [d, H·Dh]
  at::Tensor ffn_norm_weight, ffn_norm_bias;  // ln_2 / post_attention_layernorm
  at::Tensor in_weight, in_bias;              // [N, d]: GPT-2 c_fc, Llama up_proj, fairseq fc1
  at::Tensor gate_weight, gate_bias;          // [N, d]: Llama gate_proj (gated FFNs only)
  at::Tensor out_weight, out_bias;            // [d, N]: GPT-2 mlp.c_proj, Llama down_proj, fc2
};

// One band of fairseq's adaptive input: token ids [start, start + n) are embedded as
// projection · embedding[id − start].
struct AdaptiveInputBand {
  int64_t start = 0;
  at::Tensor embedding;   // [n, d_b]
  at::Tensor projection;  // [d, d_b]
};

struct ModelWeights {
  at::Tensor token_embedding;                  // [V, d], or undefined with adaptive input bands
  std::vector<AdaptiveInputBand> input_bands;  // fairseq adaptive input, else empty
  at::Tensor position_embedding;               // [P, d] for learned positions
  std::vector<LayerWeights> layers;
  at::Tensor final_norm_weight, final_norm_bias;  // undefined without a final norm / bias
  // The output layer: a [V, d] unembedding (the token embedding when tied), or fairseq's adaptive
  // softmax bands (band 0 first) and cluster weights [B − 1, d].
  at::Tensor unembedding;
  std::vector<AdaptiveSoftmaxBand> output_bands;
  at::Tensor cluster_weight;
};

// Compute dtype names as flags and model specs spell them: float32, float64, float16, bfloat16.
// Parse: InvalidArgument listing the valid names for anything else.
absl::StatusOr<c10::ScalarType> ParseComputeDType(std::string_view name);
std::string_view ComputeDTypeName(c10::ScalarType dtype);

// The compute dtype of a load: `requested`, else float32 on CPU and `checkpoint_dtype` on a GPU.
// InvalidArgument for a non-floating dtype or float16 on CPU.
absl::StatusOr<c10::ScalarType> ComputeDType(std::optional<c10::ScalarType> requested,
                                             c10::Device device, c10::ScalarType checkpoint_dtype);

struct LoadOptions {
  // "cpu", "cuda", "cuda:1", ...
  std::string device = "cpu";
  // Compute dtype. Default: float32 on CPU; on CUDA the checkpoint's floating dtype.
  // float16 on CPU is refused (libtorch's CPU matmuls do not support it). float64 computes the
  // forward pass in double precision (a reference run: the parity tests use it so that their
  // outcome does not depend on the CPU's float32 kernels); traces are float32 in every case.
  std::optional<c10::ScalarType> dtype;
};

// An immutable loaded model. Weights of a float32 checkpoint loaded to CPU in float32 stay in the
// memory-mapped file (zero copy, read-only pages: nothing may write to them); otherwise they are
// converted copies. Safe to share across threads; forward passes never modify it.
class Model {
 public:
  // Loads `reference` (a directory or an HF-cache repo id, see ResolveModelDirectory): a Hugging
  // Face directory (config.json + safetensors) or a fairseq one (model.pt + dict.txt, no
  // config.json; analysis/fairseq_model.h).
  // Errors: NotFound (no such model / file), DataLoss (corrupt or inconsistent checkpoint: missing
  // tensor, shape or dtype that disagrees with the config), InvalidArgument / Unimplemented (bad or
  // unsupported config.json, bad options).
  static absl::StatusOr<std::shared_ptr<const Model>> Load(const std::string& reference,
                                                           const LoadOptions& options = {});

  // A model from weights already in memory (benchmarks of real shapes with random weights, the
  // fairseq loader): every tensor on one device in one compute dtype, the output layer's; shapes
  // as in ModelWeights and consistent with `config` (the caller's responsibility: only the layer
  // count and the presence of an output layer are checked, InvalidArgument otherwise). `name`
  // stands in for the directory in messages. Prepares what the method needs, as Load does.
  static absl::StatusOr<std::shared_ptr<const Model>> FromWeights(ModelConfig config,
                                                                  ModelWeights weights,
                                                                  std::string name);

  const ModelConfig& config() const { return config_; }
  const ModelWeights& weights() const { return weights_; }
  // The output layer, prepared once at load (analysis/output_head.h).
  const OutputHead& output_head() const { return *output_head_; }
  c10::Device device() const { return device_; }
  c10::ScalarType dtype() const { return dtype_; }
  const std::string& directory() const { return directory_; }
  // Bytes of all weight tensors, the output head's prepared float64 tensors included (shared
  // storage counted once).
  uint64_t resident_bytes() const { return resident_bytes_; }

 private:
  Model(ModelConfig config, c10::Device device) : config_(std::move(config)), device_(device) {}
  // Builds the output head from weights_ and counts resident_bytes_.
  absl::Status PrepareForAnalysis();
  ModelConfig config_;
  ModelWeights weights_;
  std::shared_ptr<const OutputHead> output_head_;
  c10::Device device_;
  c10::ScalarType dtype_ = c10::ScalarType::Float;
  std::string directory_;
  uint64_t resident_bytes_ = 0;
};

}  // namespace factlens

#endif  // FACTLENS_ANALYSIS_WEIGHTS_H_
