#include "analysis/projection.h"

#include <ATen/ATen.h>

#include <cmath>

namespace factlens {
namespace {

std::vector<TokenScore> ToTokenScores(const at::Tensor& values, const at::Tensor& indices) {
  std::vector<TokenScore> out;
  for (int64_t i = 0; i < values.size(0); ++i) {
    out.push_back({indices[i].item<int64_t>(), values[i].item<double>()});
  }
  return out;
}

}  // namespace

VocabProjector::VocabProjector(const Model& model, const at::Tensor& final_residual) {
  const ModelConfig& c = model.config();
  center_ = c.family == ModelFamily::kGpt2;
  const at::Tensor x = final_residual.to(at::kDouble);
  const double mean_square =
      center_ ? x.var(/*unbiased=*/false).item<double>() : x.pow(2).mean().item<double>();
  sigma_ = std::sqrt(mean_square + c.norm_eps);
  scale_ = model.weights().final_norm_weight.to(at::kFloat) / sigma_;
  unembedding_ = model.weights().unembedding.to(at::kFloat);
}

at::Tensor VocabProjector::Project(const at::Tensor& vectors) const {
  at::Tensor v = vectors.to(at::kFloat);
  if (center_) v = v - v.mean(-1, /*keepdim=*/true);
  return at::matmul(v * scale_, unembedding_.t());
}

std::pair<std::vector<TokenScore>, std::vector<TokenScore>> VocabProjector::TopAndBottom(
    const at::Tensor& vector, int64_t k) const {
  const at::Tensor scores = Project(vector.unsqueeze(0))[0];
  k = std::min<int64_t>(k, scores.size(0));
  const auto [top_values, top_indices] = at::topk(scores, k);
  const auto [bottom_values, bottom_indices] = at::topk(scores, k, -1, /*largest=*/false);
  return {ToTokenScores(top_values, top_indices), ToTokenScores(bottom_values, bottom_indices)};
}

}  // namespace factlens
