#include "analysis/attribution.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>
#include <tuple>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace factlens {

// The output distribution of one residual base x under the frozen head, per softmax term, and the
// tangent direction u with d/dt log p(w | x + t·v) at t = 0 equal to u·v.
struct Attribution::Base {
  std::vector<at::Tensor> probs;  // per term [n_s] float64
  double log_prob = 0;            // log p(w | x)
  at::Tensor tangent;             // [d] float64
  double magnitude = 0;           // ‖x‖·Σ_s transform_norm_s·max_row_norm_s
};

// One layer's neurons: K shared vectors (FFN: rows of W_out; attention: columns of W_O) and R
// coefficient rows (FFN: 1; attention: one per source position). Flat index = r·K + k.
struct Attribution::NeuronSet {
  int64_t layer = 0;
  const Base* base = nullptr;
  at::Tensor vectors;       // [K, d] float32
  at::Tensor coefficients;  // [R, K] float32
  at::Tensor norms;         // [K] float32 ‖vectors‖ when the model keeps them, or undefined
};

namespace {

// Unit roundoffs: a correctly rounded operation errs by at most this, relative.
constexpr double kFloat32Unit = 0x1p-24;
constexpr double kFloat64Unit = 0x1p-53;

// Attribution::ExactValueErrorBound for a magnitude sum B + B_x (a double or a tensor of them),
// over S terms with n entries in all.
template <typename Magnitude>
Magnitude ExactErrorBound(const Magnitude& magnitude, double d_model, double entries,
                          double terms) {
  return (magnitude * (4 * d_model + 16) + (entries + 90 * terms)) * kFloat64Unit;
}

absl::Status InterruptedError() { return absl::CancelledError("interrupted"); }
// Elements of one float32 [chunk, V] projection block of exhaustive evaluation.
constexpr int64_t kExhaustiveBlockElements = int64_t{1} << 22;
// Elements of one float32 [chunk, V] block of exhaustive screening: hundreds of rows per GEMM, so
// that packing the [V, d] matrix (once per GEMM) costs little against the multiply-adds.
constexpr int64_t kScreeningBlockElements = int64_t{1} << 26;
// Elements of the exact batches' vocabulary scores a ranking may keep alive for
// NeuronRanking::vocabulary_scores (128 MiB of float64: ~330 rows of GPT-2's vocabulary).
constexpr int64_t kKeptScoreElements = int64_t{1} << 24;
// Elements of one [R, rows, V] block of exact evaluation.
constexpr int64_t kBlockElements = int64_t{1} << 20;

}  // namespace

std::string_view MetricName(Metric metric) {
  switch (metric) {
    case Metric::kLogProbIncrease:
      return "logprob_increase";
    case Metric::kProbIncrease:
      return "prob_increase";
    case Metric::kLogitIncrease:
      return "logit_increase";
  }
  return "?";
}

std::string_view RankModeName(RankMode mode) {
  switch (mode) {
    case RankMode::kExact:
      return "exact";
    case RankMode::kExhaustive:
      return "exhaustive";
    case RankMode::kApproximate:
      return "approximate";
  }
  return "?";
}

absl::StatusOr<Metric> ParseMetric(std::string_view name) {
  for (Metric m : {Metric::kLogProbIncrease, Metric::kProbIncrease, Metric::kLogitIncrease}) {
    if (MetricName(m) == name) return m;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("metric: '", std::string(name),
                   "' is not logprob_increase, prob_increase or logit_increase"));
}

absl::StatusOr<RankMode> ParseRankMode(std::string_view name) {
  for (RankMode m : {RankMode::kExact, RankMode::kExhaustive, RankMode::kApproximate}) {
    if (RankModeName(m) == name) return m;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("mode: '", std::string(name), "' is not exact, exhaustive or approximate"));
}

CaptureOptions FullCapture() {
  CaptureOptions capture;
  capture.residuals = capture.ffn_coefficients = capture.head_outputs = true;
  capture.attention_probs = capture.values = capture.keys = capture.logits = true;
  return capture;
}

absl::StatusOr<std::unique_ptr<Attribution>> Attribution::Create(const Model& model,
                                                                 const ForwardTrace& trace,
                                                                 const AttributionTarget& target) {
  const ModelConfig& config = model.config();
  if (target.token_id < 0 || target.token_id >= config.vocab_size) {
    return absl::InvalidArgumentError(absl::StrCat("target: token id ", target.token_id,
                                                   " is outside the vocabulary [0, ",
                                                   config.vocab_size, ")"));
  }
  const int64_t t = trace.num_tokens;
  const int64_t position = target.position < 0 ? target.position + t : target.position;
  if (position < 0 || position >= t) {
    return absl::InvalidArgumentError(
        absl::StrCat("position: ", target.position, " is out of range for ", t, " tokens"));
  }
  if (static_cast<int64_t>(trace.positions.size()) != t || trace.layers.empty() ||
      !trace.layers[0].values.defined() || !trace.layers[0].ffn_coefficients.defined() ||
      !trace.layers[0].attention_probs.defined() || !trace.final_residual.defined()) {
    return absl::FailedPreconditionError("attribution needs a trace made with FullCapture()");
  }
  std::unique_ptr<Attribution> a(new Attribution(model, trace, target));
  a->position_ = position;
  a->head_ = model.output_head().FreezeAt(trace.final_residual[position]);
  a->terms_ = a->head_->TermsFor(target.token_id, target.include_final_norm_bias);
  for (const SoftmaxTerm& term : a->terms_) {
    a->amplification_ += term.transform_norm * term.max_row_norm;
    a->term_entries_ += term.matrix.size(0);
  }

  // Every base at once, per term (one pass over its matrix for the logits, one for the
  // tangents): [attention base of layer 0, FFN base of layer 0, ..., final residual].
  std::vector<at::Tensor> residuals;
  for (const LayerTrace& layer : trace.layers) {
    residuals.push_back(layer.residual_in[position]);
    residuals.push_back(layer.residual_mid[position]);
  }
  residuals.push_back(trace.final_residual[position]);
  const at::Tensor stacked = at::stack(residuals);
  const int64_t n = stacked.size(0);
  std::vector<at::Tensor> probs;
  at::Tensor log_prob = at::zeros({n}, stacked.options().dtype(at::kDouble));
  at::Tensor tangents;
  for (const SoftmaxTerm& term : a->terms_) {
    at::Tensor logits = term.Logits(stacked);
    if (term.bias.defined()) logits = logits + term.bias;
    const at::Tensor log_probs = at::log_softmax(logits, 1);
    probs.push_back(log_probs.exp());
    log_prob = log_prob + log_probs.select(1, term.index);
    // f'(0) = Tᵀ(M_w − Σ_u p_u M_u)·v.
    const at::Tensor direction =
        term.matrix[term.index].unsqueeze(0) - at::matmul(probs.back(), term.matrix);
    const at::Tensor tangent = term.Adjoint(direction);
    tangents = tangents.defined() ? tangents + tangent : tangent;
  }
  // ‖x‖·Σ_s transform_norm_s·max_row_norm_s, the form ExactValueErrorBound's derivation needs.
  const at::Tensor magnitudes = stacked.to(at::kDouble).norm(2, 1) * a->amplification_;
  const at::Tensor log_prob_cpu = log_prob.to(at::kCPU);
  std::vector<std::shared_ptr<const Base>> bases;
  for (int64_t i = 0; i < n; ++i) {
    auto base = std::make_shared<Base>();
    for (const at::Tensor& p : probs) base->probs.push_back(p[i]);
    base->log_prob = log_prob_cpu[i].item<double>();
    base->tangent = tangents[i];
    base->magnitude = magnitudes[i].item<double>();
    bases.push_back(std::move(base));
  }
  for (size_t l = 0; l < trace.layers.size(); ++l) {
    a->attn_bases_.push_back(bases[2 * l]);
    a->ffn_bases_.push_back(bases[2 * l + 1]);
  }
  a->final_base_ = bases.back();
  return a;
}

double Attribution::target_log_prob() const { return final_base_->log_prob; }

at::Tensor Attribution::Project(const at::Tensor& vectors) const {
  return head_->VocabularyScores(vectors);
}

std::vector<std::vector<TokenScore>> Attribution::TopTokens(const at::Tensor& vectors,
                                                            int64_t k) const {
  return head_->TopTokens(vectors, k);
}

std::vector<at::Tensor> Attribution::TermLogits(const at::Tensor& vectors) const {
  std::vector<at::Tensor> logits;
  for (const SoftmaxTerm& term : terms_) logits.push_back(term.Logits(vectors));
  return logits;
}

at::Tensor Attribution::FromLogProbIncrease(const Base& base, const at::Tensor& delta) const {
  if (target_.metric == Metric::kProbIncrease) {
    return std::exp(base.log_prob) * at::expm1(delta.to(at::kDouble));
  }
  return delta.to(at::kDouble);
}

double Attribution::ExactValueErrorBound(double magnitude, double base_magnitude) const {
  return ExactErrorBound(magnitude + base_magnitude, static_cast<double>(model_.config().d_model),
                         static_cast<double>(term_entries_), static_cast<double>(terms_.size()));
}

at::Tensor Attribution::ExactFromLogits(const Base& base, const std::vector<at::Tensor>& logits,
                                        const at::Tensor& coefficients) const {
  const int64_t k = coefficients.size(1), r = coefficients.size(0);
  const at::Tensor coefficients64 = coefficients.to(at::kDouble);
  at::Tensor total;
  for (size_t s = 0; s < terms_.size(); ++s) {
    const int64_t index = terms_[s].index;
    const at::Tensor& term_logits = logits[s];  // [K, n_s]
    at::Tensor value;
    if (target_.metric == Metric::kLogitIncrease) {
      value = coefficients64 * term_logits.select(1, index).unsqueeze(0);
    } else {
      // log p(w|x+v) − log p(w|x) of this term = −log Σ_u p_u exp(ℓ_u − ℓ_w). Shifting by ℓ_w
      // (not by max_u ℓ_u) keeps the sum near 1 when the increase is small, so nothing is lost to
      // cancellation; the shift never sits more than 80 below the maximum, so nothing
      // overflows. Everything is float64 (float32 logits are widened exactly), elementwise per
      // candidate except the sum over the term's entries. Rows go in blocks to bound temporaries.
      const int64_t entries = term_logits.size(1);
      const int64_t rows = std::max<int64_t>(1, kBlockElements / (r * entries));
      std::vector<at::Tensor> parts;
      for (int64_t start = 0; start < k; start += rows) {
        const int64_t n = std::min(rows, k - start);
        at::Tensor scaled = term_logits.narrow(0, start, n).unsqueeze(0) *
                            coefficients64.narrow(1, start, n).unsqueeze(-1);  // [R, n, n_s]
        const at::Tensor target_logit = scaled.select(-1, index).unsqueeze(-1).clone();
        const at::Tensor shift = at::maximum(target_logit, scaled.amax(-1, /*keepdim=*/true) - 80);
        const at::Tensor mixture =
            at::matmul(scaled.sub_(shift).exp_(), base.probs[s]);  // in place
        parts.push_back((target_logit - shift).squeeze(-1) - mixture.log());
      }
      value = at::cat(parts, 1);
    }
    total = total.defined() ? total + value : value;
  }
  return target_.metric == Metric::kLogitIncrease ? total : FromLogProbIncrease(base, total);
}

at::Tensor Attribution::Increase(const std::vector<const Base*>& bases,
                                 const at::Tensor& vectors) const {
  const std::vector<at::Tensor> logits = TermLogits(vectors);
  const at::Tensor one = at::ones({1, 1}, logits.front().options());
  std::vector<at::Tensor> values;
  for (size_t i = 0; i < bases.size(); ++i) {
    std::vector<at::Tensor> rows;
    for (const at::Tensor& term_logits : logits) rows.push_back(term_logits.narrow(0, i, 1));
    values.push_back(ExactFromLogits(*bases[i], rows, one)[0]);
  }
  return at::cat(values);
}

at::Tensor Attribution::LayerOutputIncrease(bool attention, bool ffn) const {
  std::vector<const Base*> bases;
  std::vector<at::Tensor> vectors;
  for (const bool attention_output : {true, false}) {
    if (!(attention_output ? attention : ffn)) continue;
    for (size_t l = 0; l < trace_.layers.size(); ++l) {
      const LayerTrace& layer = trace_.layers[l];
      bases.push_back((attention_output ? attn_bases_ : ffn_bases_)[l].get());
      vectors.push_back((attention_output ? layer.attn_out : layer.ffn_out)[position_]);
    }
  }
  return Increase(bases, at::stack(vectors));
}

at::Tensor Attribution::AttentionLayerIncrease() const { return LayerOutputIncrease(true, false); }

at::Tensor Attribution::FfnLayerIncrease() const { return LayerOutputIncrease(false, true); }

std::pair<at::Tensor, at::Tensor> Attribution::LayerIncreases() const {
  const at::Tensor both = LayerOutputIncrease(true, true);
  const int64_t layers = static_cast<int64_t>(trace_.layers.size());
  return {both.narrow(0, 0, layers), both.narrow(0, layers, layers)};
}

namespace {

// W_O as [H, Dh, d] float32: head h's block of the output projection, one row per head dim.
at::Tensor OutputProjectionByHead(const Model& model, int64_t layer) {
  const ModelConfig& c = model.config();
  return model.weights()
      .layers[layer]
      .o_weight.to(at::kFloat)
      .t()
      .reshape({c.n_heads, c.head_dim, c.d_model});
}

// Per-head value vectors [T, H, Dh] (key/value heads repeated for grouped-query attention).
at::Tensor ValuesByHead(const Model& model, const LayerTrace& layer) {
  const ModelConfig& c = model.config();
  return layer.values.repeat_interleave(c.n_heads / c.n_kv_heads, /*dim=*/1);
}

}  // namespace

Attribution::NeuronSet Attribution::Heads(int64_t layer) const {
  const at::Tensor heads = trace_.layers[layer].head_outputs[position_];  // [H, Dh]
  NeuronSet set;
  set.layer = layer;
  set.base = attn_bases_[layer].get();
  set.vectors = at::einsum("hj,hjd->hd", {heads, OutputProjectionByHead(model_, layer)});
  set.coefficients = at::ones({1, set.vectors.size(0)}, set.vectors.options());
  return set;
}

Attribution::NeuronSet Attribution::HeadPositions(int64_t layer) const {
  const LayerTrace& trace = trace_.layers[layer];
  const at::Tensor probs = trace.attention_probs.select(1, position_);  // [H, T]
  NeuronSet set;
  set.layer = layer;
  set.base = attn_bases_[layer].get();
  set.vectors = at::einsum("hs,shj,hjd->hsd", {probs, ValuesByHead(model_, trace),
                                               OutputProjectionByHead(model_, layer)})
                    .reshape({-1, model_.config().d_model});
  set.coefficients = at::ones({1, set.vectors.size(0)}, set.vectors.options());
  return set;
}

std::vector<Attribution::NeuronSet> Attribution::EveryLayer(NeuronSet (Attribution::*set)(int64_t)
                                                                const) const {
  std::vector<NeuronSet> sets;
  for (size_t l = 0; l < trace_.layers.size(); ++l) sets.push_back((this->*set)(l));
  return sets;
}

at::Tensor Attribution::HeadIncrease() const {
  return AllExact(EveryLayer(&Attribution::Heads), {})->reshape({model_.config().n_layers, -1});
}

at::Tensor Attribution::HeadPositionIncrease() const {
  const ModelConfig& c = model_.config();
  return AllExact(EveryLayer(&Attribution::HeadPositions), {})
      ->reshape({c.n_layers, c.n_heads, trace_.num_tokens});
}

absl::StatusOr<NeuronRanking> Attribution::RankHeads(int64_t k, RankOrder order, RankMode mode,
                                                     const Interrupted& interrupted) const {
  return Rank(EveryLayer(&Attribution::Heads), k, order, mode, interrupted);
}

absl::StatusOr<NeuronRanking> Attribution::RankHeadPositions(int64_t k, RankOrder order,
                                                             RankMode mode,
                                                             const Interrupted& interrupted) const {
  return Rank(EveryLayer(&Attribution::HeadPositions), k, order, mode, interrupted);
}

Attribution::NeuronSet Attribution::FfnNeurons(int64_t layer) const {
  NeuronSet set;
  set.layer = layer;
  set.base = ffn_bases_[layer].get();
  set.vectors = model_.weights().layers[layer].out_weight.to(at::kFloat).t();
  set.norms = model_.FfnOutputNorms()[layer];
  set.coefficients = trace_.layers[layer].ffn_coefficients[position_].unsqueeze(0);
  return set;
}

Attribution::NeuronSet Attribution::AttentionNeurons(int64_t layer) const {
  const ModelConfig& c = model_.config();
  const LayerTrace& trace = trace_.layers[layer];
  NeuronSet set;
  set.layer = layer;
  set.base = attn_bases_[layer].get();
  set.vectors = model_.weights().layers[layer].o_weight.to(at::kFloat).t();  // [H·Dh, d]
  set.norms = model_.AttentionOutputNorms()[layer];
  const at::Tensor probs = trace.attention_probs.select(1, position_).t();  // [T, H]
  set.coefficients = (ValuesByHead(model_, trace) * probs.unsqueeze(-1))
                         .reshape({trace_.num_tokens, c.n_heads * c.head_dim});
  return set;
}

absl::StatusOr<at::Tensor> Attribution::ExactValues(const NeuronSet& set,
                                                    const Interrupted& interrupted) const {
  if (target_.metric == Metric::kLogitIncrease) {
    // Linear in the vector: Σ_s m·T_s(v)·M_s[w_s], one matrix-vector product per term.
    at::Tensor values;
    for (const SoftmaxTerm& term : terms_) {
      const at::Tensor term_values = at::mv(term.Transform(set.vectors), term.matrix[term.index]);
      values = values.defined() ? values + term_values : term_values;
    }
    return (set.coefficients.to(at::kDouble) * values.unsqueeze(0)).reshape({-1});
  }
  const int64_t k = set.vectors.size(0);
  const int64_t chunk = std::max<int64_t>(1, kExhaustiveBlockElements / term_entries_);
  std::vector<at::Tensor> parts;
  for (int64_t start = 0; start < k; start += chunk) {
    if (interrupted && interrupted()) return InterruptedError();
    const int64_t n = std::min(chunk, k - start);
    parts.push_back(ExactFromLogits(*set.base, TermLogits(set.vectors.narrow(0, start, n)),
                                    set.coefficients.narrow(1, start, n)));  // [R, n]
  }
  return at::cat(parts, 1).reshape({-1});
}

absl::StatusOr<at::Tensor> Attribution::AllExact(const std::vector<NeuronSet>& sets,
                                                 const Interrupted& interrupted) const {
  std::vector<at::Tensor> layers;
  for (const NeuronSet& set : sets) {
    absl::StatusOr<at::Tensor> values = ExactValues(set, interrupted);
    if (!values.ok()) return values.status();
    layers.push_back(*std::move(values));
  }
  return at::stack(layers);
}

absl::StatusOr<std::pair<at::Tensor, at::Tensor>> Attribution::ScreenedValues(
    const NeuronSet& set, const std::vector<at::Tensor>& matrices32,
    const Interrupted& interrupted) const {
  // A logit ℓ_u = M_u·T(v) from T(v) and M rounded to float32 and a float32 dot product of
  // length d_s errs by at most (d_s + 3)·2^-24·Σ_i|M_ui·T_i| ≤ (d_s + 4)·2^-24·max_u‖M_u‖·‖T(v)‖
  // (Higham, any summation order; one more unit for the float64 norm). Moving every logit of a
  // term by at most e moves m·ℓ_w − log Σ_u p_u·exp(m·ℓ_u) by at most 2·|m|·e; the float64
  // arithmetic after the logits is that of ExactValues, bounded by its ExactValueErrorBound.
  const int64_t k = set.vectors.size(0);
  const int64_t chunk = std::max<int64_t>(1, kScreeningBlockElements / term_entries_);
  std::vector<at::Tensor> values, widths, buffers(terms_.size());
  for (int64_t start = 0; start < k; start += chunk) {
    if (interrupted && interrupted()) return InterruptedError();
    const int64_t n = std::min(chunk, k - start);
    const at::Tensor vectors = set.vectors.narrow(0, start, n);
    std::vector<at::Tensor> logits;
    at::Tensor logit_error;  // [n]: Σ over terms of each term's bound e
    for (size_t s = 0; s < terms_.size(); ++s) {
      const at::Tensor transformed = terms_[s].Transform(vectors);  // [n, d_s] float64
      // float32 [n, n_s] into one buffer per term (a fresh 256 MB tensor per chunk costs its
      // page faults); ExactFromLogits widens it to float64 block by block.
      if (!buffers[s].defined()) {
        buffers[s] =
            at::empty({std::min(chunk, k), matrices32[s].size(0)}, matrices32[s].options());
      }
      at::Tensor out = buffers[s].narrow(0, 0, n);
      at::mm_out(out, transformed.to(at::kFloat), matrices32[s].t());
      logits.push_back(out);
      const double d_s = static_cast<double>(transformed.size(1));
      const at::Tensor e =
          transformed.norm(2, 1) * (terms_[s].max_row_norm * (d_s + 4) * kFloat32Unit);
      logit_error = logit_error.defined() ? logit_error + e : e;
    }
    const at::Tensor coefficients = set.coefficients.narrow(1, start, n);  // [R, n]
    const at::Tensor value = ExactFromLogits(*set.base, logits, coefficients);
    // The log-prob increase δ errs by at most w; p·expm1(δ) then by (p + value)·expm1(w)·e^w.
    at::Tensor width = 2 * coefficients.to(at::kDouble).abs() * logit_error.unsqueeze(0);
    if (target_.metric == Metric::kProbIncrease) {
      width =
          (value + std::exp(set.base->log_prob)).clamp_min(0) * at::expm1(width) * at::exp(width);
    }
    values.push_back(value);
    widths.push_back(width);
  }
  return std::make_pair(at::cat(values, 1).reshape({-1}), at::cat(widths, 1).reshape({-1}));
}

at::Tensor Attribution::RowNorms(const NeuronSet& set) const {
  // The float32 norm errs by at most (d + 2)·2^-24 relative; the bound is raised by that.
  const double d = static_cast<double>(model_.config().d_model);
  const at::Tensor norms = set.norms.defined() ? set.norms : set.vectors.norm(2, 1);
  return norms.to(at::kDouble) * (1 + (d + 2) * kFloat32Unit);
}

at::Tensor Attribution::Magnitudes(const NeuronSet& set, const at::Tensor& row_norms) const {
  // ‖T_s(v)‖ ≤ transform_norm_s·‖v‖ (output_head.h).
  return (set.coefficients.to(at::kDouble).abs() * row_norms * amplification_).reshape({-1});
}

at::Tensor Attribution::FfnNeuronIncrease() const {
  return *AllExact(EveryLayer(&Attribution::FfnNeurons), {});
}

at::Tensor Attribution::AttentionNeuronIncrease() const {
  const ModelConfig& c = model_.config();
  return AllExact(EveryLayer(&Attribution::AttentionNeurons), {})
      ->reshape({c.n_layers, trace_.num_tokens, c.n_heads, c.head_dim});
}

absl::StatusOr<NeuronRanking> Attribution::RankFfnNeurons(int64_t k, RankOrder order, RankMode mode,
                                                          const Interrupted& interrupted,
                                                          int64_t vocabulary_rows) const {
  return Rank(EveryLayer(&Attribution::FfnNeurons), k, order, mode, interrupted, vocabulary_rows);
}

absl::StatusOr<NeuronRanking> Attribution::RankAttentionNeurons(int64_t k, RankOrder order,
                                                                RankMode mode,
                                                                const Interrupted& interrupted,
                                                                int64_t vocabulary_rows) const {
  return Rank(EveryLayer(&Attribution::AttentionNeurons), k, order, mode, interrupted,
              vocabulary_rows);
}

at::Tensor Attribution::FfnNeuronSubvalue(int64_t layer, int64_t neuron) const {
  const NeuronSet set = FfnNeurons(layer);
  return set.vectors[neuron] * set.coefficients[0][neuron];
}

at::Tensor Attribution::AttentionNeuronSubvalue(int64_t layer, int64_t index) const {
  const NeuronSet set = AttentionNeurons(layer);
  const int64_t k = set.vectors.size(0);
  return set.vectors[index % k] * set.coefficients[index / k][index % k];
}

absl::StatusOr<NeuronRanking> Attribution::Rank(const std::vector<NeuronSet>& sets, int64_t k,
                                                RankOrder order, RankMode mode,
                                                const Interrupted& interrupted,
                                                int64_t vocabulary_rows) const {
  NeuronRanking ranking;
  ranking.mode = mode;
  const bool top = order == RankOrder::kTop;
  for (const NeuronSet& set : sets) ranking.total += set.coefficients.numel();
  k = std::clamp<int64_t>(k, 0, ranking.total);
  // The logit increase is linear in the vector: its exact value costs what a bound (or a
  // first-order value) would, so every mode evaluates it exactly and says so.
  if (target_.metric == Metric::kLogitIncrease) mode = ranking.mode = RankMode::kExhaustive;

  struct Candidate {
    double value;  // exact value, or (while a candidate) its safe bound
    int64_t set;
    int64_t index;
    double error;             // rounding bound of `value`
    int64_t scores_row = -1;  // its row of the kept vocabulary scores, if any
  };
  auto better = [top](const Candidate& a, const Candidate& b) {
    if (a.value != b.value) return top ? a.value > b.value : a.value < b.value;
    return std::tie(a.set, a.index) < std::tie(b.set, b.index);
  };
  auto append = [&](std::vector<Candidate>& out, int64_t s, const at::Tensor& values,
                    const at::Tensor& errors) {
    const at::Tensor v = values.to(at::kCPU, at::kDouble).contiguous();
    const at::Tensor e = errors.to(at::kCPU, at::kDouble).contiguous();
    const double* vd = v.data_ptr<double>();
    const double* ed = e.data_ptr<double>();
    for (int64_t i = 0; i < v.numel(); ++i) out.push_back({vd[i], s, i, ed[i]});
  };
  const double d = static_cast<double>(model_.config().d_model);
  std::vector<at::Tensor> row_norms;     // per set: RowNorms
  std::vector<at::Tensor> exact_errors;  // per set: ExactValueErrorBound of every neuron
  for (const NeuronSet& set : sets) {
    row_norms.push_back(RowNorms(set));
    exact_errors.push_back(ExactErrorBound(Magnitudes(set, row_norms.back()) + set.base->magnitude,
                                           d, static_cast<double>(term_entries_),
                                           static_cast<double>(terms_.size())));
  }
  std::vector<Candidate> results;
  std::vector<Candidate> candidates;  // bounds on values not yet evaluated in float64
  // NeuronRanking::vocabulary_scores: a view of each evaluated candidate's row of its batch's
  // vocabulary scores (no copies: copying [n, V] float64 rows costs about what the batch's GEMM
  // does). The views keep every evaluated row alive, so once the rows would exceed
  // kKeptScoreElements they are dropped and the caller projects the vectors instead.
  vocabulary_rows = std::clamp<int64_t>(vocabulary_rows, 0, k);
  std::vector<at::Tensor> score_views;
  bool scores_kept = vocabulary_rows > 0;

  // Exhaustive: every value from float32 logits (the projection GEMM at float32 cost, as a
  // float32 notebook computes it) with its derived bound, as candidates for the float64 batches
  // below — unless most neurons are reported (or the metric is linear), when float64 values of
  // every neuron are the cheaper way.
  const bool screen = mode == RankMode::kExhaustive && 2 * k < ranking.total &&
                      target_.metric != Metric::kLogitIncrease;
  if (mode == RankMode::kExhaustive && !screen) {
    for (size_t s = 0; s < sets.size(); ++s) {
      absl::StatusOr<at::Tensor> values = ExactValues(sets[s], interrupted);
      if (!values.ok()) return values.status();
      append(results, s, *values, exact_errors[s]);
    }
  } else if (screen) {
    std::vector<at::Tensor> matrices32;
    for (const SoftmaxTerm& term : terms_) matrices32.push_back(term.matrix.to(at::kFloat));
    for (size_t s = 0; s < sets.size(); ++s) {
      absl::StatusOr<std::pair<at::Tensor, at::Tensor>> screened =
          ScreenedValues(sets[s], matrices32, interrupted);
      if (!screened.ok()) return screened.status();
      const auto& [values, widths] = *screened;
      const at::Tensor width = widths + exact_errors[s];
      append(candidates, s, top ? values + width : values - width, exact_errors[s]);
    }
  } else {
    // Per layer: the first-order value m·f'(0) of every neuron — by concavity (of every softmax
    // term, hence of their sum) an upper bound on the log-prob increase — and, for bottom-k,
    // Hoeffding's lower bound m·f'(0) − m²·Σ_s max_u‖M_s,u‖²·‖T_s(v)‖²/2 (per term, the logits
    // of m·v span at most 2·|m|·max‖M_s,u‖·‖T_s(v)‖). The first-order value is computed in
    // float32 (one pass over the layer's weights) and widened by its worst-case rounding: m·(v·t)
    // errs by at most (d + 3)·2^-24·|m|·‖v‖·‖t‖ (t rounded to float32, a length-d dot product in
    // any order, the product with m); the quadratic term (float64 from float32 inputs) is raised
    // by (d + 8)·2^-24 relative.
    for (size_t s = 0; s < sets.size(); ++s) {
      const NeuronSet& set = sets[s];
      const at::Tensor coefficients = set.coefficients.to(at::kDouble);
      const at::Tensor first_order =
          (set.coefficients * at::mv(set.vectors, set.base->tangent.to(at::kFloat)))
              .to(at::kDouble);
      const double tangent_norm = set.base->tangent.norm().item<double>();
      const at::Tensor rounding =
          coefficients.abs() * row_norms[s] * (tangent_norm * (d + 3) * kFloat32Unit);
      at::Tensor bound = first_order;
      if (mode == RankMode::kExact) bound = top ? first_order + rounding : first_order - rounding;
      if (!top && mode == RankMode::kExact) {
        at::Tensor curvature;  // Σ_s max‖M_s,u‖²·‖T_s(v)‖² per vector
        for (const SoftmaxTerm& term : terms_) {
          const at::Tensor c =
              term.Transform(set.vectors).pow(2).sum(1) * (term.max_row_norm * term.max_row_norm);
          curvature = curvature.defined() ? curvature + c : c;
        }
        bound = bound - coefficients.pow(2) * curvature * ((1 + (d + 8) * kFloat32Unit) / 2);
      }
      bound = bound.reshape({-1});
      if (target_.metric == Metric::kProbIncrease) bound = FromLogProbIncrease(*set.base, bound);
      if (mode == RankMode::kApproximate) {
        append(results, s, bound, rounding.reshape({-1}));
      } else {
        append(candidates, s, bound, exact_errors[s]);
      }
    }
  }
  if (mode == RankMode::kExact || screen) {
    // Candidates in bound order; evaluate in batches until the k-th exact value, less its
    // rounding bound, beats the largest remaining (widened) bound. Each batch is one projection
    // GEMM, which streams the whole output layer however few its rows: the first takes the k
    // best bounds (at least 16, which cost about what fewer do), each later one the remaining
    // candidates whose bound still beats the current threshold — those that could still enter
    // the top k — up to 128, so a ranking with tight bounds takes two GEMMs.
    std::sort(candidates.begin(), candidates.end(), better);
    constexpr size_t kMaxBatch = 512;  // bounds the [batch, V] float64 logits
    size_t batch = static_cast<size_t>(std::clamp<int64_t>(k, 16, static_cast<int64_t>(kMaxBatch)));
    size_t next = 0;
    while (next < candidates.size()) {
      if (interrupted && interrupted()) return InterruptedError();
      const size_t batch_end = std::min(candidates.size(), next + batch);
      // One projection GEMM for the whole batch (each GEMM streams the whole unembedding), then
      // the exact values per layer, whose bases differ.
      std::map<int64_t, std::vector<int64_t>> by_set;
      for (size_t c = next; c < batch_end; ++c)
        by_set[candidates[c].set].push_back(candidates[c].index);
      std::vector<at::Tensor> vectors;
      for (const auto& [s, indices] : by_set) {
        const at::Tensor rows = at::tensor(indices, at::kLong)
                                    .remainder(sets[s].vectors.size(0))
                                    .to(sets[s].vectors.device());
        vectors.push_back(sets[s].vectors.index_select(0, rows));
      }
      const std::vector<at::Tensor> logits = TermLogits(at::cat(vectors, 0));
      at::Tensor scores;
      if (scores_kept) {
        scores = head_->VocabularyScoresFromTermLogits(logits);
        const int64_t kept_rows = ranking.evaluated + static_cast<int64_t>(batch_end - next);
        scores_kept = scores.defined() && kept_rows * scores.size(1) <= kKeptScoreElements;
        if (!scores_kept) score_views.clear();
      }
      int64_t offset = 0;
      for (const auto& [s, indices] : by_set) {
        const NeuronSet& set = sets[s];
        const int64_t n = static_cast<int64_t>(indices.size());
        const at::Tensor index = at::tensor(indices, at::kLong).to(set.coefficients.device());
        const at::Tensor coefficient = set.coefficients.reshape({-1}).index_select(0, index);
        std::vector<at::Tensor> rows;
        for (const at::Tensor& term_logits : logits)
          rows.push_back(term_logits.narrow(0, offset, n));
        const at::Tensor values = ExactFromLogits(*set.base, rows, coefficient.unsqueeze(0))[0];
        offset += n;
        const size_t first = results.size();
        append(results, s, values, exact_errors[s].index_select(0, index));
        for (int64_t i = 0; i < n; ++i) {
          results[first + i].index = indices[i];
          if (!scores_kept) continue;
          results[first + i].scores_row = static_cast<int64_t>(score_views.size());
          score_views.push_back(scores[offset - n + i]);
        }
      }
      ranking.evaluated += static_cast<int64_t>(batch_end - next);
      next = batch_end;
      if (static_cast<int64_t>(results.size()) < k) {
        batch = std::clamp<size_t>(k - results.size(), 128, kMaxBatch);
      } else if (k > 0 && next < candidates.size()) {
        std::nth_element(results.begin(), results.begin() + (k - 1), results.end(), better);
        const Candidate& kth = results[k - 1];
        const double threshold = top ? kth.value - kth.error : kth.value + kth.error;
        const auto beats = [&](const Candidate& c) {
          return top ? c.value > threshold : c.value < threshold;
        };
        const auto beating_end =
            std::partition_point(candidates.begin() + next, candidates.end(), beats);
        if (beating_end == candidates.begin() + next) break;
        // At most 128: with loose bounds the threshold rises as values come in, and a larger
        // batch would evaluate candidates the next check drops.
        batch = std::min<size_t>(beating_end - (candidates.begin() + next), 128);
      }
    }
  }
  if (mode == RankMode::kExhaustive) ranking.evaluated = ranking.total;
  const int64_t keep = std::min<int64_t>(k, results.size());
  std::partial_sort(results.begin(), results.begin() + keep, results.end(), better);
  for (int64_t i = 0; i < keep; ++i) {
    const Candidate& c = results[i];
    const NeuronSet& set = sets[c.set];
    const int64_t kk = set.vectors.size(0);
    ranking.neurons.push_back(
        {set.layer, c.index, c.value, set.coefficients[c.index / kk][c.index % kk].item<double>()});
    ranking.max_error = std::max(ranking.max_error, c.error);
  }
  const int64_t reported_rows = std::min<int64_t>(vocabulary_rows, keep);
  for (int64_t i = 0; scores_kept && i < reported_rows; ++i) {
    scores_kept = results[i].scores_row >= 0;  // not when evaluated without a batch projection
    if (scores_kept) ranking.vocabulary_scores.push_back(score_views[results[i].scores_row]);
  }
  if (!scores_kept) ranking.vocabulary_scores.clear();
  return ranking;
}

}  // namespace factlens
