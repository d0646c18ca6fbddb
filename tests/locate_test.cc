// LocateFact on the trained GPT-2 demo model: the report is internally consistent and agrees with
// the attribution primitives it is built from; bad options are INVALID_ARGUMENT.
#include "analysis/locate.h"

#include <ATen/ATen.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "analysis/forward.h"
#include "analysis/output_head.h"
#include "analysis/tracing.h"
#include "tests/testing.h"

namespace factlens {
namespace {

const std::vector<int64_t> kFrance = {464, 3139, 286, 4881, 318};  // "The capital of France is"
constexpr int64_t kParis = 6342;

class LocateTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<std::shared_ptr<const Model>> model =
        Model::Load(testing::SourcePath("models/gpt2-facts-tiny"));
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = *model;
  }
  std::shared_ptr<const Model> model_;
};

TEST_F(LocateTest, StandardReportForParis) {
  std::vector<std::string> stages;
  absl::StatusOr<FactReport> report =
      LocateFact(*model_, kFrance, kParis, LocateOptions{}, [&](const std::string& stage, double) {
        stages.push_back(stage);
        return true;
      });
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->outcome.rank, 1);
  EXPECT_EQ(report->predictions[0].token_id, kParis);
  EXPECT_NEAR(report->predictions[0].score, report->outcome.prob, 1e-9);
  ASSERT_EQ(report->ffn_neurons.size(), 100u);
  ASSERT_EQ(report->attention_neurons.size(), 100u);
  for (size_t i = 1; i < report->ffn_neurons.size(); ++i) {
    EXPECT_GE(report->ffn_neurons[i - 1].score, report->ffn_neurons[i].score);
  }
  EXPECT_EQ(report->ffn_neurons[0].top_tokens.size(), 10u);
  EXPECT_EQ(report->attention_layer_increase.size(), 4u);
  EXPECT_EQ(report->query_layers_ffn.size(), 1u);
  EXPECT_EQ(report->query_layers_ffn[0].first, "in");
  EXPECT_EQ(report->query_layers_attention.size(), 9u);
  EXPECT_EQ(report->ffn_ranking_stats.mode, RankMode::kExact);
  EXPECT_LT(report->ffn_ranking_stats.evaluated, report->ffn_ranking_stats.total);
  // Removing the 100 neurons that raise " Paris" most must lower its log-probability.
  EXPECT_EQ(report->ablation.removed, 100);
  EXPECT_LT(report->ablation.after.log_prob, report->ablation.before.log_prob);
  EXPECT_EQ(stages.front(), "forward");
  EXPECT_EQ(stages.back(), "done");

  // The reported neuron values are the attribution's own exhaustive values.
  absl::StatusOr<ForwardTrace> trace = Forward(*model_, kFrance, FullCapture());
  ASSERT_TRUE(trace.ok());
  absl::StatusOr<std::unique_ptr<Attribution>> a = Attribution::Create(*model_, *trace, {kParis});
  ASSERT_TRUE(a.ok());
  const NeuronRanking all = (*a)->RankFfnNeurons(1, RankOrder::kTop, RankMode::kExhaustive).value();
  // Both float64 evaluations, each within its ranking's rounding bound (attribution.h).
  EXPECT_NEAR(report->ffn_neurons[0].score, all.neurons[0].score,
              report->ffn_ranking_stats.max_error + all.max_error);
  EXPECT_EQ(report->ffn_neurons[0].layer, all.neurons[0].layer);
  EXPECT_EQ(report->ffn_neurons[0].neuron, all.neurons[0].index);
}

TEST_F(LocateTest, LogitLensStepsAreTheModelWithTheLaterSublayersRemoved) {
  absl::StatusOr<FactReport> report = LocateFact(*model_, kFrance, kParis, LocateOptions{});
  ASSERT_TRUE(report.ok()) << report.status();
  const int64_t layers = model_->config().n_layers;
  ASSERT_EQ(report->cumulative.size(), static_cast<size_t>(1 + 2 * layers));
  // Step s is the residual after sublayer s (0 = embedding, 2l+1 = attention l, 2l+2 = FFN l).
  // Zeroing every later sublayer's output at every position leaves exactly that residual at the
  // final norm, so the model's own output there must be the step's, to float64 rounding.
  for (int64_t step = 0; step <= 2 * layers; ++step) {
    const LensStep& lens = report->cumulative[step];
    ASSERT_TRUE(lens.target.has_value());
    std::vector<Ablation> later;
    for (int64_t k = step + 1; k <= 2 * layers; ++k) {
      later.push_back(
          {k % 2 == 1 ? AblationTarget::kAttentionLayer : AblationTarget::kFfnLayer, (k - 1) / 2});
    }
    absl::StatusOr<ForwardTrace> truncated = Forward(*model_, kFrance, LogitsAt(-1), later);
    ASSERT_TRUE(truncated.ok()) << truncated.status();
    const TargetOutcome expected = OutcomeOf(truncated->logits[0], kParis);
    EXPECT_EQ(lens.target->rank, expected.rank) << "step " << step;
    EXPECT_NEAR(lens.target->log_prob, expected.log_prob, 1e-9) << "step " << step;
    EXPECT_EQ(lens.top.token_id, truncated->logits[0].argmax().item<int64_t>()) << "step " << step;
    const ComponentKind kind = step == 0       ? ComponentKind::kEmbedding
                               : step % 2 == 1 ? ComponentKind::kAttentionLayer
                                               : ComponentKind::kFfnLayer;
    EXPECT_EQ(lens.after.kind, kind);
    EXPECT_EQ(lens.after.layer, step == 0 ? 0 : (step - 1) / 2);
  }
  // The last step is the model's output.
  EXPECT_EQ(report->cumulative.back().target->rank, report->outcome.rank);
  EXPECT_NEAR(report->cumulative.back().target->log_prob, report->outcome.log_prob, 1e-12);
  EXPECT_EQ(report->cumulative.back().top.token_id, report->predictions[0].token_id);
}

// LocateFact computes the position's logits once, as the logit lens's last row (its trace keeps
// none). That row is a forward pass's logits up to the order of float64 summation: both multiply
// the same float32 normed residual x by the same float64 unembedding, whose products are exact in
// float64 (24-bit by 24-bit mantissas), so entry u of two summation orders differs by at most
// 2·d·2^-53·Σ_i |W_ui·x_i| (Higham, a length-d sum). Checked on both families, from one trace.
TEST_F(LocateTest, OutcomeAndPredictionsAreTheLensLastRowWhichIsTheForwardPassLogits) {
  for (const char* name : {"models/gpt2-facts-tiny", "models/llama-facts-tiny"}) {
    SCOPED_TRACE(name);
    absl::StatusOr<std::shared_ptr<const Model>> model = Model::Load(testing::SourcePath(name));
    ASSERT_TRUE(model.ok()) << model.status();
    const ModelConfig& c = (*model)->config();
    const ModelWeights& w = (*model)->weights();
    const std::vector<int64_t> ids = {5, 17, 42, 8, 99, 3};
    const int64_t p = static_cast<int64_t>(ids.size()) - 1;
    absl::StatusOr<ForwardTrace> trace = Forward(**model, ids, FullCapture());
    ASSERT_TRUE(trace.ok()) << trace.status();
    const at::Tensor forward_row = trace->logits[p];
    const at::Tensor lens_row = CumulativeLensLogits(**model, *trace, p)[-1];
    const at::Tensor x =
        ApplyNorm(c.architecture.norm, c.norm_eps, trace->final_residual.narrow(0, p, 1),
                  w.final_norm_weight, w.final_norm_bias)
            .to(at::kDouble);
    const at::Tensor bound = 2.0 * static_cast<double>(c.d_model) * 0x1p-53 *
                             at::matmul(x.abs(), w.unembedding.to(at::kDouble).abs().t())[0];
    const at::Tensor difference = (lens_row - forward_row).abs();
    EXPECT_TRUE((difference <= bound).all().item<bool>())
        << "largest difference " << difference.max().item<double>();

    // The report's outcome and predictions are its lens's last row's, the same tensor.
    const int64_t target = forward_row.argmin().item<int64_t>();
    absl::StatusOr<FactReport> report = LocateFact(**model, ids, target, LocateOptions{});
    ASSERT_TRUE(report.ok()) << report.status();
    const LensStep& last = report->cumulative.back();
    ASSERT_TRUE(last.target.has_value());
    EXPECT_EQ(report->outcome.log_prob, last.target->log_prob);
    EXPECT_EQ(report->outcome.prob, last.target->prob);
    EXPECT_EQ(report->outcome.rank, last.target->rank);
    ASSERT_FALSE(report->predictions.empty());
    EXPECT_EQ(report->predictions[0].token_id, last.top.token_id);
  }
}

TEST_F(LocateTest, ProgressCallbackCanStopTheWork) {
  std::vector<std::string> stages;
  const absl::Status status =
      LocateFact(*model_, kFrance, kParis, LocateOptions{}, [&](const std::string& stage, double) {
        if (stages.empty() || stages.back() != stage) stages.push_back(stage);
        return stage != "FFN neurons";
      }).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kCancelled);
  // Long stages call again with the same stage; the work stops at the first "FFN neurons".
  EXPECT_THAT(stages, ::testing::ElementsAre("forward", "layers and heads", "FFN neurons"));
}

// The top heads and head×positions are ranked by pruning; they must be the exhaustive ones: the
// same components in the same order, with scores within the two float64 evaluations' rounding
// bounds. A component's bound depends only on its vector, so the pruned ranking's is the
// exhaustive ranking's max_error over the same components: the sum is twice it.
TEST_F(LocateTest, TopHeadsAreTheExhaustiveTopHeads) {
  LocateOptions options;
  options.top_heads = 12;
  options.top_head_positions = 40;
  absl::StatusOr<FactReport> report = LocateFact(*model_, kFrance, kParis, options);
  ASSERT_TRUE(report.ok()) << report.status();
  options.mode = RankMode::kExhaustive;
  absl::StatusOr<FactReport> exhaustive = LocateFact(*model_, kFrance, kParis, options);
  ASSERT_TRUE(exhaustive.ok()) << exhaustive.status();
  absl::StatusOr<ForwardTrace> trace = Forward(*model_, kFrance, FullCapture());
  ASSERT_TRUE(trace.ok());
  absl::StatusOr<std::unique_ptr<Attribution>> a = Attribution::Create(*model_, *trace, {kParis});
  ASSERT_TRUE(a.ok());
  const NeuronRanking heads = (*a)->RankHeads(12, RankOrder::kTop, RankMode::kExhaustive).value();
  const NeuronRanking positions =
      (*a)->RankHeadPositions(40, RankOrder::kTop, RankMode::kExhaustive).value();
  const at::Tensor all_heads = (*a)->HeadIncrease();
  const at::Tensor all_positions = (*a)->HeadPositionIncrease();
  for (const FactReport* r : {&*report, &*exhaustive}) {
    ASSERT_EQ(r->top_heads.size(), 12u);
    ASSERT_EQ(r->top_head_positions.size(), 40u);
    for (size_t i = 0; i < r->top_heads.size(); ++i) {
      const HeadScore& h = r->top_heads[i];
      EXPECT_EQ(h.layer, heads.neurons[i].layer) << i;
      EXPECT_EQ(h.head, heads.neurons[i].index) << i;
      EXPECT_EQ(h.source_position, -1);
      EXPECT_NEAR(h.score, all_heads[h.layer][h.head].item<double>(), 2 * heads.max_error) << i;
    }
    const int64_t t = static_cast<int64_t>(kFrance.size());
    for (size_t i = 0; i < r->top_head_positions.size(); ++i) {
      const HeadScore& h = r->top_head_positions[i];
      EXPECT_EQ(h.layer, positions.neurons[i].layer) << i;
      EXPECT_EQ(h.head * t + h.source_position, positions.neurons[i].index) << i;
      EXPECT_NEAR(h.score, all_positions[h.layer][h.head][h.source_position].item<double>(),
                  2 * positions.max_error)
          << i;
    }
  }
  // The top head×position is the largest entry of the exhaustive tensor.
  EXPECT_NEAR(report->top_head_positions[0].score, all_positions.max().item<double>(),
              2 * positions.max_error);
}

// The query-layer aggregates are computed in one batched product for all neurons; they must equal
// the per-neuron traces (TraceFfnNeuron / TraceAttentionNeuron: layer_scores / total × score,
// summed) on both demo models (plain and gated keys). Both sides are float64 inner products of
// the same float32 keys and components in different summation orders: each score s_j errs by at
// most e_j = (d + 2)·2^-53·Σ_i |k_i·c_ji| per side (Higham), so a ratio s_j / S moves by at most
// (e_j + |s_j / S|·Σ_j e_j) / |S| per side, to first order; twice that for two sides, doubled
// again for the second-order terms and the final sums' rounding, times |score|, summed.
TEST(QueryLayersTest, BatchedAggregatesEqualPerNeuronTraces) {
  for (const char* name : {"gpt2-facts-tiny", "llama-facts-tiny"}) {
    absl::StatusOr<std::shared_ptr<const Model>> model =
        Model::Load(testing::SourcePath(std::string("models/") + name));
    ASSERT_TRUE(model.ok()) << model.status();
    const Model& m = **model;
    const std::vector<int64_t> ids = {1, 464, 3139, 286, 4881, 318};
    absl::StatusOr<ForwardTrace> trace = Forward(m, ids, FullCapture());
    ASSERT_TRUE(trace.ok());
    absl::StatusOr<std::unique_ptr<Attribution>> a =
        Attribution::Create(m, *trace, {trace->logits[-1].argmax().item<int64_t>()});
    ASSERT_TRUE(a.ok());
    const double unit = (m.config().d_model + 2) * 0x1p-53;
    // Expected sum and tolerance of one neuron's trace: components c_j at its position.
    auto add = [&](const KeyTrace& key, int64_t position, double score, at::Tensor& expected,
                   at::Tensor& tolerance) {
      const at::Tensor scores = key.layer_scores;
      std::vector<at::Tensor> rows = {trace->embedding[position]};
      for (const LayerTrace& layer : trace->layers) {
        rows.push_back(layer.attn_out[position]);
        rows.push_back(layer.ffn_out[position]);
      }
      const at::Tensor reached = (scores != 0).to(at::kDouble);
      const at::Tensor e =
          at::mv(at::stack(rows).to(at::kDouble).abs(), key.key.key.to(at::kDouble).abs()) * unit *
          reached;
      const at::Tensor ratio = scores / key.total;
      expected += ratio * score;
      tolerance += 4 * std::abs(score) * (e + ratio.abs() * e.sum()) / std::abs(key.total);
    };
    const NeuronRanking ffn = (*a)->RankFfnNeurons(30, RankOrder::kTop, RankMode::kExact).value();
    const auto batched = QueryLayerScoresFfn(**a, ffn.neurons);
    for (size_t k = 0; k < batched.size(); ++k) {
      at::Tensor expected = at::zeros_like(batched[k].second);
      at::Tensor tolerance = at::full_like(expected, 1e-300);
      for (const RankedNeuron& n : ffn.neurons) {
        const NeuronTrace t = TraceFfnNeuron(m, *trace, n.layer, n.index, -1, 0).value();
        add(t.keys[k], t.position, n.score, expected, tolerance);
      }
      EXPECT_TRUE(((batched[k].second - expected).abs() <= tolerance).all().item<bool>())
          << name << " " << batched[k].first << ": " << batched[k].second << expected;
    }
    const NeuronRanking attn =
        (*a)->RankAttentionNeurons(30, RankOrder::kTop, RankMode::kExact).value();
    at::Tensor expected = at::zeros({1 + 2 * m.config().n_layers}, at::kDouble);
    at::Tensor tolerance = at::full_like(expected, 1e-300);
    for (const RankedNeuron& n : attn.neurons) {
      const AttentionNeuronIndex i = SplitAttentionNeuronIndex(m.config(), n.index);
      const NeuronTrace t =
          TraceAttentionNeuron(m, *trace, n.layer, i.source_position, i.head, i.dim, 0).value();
      add(t.keys[0], t.position, n.score, expected, tolerance);
    }
    const at::Tensor batched_attn = QueryLayerScoresAttention(**a, attn.neurons);
    EXPECT_TRUE(((batched_attn - expected).abs() <= tolerance).all().item<bool>())
        << name << ": " << batched_attn << expected;
  }
}

// Two float64 evaluations of the vocabulary scores of `vector`, score_u = Σ_j E_uj·t_j with
// t = g ⊙ c(v)/σ, differ by at most twice the bound of a length-d dot product in any order,
// d·2^-53·Σ_j|E_uj·t_j| ≤ d·2^-53·max_u‖E_u‖·max_j|g_j|·‖v‖/σ (centring never lengthens v).
// Computed once per model: the part that does not depend on v and σ.
class TwoProjectionsTolerance {
 public:
  explicit TwoProjectionsTolerance(const Model& model)
      : per_unit_(2 * static_cast<double>(model.config().d_model) * 0x1p-53 *
                  model.weights().unembedding.to(at::kDouble).norm(2, 1).max().item<double>() *
                  model.weights().final_norm_weight.abs().max().item<double>()) {}
  double For(const at::Tensor& vector, double sigma) const {
    return per_unit_ * vector.to(at::kDouble).norm().item<double>() / sigma;
  }

 private:
  double per_unit_;
};

// Every reported neuron's top tokens are the k largest entries of its value vector's vocabulary
// projection, sign-corrected by its coefficient — whether they come from the logits its exact
// ranking kept (exact mode) or from a projection of the vector (exhaustive mode evaluates most
// neurons without one; query neurons are not ranked): equal token ids, scores within
// TwoProjectionsTolerance.
TEST_F(LocateTest, ReportedTopTokensAreTheirProjectionsTopTokens) {
  absl::StatusOr<ForwardTrace> trace = Forward(*model_, kFrance, FullCapture());
  ASSERT_TRUE(trace.ok());
  absl::StatusOr<std::unique_ptr<Attribution>> a = Attribution::Create(*model_, *trace, {kParis});
  ASSERT_TRUE(a.ok());
  const ModelWeights& weights = model_->weights();
  const int64_t head_dim = model_->config().head_dim;
  const TwoProjectionsTolerance two_projections(*model_);
  for (RankMode mode : {RankMode::kExact, RankMode::kExhaustive}) {
    LocateOptions options;
    options.mode = mode;
    options.top_ffn_neurons = options.top_attention_neurons = 20;
    options.top_tokens = 7;
    absl::StatusOr<FactReport> report = LocateFact(*model_, kFrance, kParis, options);
    ASSERT_TRUE(report.ok()) << report.status();
    ASSERT_FALSE(report->query_ffn_neurons.empty());
    auto check = [&](const NeuronReport& n, const at::Tensor& vector, const char* kind) {
      const at::Tensor signed_vector = n.coefficient < 0 ? -vector : vector;
      const std::vector<TokenScore> expected =
          TopScores((*a)->Project(signed_vector.to(at::kFloat).unsqueeze(0))[0], 7);
      const double tolerance = two_projections.For(vector, report->final_scale);
      ASSERT_EQ(n.top_tokens.size(), expected.size()) << kind;
      for (size_t i = 0; i < expected.size(); ++i) {
        EXPECT_EQ(n.top_tokens[i].token_id, expected[i].token_id)
            << kind << " layer " << n.layer << " neuron " << n.neuron << " rank " << i;
        EXPECT_NEAR(n.top_tokens[i].score, expected[i].score, tolerance) << kind;
      }
    };
    for (const NeuronReport& n : report->ffn_neurons) {
      check(n, weights.layers[n.layer].out_weight.select(1, n.neuron), "FFN");
    }
    for (const NeuronReport& n : report->query_ffn_neurons) {
      check(n, weights.layers[n.layer].out_weight.select(1, n.neuron), "query FFN");
    }
    for (const NeuronReport& n : report->attention_neurons) {
      check(n, weights.layers[n.layer].o_weight.select(1, n.head * head_dim + n.neuron),
            "attention");
    }
  }
}

// NeuronRanking::vocabulary_scores, when an exact ranking keeps them, are the projections of the
// reported neurons' vectors, in ranking order (within TwoProjectionsTolerance).
TEST_F(LocateTest, ExactRankingKeepsTheReportedNeuronsVocabularyScores) {
  absl::StatusOr<ForwardTrace> trace = Forward(*model_, kFrance, FullCapture());
  ASSERT_TRUE(trace.ok());
  absl::StatusOr<std::unique_ptr<Attribution>> a = Attribution::Create(*model_, *trace, {kParis});
  ASSERT_TRUE(a.ok());
  const NeuronRanking ffn =
      (*a)->RankFfnNeurons(30, RankOrder::kTop, RankMode::kExact, {}, 12).value();
  ASSERT_EQ(ffn.vocabulary_scores.size(), 12u);
  const TwoProjectionsTolerance two_projections(*model_);
  for (size_t i = 0; i < 12; ++i) {
    const RankedNeuron& n = ffn.neurons[i];
    const at::Tensor vector = model_->weights().layers[n.layer].out_weight.select(1, n.index);
    const at::Tensor expected = (*a)->Project(vector.to(at::kFloat).unsqueeze(0))[0];
    EXPECT_LE((ffn.vocabulary_scores[i] - expected).abs().max().item<double>(),
              two_projections.For(vector, (*a)->final_scale()))
        << i;
  }
  // Not asked for, or not computed by a projection per neuron: none.
  EXPECT_THAT((*a)->RankFfnNeurons(30, RankOrder::kTop, RankMode::kExact).value().vocabulary_scores,
              ::testing::IsEmpty());
  EXPECT_THAT((*a)->RankFfnNeurons(30, RankOrder::kTop, RankMode::kApproximate, {}, 12)
                  .value()
                  .vocabulary_scores,
              ::testing::IsEmpty());
  // More evaluated rows than the ranking may keep alive (128 MiB of float64, 333 rows of this
  // model's 50 257-token vocabulary): none kept, the ranking itself unchanged.
  const NeuronRanking many =
      (*a)->RankFfnNeurons(400, RankOrder::kTop, RankMode::kExact, {}, 400).value();
  ASSERT_GE(many.evaluated, 400);
  EXPECT_THAT(many.vocabulary_scores, ::testing::IsEmpty());
  const NeuronRanking plain = (*a)->RankFfnNeurons(400, RankOrder::kTop, RankMode::kExact).value();
  ASSERT_EQ(many.neurons.size(), plain.neurons.size());
  for (size_t i = 0; i < plain.neurons.size(); ++i) {
    EXPECT_EQ(many.neurons[i].index, plain.neurons[i].index);
    EXPECT_EQ(many.neurons[i].score, plain.neurons[i].score);
  }
}

// CompareAblation (the Ablate RPC) and LocateFact's ablation run remove the top FFN neurons with
// the same computation (AblatedLogitsAt from an unablated pass), so they report the same numbers,
// bit for bit, on any CPU; without it they would differ by a forward pass's float32 rounding.
TEST_F(LocateTest, AblateReportsWhatLocateFactsAblationRunReports) {
  absl::StatusOr<FactReport> report = LocateFact(*model_, kFrance, kParis, LocateOptions{});
  ASSERT_TRUE(report.ok()) << report.status();
  std::vector<Ablation> ablations;
  for (const NeuronReport& n : report->ffn_neurons) {
    ablations.push_back(
        {AblationTarget::kFfnNeuron, n.layer, 0, 0, n.neuron, report->position, 0.0});
  }
  absl::StatusOr<AblationComparison> compared =
      CompareAblation(*model_, kFrance, -1, kParis, ablations, 3);
  ASSERT_TRUE(compared.ok()) << compared.status();
  EXPECT_EQ(compared->after.log_prob, report->ablation.after.log_prob);
  EXPECT_EQ(compared->after.prob, report->ablation.after.prob);
  EXPECT_EQ(compared->after.rank, report->ablation.after.rank);
  EXPECT_EQ(compared->before.rank, report->outcome.rank);
  EXPECT_EQ(compared->before.log_prob, report->outcome.log_prob);
  // Ablations elsewhere than the position (here: every position) take the whole second pass.
  std::vector<Ablation> everywhere = ablations;
  for (Ablation& a : everywhere) a.position = std::nullopt;
  absl::StatusOr<AblationComparison> whole =
      CompareAblation(*model_, kFrance, -1, kParis, everywhere, 3);
  ASSERT_TRUE(whole.ok()) << whole.status();
  EXPECT_LT(whole->after.log_prob, whole->before.log_prob);
  EXPECT_EQ(CompareAblation(*model_, kFrance, 5, kParis, ablations, 3).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(LocateTest, BadOptionsAndTargetsAreInvalidArgument) {
  LocateOptions options;
  options.top_ffn_neurons = -1;
  EXPECT_THAT(std::string(LocateFact(*model_, kFrance, kParis, options).status().message()),
              ::testing::HasSubstr("top_ffn_neurons"));
  options = LocateOptions{};
  options.position = 5;
  EXPECT_EQ(LocateFact(*model_, kFrance, kParis, options).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(LocateFact(*model_, kFrance, 50257, LocateOptions{}).status().message()),
              ::testing::HasSubstr("target"));
  EXPECT_EQ(LocateFact(*model_, {}, kParis, LocateOptions{}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace factlens
