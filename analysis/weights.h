// A loaded model: its config and its weights as tensors on one device, the large matrices in the
// storage dtype and the rest in the compute dtype (Precision).
#ifndef FACTLENS_ANALYSIS_WEIGHTS_H_
#define FACTLENS_ANALYSIS_WEIGHTS_H_

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "analysis/host_memory.h"
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

// Dtype names as flags and model specs spell them: float32, float64, float16, bfloat16.
// Parse: InvalidArgument listing the valid names for anything else.
absl::StatusOr<c10::ScalarType> ParseComputeDType(std::string_view name);
std::string_view ComputeDTypeName(c10::ScalarType dtype);

// What a weight tensor is, for the dtype it is held in (see Precision).
enum class WeightRole {
  kMatrix,  // a large matrix: q/k/v/o, FFN in/gate/out, token embedding, unembedding, adaptive
            // input and softmax bands
  kSmall,   // everything else: norm weights and biases, biases, position embeddings, the adaptive
            // softmax's cluster weights
};

// The dtypes a model is held and computed in. Large matrices are held in `storage`; activations
// and every small tensor are in `compute`. The two differ only on CPU with dtype=bfloat16 or
// float16: libtorch's CPU matrix products in those dtypes are slow (bf16 without native support,
// measured ~60x float32 on a 7B shape) or missing (fp16), so the matrices stay 2 bytes a value
// and each is widened to float32 when the forward pass uses it (analysis/forward.cc, Linear).
struct Precision {
  c10::ScalarType compute = c10::ScalarType::Float;  // Model::dtype()
  c10::ScalarType storage = c10::ScalarType::Float;  // Model::weights_dtype()
  c10::ScalarType For(WeightRole role) const {
    return role == WeightRole::kMatrix ? storage : compute;
  }
};

// The precision of a load that asks for `requested` (nullopt: the default, float32 on CPU and
// `checkpoint_dtype` on a GPU). On a GPU both dtypes are the requested one; on CPU bfloat16 and
// float16 mean weights in that dtype computed in float32, float32 and float64 mean both.
// InvalidArgument for a non-floating dtype.
absl::StatusOr<Precision> ChoosePrecision(std::optional<c10::ScalarType> requested,
                                          c10::Device device, c10::ScalarType checkpoint_dtype);

struct LoadOptions {
  // "cpu", "cuda", "cuda:1", ...
  std::string device = "cpu";
  // Default: float32 on CPU; on CUDA the checkpoint's floating dtype. On CUDA the dtype is the
  // weights' and the compute dtype. On CPU, bfloat16 and float16 keep the large weight matrices in
  // that dtype (half the memory of float32; a checkpoint already in that dtype is used in place
  // from the mapped file) and compute in float32, widening one matrix at a time (Precision).
  // float64 computes the forward pass in double precision (a reference run: the parity tests use
  // it so that their outcome does not depend on the CPU's float32 kernels); traces are float32 in
  // every case.
  std::optional<c10::ScalarType> dtype;
};

// What loading a model allocates beyond its checkpoint's mapped files, in bytes, on the load's
// device. Model::Load compares total() with what a CPU process can get (analysis/host_memory.h)
// before it allocates anything.
struct LoadFootprint {
  // Converted copies of the weights. Tensors used in place from a mapped safetensors file (on CPU,
  // stored dtype = the dtype they are held in) count 0.
  uint64_t weights = 0;
  // The float64 output layer prepared for the method (V x d x 8 for an unembedding).
  uint64_t output_head = 0;
  // Stated working margin: the head's build temporary (its size again), two layer matrices widened
  // to float32 (a forward pass and an analysis can each hold one), and 256 MiB for the rest.
  uint64_t margin = 0;
  uint64_t total() const { return weights + output_head + margin; }
};

// Estimates what Model::Load(reference, options) would allocate, without converting anything: it
// reads the config and maps the checkpoint. Errors as Model::Load's (bad checkpoint, options).
absl::StatusOr<LoadFootprint> EstimateLoad(const std::string& reference,
                                           const LoadOptions& options = {});

// The decision Model::Load makes for a CPU load of `name` held in `dtype` (the storage dtype) that
// needs `need`, given the process's `limits`: OK when need.total() fits the tightest limit;
// otherwise ResourceExhausted saying what is needed and available (GiB), which limit binds, and
// the way out: the first of `alternatives` (other dtypes and their footprints) that fits, or the
// smallest when none does; one that is `checkpoint_dtype` is said to use the matrices in place.
absl::Status CheckLoadFits(
    std::string_view name, c10::ScalarType dtype, const LoadFootprint& need,
    const HostMemoryLimits& limits, c10::ScalarType checkpoint_dtype,
    const std::vector<std::pair<c10::ScalarType, LoadFootprint>>& alternatives);

// A checkpoint read but not yet converted (Model::Load's first step): the config and the weights
// as stored (CPU tensors, mapping the checkpoint's file where aligned), the device and precision
// they are to be held in.
struct StoredModel {
  ModelConfig config;
  ModelWeights weights;
  c10::Device device = c10::Device(c10::kCPU);
  Precision precision;
  c10::ScalarType checkpoint_dtype = c10::ScalarType::Float;  // most of its bytes
  std::string directory;
};

// An immutable loaded model. Weights used in their stored dtype on CPU (a float32 checkpoint
// loaded in float32, a bfloat16 or float16 one loaded with dtype=bfloat16 / float16) stay in the
// memory-mapped file (zero copy, read-only pages: nothing may write to them); otherwise they are
// converted copies. Safe to share across threads; forward passes never modify it.
class Model {
 public:
  // Loads `reference` (a directory or an HF-cache repo id, see ResolveModelDirectory): a Hugging
  // Face directory (config.json + safetensors) or a fairseq one (model.pt + dict.txt, no
  // config.json; analysis/fairseq_model.h).
  // Errors: NotFound (no such model / file), DataLoss (corrupt or inconsistent checkpoint: missing
  // tensor, shape or dtype that disagrees with the config), InvalidArgument / Unimplemented (bad or
  // unsupported config.json, bad options), ResourceExhausted (on CPU: the load would need more
  // memory than the process can get, checked before converting anything, see CheckLoadFits; or an
  // allocation failed all the same).
  static absl::StatusOr<std::shared_ptr<const Model>> Load(const std::string& reference,
                                                           const LoadOptions& options = {});

  // A model from weights already in memory (benchmarks of real shapes with random weights): every
  // tensor on one device; the output layer's dtype is the storage dtype requested (its Precision
  // per ChoosePrecision: bfloat16 / float16 on CPU compute in float32), tensors in another dtype
  // than their role takes are converted. Shapes as in ModelWeights and consistent with `config`
  // (the caller's responsibility: only the layer count and the presence of an output layer are
  // checked, InvalidArgument otherwise). `name` stands in for the directory in messages. Prepares
  // what the method needs, as Load does.
  static absl::StatusOr<std::shared_ptr<const Model>> FromWeights(ModelConfig config,
                                                                  ModelWeights weights,
                                                                  std::string name);

  const ModelConfig& config() const { return config_; }
  const ModelWeights& weights() const { return weights_; }
  // The output layer, prepared once at load (analysis/output_head.h).
  const OutputHead& output_head() const { return *output_head_; }
  c10::Device device() const { return device_; }
  // The compute dtype: activations, small weight tensors.
  c10::ScalarType dtype() const { return precision_.compute; }
  // The dtype the large weight matrices are held in (WeightRole::kMatrix); dtype() except on CPU
  // with bfloat16 / float16 weights.
  c10::ScalarType weights_dtype() const { return precision_.storage; }
  const std::string& directory() const { return directory_; }
  // Bytes of all weight tensors, the output head's prepared float64 tensors included (shared
  // storage counted once; mapped ones too).
  uint64_t resident_bytes() const { return resident_bytes_; }
  // The float32 norms of each layer's output vectors, per layer [N] for the FFN (columns of
  // out_weight) and [H·Dh] for attention (columns of o_weight): what the method's bounds need
  // for every request, computed on first use (about a second for TinyLlama on one core) and kept.
  // The same bits as norm(2, 1) of the float32 vectors. Thread-safe.
  const std::vector<at::Tensor>& FfnOutputNorms() const;
  const std::vector<at::Tensor>& AttentionOutputNorms() const;

 private:
  struct OutputNorms {
    std::once_flag once;
    std::vector<at::Tensor> ffn, attention;
  };
  const OutputNorms& output_norms() const;
  Model(ModelConfig config, c10::Device device) : config_(std::move(config)), device_(device) {}
  // Builds the output head from weights_ and counts resident_bytes_.
  absl::Status PrepareForAnalysis();
  ModelConfig config_;
  ModelWeights weights_;
  std::shared_ptr<const OutputHead> output_head_;
  c10::Device device_;
  Precision precision_;
  std::string directory_;
  uint64_t resident_bytes_ = 0;
  std::unique_ptr<OutputNorms> output_norms_ = std::make_unique<OutputNorms>();
};

}  // namespace factlens

#endif  // FACTLENS_ANALYSIS_WEIGHTS_H_
