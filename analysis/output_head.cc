#include "analysis/output_head.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>

namespace factlens {

at::Tensor ApplyNorm(NormKind kind, double eps, const at::Tensor& x, const at::Tensor& weight,
                     const at::Tensor& bias) {
  if (kind == NormKind::kLayerNorm) return at::layer_norm(x, {x.size(-1)}, weight, bias, eps);
  const at::Tensor x32 = x.to(x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat);
  const at::Tensor normed = x32 * at::rsqrt(x32.pow(2).mean(-1, /*keepdim=*/true) + eps);
  return weight * normed.to(x.scalar_type());
}

TargetOutcome OutcomeOf(const at::Tensor& logits, int64_t target) {
  const at::Tensor log_probs = at::log_softmax(logits.to(at::kDouble), -1);
  TargetOutcome outcome;
  outcome.log_prob = log_probs[target].item<double>();
  outcome.prob = std::exp(outcome.log_prob);
  outcome.rank = 1 + (logits > logits[target]).sum().item<int64_t>();
  return outcome;
}

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

at::Tensor SoftmaxTerm::Transform(const at::Tensor& vectors) const {
  at::Tensor v = vectors.to(at::kDouble);
  if (center) v = v - v.mean(-1, /*keepdim=*/true);
  if (scale.defined()) v = v * scale;
  return projection.defined() ? at::matmul(v, projection.t()) : v;
}

at::Tensor SoftmaxTerm::Adjoint(const at::Tensor& directions) const {
  at::Tensor v = directions.to(at::kDouble);
  if (projection.defined()) v = at::matmul(v, projection);
  if (scale.defined()) v = v * scale;
  return center ? v - v.mean(-1, /*keepdim=*/true) : v;
}

at::Tensor SoftmaxTerm::Logits(const at::Tensor& vectors) const {
  return at::matmul(Transform(vectors), matrix.t());
}

std::pair<std::vector<TokenScore>, std::vector<TokenScore>> FrozenOutputHead::TopAndBottom(
    const at::Tensor& vector, int64_t k) const {
  const at::Tensor scores = VocabularyScores(vector.unsqueeze(0))[0];
  return {TopScores(scores, k), TopScores(scores, k, /*largest=*/false)};
}

std::vector<std::vector<TokenScore>> FrozenOutputHead::TopTokens(const at::Tensor& vectors,
                                                                 int64_t k) const {
  constexpr int64_t kRows = 64;  // bounds the [rows, V] float64 scores
  std::vector<std::vector<TokenScore>> tops;
  for (int64_t start = 0; start < vectors.size(0); start += kRows) {
    const at::Tensor scores =
        VocabularyScores(vectors.narrow(0, start, std::min(kRows, vectors.size(0) - start)));
    for (int64_t row = 0; row < scores.size(0); ++row) tops.push_back(TopScores(scores[row], k));
  }
  return tops;
}

namespace {

// What a final norm contributes to the method's terms: centring, the frozen scale g/σ and the
// bias β. Without a final norm: nothing, σ = 1.
struct FrozenNorm {
  bool center = false;
  double sigma = 1;
  at::Tensor scale;          // g/σ, float64, or undefined
  at::Tensor bias;           // β, float64, or undefined
  double max_abs_scale = 1;  // max_j |g_j|/σ

  // Puts the norm into `term` and bounds ‖T(v)‖ given ‖projection‖ ≤ projection_norm.
  void Into(SoftmaxTerm& term, double projection_norm) const {
    term.center = center;
    term.scale = scale;
    term.transform_norm = max_abs_scale * projection_norm;  // centring never lengthens a vector
  }
};

// The final norm's parameters, frozen at a residual on demand.
struct FinalNorm {
  NormKind kind = NormKind::kLayerNorm;
  double eps = 0;
  at::Tensor weight, bias;  // in the compute dtype; undefined weight = no final norm

  at::Tensor Apply(const at::Tensor& x) const {
    return weight.defined() ? ApplyNorm(kind, eps, x, weight, bias) : x;
  }

  FrozenNorm FreezeAt(const at::Tensor& final_residual) const {
    FrozenNorm frozen;
    if (!weight.defined()) return frozen;
    frozen.center = kind == NormKind::kLayerNorm;
    const at::Tensor x = final_residual.to(at::kDouble);
    const double mean_square =
        frozen.center ? x.var(/*unbiased=*/false).item<double>() : x.pow(2).mean().item<double>();
    frozen.sigma = std::sqrt(mean_square + eps);
    const at::Tensor weight64 = weight.to(at::kDouble);
    frozen.scale = weight64 / frozen.sigma;
    if (bias.defined()) frozen.bias = bias.to(at::kDouble);
    frozen.max_abs_scale = weight64.abs().max().item<double>() / frozen.sigma;
    return frozen;
  }
};

FinalNorm MakeFinalNorm(NormKind kind, double eps, at::Tensor weight, at::Tensor bias) {
  return FinalNorm{kind, eps, std::move(weight), std::move(bias)};
}

double MaxRowNorm(const at::Tensor& matrix64) {
  // A row-wise reduction: no [V, d] temporary (1 GB for a 7B model's unembedding) at load.
  return matrix64.norm(2, /*dim=*/1).max().item<double>();
}

// The bias a final norm's β adds to a term's logits: matrix · projection · β.
at::Tensor BiasLogits(const SoftmaxTerm& term, const at::Tensor& beta) {
  at::Tensor v = beta.unsqueeze(0);
  if (term.projection.defined()) v = at::matmul(v, term.projection.t());
  return at::matmul(v, term.matrix.t())[0];
}

class FrozenUnembeddingHead : public FrozenOutputHead {
 public:
  FrozenUnembeddingHead(FrozenNorm norm, const at::Tensor& unembedding,
                        const at::Tensor& unembedding64, double max_row_norm)
      : FrozenOutputHead(norm.sigma),
        norm_(std::move(norm)),
        unembedding_(unembedding),
        unembedding64_(unembedding64),
        max_row_norm_(max_row_norm) {}

  int64_t vocab_size() const override { return unembedding64_.size(0); }

  at::Tensor VocabularyScores(const at::Tensor& vectors) const override {
    return Term(0).Logits(vectors);
  }

  at::Tensor VocabularyScoresFromTermLogits(
      const std::vector<at::Tensor>& term_logits) const override {
    return term_logits.front();
  }

  // Screens every token in float32 (E·t with t = g ⊙ c(v)/σ rounded to float32, as [V, B]: half
  // the arithmetic of float64 and a faster GEMM shape), then evaluates in float64 only the tokens
  // whose float32 score is within twice the float32 error of the row's k-th: no others can be
  // among the k largest. Error: E_uj and t_j round to float32 by 2^-24 of themselves each
  // (nothing for E of a float32 or narrower model), and a length-d float32 dot product errs by
  // at most d·2^-24·Σ_j|E_uj·t_j| (Higham, any order) — with the float64 evaluation's own
  // rounding, below (d + 4)·2^-24·max_u‖E_u‖·‖t‖ per entry. If |s₃₂ − s| ≤ e everywhere, the
  // k-th largest s₃₂ is at most the k-th largest s plus e, and a token of the true top k has
  // s₃₂ ≥ that minus 2e.
  std::vector<std::vector<TokenScore>> TopTokens(const at::Tensor& vectors,
                                                 int64_t k) const override {
    const at::Tensor transformed = Term(0).Transform(vectors);  // [B, d] float64
    const int64_t rows = transformed.size(0), d = transformed.size(1);
    std::vector<std::vector<TokenScore>> tops(rows);
    if (k <= 0 || rows == 0) return tops;
    // Screening pays while few tokens per row survive it.
    constexpr int64_t kMaxSurvivors = 1024;
    if (k > kMaxSurvivors / 4) return FrozenOutputHead::TopTokens(vectors, k);
    const at::Tensor screen =
        at::matmul(unembedding_.to(at::kFloat), transformed.to(at::kFloat).t());  // [V, B]
    const at::Tensor error =
        transformed.norm(2, 1) * (max_row_norm_ * static_cast<double>(d + 4) * 0x1p-24);
    const at::Tensor kth = std::get<0>(at::topk(screen, k, /*dim=*/0)).select(0, k - 1);
    const at::Tensor floor = (kth.to(at::kDouble) - 2 * error).to(at::kFloat);
    // Rounding the floor to float32 may raise it: lower it by one more float32 step.
    const at::Tensor safe_floor = at::nextafter(floor, at::full_like(floor, -INFINITY));
    const at::Tensor candidates = (screen >= safe_floor.unsqueeze(0)).nonzero();  // [n, 2]
    if (candidates.size(0) > rows * kMaxSurvivors) return FrozenOutputHead::TopTokens(vectors, k);
    const at::Tensor tokens = candidates.select(1, 0), owners = candidates.select(1, 1);
    const at::Tensor exact =
        (unembedding64_.index_select(0, tokens) * transformed.index_select(0, owners))
            .sum(1)
            .to(at::kCPU)
            .contiguous();
    const at::Tensor token_ids = tokens.to(at::kCPU).contiguous();
    const at::Tensor owner_ids = owners.to(at::kCPU).contiguous();
    for (int64_t i = 0; i < exact.numel(); ++i) {
      tops[owner_ids.data_ptr<int64_t>()[i]].push_back(
          {token_ids.data_ptr<int64_t>()[i], exact.data_ptr<double>()[i]});
    }
    for (std::vector<TokenScore>& top : tops) {
      const size_t keep = std::min<size_t>(k, top.size());
      std::partial_sort(top.begin(), top.begin() + keep, top.end(),
                        [](const TokenScore& a, const TokenScore& b) {
                          return a.score != b.score ? a.score > b.score : a.token_id < b.token_id;
                        });
      top.resize(keep);
    }
    return tops;
  }

  std::vector<SoftmaxTerm> TermsFor(int64_t target, bool include_final_norm_bias) const override {
    SoftmaxTerm term = Term(target);
    if (include_final_norm_bias && norm_.bias.defined()) term.bias = BiasLogits(term, norm_.bias);
    return {std::move(term)};
  }

 private:
  SoftmaxTerm Term(int64_t target) const {
    SoftmaxTerm term;
    norm_.Into(term, 1.0);
    term.matrix = unembedding64_;
    term.index = target;
    term.max_row_norm = max_row_norm_;
    return term;
  }

  FrozenNorm norm_;
  at::Tensor unembedding_;  // the model's, in its storage dtype
  at::Tensor unembedding64_;
  double max_row_norm_;
};

class UnembeddingHead : public OutputHead {
 public:
  UnembeddingHead(FinalNorm norm, const at::Tensor& unembedding)
      : norm_(std::move(norm)),
        unembedding_(unembedding),
        unembedding64_(unembedding.to(at::kDouble)) {
    max_row_norm_ = MaxRowNorm(unembedding64_);
  }

  int64_t vocab_size() const override { return unembedding64_.size(0); }

  at::Tensor Logits(const at::Tensor& final_residuals) const override {
    return at::linear(norm_.Apply(final_residuals).to(at::kDouble), unembedding64_);
  }

  std::unique_ptr<const FrozenOutputHead> FreezeAt(
      const at::Tensor& final_residual) const override {
    return std::make_unique<FrozenUnembeddingHead>(norm_.FreezeAt(final_residual), unembedding_,
                                                   unembedding64_, max_row_norm_);
  }

  std::vector<at::Tensor> PreparedTensors() const override { return {unembedding64_}; }

 private:
  FinalNorm norm_;
  at::Tensor unembedding_;
  at::Tensor unembedding64_;
  double max_row_norm_ = 0;
};

// The adaptive softmax's float64 tensors: the head matrix [c_0 + B − 1, d] = [E_0; clusters] and
// per tail band its projection, embedding and the bounds the method needs.
struct AdaptiveTensors {
  int64_t head_words = 0;  // c_0
  at::Tensor head;         // [c_0 + B − 1, d]
  double head_max_row_norm = 0;
  struct Tail {
    int64_t start = 0;
    at::Tensor projection;       // [d_b, d]
    at::Tensor embedding;        // [n_b, d_b]
    double projection_norm = 0;  // Frobenius norm ≥ the spectral norm
    double max_row_norm = 0;
  };
  std::vector<Tail> tails;
  int64_t vocab = 0;

  // [n, d] vectors already through the (frozen or real) final norm -> [n, V] log-probabilities.
  at::Tensor LogProbs(const at::Tensor& h) const {
    const at::Tensor head_log_probs = at::log_softmax(at::matmul(h, head.t()), -1);
    std::vector<at::Tensor> parts = {head_log_probs.narrow(1, 0, head_words)};
    for (size_t b = 0; b < tails.size(); ++b) {
      const Tail& tail = tails[b];
      const at::Tensor within =
          at::log_softmax(at::matmul(at::matmul(h, tail.projection.t()), tail.embedding.t()), -1);
      parts.push_back(head_log_probs.narrow(1, head_words + b, 1) + within);
    }
    return at::cat(parts, 1);
  }
};

class FrozenAdaptiveSoftmaxHead : public FrozenOutputHead {
 public:
  FrozenAdaptiveSoftmaxHead(FrozenNorm norm, std::shared_ptr<const AdaptiveTensors> tensors)
      : FrozenOutputHead(norm.sigma), norm_(std::move(norm)), tensors_(std::move(tensors)) {}

  int64_t vocab_size() const override { return tensors_->vocab; }

  at::Tensor VocabularyScores(const at::Tensor& vectors) const override {
    SoftmaxTerm identity;
    norm_.Into(identity, 1.0);
    return tensors_->LogProbs(identity.Transform(vectors));
  }

  std::vector<SoftmaxTerm> TermsFor(int64_t target, bool include_final_norm_bias) const override {
    const AdaptiveTensors& t = *tensors_;
    std::vector<SoftmaxTerm> terms(1);
    SoftmaxTerm& head = terms[0];
    norm_.Into(head, 1.0);
    head.matrix = t.head;
    head.max_row_norm = t.head_max_row_norm;
    head.index = target;
    for (size_t b = 0; b < t.tails.size(); ++b) {
      const AdaptiveTensors::Tail& tail = t.tails[b];
      if (target < tail.start || target >= tail.start + tail.embedding.size(0)) continue;
      head.index = t.head_words + static_cast<int64_t>(b);  // the band's cluster logit
      SoftmaxTerm& within = terms.emplace_back();
      norm_.Into(within, tail.projection_norm);
      within.projection = tail.projection;
      within.matrix = tail.embedding;
      within.max_row_norm = tail.max_row_norm;
      within.index = target - tail.start;
    }
    if (include_final_norm_bias && norm_.bias.defined()) {
      for (SoftmaxTerm& term : terms) term.bias = BiasLogits(term, norm_.bias);
    }
    return terms;
  }

 private:
  FrozenNorm norm_;
  std::shared_ptr<const AdaptiveTensors> tensors_;
};

class AdaptiveSoftmaxHead : public OutputHead {
 public:
  AdaptiveSoftmaxHead(FinalNorm norm, std::shared_ptr<const AdaptiveTensors> tensors)
      : norm_(std::move(norm)), tensors_(std::move(tensors)) {}

  int64_t vocab_size() const override { return tensors_->vocab; }

  at::Tensor Logits(const at::Tensor& final_residuals) const override {
    return tensors_->LogProbs(norm_.Apply(final_residuals).to(at::kDouble));
  }

  std::unique_ptr<const FrozenOutputHead> FreezeAt(
      const at::Tensor& final_residual) const override {
    return std::make_unique<FrozenAdaptiveSoftmaxHead>(norm_.FreezeAt(final_residual), tensors_);
  }

  std::vector<at::Tensor> PreparedTensors() const override {
    std::vector<at::Tensor> tensors = {tensors_->head};
    for (const AdaptiveTensors::Tail& tail : tensors_->tails) {
      tensors.push_back(tail.projection);
      tensors.push_back(tail.embedding);
    }
    return tensors;
  }

 private:
  FinalNorm norm_;
  std::shared_ptr<const AdaptiveTensors> tensors_;
};

}  // namespace

std::unique_ptr<OutputHead> MakeUnembeddingHead(NormKind norm, double eps, at::Tensor norm_weight,
                                                at::Tensor norm_bias,
                                                const at::Tensor& unembedding) {
  return std::make_unique<UnembeddingHead>(
      MakeFinalNorm(norm, eps, std::move(norm_weight), std::move(norm_bias)), unembedding);
}

std::unique_ptr<OutputHead> MakeAdaptiveSoftmaxHead(NormKind norm, double eps,
                                                    at::Tensor norm_weight, at::Tensor norm_bias,
                                                    const std::vector<AdaptiveSoftmaxBand>& bands,
                                                    const at::Tensor& cluster_weight) {
  auto tensors = std::make_shared<AdaptiveTensors>();
  tensors->head_words = bands[0].embedding.size(0);
  tensors->head = at::cat({bands[0].embedding, cluster_weight}, 0).to(at::kDouble);
  tensors->head_max_row_norm = MaxRowNorm(tensors->head);
  tensors->vocab = tensors->head_words;
  for (size_t b = 1; b < bands.size(); ++b) {
    AdaptiveTensors::Tail& tail = tensors->tails.emplace_back();
    tail.start = bands[b].start;
    tail.projection = bands[b].projection.to(at::kDouble);
    tail.embedding = bands[b].embedding.to(at::kDouble);
    tail.projection_norm = tail.projection.norm().item<double>();
    tail.max_row_norm = MaxRowNorm(tail.embedding);
    tensors->vocab += tail.embedding.size(0);
  }
  return std::make_unique<AdaptiveSoftmaxHead>(
      MakeFinalNorm(norm, eps, std::move(norm_weight), std::move(norm_bias)), std::move(tensors));
}

}  // namespace factlens
