#include "analysis/decompose.h"

#include <ATen/ATen.h>

#include <tuple>

#include "absl/status/status.h"
#include "analysis/status_macros.h"

namespace factlens {

absl::StatusOr<PositionDecomposition> Decompose(const Model& model, const ForwardTrace& trace,
                                                int64_t position, const DecomposeOptions& options,
                                                const Interrupted& interrupted) {
  const ModelConfig& c = model.config();
  PositionDecomposition result;
  result.position = position;
  const std::unique_ptr<const FrozenOutputHead> head =
      model.output_head().FreezeAt(trace.final_residual[position]);
  result.final_scale = head->final_scale();

  at::Tensor attention_increase, ffn_increase, head_increase;
  if (options.target) {
    AttributionTarget target = *options.target;
    target.position = position;
    FACTLENS_ASSIGN_OR_RETURN(std::unique_ptr<Attribution> attribution,
                              Attribution::Create(model, trace, target));
    std::tie(attention_increase, ffn_increase) = attribution->LayerIncreases();
    if (options.include_heads) head_increase = attribution->HeadIncrease();
  }
  auto increase_at = [](const at::Tensor& increases, int64_t layer,
                        std::optional<int64_t> head) -> std::optional<double> {
    if (!increases.defined()) return std::nullopt;
    return (head ? increases[layer][*head] : increases[layer]).item<double>();
  };

  at::Tensor sum = at::zeros({c.d_model}, at::TensorOptions(at::kDouble).device(model.device()));
  auto add = [&](ComponentRef ref, std::optional<double> increase) -> absl::Status {
    FACTLENS_ASSIGN_OR_RETURN(at::Tensor vector, ComponentVector(model, trace, position, ref));
    DecomposedComponent component{
        std::move(ref), vector, vector.norm().item<double>(), increase, {}};
    if (options.logit_lens_top_k > 0 && component.ref.kind != ComponentKind::kAttentionBias) {
      component.lens_tokens = head->TopAndBottom(vector, options.logit_lens_top_k).first;
    }
    sum += vector.to(at::kDouble);
    result.components.push_back(std::move(component));
    return absl::OkStatus();
  };

  FACTLENS_RETURN_IF_ERROR(add({ComponentKind::kEmbedding}, std::nullopt));
  for (int64_t layer = 0; layer < c.n_layers; ++layer) {
    if (interrupted && interrupted()) return absl::CancelledError("interrupted");
    if (options.include_heads) {
      for (int64_t head = 0; head < c.n_heads; ++head) {
        FACTLENS_RETURN_IF_ERROR(
            add({ComponentKind::kHead, layer, head}, increase_at(head_increase, layer, head)));
      }
      FACTLENS_RETURN_IF_ERROR(add({ComponentKind::kAttentionBias, layer}, std::nullopt));
    } else {
      FACTLENS_RETURN_IF_ERROR(add({ComponentKind::kAttentionLayer, layer},
                                   increase_at(attention_increase, layer, std::nullopt)));
    }
    FACTLENS_RETURN_IF_ERROR(
        add({ComponentKind::kFfnLayer, layer}, increase_at(ffn_increase, layer, std::nullopt)));
  }
  result.reconstruction_error =
      (sum - trace.final_residual[position].to(at::kDouble)).abs().max().item<double>();
  if (options.cumulative) {
    result.cumulative = CumulativeLens(
        model, trace, position,
        options.target ? std::optional<int64_t>(options.target->token_id) : std::nullopt);
  }
  return result;
}

std::vector<LensStep> CumulativeLens(const Model& model, const ForwardTrace& trace,
                                     int64_t position, std::optional<int64_t> target) {
  return CumulativeLensSteps(CumulativeLensLogits(model, trace, position), target);
}

at::Tensor CumulativeLensLogits(const Model& model, const ForwardTrace& trace, int64_t position) {
  const size_t n_layers = trace.layers.size();
  std::vector<at::Tensor> residuals = {trace.embedding[position]};
  for (size_t layer = 0; layer < n_layers; ++layer) {
    residuals.push_back(trace.layers[layer].residual_mid[position]);
    residuals.push_back(layer + 1 < n_layers ? trace.layers[layer + 1].residual_in[position]
                                             : trace.final_residual[position]);
  }
  // The trace keeps residuals in float32; the output head takes the compute dtype.
  return model.output_head().Logits(at::stack(residuals).to(model.dtype()));
}

std::vector<LensStep> CumulativeLensSteps(const at::Tensor& lens_logits,
                                          std::optional<int64_t> target) {
  const int64_t n_layers = (lens_logits.size(0) - 1) / 2;
  std::vector<LensStep> steps = {{{ComponentKind::kEmbedding}}};
  for (int64_t layer = 0; layer < n_layers; ++layer) {
    steps.push_back({{ComponentKind::kAttentionLayer, layer}});
    steps.push_back({{ComponentKind::kFfnLayer, layer}});
  }
  const at::Tensor probs = at::softmax(lens_logits, -1);
  for (size_t i = 0; i < steps.size(); ++i) {
    steps[i].top = TopScores(probs[i], 1).front();
    if (target) steps[i].target = OutcomeOf(lens_logits[i], *target);
  }
  return steps;
}

}  // namespace factlens
