// Vocabulary projection with the final norm's scale frozen at one position.
#ifndef FACTLENS_ANALYSIS_PROJECTION_H_
#define FACTLENS_ANALYSIS_PROJECTION_H_

#include <ATen/core/Tensor.h>

#include <utility>
#include <vector>

#include "analysis/weights.h"

namespace factlens {

// A token id (or, from TopScores, a flat index) with a score (probability, before-softmax value,
// ...: the user says which).
struct TokenScore {
  int64_t token_id = 0;
  double score = 0;
};

// The k largest (`largest`) or smallest entries of `scores` (any shape, read flattened), best
// first, as (flat index, value) pairs; k is clamped to the element count. For a vocabulary-sized
// tensor the flat index is the token id. Thread-safe.
std::vector<TokenScore> TopScores(const at::Tensor& scores, int64_t k, bool largest = true);

// Projects vectors into vocabulary space with the final norm's scale σ frozen at one position:
// bs(v) = E·(g ⊙ c(v)/σ) (c centres for LayerNorm models). Immutable; thread-safe.
//
// Everything is float64, on the model's float64 unembedding prepared at load
// (ModelWeights::unembedding64), so a value's rounding error is that of float64 arithmetic
// whatever the batch it is computed in:
// with u = 2^-53, |computed − exact| ≤ (d + 5)·u·Σ_j |w_j·E_uj| for w = g ⊙ c(v)/σ, on any CPU,
// BLAS kernel or thread count (Higham's bound for a dot product in any summation order). Top
// tokens therefore do not swap between machines unless their values tie to float64 rounding.
class VocabProjector {
 public:
  VocabProjector(const Model& model, const at::Tensor& final_residual);
  double final_scale() const { return sigma_; }
  int64_t vocab_size() const { return unembedding_.size(0); }
  at::Tensor Project(const at::Tensor& vectors) const;  // [..., d] -> [..., V] float64
  // x·Eᵀ in float64 (no norm scale): [n, d] -> [n, V].
  at::Tensor Unembed(const at::Tensor& x) const;
  // weights·E in float64: [n, V] -> [n, d] (e.g. expectations Σ_u p_u E_u).
  at::Tensor WeightedUnembeddingSum(const at::Tensor& weights) const;
  // g ⊙ c(v)/σ in float64, the vector whose inner products with E_u are bs(v): [n, d] -> [n, d].
  at::Tensor ScaledForUnembedding(const at::Tensor& vectors) const;
  // The k largest and k smallest values of one vector's projection.
  std::pair<std::vector<TokenScore>, std::vector<TokenScore>> TopAndBottom(const at::Tensor& vector,
                                                                           int64_t k) const;

 private:
  bool center_;
  double sigma_;
  at::Tensor scale_;        // g / σ, float64
  at::Tensor unembedding_;  // [V, d] float64 (the model's)
};

}  // namespace factlens

#endif  // FACTLENS_ANALYSIS_PROJECTION_H_
