#include "analysis/tracing.h"

#include <ATen/ATen.h>

#include <algorithm>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace factlens {
namespace {

absl::Status CheckRange(const char* field, int64_t value, int64_t limit) {
  if (value < 0 || value >= limit) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ": ", value, " is out of range [0, ", limit, ")"));
  }
  return absl::OkStatus();
}

// Scores of `key` against the components at `position` that the residual entering layer
// `layer` holds, plus attention layer `layer` itself when `include_attention`.
KeyTrace TraceKey(const Model& model, const ForwardTrace& trace, NeuronKey key, int64_t layer,
                  int64_t position, bool include_attention, int64_t top_k) {
  const ModelConfig& c = model.config();
  KeyTrace result;
  result.layer_scores = at::zeros({1 + 2 * c.n_layers}, at::kDouble);
  result.head_scores = at::zeros({c.n_layers, c.n_heads}, at::kDouble);
  // Layer scores in float64: the query-layer scores divide them by their sum, which cancellation
  // can make small, so float32 rounding would be amplified.
  const at::Tensor key64 = key.key.to(at::kDouble);
  auto dot = [&](const at::Tensor& v) { return at::dot(v.to(at::kDouble), key64).item<double>(); };
  result.layer_scores[0] = dot(trace.embedding[position]);
  const int64_t last_attention = include_attention ? layer : layer - 1;
  std::vector<at::Tensor> subvalue_scores;
  for (int64_t m = 0; m <= last_attention; ++m) {
    const LayerTrace& lt = trace.layers[m];
    result.layer_scores[2 * m + 1] = dot(lt.attn_out[position]);
    // Head h's output through its block of W_O: [H, d], then · key.
    const at::Tensor o = model.weights()
                             .layers[m]
                             .o_weight.to(at::kFloat)
                             .t()
                             .reshape({c.n_heads, c.head_dim, c.d_model});
    result.head_scores[m] =
        at::einsum("hj,hjd,d->h", {lt.head_outputs[position], o, key.key}).to(at::kDouble);
    if (m < layer) {
      result.layer_scores[2 * m + 2] = dot(lt.ffn_out[position]);
      if (top_k > 0) {  // a pass over W_out, only when the top subvalues are asked for
        const at::Tensor w_out = model.weights().layers[m].out_weight.to(at::kFloat);  // [d, N]
        subvalue_scores.push_back(lt.ffn_coefficients[position] * at::mv(w_out.t(), key.key));
      }
    }
  }
  result.total = result.layer_scores.sum().item<double>();
  if (!subvalue_scores.empty() && top_k > 0) {
    for (const auto& [flat, score] : TopScores(at::stack(subvalue_scores), top_k)) {
      result.top_subvalues.push_back({flat / c.d_ffn, flat % c.d_ffn, score});
    }
  }
  result.key = std::move(key);
  return result;
}

}  // namespace

std::vector<NeuronKey> FfnNeuronKeys(const Model& model, int64_t layer, int64_t neuron) {
  const LayerWeights& w = model.weights().layers[layer];
  const at::Tensor g = w.ffn_norm_weight.to(at::kFloat);
  if (model.config().architecture.ffn == FfnKind::kPlain) {
    return {{"in", w.in_weight[neuron].to(at::kFloat) * g}};
  }
  return {{"gate", w.gate_weight[neuron].to(at::kFloat) * g},
          {"up", w.in_weight[neuron].to(at::kFloat) * g}};
}

NeuronKey AttentionNeuronKey(const Model& model, int64_t layer, int64_t head, int64_t dim) {
  const ModelConfig& c = model.config();
  const LayerWeights& w = model.weights().layers[layer];
  const int64_t kv_head = head / (c.n_heads / c.n_kv_heads);
  return {"value", w.v_weight[kv_head * c.head_dim + dim].to(at::kFloat) *
                       w.attn_norm_weight.to(at::kFloat)};
}

AttentionNeuronIndex SplitAttentionNeuronIndex(const ModelConfig& config, int64_t index) {
  const int64_t per_position = config.n_heads * config.head_dim;
  return {index / per_position, (index % per_position) / config.head_dim, index % config.head_dim};
}

absl::StatusOr<NeuronTrace> TraceFfnNeuron(const Model& model, const ForwardTrace& trace,
                                           int64_t layer, int64_t neuron, int64_t position,
                                           int64_t top_k) {
  const ModelConfig& c = model.config();
  if (position < 0) position += trace.num_tokens;
  absl::Status status = CheckRange("layer", layer, c.n_layers);
  if (status.ok()) status = CheckRange("neuron", neuron, c.d_ffn);
  if (status.ok()) status = CheckRange("position", position, trace.num_tokens);
  if (status.ok()) status = CheckRange("top_k", top_k, c.n_layers * c.d_ffn + 1);
  if (!status.ok()) return status;
  NeuronTrace result{layer, position, {}};
  for (NeuronKey& key : FfnNeuronKeys(model, layer, neuron)) {
    result.keys.push_back(TraceKey(model, trace, std::move(key), layer, position, true, top_k));
  }
  return result;
}

absl::StatusOr<NeuronTrace> TraceAttentionNeuron(const Model& model, const ForwardTrace& trace,
                                                 int64_t layer, int64_t source_position,
                                                 int64_t head, int64_t dim, int64_t top_k) {
  const ModelConfig& c = model.config();
  if (source_position < 0) source_position += trace.num_tokens;
  absl::Status status = CheckRange("layer", layer, c.n_layers);
  if (status.ok()) status = CheckRange("source_position", source_position, trace.num_tokens);
  if (status.ok()) status = CheckRange("head", head, c.n_heads);
  if (status.ok()) status = CheckRange("dim", dim, c.head_dim);
  if (status.ok()) status = CheckRange("top_k", top_k, c.n_layers * c.d_ffn + 1);
  if (!status.ok()) return status;
  NeuronTrace result{layer, source_position, {}};
  result.keys.push_back(TraceKey(model, trace, AttentionNeuronKey(model, layer, head, dim), layer,
                                 source_position, false, top_k));
  return result;
}

namespace {

// The components the residual at `position` is a sum of, [1 + 2L, d] float64: the embedding,
// then attention layer m and FFN layer m at rows 2m+1 and 2m+2 (outputs with their biases).
at::Tensor ComponentsAt(const ForwardTrace& trace, int64_t position) {
  std::vector<at::Tensor> rows = {trace.embedding[position]};
  for (const LayerTrace& layer : trace.layers) {
    rows.push_back(layer.attn_out[position]);
    rows.push_back(layer.ffn_out[position]);
  }
  return at::stack(rows).to(at::kDouble);
}

// Σ_i layer_scores_i / total_i × score_i over neurons i as TraceKey computes them, from the
// float64 inner products [n, 1 + 2L] of their keys with the components (one batched product for
// all neurons), slots after reach[i] set to 0. [1 + 2L] float64 on the CPU.
at::Tensor AggregateLayerScores(at::Tensor layer_scores, const std::vector<int64_t>& reach,
                                const std::vector<double>& scores) {
  layer_scores = layer_scores.to(at::kCPU);
  const at::Tensor slots = at::arange(layer_scores.size(1), at::kLong).unsqueeze(0);
  layer_scores = layer_scores.masked_fill(slots > at::tensor(reach, at::kLong).unsqueeze(1), 0.0);
  const at::Tensor weights = at::tensor(scores, at::kDouble).unsqueeze(1);
  return (layer_scores / layer_scores.sum(1, /*keepdim=*/true) * weights).sum(0);
}

}  // namespace

std::vector<std::pair<std::string, at::Tensor>> QueryLayerScoresFfn(
    const Attribution& attribution, const std::vector<RankedNeuron>& neurons) {
  const Model& model = attribution.model();
  const at::Tensor components = ComponentsAt(attribution.trace(), attribution.position());
  std::vector<std::vector<at::Tensor>> keys;  // per key name, per neuron
  std::vector<int64_t> reach;
  std::vector<double> scores;
  for (const RankedNeuron& n : neurons) {
    const std::vector<NeuronKey> neuron_keys = FfnNeuronKeys(model, n.layer, n.index);
    keys.resize(neuron_keys.size());
    for (size_t k = 0; k < neuron_keys.size(); ++k) keys[k].push_back(neuron_keys[k].key);
    reach.push_back(2 * n.layer + 1);  // up to and including attention layer n.layer
    scores.push_back(n.score);
  }
  std::vector<std::pair<std::string, at::Tensor>> sums;
  for (const NeuronKey& name : FfnNeuronKeys(model, 0, 0)) {
    sums.emplace_back(name.name, at::zeros({components.size(0)}, at::kDouble));
  }
  if (neurons.empty()) return sums;
  for (size_t k = 0; k < sums.size(); ++k) {
    const at::Tensor layer_scores =
        at::matmul(at::stack(keys[k]).to(at::kDouble), components.t());  // [n, 1 + 2L]
    sums[k].second = AggregateLayerScores(layer_scores, reach, scores);
  }
  return sums;
}

at::Tensor QueryLayerScoresAttention(const Attribution& attribution,
                                     const std::vector<RankedNeuron>& neurons) {
  const Model& model = attribution.model();
  const ForwardTrace& trace = attribution.trace();
  std::vector<at::Tensor> components(trace.num_tokens);
  std::vector<at::Tensor> keys, reads;
  std::vector<int64_t> reach;
  std::vector<double> scores;
  for (const RankedNeuron& n : neurons) {
    const AttentionNeuronIndex i = SplitAttentionNeuronIndex(model.config(), n.index);
    at::Tensor& at_source = components[i.source_position];
    if (!at_source.defined()) at_source = ComponentsAt(trace, i.source_position);
    reads.push_back(at_source);
    keys.push_back(AttentionNeuronKey(model, n.layer, i.head, i.dim).key);
    reach.push_back(2 * n.layer);  // components before layer n.layer
    scores.push_back(n.score);
  }
  if (neurons.empty()) return at::zeros({1 + 2 * model.config().n_layers}, at::kDouble);
  const at::Tensor layer_scores =  // [n, 1 + 2L]
      at::matmul(at::stack(reads), at::stack(keys).to(at::kDouble).unsqueeze(-1)).squeeze(-1);
  return AggregateLayerScores(layer_scores, reach, scores);
}

at::Tensor QueryFfnNeuronScores(const Attribution& attribution,
                                const std::vector<RankedNeuron>& attention_neurons) {
  const Model& model = attribution.model();
  const ModelConfig& c = model.config();
  const ForwardTrace& trace = attribution.trace();
  at::Tensor sum =
      at::zeros({c.n_layers, c.d_ffn}, at::TensorOptions(at::kDouble).device(model.device()));
  struct Query {
    int64_t layer, source_position;
    at::Tensor key;  // [d] float32
    double weight;   // score / (residual_in(layer)[source] · key)
  };
  std::vector<Query> queries;
  for (const RankedNeuron& n : attention_neurons) {
    const AttentionNeuronIndex i = SplitAttentionNeuronIndex(c, n.index);
    const NeuronKey key = AttentionNeuronKey(model, n.layer, i.head, i.dim);
    const double denominator =
        at::dot(trace.layers[n.layer].residual_in[i.source_position], key.key).item<double>();
    queries.push_back({n.layer, i.source_position, key.key, n.score / denominator});
  }
  // Per earlier layer m, one product of W_out with the keys of every neuron above it: float32
  // (coef(m, s, n) · W_out row n) · key, each a length-d float32 dot product as before batching.
  for (int64_t m = 0; m + 1 < c.n_layers; ++m) {
    std::vector<at::Tensor> keys, coefficients, weights;
    for (const Query& q : queries) {
      if (q.layer <= m) continue;
      keys.push_back(q.key);
      coefficients.push_back(trace.layers[m].ffn_coefficients[q.source_position]);
      weights.push_back(at::full({1}, q.weight, at::kDouble));
    }
    if (keys.empty()) continue;
    const at::Tensor w_out = model.weights().layers[m].out_weight.to(at::kFloat);  // [d, N]
    const at::Tensor scores = at::stack(coefficients) * at::matmul(at::stack(keys), w_out);
    sum[m] = (scores.to(at::kDouble) * at::stack(weights).to(sum.device())).sum(0);
  }
  return sum;
}

}  // namespace factlens
