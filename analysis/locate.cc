#include "analysis/locate.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <map>
#include <tuple>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "analysis/device.h"
#include "analysis/forward.h"
#include "analysis/tracing.h"

namespace factlens {
namespace {

std::vector<double> ToVector(const at::Tensor& t) {
  const at::Tensor c = t.to(at::kCPU, at::kDouble).contiguous();
  return std::vector<double>(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
}

// A ranking of heads (`positions` 0: RankedNeuron::index = h) or head×positions (index = h·T + s,
// T = `positions`) as head scores.
std::vector<HeadScore> HeadScores(const NeuronRanking& ranking, int64_t positions) {
  std::vector<HeadScore> heads;
  for (const RankedNeuron& n : ranking.neurons) {
    heads.push_back(positions > 0
                        ? HeadScore{n.layer, n.index / positions, n.index % positions, n.score}
                        : HeadScore{n.layer, n.index, -1, n.score});
  }
  return heads;
}

// Row i of `rows`, or an undefined tensor when `rows` is shorter.
at::Tensor RowOrUndefined(const std::vector<at::Tensor>& rows, size_t i) {
  return i < rows.size() ? rows[i] : at::Tensor();
}

// A reported neuron's value vector: a column of a layer's FFN output projection or of its
// attention output projection (shared by an attention neuron's every source position).
struct ValueVector {
  bool attention = false;
  int64_t layer = 0, column = 0;
  at::Tensor scores;  // its vocabulary scores [V] when its ranking kept them, or undefined
};

// What each neuron writes: the top tokens of its value vector's projection, sign-corrected by its
// coefficient (a neuron with m < 0 promotes the bottom tokens of v). values[i] belongs to
// reports[i]; the scores a ranking kept are used as they are, and each other distinct signed
// vector is projected once.
void FillTopTokens(const Attribution& a, const std::vector<ValueVector>& values,
                   const std::vector<NeuronReport*>& reports, int64_t k) {
  if (k <= 0 || values.empty()) return;
  const ModelWeights& weights = a.model().weights();
  std::map<std::tuple<bool, int64_t, int64_t, bool>, size_t> row_of;
  std::vector<std::pair<size_t, size_t>> projected;  // (values index, row of `vectors`)
  std::vector<at::Tensor> vectors;
  for (size_t i = 0; i < values.size(); ++i) {
    const ValueVector& v = values[i];
    const bool negative = reports[i]->coefficient < 0;
    if (v.scores.defined()) {
      reports[i]->top_tokens = TopScores(negative ? -v.scores : v.scores, k);
      continue;
    }
    const auto [it, added] =
        row_of.try_emplace({v.attention, v.layer, v.column, negative}, vectors.size());
    if (added) {
      const LayerWeights& layer = weights.layers[v.layer];
      const at::Tensor column =
          (v.attention ? layer.o_weight : layer.out_weight).select(1, v.column).to(at::kFloat);
      vectors.push_back(negative ? -column : column);
    }
    projected.emplace_back(i, it->second);
  }
  if (vectors.empty()) return;
  const std::vector<std::vector<TokenScore>> tops = a.TopTokens(at::stack(vectors), k);
  for (const auto& [i, row] : projected) reports[i]->top_tokens = tops[row];
}

absl::Status CheckOptions(const ModelConfig& config, const LocateOptions& o) {
  const int64_t limit = 100000;
  const std::pair<const char*, int64_t> counts[] = {
      {"predictions", o.predictions},
      {"top_heads", o.top_heads},
      {"top_head_positions", o.top_head_positions},
      {"top_ffn_neurons", o.top_ffn_neurons},
      {"top_attention_neurons", o.top_attention_neurons},
      {"query_ffn_neurons", o.query_ffn_neurons},
      {"query_attention_neurons", o.query_attention_neurons},
      {"query_neurons_reported", o.query_neurons_reported},
      {"top_tokens", o.top_tokens}};
  for (const auto& [name, value] : counts) {
    if (value < 0 || value > limit) {
      return absl::InvalidArgumentError(
          absl::StrCat(name, ": ", value, " is out of range [0, ", limit, "]"));
    }
  }
  if (o.top_tokens > config.vocab_size) {
    return absl::InvalidArgumentError("top_tokens: exceeds the vocabulary size");
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<FactReport> LocateFact(const Model& model, absl::Span<const int64_t> token_ids,
                                      int64_t target, const LocateOptions& options,
                                      const ProgressCallback& progress) {
  const ModelConfig& config = model.config();
  if (absl::Status s = CheckOptions(config, options); !s.ok()) return s;
  bool stopped = false;
  auto report_progress = [&](const char* stage, double fraction) {
    stopped = stopped || (progress && !progress(stage, fraction));
    return !stopped;
  };
  const absl::Status cancelled = absl::CancelledError("fact localization was cancelled");
  if (!report_progress("forward", 0.0)) return cancelled;
  // The position's logits come with the logit lens (its last row): the trace needs none.
  CaptureOptions capture = FullCapture();
  capture.logits = false;
  absl::StatusOr<ForwardTrace> trace = Forward(model, token_ids, capture);
  if (!trace.ok()) return trace.status();
  AttributionTarget attribution_target;
  attribution_target.token_id = target;
  attribution_target.position = options.position;
  attribution_target.metric = options.metric;
  attribution_target.include_final_norm_bias = options.include_final_norm_bias;
  absl::StatusOr<std::unique_ptr<Attribution>> attribution =
      Attribution::Create(model, *trace, attribution_target);
  if (!attribution.ok()) return attribution.status();
  const Attribution& a = **attribution;

  try {
    FactReport report;
    report.input_ids.assign(token_ids.begin(), token_ids.end());
    report.position = a.position();
    report.target = target;
    report.metric = options.metric;
    report.final_scale = a.final_scale();
    const at::Tensor lens_logits = CumulativeLensLogits(model, *trace, a.position());
    const at::Tensor logits = lens_logits[-1];
    report.outcome = OutcomeOf(logits, target);
    report.predictions = TopScores(at::softmax(logits, -1), options.predictions);
    report.cumulative = CumulativeLensSteps(lens_logits, target);

    if (!report_progress("layers and heads", 0.1)) return cancelled;
    const auto [attention_layers, ffn_layers] = a.LayerIncreases();
    report.attention_layer_increase = ToVector(attention_layers);
    report.ffn_layer_increase = ToVector(ffn_layers);
    // Only the top heads are reported: exact values, pruned unless every value is asked for.
    const RankMode heads_mode =
        options.mode == RankMode::kExhaustive ? RankMode::kExhaustive : RankMode::kExact;
    const Interrupted heads_interrupted = [&] { return !report_progress("layers and heads", 0.1); };
    absl::StatusOr<NeuronRanking> heads =
        a.RankHeads(options.top_heads, RankOrder::kTop, heads_mode, heads_interrupted);
    if (!heads.ok()) return cancelled;
    report.top_heads = HeadScores(*heads, 0);
    heads = a.RankHeadPositions(options.top_head_positions, RankOrder::kTop, heads_mode,
                                heads_interrupted);
    if (!heads.ok()) return cancelled;
    report.top_head_positions = HeadScores(*heads, trace->num_tokens);

    // Every reported neuron's value vector, for one batched projection at the end.
    std::vector<ValueVector> values;
    if (!report_progress("FFN neurons", 0.25)) return cancelled;
    const int64_t ffn_k = std::max(options.top_ffn_neurons, options.query_ffn_neurons);
    // The exact evaluation's logits of the reported neurons are their vocabulary scores: kept
    // for their top tokens instead of projecting them again.
    const int64_t ffn_rows = options.top_tokens > 0 ? options.top_ffn_neurons : 0;
    absl::StatusOr<NeuronRanking> ffn_ranking = a.RankFfnNeurons(
        ffn_k, RankOrder::kTop, options.mode, [&] { return !report_progress("FFN neurons", 0.25); },
        ffn_rows);
    if (!ffn_ranking.ok()) return cancelled;
    NeuronRanking& ffn = *ffn_ranking;
    for (size_t i = 0; i < ffn.neurons.size() && static_cast<int64_t>(i) < options.top_ffn_neurons;
         ++i) {
      const RankedNeuron& n = ffn.neurons[i];
      values.push_back({false, n.layer, n.index, RowOrUndefined(ffn.vocabulary_scores, i)});
      report.ffn_neurons.push_back({n.layer, n.index, -1, -1, n.score, n.coefficient, {}});
    }
    if (!report_progress("attention neurons", 0.45)) return cancelled;
    const int64_t attn_k = std::max(options.top_attention_neurons, options.query_attention_neurons);
    const int64_t attention_rows = options.top_tokens > 0 ? options.top_attention_neurons : 0;
    absl::StatusOr<NeuronRanking> attention_ranking = a.RankAttentionNeurons(
        attn_k, RankOrder::kTop, options.mode,
        [&] { return !report_progress("attention neurons", 0.45); }, attention_rows);
    if (!attention_ranking.ok()) return cancelled;
    NeuronRanking& attention = *attention_ranking;
    for (size_t i = 0;
         i < attention.neurons.size() && static_cast<int64_t>(i) < options.top_attention_neurons;
         ++i) {
      const RankedNeuron& n = attention.neurons[i];
      const AttentionNeuronIndex idx = SplitAttentionNeuronIndex(config, n.index);
      values.push_back({true, n.layer, idx.head * config.head_dim + idx.dim,
                        RowOrUndefined(attention.vocabulary_scores, i)});
      report.attention_neurons.push_back(
          {n.layer, idx.dim, idx.head, idx.source_position, n.score, n.coefficient, {}});
    }

    if (!report_progress("query layers", 0.65)) return cancelled;
    const std::vector<RankedNeuron> query_ffn(
        ffn.neurons.begin(),
        ffn.neurons.begin() + std::min<size_t>(ffn.neurons.size(), options.query_ffn_neurons));
    for (const auto& [name, scores] : QueryLayerScoresFfn(a, query_ffn)) {
      report.query_layers_ffn.emplace_back(name, ToVector(scores));
    }
    const std::vector<RankedNeuron> query_attention(
        attention.neurons.begin(),
        attention.neurons.begin() +
            std::min<size_t>(attention.neurons.size(), options.query_attention_neurons));
    report.query_layers_attention = ToVector(QueryLayerScoresAttention(a, query_attention));
    for (const auto& [flat, score] :
         TopScores(QueryFfnNeuronScores(a, query_attention), options.query_neurons_reported)) {
      const int64_t layer = flat / config.d_ffn, n = flat % config.d_ffn;
      const double coefficient =
          trace->layers[layer].ffn_coefficients[a.position()][n].item<double>();
      values.push_back({false, layer, n});
      report.query_ffn_neurons.push_back({layer, n, -1, -1, score, coefficient, {}});
    }
    if (!report_progress("top tokens", 0.8)) return cancelled;
    std::vector<NeuronReport*> reported;
    for (auto* list : {&report.ffn_neurons, &report.attention_neurons, &report.query_ffn_neurons}) {
      for (NeuronReport& n : *list) reported.push_back(&n);
    }
    FillTopTokens(a, values, reported, options.top_tokens);

    if (options.ablate_top_ffn_neurons && !report.ffn_neurons.empty()) {
      if (!report_progress("ablation", 0.85)) return cancelled;
      std::vector<Ablation> ablations;
      for (const NeuronReport& n : report.ffn_neurons) {
        ablations.push_back(
            {AblationTarget::kFfnNeuron, n.layer, 0, 0, n.neuron, a.position(), 0.0});
      }
      absl::StatusOr<at::Tensor> ablated =
          AblatedLogitsAt(model, token_ids, *trace, a.position(), ablations);
      if (!ablated.ok()) return ablated.status();
      report.ablation.removed = static_cast<int64_t>(ablations.size());
      report.ablation.before = report.outcome;
      report.ablation.after = OutcomeOf(*ablated, target);
    }
    ffn.neurons.clear();
    attention.neurons.clear();
    ffn.vocabulary_scores.clear();
    attention.vocabulary_scores.clear();
    report.ffn_ranking_stats = ffn;
    report.attention_ranking_stats = attention;
    report_progress("done", 1.0);
    return report;
  } catch (const std::exception& e) {
    return StatusFromException(e, "fact localization", model.device());
  }
}

void Accumulate(const FactReport& report, BatchAggregate& aggregate) {
  const size_t layers = report.attention_layer_increase.size();
  aggregate.ffn_neurons_per_layer.resize(layers, 0);
  aggregate.attention_neurons_per_layer.resize(layers, 0);
  aggregate.mean_attention_layer_increase.resize(layers, 0.0);
  aggregate.mean_ffn_layer_increase.resize(layers, 0.0);
  for (const NeuronReport& n : report.ffn_neurons) ++aggregate.ffn_neurons_per_layer[n.layer];
  for (const NeuronReport& n : report.attention_neurons)
    ++aggregate.attention_neurons_per_layer[n.layer];
  const double facts = static_cast<double>(++aggregate.facts);
  for (size_t l = 0; l < layers; ++l) {
    aggregate.mean_attention_layer_increase[l] +=
        (report.attention_layer_increase[l] - aggregate.mean_attention_layer_increase[l]) / facts;
    aggregate.mean_ffn_layer_increase[l] +=
        (report.ffn_layer_increase[l] - aggregate.mean_ffn_layer_increase[l]) / facts;
  }
}

absl::StatusOr<std::vector<TokenScore>> PredictNext(const Model& model,
                                                    absl::Span<const int64_t> token_ids,
                                                    int64_t position, int64_t k) {
  absl::StatusOr<ForwardTrace> trace = Forward(model, token_ids, LogitsAt(position));
  if (!trace.ok()) return trace.status();
  return TopScores(at::softmax(trace->logits[0].to(at::kDouble), -1), k);
}

absl::StatusOr<AblationComparison> CompareAblation(const Model& model,
                                                   absl::Span<const int64_t> token_ids,
                                                   int64_t position, int64_t target,
                                                   absl::Span<const Ablation> ablations,
                                                   int64_t k) {
  // The pass without the ablations keeps what AblatedLogitsAt needs to recompute only the
  // position's row with them: the computation LocateFact's ablation run does, so that both report
  // the same numbers (and a share of a second pass instead of a whole one).
  CaptureOptions capture;
  capture.keys = capture.values = true;
  absl::StatusOr<ForwardTrace> before = Forward(model, token_ids, capture);
  if (!before.ok()) return before.status();
  absl::StatusOr<at::Tensor> after =
      AblatedLogitsAt(model, token_ids, *before, position, ablations);
  if (!after.ok()) return after.status();
  // In range: AblatedLogitsAt has checked it.
  const int64_t row = position < 0 ? position + before->num_tokens : position;
  return AblationComparison{OutcomeOf(before->logits[row], target), OutcomeOf(*after, target),
                            TopScores(at::softmax(after->to(at::kDouble), -1), k)};
}

}  // namespace factlens
