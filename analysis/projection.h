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
class VocabProjector {
 public:
  VocabProjector(const Model& model, const at::Tensor& final_residual);
  double final_scale() const { return sigma_; }
  at::Tensor Project(const at::Tensor& vectors) const;  // [..., d] -> [..., V] float32
  // The k largest and k smallest values of one vector's projection.
  std::pair<std::vector<TokenScore>, std::vector<TokenScore>> TopAndBottom(const at::Tensor& vector,
                                                                           int64_t k) const;

 private:
  bool center_;
  double sigma_;
  at::Tensor scale_;        // g / σ
  at::Tensor unembedding_;  // [V, d] float32
};

}  // namespace factlens

#endif  // FACTLENS_ANALYSIS_PROJECTION_H_
