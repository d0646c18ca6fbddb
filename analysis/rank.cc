#include "analysis/rank.h"

#include <ATen/ATen.h>

#include <functional>

#include "analysis/output_head.h"
#include "analysis/status_macros.h"
#include "analysis/tracing.h"

namespace factlens {
namespace {

// Every entry of `scores` scored exactly; `ref_of` names the component of a flat index.
ComponentRanking RankAll(const at::Tensor& scores, int64_t k, RankOrder order,
                         const std::function<ComponentRef(int64_t)>& ref_of) {
  ComponentRanking ranking;
  for (const auto& [flat, value] : TopScores(scores, k, order == RankOrder::kTop)) {
    ranking.components.push_back({ref_of(flat), value, 0});
  }
  ranking.mode = RankMode::kExhaustive;
  ranking.evaluated = ranking.total = scores.numel();
  return ranking;
}

}  // namespace

absl::StatusOr<ComponentRanking> RankComponents(const Attribution& a, RankLevel level, int64_t k,
                                                RankOrder order, RankMode mode,
                                                const Interrupted& interrupted) {
  const ModelConfig& c = a.model().config();
  switch (level) {
    case RankLevel::kAttentionLayer:
      return RankAll(a.AttentionLayerIncrease(), k, order, [](int64_t f) {
        return ComponentRef{ComponentKind::kAttentionLayer, f};
      });
    case RankLevel::kFfnLayer:
      return RankAll(a.FfnLayerIncrease(), k, order, [](int64_t f) {
        return ComponentRef{ComponentKind::kFfnLayer, f};
      });
    case RankLevel::kHead:
      return RankAll(a.HeadIncrease(), k, order, [&](int64_t f) {
        return ComponentRef{ComponentKind::kHead, f / c.n_heads, f % c.n_heads};
      });
    case RankLevel::kHeadPosition: {
      const at::Tensor scores = a.HeadPositionIncrease();  // [L, H, T]
      const int64_t t = scores.size(2);
      return RankAll(scores, k, order, [&](int64_t f) {
        return ComponentRef{ComponentKind::kHeadPosition, f / (c.n_heads * t), (f / t) % c.n_heads,
                            f % t};
      });
    }
    case RankLevel::kFfnNeuron:
    case RankLevel::kAttentionNeuron: {
      const bool ffn = level == RankLevel::kFfnNeuron;
      FACTLENS_ASSIGN_OR_RETURN(const NeuronRanking neurons,
                                ffn ? a.RankFfnNeurons(k, order, mode, interrupted)
                                    : a.RankAttentionNeurons(k, order, mode, interrupted));
      ComponentRanking ranking{{}, neurons.mode, neurons.evaluated, neurons.total};
      for (const RankedNeuron& n : neurons.neurons) {
        ComponentRef ref{ComponentKind::kFfnNeuron, n.layer, 0, 0, n.index};
        if (!ffn) {
          const AttentionNeuronIndex i = SplitAttentionNeuronIndex(c, n.index);
          ref = {ComponentKind::kAttentionNeuron, n.layer, i.head, i.source_position, i.dim};
        }
        ranking.components.push_back({ref, n.score, n.coefficient});
      }
      return ranking;
    }
  }
  return absl::InvalidArgumentError("level: unknown");
}

}  // namespace factlens
