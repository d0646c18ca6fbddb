// The output side of a model behind one interface: everything between the last residual and the
// next-token distribution (final norm + unembedding for GPT-2 / Llama, fairseq's adaptive softmax
// for Baevski-18). The forward pass asks it for logits; the method asks it, with the final norm's
// scale frozen at one residual, for the vocabulary view of a vector and for the softmax terms
// whose sum is the target's log-probability — from which come the exact increases, the tangent of
// the top-k bound and the curvature of the bottom-k bound. Definitions: docs/method-reference.md.
#ifndef FACTLENS_ANALYSIS_OUTPUT_HEAD_H_
#define FACTLENS_ANALYSIS_OUTPUT_HEAD_H_

#include <ATen/core/Tensor.h>

#include <memory>
#include <utility>
#include <vector>

#include "analysis/model_config.h"

namespace factlens {

// A norm as the model computes it, in x's dtype: LayerNorm (bias optional) or RMSNorm (computed in
// at least float32 and then scaled, as HF's LlamaRMSNorm does). Thread-safe.
at::Tensor ApplyNorm(NormKind kind, double eps, const at::Tensor& x, const at::Tensor& weight,
                     const at::Tensor& bias);

// A token id (or, from TopScores, a flat index) with a score (probability, before-softmax value,
// log-probability, ...: the caller says which).
struct TokenScore {
  int64_t token_id = 0;
  double score = 0;
};

// What the model's next-token distribution gives a target.
struct TargetOutcome {
  double log_prob = 0;
  double prob = 0;
  int64_t rank = 0;  // 1 = argmax
};

// The outcome for `target` of one position's logits [V] (any floating dtype; log-softmax in
// float64). Thread-safe.
TargetOutcome OutcomeOf(const at::Tensor& logits, int64_t target);

// The k largest (`largest`) or smallest entries of `scores` (any shape, read flattened), best
// first, as (flat index, value) pairs; k is clamped to the element count. For a vocabulary-sized
// tensor the flat index is the token id. Thread-safe.
std::vector<TokenScore> TopScores(const at::Tensor& scores, int64_t k, bool largest = true);

// One log-softmax term of the target's log-probability, linear in the residual once the final
// norm's scale is frozen: term(x) = ℓ(x)[index] − log Σ_u exp(ℓ(x)_u + bias_u) with
// ℓ(x) = matrix · T(x) and T(x) = projection · (scale ⊙ centre(x)), each step optional.
// A single-softmax head has one term; an adaptive softmax has one for the head cluster and, for a
// tail token, one for its band. Each term is concave in x, so their sum is.
struct SoftmaxTerm {
  bool center = false;        // subtract the mean (a LayerNorm's centring)
  at::Tensor scale;           // [d] float64 (g/σ), or undefined
  at::Tensor projection;      // [d_s, d] float64, or undefined (identity)
  at::Tensor matrix;          // [n_s, d_s] float64, prepared once per model
  at::Tensor bias;            // [n_s] float64, or undefined
  int64_t index = 0;          // the target's row of `matrix`
  double max_row_norm = 0;    // max_u ‖matrix_u‖
  double transform_norm = 1;  // ‖T(v)‖ ≤ transform_norm·‖v‖ for every v

  at::Tensor Transform(const at::Tensor& vectors) const;   // [n, d] -> [n, d_s] float64
  at::Tensor Adjoint(const at::Tensor& directions) const;  // Tᵀ: [n, d_s] -> [n, d] float64
  at::Tensor Logits(const at::Tensor& vectors) const;      // ℓ without bias: [n, d] -> [n, n_s]
};

// The output layer with the final norm's scale σ frozen at one final residual (the method's
// linearisation); σ = 1 where the model has no final norm. Immutable; thread-safe. Everything is
// float64 on the model's float64 tensors prepared at load, so a value's rounding error is that of
// float64 arithmetic whatever batch it is computed in (Higham: a length-n dot product errs by at
// most n·2^-53 of Σ|terms| in any summation order): results do not depend on the CPU, BLAS kernel
// or thread count beyond that.
class FrozenOutputHead {
 public:
  virtual ~FrozenOutputHead() = default;
  double final_scale() const { return sigma_; }
  virtual int64_t vocab_size() const = 0;
  // The vector's view in vocabulary space, [B, d] -> [B, V] float64: its before-softmax values
  // bs(v) = E·(g ⊙ c(v)/σ) for a single-softmax head (no bias), or the full log-distribution of
  // the vector alone for an adaptive softmax (Geva et al.'s projection; there is no single logit
  // vector). Either way larger means more promoted; top tokens are the largest entries.
  virtual at::Tensor VocabularyScores(const at::Tensor& vectors) const = 0;
  // The VocabularyScores of B vectors from their bias-free logits per term of TermsFor (any
  // target): `term_logits[s]` [B, n_s] float64. A single-softmax head's scores are its one term's
  // logits (returned as they are); an adaptive softmax needs every band, so it returns an undefined
  // tensor and the caller projects the vectors instead.
  virtual at::Tensor VocabularyScoresFromTermLogits(
      const std::vector<at::Tensor>& term_logits) const {
    return {};
  }
  // The terms whose sum is log p(target | x) for residuals x (target in [0, V), unchecked), with
  // the final norm's bias in their biases when `include_final_norm_bias` and the model has one.
  virtual std::vector<SoftmaxTerm> TermsFor(int64_t target, bool include_final_norm_bias) const = 0;
  // The k largest and k smallest vocabulary scores of one vector [d].
  std::pair<std::vector<TokenScore>, std::vector<TokenScore>> TopAndBottom(const at::Tensor& vector,
                                                                           int64_t k) const;
  // The k largest vocabulary scores of each of B vectors [B, d] (k in [0, V], unchecked), best
  // first: the float64 VocabularyScores entries, whichever way a head finds them (a single-softmax
  // head screens in float32 and evaluates only the tokens that can be among the k in float64).
  virtual std::vector<std::vector<TokenScore>> TopTokens(const at::Tensor& vectors,
                                                         int64_t k) const;

 protected:
  explicit FrozenOutputHead(double sigma) : sigma_(sigma) {}

 private:
  double sigma_;
};

// A model's output layer, prepared once at load (float64 copies of what the method multiplies
// with, on the model's device). Immutable; thread-safe.
class OutputHead {
 public:
  virtual ~OutputHead() = default;
  virtual int64_t vocab_size() const = 0;
  // [P, d] final residuals in the model's compute dtype -> [P, V] float64 whose log-softmax is the
  // model's next-token log-distribution: the real final norm (in the compute dtype), then the
  // output layer in float64 — so one row's values do not depend on how many rows are computed.
  virtual at::Tensor Logits(const at::Tensor& final_residuals) const = 0;
  // Freezes the final norm's scale at `final_residual` [d] (any floating dtype).
  virtual std::unique_ptr<const FrozenOutputHead> FreezeAt(
      const at::Tensor& final_residual) const = 0;
  // The float64 tensors prepared at load (for resident-memory accounting).
  virtual std::vector<at::Tensor> PreparedTensors() const = 0;
};

// The final norm (kind, eps, weight, bias; undefined weight = no final norm) and a [V, d]
// unembedding: GPT-2, Llama and every family with one softmax over the vocabulary.
std::unique_ptr<OutputHead> MakeUnembeddingHead(NormKind norm, double eps, at::Tensor norm_weight,
                                                at::Tensor norm_bias,
                                                const at::Tensor& unembedding);

// fairseq's adaptive softmax (Grave et al.), as the checkpoint's tensors give it: band 0 ("head")
// holds tokens [0, c_0) with output embedding [c_0, d]; band b ≥ 1 ("tail") tokens
// [start_b, start_b + n_b) with output projection [d_b, d] and output embedding [n_b, d_b];
// `cluster_weight` [B−1, d] gives the head's one logit per tail band. log p(w) = head
// log-softmax at w (band 0), else at the band's cluster slot plus the band's own log-softmax.
struct AdaptiveSoftmaxBand {
  int64_t start = 0;
  at::Tensor projection;  // [d_b, d]; undefined for band 0
  at::Tensor embedding;   // [n_b, d_b]
};
std::unique_ptr<OutputHead> MakeAdaptiveSoftmaxHead(NormKind norm, double eps,
                                                    at::Tensor norm_weight, at::Tensor norm_bias,
                                                    const std::vector<AdaptiveSoftmaxBand>& bands,
                                                    const at::Tensor& cluster_weight);

}  // namespace factlens

#endif  // FACTLENS_ANALYSIS_OUTPUT_HEAD_H_
