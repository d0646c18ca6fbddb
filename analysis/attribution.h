// The paper's attribution method on top of a forward trace: vocabulary projection of any vector
// with the frozen final-norm scale, and the increase a component brings to a target token
// (log-probability, probability or logit) at every level, with exact top-k ranking of neurons by
// pruning with tangent (upper) and Hoeffding (lower) bounds. The output side is the model's
// OutputHead, so every family — one softmax or fairseq's adaptive softmax — gets the same method.
// Definitions: docs/method-reference.md.
#ifndef FACTLENS_ANALYSIS_ATTRIBUTION_H_
#define FACTLENS_ANALYSIS_ATTRIBUTION_H_

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "analysis/forward.h"
#include "analysis/output_head.h"
#include "analysis/weights.h"

namespace factlens {

enum class Metric {
  kLogProbIncrease,  // log p(w | x+v) − log p(w | x)   (the paper's, default)
  kProbIncrease,     // p(w | x+v) − p(w | x)
  kLogitIncrease,    // bs(x+v)[w] − bs(x)[w] = bs(v)[w] (adaptive softmax: Σ of the target's
                     // logits over its terms, the head's cluster logit plus the band's word logit)
};
std::string_view MetricName(Metric metric);

enum class RankMode {
  kExact,        // exact values, candidates pruned by provable bounds
  kExhaustive,   // every component evaluated (float32 logits with a derived rounding bound),
                 // then in float64 each that the bound leaves in contention: the same ranking
                 // and scores as float64 values of every component
  kApproximate,  // first-order (tangent) values, no exact evaluation
};
std::string_view RankModeName(RankMode mode);
// Inverse of MetricName / RankModeName; InvalidArgument listing the valid names otherwise.
absl::StatusOr<Metric> ParseMetric(std::string_view name);
absl::StatusOr<RankMode> ParseRankMode(std::string_view name);

enum class RankOrder { kTop, kBottom };  // largest / most negative first

// What one attribution is about: a target token at one position.
struct AttributionTarget {
  int64_t token_id = 0;
  int64_t position = -1;  // query position, negative counts from the end
  Metric metric = Metric::kLogProbIncrease;
  // Add the final norm's bias to before-softmax values (the paper excludes it).
  bool include_final_norm_bias = false;
};

// A neuron addressed by layer and flat index within the layer:
//  FFN neurons: index = n (N per layer);
//  attention neurons: index = (source_position · H + head) · Dh + dim (T·H·Dh per layer).
struct RankedNeuron {
  int64_t layer = 0;
  int64_t index = 0;
  double score = 0;        // the metric's exact value (or first-order value in kApproximate)
  double coefficient = 0;  // m: FFN coefficient, or α[h,pos,s]·value[s,h,j] for attention neurons
};

// Polled by long computations; returns true when the caller no longer wants the result (the
// client cancelled or its deadline passed).
using Interrupted = std::function<bool()>;

struct NeuronRanking {
  std::vector<RankedNeuron> neurons;  // best first
  RankMode mode = RankMode::kExact;
  int64_t evaluated = 0;  // candidates evaluated exactly
  int64_t total = 0;      // neurons considered
  // A bound on |score − the value the mode defines| from rounding, over the reported neurons:
  // exact and exhaustive scores are float64 evaluations (Attribution::ExactValueErrorBound);
  // approximate scores are float32 first-order values. Scores of one neuron from two modes that
  // both evaluate exactly differ by at most the sum of the two rankings' max_error.
  double max_error = 0;
  // Entry i: FrozenOutputHead::VocabularyScores of neurons[i]'s vector (unscaled: a neuron with a
  // negative coefficient promotes its bottom tokens), [V] float64, for the first n neurons (n =
  // the `vocabulary_rows` the ranking was asked for, at most the neurons reported) — the logits
  // its exact evaluation computed anyway, kept (as views of its batches' logits) so that no second
  // projection is needed. Empty when the mode evaluated them without a projection per vector
  // (approximate, an exhaustive ranking that evaluates most neurons, the logit metric), when the
  // evaluated rows exceed the memory bound (Attribution::RankFfnNeurons), or when the head's
  // vocabulary view is not its terms' logits (FrozenOutputHead::VocabularyScoresFromTermLogits).
  std::vector<at::Tensor> vocabulary_scores;
};

// Trace requirements of Attribution: everything, at every position.
CaptureOptions FullCapture();

// Attribution for one (prompt trace, target, position). Create() does the per-request work once:
// the output head frozen at the position (final-norm scale σ; 1 without a final norm), the softmax
// terms of the target and, per layer, the output distributions of the two residual bases (before
// the attention and before the FFN). Immutable afterwards; const methods are thread-safe. The
// model and trace must outlive it.
//
// Precision: every metric value (the *Increase() methods, and the scores of exact and exhaustive
// rankings) is computed in float64 from the float32 trace, one candidate's arithmetic independent
// of the others in its batch up to float64 rounding, so the pruned and exhaustive modes report the
// same neurons with scores equal to within ExactValueErrorBound (below 1e-9 on the demo models).
// The pruning compares bounds computed in float32 and widened by their own worst-case rounding
// error, so the exact top-k does not depend on the CPU, BLAS kernel or thread count.
class Attribution {
 public:
  // `trace` must come from Forward(model, ids, FullCapture()). InvalidArgument (naming the field)
  // for a target outside the vocabulary or a position out of range.
  static absl::StatusOr<std::unique_ptr<Attribution>> Create(const Model& model,
                                                             const ForwardTrace& trace,
                                                             const AttributionTarget& target);

  const Model& model() const { return model_; }
  const ForwardTrace& trace() const { return trace_; }
  const AttributionTarget& target() const { return target_; }
  int64_t position() const { return position_; }
  double final_scale() const { return head_->final_scale(); }
  // Log-probability of the target at the position under the frozen head (bias per option).
  double target_log_prob() const;

  // The vocabulary view of vectors [B, d] -> [B, V] float64 (FrozenOutputHead::VocabularyScores:
  // bs(v) for one softmax, the vector's own log-distribution for an adaptive softmax).
  at::Tensor Project(const at::Tensor& vectors) const;
  // The k largest entries of each vector's Project row, best first (FrozenOutputHead::TopTokens:
  // the same float64 values, found without projecting every row in float64).
  std::vector<std::vector<TokenScore>> TopTokens(const at::Tensor& vectors, int64_t k) const;

  // Worst-case rounding error of one metric value computed here, for a vector v with magnitude
  // B = ‖v‖·Σ_s transform_norm_s·max_row_norm_s (≥ Σ_s ‖T_s(v)‖·max_u ‖M_s,u‖ ≥ Σ_s max_u
  // |ℓ_s(v)_u| over the target's softmax terms, output_head.h) added to a base residual x of
  // magnitude B_x (the same quantity for x): 2^-53·((4d + 16)·(B + B_x) + n + 90·S), n = Σ_s n_s
  // entries of the S terms. Derivation per term (u = 2^-53): each logit is a float64 product of
  // length ≤ d after the transform T_s (centring, scale, and for an adaptive tail band a length-d
  // projection), erring by ≤ (2d + 3)·u·B_s in all (Higham, any summation order; centring's mean
  // errs by ≤ u·Σ|v_j|). The term's increase −log Σ_u p_u·exp(ℓ_u − ℓ_w) moves by at most twice
  // the largest logit error; the base probabilities' relative errors (twice the same bound with
  // B_x) move it by as much; the shift's rounding (≤ u·(2B_s + 80) per entry) and the exp, the
  // n_s-term float64 sum and the log add ≤ u·(2B_s + n_s + 90). The terms add.
  // Probability increases are p(w|x)·expm1(Δ) with p(w|x+v) ≤ 1, so the bound carries over.
  double ExactValueErrorBound(double magnitude, double base_magnitude) const;

  // Increases of whole layers' outputs: [L] (attention: base residual_in; FFN: base residual_mid).
  at::Tensor AttentionLayerIncrease() const;
  at::Tensor FfnLayerIncrease() const;
  // Both, from one projection of the 2L layer outputs: {attention [L], FFN [L]}.
  std::pair<at::Tensor, at::Tensor> LayerIncreases() const;
  // [L, H]: each head's output through W_O (no bias), base residual_in.
  at::Tensor HeadIncrease() const;
  // [L, H, T]: one head and one source position.
  at::Tensor HeadPositionIncrease() const;
  // The k best heads (RankedNeuron::index = h) or head×source positions (index = h·T + s) over
  // all layers, ranked as neurons are (exact top-k by pruning in kExact, every value in
  // kExhaustive): the values HeadIncrease / HeadPositionIncrease compute, coefficient 1. k is
  // clamped to the count. Cancelled once `interrupted` returns true; no other errors.
  absl::StatusOr<NeuronRanking> RankHeads(int64_t k, RankOrder order, RankMode mode,
                                          const Interrupted& interrupted = {}) const;
  absl::StatusOr<NeuronRanking> RankHeadPositions(int64_t k, RankOrder order, RankMode mode,
                                                  const Interrupted& interrupted = {}) const;
  // Every neuron's exact value: [L, N] and [L, T, H, Dh].
  at::Tensor FfnNeuronIncrease() const;
  at::Tensor AttentionNeuronIncrease() const;

  // The k best FFN / attention neurons over all layers. k is clamped to the neuron count.
  // `interrupted` (may be empty) is polled between batches of exact evaluations; once it returns
  // true the ranking stops and returns Cancelled. No other errors. `vocabulary_rows` > 0 asks for
  // NeuronRanking::vocabulary_scores of that many of the best (memory: the evaluated rows' float64
  // scores while ranking, at most 128 MiB — beyond it none are kept — and afterwards the batches
  // that hold the returned rows).
  absl::StatusOr<NeuronRanking> RankFfnNeurons(int64_t k, RankOrder order, RankMode mode,
                                               const Interrupted& interrupted = {},
                                               int64_t vocabulary_rows = 0) const;
  absl::StatusOr<NeuronRanking> RankAttentionNeurons(int64_t k, RankOrder order, RankMode mode,
                                                     const Interrupted& interrupted = {},
                                                     int64_t vocabulary_rows = 0) const;

  // The d-vector an attention neuron adds at the position (coefficient × W_O column).
  at::Tensor AttentionNeuronSubvalue(int64_t layer, int64_t index) const;
  at::Tensor FfnNeuronSubvalue(int64_t layer, int64_t neuron) const;

 private:
  struct Base;       // one residual base's distribution
  struct NeuronSet;  // one layer's neurons: shared vectors and their coefficients
  Attribution(const Model& model, const ForwardTrace& trace, AttributionTarget target)
      : model_(model), trace_(trace), target_(target) {}

  // Metric values of vectors [n, d], row i added to bases[i]: one projection for all rows, [n].
  at::Tensor Increase(const std::vector<const Base*>& bases, const at::Tensor& vectors) const;
  // Per softmax term, the logits ℓ_s (no bias) of K vectors: [K, n_s] float64 each.
  std::vector<at::Tensor> TermLogits(const at::Tensor& vectors) const;
  // logits: TermLogits of K vectors; coefficients [R, K]: the metric for coefficient[r, k] ·
  // vector k, as [R, K] float64.
  at::Tensor ExactFromLogits(const Base& base, const std::vector<at::Tensor>& logits,
                             const at::Tensor& coefficients) const;
  NeuronSet FfnNeurons(int64_t layer) const;
  NeuronSet AttentionNeurons(int64_t layer) const;
  // One layer's head (H) or head×position (H·T) vectors with coefficient 1.
  NeuronSet Heads(int64_t layer) const;
  NeuronSet HeadPositions(int64_t layer) const;
  // The sets of every layer.
  std::vector<NeuronSet> EveryLayer(NeuronSet (Attribution::*set)(int64_t) const) const;
  // Every neuron's exact value, [R·K] float64 per set (flat index order).
  absl::StatusOr<at::Tensor> ExactValues(const NeuronSet& set,
                                         const Interrupted& interrupted) const;
  absl::StatusOr<at::Tensor> AllExact(const std::vector<NeuronSet>& sets,
                                      const Interrupted& interrupted) const;
  // Every neuron's value from float32 logits (`matrices32`: each term's matrix in float32), and
  // a bound on its distance from the float64 value of ExactValues: {[R·K], [R·K]} float64.
  absl::StatusOr<std::pair<at::Tensor, at::Tensor>> ScreenedValues(
      const NeuronSet& set, const std::vector<at::Tensor>& matrices32,
      const Interrupted& interrupted) const;
  // ‖v_k‖ of the set's K vectors, [K] float64, raised by the float32 norm's rounding bound.
  at::Tensor RowNorms(const NeuronSet& set) const;
  // Upper bounds B (ExactValueErrorBound's magnitude) of every neuron of the set, [R·K] float64,
  // from its RowNorms.
  at::Tensor Magnitudes(const NeuronSet& set, const at::Tensor& row_norms) const;
  // Increases of the attention and/or FFN layer outputs, attention first: [L] or [2L].
  at::Tensor LayerOutputIncrease(bool attention, bool ffn) const;
  absl::StatusOr<NeuronRanking> Rank(const std::vector<NeuronSet>& sets, int64_t k, RankOrder order,
                                     RankMode mode, const Interrupted& interrupted,
                                     int64_t vocabulary_rows = 0) const;
  // The metric's value for a log-prob increase Δ over `base`.
  at::Tensor FromLogProbIncrease(const Base& base, const at::Tensor& delta) const;

  const Model& model_;
  const ForwardTrace& trace_;
  AttributionTarget target_;
  int64_t position_ = 0;
  std::unique_ptr<const FrozenOutputHead> head_;
  std::vector<SoftmaxTerm> terms_;  // log p(target | x) = Σ over these terms
  double amplification_ = 0;        // Σ_s transform_norm_s · max_row_norm_s
  int64_t term_entries_ = 0;        // Σ_s n_s
  std::vector<std::shared_ptr<const Base>> attn_bases_, ffn_bases_;
  std::shared_ptr<const Base> final_base_;
};

}  // namespace factlens

#endif  // FACTLENS_ANALYSIS_ATTRIBUTION_H_
