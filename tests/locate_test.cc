// LocateFact on the trained GPT-2 demo model: the report is internally consistent and agrees with
// the attribution primitives it is built from; bad options are INVALID_ARGUMENT.
#include "analysis/locate.h"

#include <ATen/ATen.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "analysis/forward.h"
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

TEST_F(LocateTest, ProgressCallbackCanStopTheWork) {
  int calls = 0;
  const absl::Status status =
      LocateFact(*model_, kFrance, kParis, LocateOptions{}, [&](const std::string& stage, double) {
        ++calls;
        return stage != "FFN neurons";
      }).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(calls, 3);  // forward, layers and heads, FFN neurons
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
