// Residual-stream decomposition at one position: the final residual as embedding + Σ attention +
// Σ FFN outputs (or per head + attention bias), each component with its norm, optional increase of
// the target's metric and optional logit-lens tokens.
#ifndef FACTLENS_ANALYSIS_DECOMPOSE_H_
#define FACTLENS_ANALYSIS_DECOMPOSE_H_

#include <ATen/core/Tensor.h>

#include <optional>
#include <vector>

#include "absl/status/statusor.h"
#include "analysis/attribution.h"
#include "analysis/components.h"
#include "analysis/forward.h"
#include "analysis/output_head.h"
#include "analysis/weights.h"

namespace factlens {

struct DecomposeOptions {
  // Split each attention layer into its heads (kHead) plus its bias (kAttentionBias).
  bool include_heads = false;
  // Tokens of each component's logit lens (its projection with the final norm's scale frozen at
  // the position); 0 = none.
  int64_t logit_lens_top_k = 0;
  // When set (its position is ignored), each layer/head component carries its increase of the
  // target's metric (the embedding and attention biases do not).
  std::optional<AttributionTarget> target;
};

struct DecomposedComponent {
  ComponentRef ref;
  at::Tensor vector;  // [d], in the trace's dtype
  double norm = 0;
  std::optional<double> increase;
  std::vector<TokenScore> lens_tokens;  // largest projections first
};

struct PositionDecomposition {
  int64_t position = 0;
  double final_scale = 0;                       // the final norm's scale σ at the position
  std::vector<DecomposedComponent> components;  // embedding, then layer by layer
  // max |Σ components − final residual| (float64 sum): how exactly the pieces add up.
  double reconstruction_error = 0;
};

// Decomposes position `position` (resolved, in [0, T)) of a FullCapture() trace. Errors:
// InvalidArgument from the target (token outside the vocabulary); Cancelled once `interrupted`
// (polled per layer, may be empty) returns true. Thread-safe.
absl::StatusOr<PositionDecomposition> Decompose(const Model& model, const ForwardTrace& trace,
                                                int64_t position, const DecomposeOptions& options,
                                                const Interrupted& interrupted = {});

}  // namespace factlens

#endif  // FACTLENS_ANALYSIS_DECOMPOSE_H_
