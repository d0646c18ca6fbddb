#include "analysis/components.h"

#include <ATen/ATen.h>

#include <cmath>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "analysis/tracing.h"

namespace factlens {
namespace {

absl::Status CheckRange(const char* field, int64_t value, int64_t limit) {
  if (value >= 0 && value < limit) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat("component.", field, ": ", value, " is out of range [0, ", limit, ")"));
}

}  // namespace

absl::StatusOr<at::Tensor> ComponentVector(const Model& model, const ForwardTrace& trace,
                                           int64_t position, const ComponentRef& ref) {
  const ModelConfig& c = model.config();
  const ComponentKind k = ref.kind;
  if (k == ComponentKind::kEmbedding) return trace.embedding[position];
  if (k == ComponentKind::kResidual) return trace.final_residual[position];
  absl::Status status = CheckRange("layer", ref.layer, c.n_layers);
  const bool head_kind = k == ComponentKind::kHead || k == ComponentKind::kHeadPosition ||
                         k == ComponentKind::kAttentionNeuron ||
                         k == ComponentKind::kAttentionNeuronValue ||
                         k == ComponentKind::kAttentionNeuronKey;
  const bool source_kind =
      k == ComponentKind::kHeadPosition || k == ComponentKind::kAttentionNeuron;
  const bool ffn_neuron_kind = k == ComponentKind::kFfnNeuron ||
                               k == ComponentKind::kFfnNeuronValue ||
                               k == ComponentKind::kFfnNeuronKey;
  const bool dim_kind = k == ComponentKind::kAttentionNeuron ||
                        k == ComponentKind::kAttentionNeuronValue ||
                        k == ComponentKind::kAttentionNeuronKey;
  if (status.ok() && head_kind) status = CheckRange("head", ref.head, c.n_heads);
  if (status.ok() && source_kind)
    status = CheckRange("source_position", ref.source_position, trace.num_tokens);
  if (status.ok() && ffn_neuron_kind) status = CheckRange("neuron", ref.neuron, c.d_ffn);
  if (status.ok() && dim_kind) status = CheckRange("neuron", ref.neuron, c.head_dim);
  if (!status.ok()) return status;

  const LayerTrace& lt = trace.layers[ref.layer];
  const LayerWeights& w = model.weights().layers[ref.layer];
  const at::Tensor o = w.o_weight.to(at::kFloat).t().reshape({c.n_heads, c.head_dim, c.d_model});
  const int64_t kv_head = ref.head / (c.n_heads / std::max<int64_t>(1, c.n_kv_heads));
  switch (k) {
    case ComponentKind::kAttentionLayer:
      return lt.attn_out[position];
    case ComponentKind::kAttentionBias:
      return lt.attn_out[position] -
             at::einsum("hj,hjd->d", {lt.head_outputs[position], o}).to(lt.attn_out.dtype());
    case ComponentKind::kFfnLayer:
      return lt.ffn_out[position];
    case ComponentKind::kHead:
      return at::mv(o[ref.head].t(), lt.head_outputs[position][ref.head]);
    case ComponentKind::kHeadPosition:
      return at::mv(o[ref.head].t(), lt.values[ref.source_position][kv_head]) *
             lt.attention_probs[ref.head][position][ref.source_position];
    case ComponentKind::kFfnNeuron:
      return w.out_weight.to(at::kFloat).select(1, ref.neuron) *
             lt.ffn_coefficients[position][ref.neuron];
    case ComponentKind::kFfnNeuronValue:
      return w.out_weight.to(at::kFloat).select(1, ref.neuron);
    case ComponentKind::kFfnNeuronKey: {
      const std::vector<NeuronKey> keys = FfnNeuronKeys(model, ref.layer, ref.neuron);
      const std::string name = ref.key_name.empty() ? keys[0].name : ref.key_name;
      for (const NeuronKey& key : keys) {
        if (key.name == name) return key.key;
      }
      std::vector<std::string> names;
      for (const NeuronKey& key : keys) names.push_back(key.name);
      return absl::InvalidArgumentError(absl::StrCat(
          "component.key_name: '", name, "' is not a key of a ", ModelFamilyName(c.family),
          " FFN neuron (", absl::StrJoin(names, ", "), ")"));
    }
    case ComponentKind::kAttentionNeuron:
      return o[ref.head][ref.neuron] * lt.attention_probs[ref.head][position][ref.source_position] *
             lt.values[ref.source_position][kv_head][ref.neuron];
    case ComponentKind::kAttentionNeuronValue:
      return o[ref.head][ref.neuron];
    case ComponentKind::kAttentionNeuronKey:
      return AttentionNeuronKey(model, ref.layer, ref.head, ref.neuron).key;
    default:
      return absl::InvalidArgumentError("component.kind: unsupported");
  }
}

namespace {

// The largest ablation scale magnitude: beyond it the float32 residual stream overflows.
constexpr double kMaxAblationScale = 1000;

}  // namespace

absl::StatusOr<Ablation> ToAblation(const ComponentRef& ref, std::optional<int64_t> position,
                                    double scale) {
  if (!std::isfinite(scale) || std::abs(scale) > kMaxAblationScale) {
    return absl::InvalidArgumentError(
        absl::StrCat("scale: ", scale, " is not a finite number of magnitude at most ",
                     kMaxAblationScale, " (larger scales overflow the float32 residual stream)"));
  }
  Ablation a;
  switch (ref.kind) {
    case ComponentKind::kAttentionLayer:
      a.target = AblationTarget::kAttentionLayer;
      break;
    case ComponentKind::kFfnLayer:
      a.target = AblationTarget::kFfnLayer;
      break;
    case ComponentKind::kHead:
      a.target = AblationTarget::kHead;
      break;
    case ComponentKind::kHeadPosition:
      a.target = AblationTarget::kHeadPosition;
      break;
    case ComponentKind::kFfnNeuron:
      a.target = AblationTarget::kFfnNeuron;
      break;
    case ComponentKind::kAttentionNeuron:
      a.target = AblationTarget::kAttentionNeuron;
      break;
    default:
      return absl::InvalidArgumentError(
          "component.kind: only layers, heads, head positions and neurons can be ablated");
  }
  a.layer = ref.layer;
  a.head = ref.head;
  a.source_position = ref.source_position;
  a.index = ref.neuron;
  a.position = position;
  a.scale = scale;
  return a;
}

}  // namespace factlens
