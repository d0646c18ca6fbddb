// Addressing single components of the residual stream, for projections, decompositions and
// ablation requests.
#ifndef FACTLENS_ANALYSIS_COMPONENTS_H_
#define FACTLENS_ANALYSIS_COMPONENTS_H_

#include <ATen/core/Tensor.h>

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "analysis/forward.h"
#include "analysis/weights.h"

namespace factlens {

enum class ComponentKind {
  kEmbedding,             // token (+ position) embedding
  kAttentionLayer,        // attention output with bias
  kFfnLayer,              // FFN output with bias
  kHead,                  // one head through W_O (no bias)
  kHeadPosition,          // one head, one source position
  kFfnNeuron,             // subvalue m·v
  kFfnNeuronValue,        // v (row of W_out)
  kFfnNeuronKey,          // key "in" | "gate" | "up"
  kAttentionNeuron,       // subvalue α·value·W_O column
  kAttentionNeuronValue,  // the W_O column
  kAttentionNeuronKey,    // value-projection row ⊙ input-norm weight
  kResidual,              // the final residual
  kAttentionBias,         // attention output minus Σ heads: its bias (GPT-2), zero without one
};

struct ComponentRef {
  ComponentKind kind = ComponentKind::kResidual;
  int64_t layer = 0;
  int64_t head = 0;
  int64_t source_position = 0;
  int64_t neuron = 0;  // FFN neuron, or the attention head dim
  std::string key_name;
};

// The component's d-vector (float32) at query `position` (resolved, in [0, T)) of a FullCapture()
// trace. InvalidArgument naming the field for out-of-range indices or an unknown key name.
// Thread-safe.
absl::StatusOr<at::Tensor> ComponentVector(const Model& model, const ForwardTrace& trace,
                                           int64_t position, const ComponentRef& ref);

// Turns a component into a forward-pass ablation at `position` (nullopt = every position).
// InvalidArgument for kinds that cannot be ablated (embedding, values, keys, residual).
absl::StatusOr<Ablation> ToAblation(const ComponentRef& ref, std::optional<int64_t> position,
                                    double scale);

}  // namespace factlens

#endif  // FACTLENS_ANALYSIS_COMPONENTS_H_
