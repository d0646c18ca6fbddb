#include "analysis/projection.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>

namespace factlens {

std::vector<TokenScore> TopScores(const at::Tensor& scores, int64_t k, bool largest) {
  const at::Tensor flat = scores.reshape({-1});
  const auto [values, indices] =
      at::topk(flat, std::clamp<int64_t>(k, 0, flat.numel()), -1, largest);
  const at::Tensor v = values.to(at::kCPU, at::kDouble).contiguous();
  const at::Tensor i = indices.to(at::kCPU).contiguous();
  std::vector<TokenScore> out;
  for (int64_t j = 0; j < v.numel(); ++j)
    out.push_back({i.data_ptr<int64_t>()[j], v.data_ptr<double>()[j]});
  return out;
}

VocabProjector::VocabProjector(const Model& model, const at::Tensor& final_residual) {
  const ModelConfig& c = model.config();
  center_ = c.family == ModelFamily::kGpt2;
  const at::Tensor x = final_residual.to(at::kDouble);
  const double mean_square =
      center_ ? x.var(/*unbiased=*/false).item<double>() : x.pow(2).mean().item<double>();
  sigma_ = std::sqrt(mean_square + c.norm_eps);
  scale_ = model.weights().final_norm_weight.to(at::kDouble) / sigma_;
  unembedding_ = model.weights().unembedding64;
}

at::Tensor VocabProjector::ScaledForUnembedding(const at::Tensor& vectors) const {
  at::Tensor v = vectors.to(at::kDouble);
  if (center_) v = v - v.mean(-1, /*keepdim=*/true);
  return v * scale_;
}

at::Tensor VocabProjector::Project(const at::Tensor& vectors) const {
  std::vector<int64_t> shape = vectors.sizes().vec();
  const at::Tensor projected = Unembed(ScaledForUnembedding(vectors.reshape({-1, shape.back()})));
  shape.back() = projected.size(1);
  return projected.reshape(shape);
}

at::Tensor VocabProjector::Unembed(const at::Tensor& x) const {
  return at::matmul(x.to(at::kDouble), unembedding_.t());
}

at::Tensor VocabProjector::WeightedUnembeddingSum(const at::Tensor& weights) const {
  return at::matmul(weights.to(at::kDouble), unembedding_);
}

std::pair<std::vector<TokenScore>, std::vector<TokenScore>> VocabProjector::TopAndBottom(
    const at::Tensor& vector, int64_t k) const {
  const at::Tensor scores = Project(vector.unsqueeze(0))[0];
  return {TopScores(scores, k), TopScores(scores, k, /*largest=*/false)};
}

}  // namespace factlens
