// Exact top-k / bottom-k by pruning must equal exhaustive evaluation (same neurons, same order up
// to ties within 1e-6), for every metric, on the reference models and on 50 fact prompts of each
// trained demo model; pruning must actually prune on the trained models.
#include <ATen/ATen.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <fstream>

#include "analysis/attribution.h"
#include "analysis/forward.h"
#include "analysis/tokenizer/tokenizer.h"
#include "analysis/weights.h"
#include "nlohmann/json.hpp"
#include "tests/testing.h"

namespace factlens {
namespace {

void ExpectSameRanking(const NeuronRanking& pruned, const NeuronRanking& exhaustive, const std::string& what) {
  const std::vector<RankedNeuron>& p = pruned.neurons;
  const std::vector<RankedNeuron>& e = exhaustive.neurons;
  ASSERT_EQ(p.size(), e.size()) << what;
  EXPECT_EQ(pruned.mode, RankMode::kExact) << what;
  auto tied = [&](size_t i) {
    return (i > 0 && std::abs(e[i].score - e[i - 1].score) <= 1e-6) ||
           (i + 1 < e.size() && std::abs(e[i].score - e[i + 1].score) <= 1e-6);
  };
  for (size_t i = 0; i < p.size(); ++i) {
    EXPECT_NEAR(p[i].score, e[i].score, 1e-6) << what << " rank " << i;
    if (!tied(i)) {
      EXPECT_EQ(std::make_pair(p[i].layer, p[i].index), std::make_pair(e[i].layer, e[i].index))
          << what << " rank " << i;
    }
  }
}

struct Totals {
  int64_t evaluated = 0, total = 0;
};

void CheckAllRankings(const Model& model, const std::vector<int64_t>& ids, int64_t target, int64_t k,
                      const std::string& what, Totals& totals) {
  absl::StatusOr<ForwardTrace> trace = Forward(model, ids, FullCapture());
  ASSERT_TRUE(trace.ok()) << trace.status();
  for (Metric metric : {Metric::kLogProbIncrease, Metric::kProbIncrease, Metric::kLogitIncrease}) {
    AttributionTarget t;
    t.token_id = target;
    t.metric = metric;
    absl::StatusOr<std::unique_ptr<Attribution>> a = Attribution::Create(model, *trace, t);
    ASSERT_TRUE(a.ok()) << a.status();
    for (RankOrder order : {RankOrder::kTop, RankOrder::kBottom}) {
      const std::string label = what + " " + std::string(MetricName(metric)) + (order == RankOrder::kTop ? " top" : " bottom");
      const NeuronRanking ffn = (*a)->RankFfnNeurons(k, order, RankMode::kExact);
      ExpectSameRanking(ffn, (*a)->RankFfnNeurons(k, order, RankMode::kExhaustive), label + " FFN");
      const NeuronRanking attn = (*a)->RankAttentionNeurons(k, order, RankMode::kExact);
      ExpectSameRanking(attn, (*a)->RankAttentionNeurons(k, order, RankMode::kExhaustive), label + " attention");
      if (metric == Metric::kLogProbIncrease && order == RankOrder::kTop) {
        totals.evaluated += ffn.evaluated + attn.evaluated;
        totals.total += ffn.total + attn.total;
      }
    }
  }
}

TEST(RankingTest, PrunedEqualsExhaustiveOnReferenceModels) {
  for (const char* model_name : {"gpt2-tiny", "llama-tiny", "llama-gqa-tiny-bf16"}) {
    const std::string dir = testing::SourcePath(std::string("tests/data/hf-reference/") + model_name);
    absl::StatusOr<std::shared_ptr<const Model>> model = Model::Load(dir);
    ASSERT_TRUE(model.ok()) << model.status();
    std::ifstream in(dir + "/reference.json");
    const nlohmann::json reference = nlohmann::json::parse(in);
    Totals totals;
    for (const nlohmann::json& c : reference["cases"]) {
      CheckAllRankings(**model, c["input_ids"].get<std::vector<int64_t>>(), c["target"].get<int64_t>(), 10,
                       model_name, totals);
    }
  }
}

TEST(RankingTest, ApproximateModeIsTheFirstOrderValueAndSaysSo) {
  const std::string dir = testing::SourcePath("tests/data/hf-reference/gpt2-tiny");
  absl::StatusOr<std::shared_ptr<const Model>> model = Model::Load(dir);
  ASSERT_TRUE(model.ok());
  absl::StatusOr<ForwardTrace> trace = Forward(**model, {303, 211, 294, 53}, FullCapture());
  ASSERT_TRUE(trace.ok());
  absl::StatusOr<std::unique_ptr<Attribution>> a = Attribution::Create(**model, *trace, {7});
  ASSERT_TRUE(a.ok());
  const NeuronRanking approx = (*a)->RankFfnNeurons(5, RankOrder::kTop, RankMode::kApproximate);
  EXPECT_EQ(approx.mode, RankMode::kApproximate);
  EXPECT_EQ(approx.evaluated, 0);
  const NeuronRanking exact = (*a)->RankFfnNeurons(5, RankOrder::kTop, RankMode::kExhaustive);
  // By concavity the first-order value bounds the exact increase from above.
  const at::Tensor all = (*a)->FfnNeuronIncrease();
  for (const RankedNeuron& n : approx.neurons) {
    EXPECT_GE(n.score + 1e-6, all[n.layer][n.index].item<double>());
  }
  EXPECT_GE(approx.neurons[0].score + 1e-6, exact.neurons[0].score);
}

class DemoRankingTest : public ::testing::TestWithParam<std::string> {};

TEST_P(DemoRankingTest, PrunedEqualsExhaustiveOnFiftyFacts) {
  const std::string dir = testing::SourcePath("models/" + GetParam());
  absl::StatusOr<std::shared_ptr<const Model>> model = Model::Load(dir);
  ASSERT_TRUE(model.ok()) << model.status();
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer = Tokenizer::FromModelDirectory(dir);
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  std::ifstream in(dir + "/facts.json");
  const nlohmann::json facts = nlohmann::json::parse(in)["facts"];
  ASSERT_GE(facts.size(), 50u);
  Totals totals;
  for (size_t i = 0; i < 50; ++i) {
    absl::StatusOr<Encoding> encoding = (*tokenizer)->Encode(facts[i]["prompt"].get<std::string>(), true);
    ASSERT_TRUE(encoding.ok()) << encoding.status();
    const std::vector<int64_t> ids(encoding->ids.begin(), encoding->ids.end());
    CheckAllRankings(**model, ids, facts[i]["target_id"].get<int64_t>(), 100,
                     GetParam() + " fact " + std::to_string(i), totals);
  }
  std::printf("  %s: top-100 log-prob pruning evaluated %lld of %lld neurons (%.1f%%)\n", GetParam().c_str(),
              static_cast<long long>(totals.evaluated), static_cast<long long>(totals.total),
              100.0 * totals.evaluated / totals.total);
  EXPECT_LT(totals.evaluated, totals.total / 2) << "pruning should skip most neurons on trained models";
}

INSTANTIATE_TEST_SUITE_P(Demo, DemoRankingTest, ::testing::Values("gpt2-facts-tiny", "llama-facts-tiny"),
                         [](const auto& info) { return info.param == "gpt2-facts-tiny" ? "gpt2" : "llama"; });

}  // namespace
}  // namespace factlens
