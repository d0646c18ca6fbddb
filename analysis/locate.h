// Fact localization: prompt + target -> one structured report (the paper's pipeline in one call),
// and its batch form that aggregates per-layer counts of top neurons.
#ifndef FACTLENS_ANALYSIS_LOCATE_H_
#define FACTLENS_ANALYSIS_LOCATE_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "analysis/attribution.h"
#include "analysis/decompose.h"
#include "analysis/output_head.h"
#include "analysis/weights.h"

namespace factlens {

// The standard LocateFact (DESIGN.md) by default.
struct LocateOptions {
  int64_t position = -1;
  Metric metric = Metric::kLogProbIncrease;
  RankMode mode = RankMode::kExact;
  bool include_final_norm_bias = false;
  int64_t predictions = 10;  // top next tokens reported
  int64_t top_heads = 10;
  int64_t top_head_positions = 10;
  int64_t top_ffn_neurons = 100;
  int64_t top_attention_neurons = 100;
  int64_t query_ffn_neurons = 100;       // top FFN neurons whose query layers are aggregated
  int64_t query_attention_neurons = 30;  // top attention neurons for query layers and neurons
  int64_t query_neurons_reported = 10;   // query FFN neurons listed
  int64_t top_tokens = 10;               // vocabulary projection of every reported neuron
  bool ablate_top_ffn_neurons = true;    // rerun without the top FFN neurons (at the position)
};

struct HeadScore {
  int64_t layer = 0, head = 0;
  int64_t source_position = -1;  // -1 for a whole head
  double score = 0;
};

struct NeuronReport {
  int64_t layer = 0;
  int64_t neuron = 0;            // FFN neuron n, or the attention head dim j
  int64_t head = -1;             // attention neurons
  int64_t source_position = -1;  // attention neurons
  double score = 0;              // the metric's value (query neurons: their aggregated score)
  double coefficient = 0;
  // Top tokens of sign(coefficient) · value vector: what the neuron adds, whatever its magnitude.
  std::vector<TokenScore> top_tokens;
};

struct AblationReport {
  int64_t removed = 0;  // FFN neurons zeroed at the position
  TargetOutcome before, after;
};

struct FactReport {
  std::vector<int64_t> input_ids;
  int64_t position = 0;
  int64_t target = 0;
  Metric metric = Metric::kLogProbIncrease;
  TargetOutcome outcome;
  std::vector<TokenScore> predictions;  // top next tokens with probabilities
  double final_scale = 0;
  std::vector<double> attention_layer_increase, ffn_layer_increase;  // [L] each
  std::vector<HeadScore> top_heads, top_head_positions;
  std::vector<NeuronReport> ffn_neurons, attention_neurons;
  NeuronRanking ffn_ranking_stats, attention_ranking_stats;  // neurons emptied; counts and mode
  // [1+2L] query-layer scores: per FFN key ("in" or "gate"/"up") and for attention neurons.
  std::vector<std::pair<std::string, std::vector<double>>> query_layers_ffn;
  std::vector<double> query_layers_attention;
  std::vector<NeuronReport> query_ffn_neurons;  // for the top attention neurons
  AblationReport ablation;
  // What the request probably did not mean (a target missing its leading space); filled by the
  // caller that knows the request's text, e.g. from TargetSpacingWarning.
  std::vector<std::string> warnings;
  // The logit lens at the position after the embedding and every sublayer ([1 + 2L] steps).
  std::vector<LensStep> cumulative;
};

// Called between stages with a short stage name and the fraction done in [0, 1], and repeatedly
// with the same values during long stages (so a caller can stop them): returning false stops the
// work (LocateFact then returns CANCELLED).
using ProgressCallback = std::function<bool(const std::string& stage, double fraction)>;

// Runs the whole pipeline on `token_ids` for `target`. InvalidArgument (naming the field) for bad
// ids, target, position or option values. Thread-safe for concurrent calls on one model.
absl::StatusOr<FactReport> LocateFact(const Model& model, absl::Span<const int64_t> token_ids,
                                      int64_t target, const LocateOptions& options,
                                      const ProgressCallback& progress = nullptr);

// Per-layer counts of the top FFN and attention neurons over many facts (the paper's figures).
struct BatchAggregate {
  std::vector<int64_t> ffn_neurons_per_layer;
  std::vector<int64_t> attention_neurons_per_layer;
  std::vector<double> mean_attention_layer_increase, mean_ffn_layer_increase;
  int64_t facts = 0;
};

// Adds one report to a running aggregate.
void Accumulate(const FactReport& report, BatchAggregate& aggregate);

// The k most probable next tokens at `position` (in [0, T)) of `token_ids`, with their
// probabilities. Errors: those of Forward. Thread-safe.
absl::StatusOr<std::vector<TokenScore>> PredictNext(const Model& model,
                                                    absl::Span<const int64_t> token_ids,
                                                    int64_t position, int64_t k);

// The target's outcome at `position` without and with `ablations`, and the k most probable next
// tokens with them. Errors: those of Forward (InvalidArgument for a bad ablation). Thread-safe.
struct AblationComparison {
  TargetOutcome before, after;
  std::vector<TokenScore> predictions_after;  // score = probability
};
absl::StatusOr<AblationComparison> CompareAblation(const Model& model,
                                                   absl::Span<const int64_t> token_ids,
                                                   int64_t position, int64_t target,
                                                   absl::Span<const Ablation> ablations, int64_t k);

}  // namespace factlens

#endif  // FACTLENS_ANALYSIS_LOCATE_H_
