// Ranking the components of one level (layers, heads, head × source positions, neurons) by their
// increase of an attribution's target.
#ifndef FACTLENS_ANALYSIS_RANK_H_
#define FACTLENS_ANALYSIS_RANK_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "analysis/attribution.h"
#include "analysis/components.h"

namespace factlens {

enum class RankLevel {
  kAttentionLayer,
  kFfnLayer,
  kHead,
  kHeadPosition,
  kFfnNeuron,
  kAttentionNeuron,
};

struct RankedComponent {
  ComponentRef
      ref;  // kAttentionLayer, kFfnLayer, kHead, kHeadPosition, kFfnNeuron or kAttentionNeuron
  double score = 0;
  double coefficient = 0;  // neurons: m; 0 otherwise
};

struct ComponentRanking {
  std::vector<RankedComponent> components;  // best first
  RankMode mode = RankMode::kExhaustive;    // the mode that produced the values
  int64_t evaluated = 0;                    // components evaluated exactly
  int64_t total = 0;                        // components at this level
};

// The k components of `level` with the largest (kTop) or most negative (kBottom) increase.
// Layers, heads and head × source positions are few and always exhaustive; neurons use `mode`
// (Attribution::RankFfnNeurons / RankAttentionNeurons, whose errors it returns, e.g. Cancelled
// once `interrupted` returns true). Thread-safe for a shared `attribution`.
absl::StatusOr<ComponentRanking> RankComponents(const Attribution& attribution, RankLevel level,
                                                int64_t k, RankOrder order, RankMode mode,
                                                const Interrupted& interrupted = {});

}  // namespace factlens

#endif  // FACTLENS_ANALYSIS_RANK_H_
