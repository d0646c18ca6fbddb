// Activation tracing: which earlier components activate a neuron. A neuron's pre-activation is the
// inner product of its key with the (normed) residual, a sum of earlier components; the raw inner
// product of the key with each component (no centering, no norm scale, no bias — as in the paper)
// measures how much that component activates the neuron. Definitions: docs/method-reference.md.
#ifndef FACTLENS_ANALYSIS_TRACING_H_
#define FACTLENS_ANALYSIS_TRACING_H_

#include <ATen/core/Tensor.h>

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "analysis/attribution.h"
#include "analysis/forward.h"
#include "analysis/weights.h"

namespace factlens {

// A neuron's key: plain FFN (GPT-2, fairseq) "in" = W_in row ⊙ pre-FFN norm weight; gated FFN
// (Llama) "gate" and "up" rows ⊙ pre-FFN norm weight; attention neuron "value" = value-projection
// row (kv head, dim) ⊙ input-norm weight.
struct NeuronKey {
  std::string name;
  at::Tensor key;  // [d] float32
};

// The keys of FFN neuron (layer, neuron): plain {"in"}, gated {"gate", "up"}; and the "value" key
// of attention neuron (layer, head, dim). Indices must be in range (unchecked). Thread-safe.
std::vector<NeuronKey> FfnNeuronKeys(const Model& model, int64_t layer, int64_t neuron);
NeuronKey AttentionNeuronKey(const Model& model, int64_t layer, int64_t head, int64_t dim);

// One earlier FFN neuron's subvalue scored against a key.
struct SubvalueScore {
  int64_t layer = 0;
  int64_t neuron = 0;
  double score = 0;  // (coefficient · W_out row) · key
};

struct KeyTrace {
  NeuronKey key;
  // [1 + 2L]: 0 = embedding, 2m+1 = attention layer m, 2m+2 = FFN layer m (outputs with biases);
  // slots the neuron cannot see are 0.
  at::Tensor layer_scores;
  at::Tensor head_scores;  // [L, H]: each head's output through W_O (no bias); unseen heads 0
  double total = 0;        // Σ layer_scores = key · (residual the neuron reads)
  std::vector<SubvalueScore> top_subvalues;  // the query FFN neurons, largest scores first
};

struct NeuronTrace {
  int64_t layer = 0;
  int64_t position = 0;  // where the key reads the residual (source position for attention)
  std::vector<KeyTrace> keys;
};

// Traces FFN neuron (layer, neuron) at `position` (negative counts from the end): components up to
// and including attention layer `layer`. `top_k` query FFN neurons per key (0..N·L).
// InvalidArgument naming the field for out-of-range indices. Thread-safe.
absl::StatusOr<NeuronTrace> TraceFfnNeuron(const Model& model, const ForwardTrace& trace,
                                           int64_t layer, int64_t neuron, int64_t position,
                                           int64_t top_k);

// Traces attention neuron (layer, source position, head, dim): components before layer `layer` at
// the source position.
absl::StatusOr<NeuronTrace> TraceAttentionNeuron(const Model& model, const ForwardTrace& trace,
                                                 int64_t layer, int64_t source_position,
                                                 int64_t head, int64_t dim, int64_t top_k);

// Aggregated query-layer scores over ranked neurons: Σ_neurons layer_scores / total × score, one
// [1 + 2L] vector per key name (plain FFN: "in"; gated FFN: "gate", "up"; attention: "value").
// Neurons come from `attribution`'s rankings (FFN or attention neurons respectively).
std::vector<std::pair<std::string, at::Tensor>> QueryLayerScoresFfn(
    const Attribution& attribution, const std::vector<RankedNeuron>& neurons);
at::Tensor QueryLayerScoresAttention(const Attribution& attribution,
                                     const std::vector<RankedNeuron>& neurons);
// [L, N]: Σ over attention neurons (l, s, h, j) of, for every FFN neuron (l' < l, n),
// (coef(l', s, n) · W_out row n) · key / (residual_in(l)[s] · key) × the attention neuron's score.
at::Tensor QueryFfnNeuronScores(const Attribution& attribution,
                                const std::vector<RankedNeuron>& attention_neurons);

// Splits an attention neuron's per-layer index into (source position, head, dim).
struct AttentionNeuronIndex {
  int64_t source_position, head, dim;
};
AttentionNeuronIndex SplitAttentionNeuronIndex(const ModelConfig& config, int64_t index);

}  // namespace factlens

#endif  // FACTLENS_ANALYSIS_TRACING_H_
