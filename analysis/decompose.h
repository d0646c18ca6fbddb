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

// One step of the logit lens over the residual stream: the output head (final norm, then output
// layer) applied to the residual so far.
struct LensStep {
  ComponentRef after;  // kEmbedding, then kAttentionLayer l and kFfnLayer l: the residual after it
  TokenScore top;      // the most probable token there; score = probability
  std::optional<TargetOutcome> target;
};

// The logit lens at `position` (resolved, in [0, T)) of a FullCapture() trace: [1 + 2L] steps,
// after the embedding and after each layer's attention and FFN, the last being the model's own
// output; each with the outcome of `target` when given (a token in the vocabulary). One batched
// pass through the output head: CumulativeLensSteps(CumulativeLensLogits(...)). Thread-safe.
std::vector<LensStep> CumulativeLens(const Model& model, const ForwardTrace& trace,
                                     int64_t position, std::optional<int64_t> target);

// The lens's logits [1 + 2L, V] float64, one row per step. The last row is the model's logits at
// the position (OutputHead::Logits: the same float32 normed residual times the same float64
// unembedding, so at most float64 summation order apart from a pass computing other rows beside
// it), so a caller that needs both computes them once. Thread-safe.
at::Tensor CumulativeLensLogits(const Model& model, const ForwardTrace& trace, int64_t position);

// The steps of CumulativeLensLogits' rows. Thread-safe.
std::vector<LensStep> CumulativeLensSteps(const at::Tensor& lens_logits,
                                          std::optional<int64_t> target);

struct DecomposeOptions {
  // Split each attention layer into its heads (kHead) plus its bias (kAttentionBias).
  bool include_heads = false;
  // Tokens of each component's logit lens (its projection with the final norm's scale frozen at
  // the position); 0 = none.
  int64_t logit_lens_top_k = 0;
  // When set (its position is ignored), each layer/head component carries its increase of the
  // target's metric (the embedding and attention biases do not).
  std::optional<AttributionTarget> target;
  // Also the position's CumulativeLens (with the target's outcome when a target is set).
  bool cumulative = false;
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
  std::vector<LensStep> cumulative;  // when DecomposeOptions::cumulative
};

// Decomposes position `position` (resolved, in [0, T)) of a FullCapture() trace. Errors:
// InvalidArgument from the target (token outside the vocabulary); Cancelled once `interrupted`
// (polled per layer, may be empty) returns true. Thread-safe.
absl::StatusOr<PositionDecomposition> Decompose(const Model& model, const ForwardTrace& trace,
                                                int64_t position, const DecomposeOptions& options,
                                                const Interrupted& interrupted = {});

}  // namespace factlens

#endif  // FACTLENS_ANALYSIS_DECOMPOSE_H_
