// Exact top-k / bottom-k by pruning (and the exhaustive mode's top-k, on some prompts) must equal
// the ranking of every neuron's float64 value (same neurons, same order up to ties) — and of every
// head and head×position —, for every metric, on the reference models and on 50 fact prompts of
// each trained demo model; pruning must actually prune on the trained models. RankMode::kExhaustive
// itself is checked against the same values on the reference models.
//
// Tolerances are not tuned to a CPU: both modes evaluate every score in float64, and each ranking
// reports max_error, the worst-case rounding bound of its scores (derived in attribution.h:
// asserted below 1e-9 here), so two modes' scores of one neuron differ by at most the sum of their
// max_error on any CPU, BLAS kernel or thread count; scores closer than that count as ties.
#include <ATen/ATen.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>

#include "analysis/attribution.h"
#include "analysis/decompose.h"
#include "analysis/forward.h"
#include "analysis/tokenizer/tokenizer.h"
#include "analysis/weights.h"
#include "nlohmann/json.hpp"
#include "tests/testing.h"

namespace factlens {
namespace {

// `pruned` (a ranking in `mode`) against `exhaustive`: the same neurons in the same order up to
// ties, scores within the two rankings' rounding bounds.
void ExpectSameRanking(const NeuronRanking& pruned, RankMode mode, const NeuronRanking& exhaustive,
                       const std::string& what) {
  const std::vector<RankedNeuron>& p = pruned.neurons;
  const std::vector<RankedNeuron>& e = exhaustive.neurons;
  ASSERT_EQ(p.size(), e.size()) << what;
  EXPECT_EQ(pruned.mode, mode) << what;
  const double tolerance = pruned.max_error + exhaustive.max_error;
  EXPECT_GT(tolerance, 0) << what;
  EXPECT_LT(tolerance, 1e-9) << what << ": float64 evaluation should be far tighter";
  auto tied = [&](size_t i) {
    return (i > 0 && std::abs(e[i].score - e[i - 1].score) <= tolerance) ||
           (i + 1 < e.size() && std::abs(e[i].score - e[i + 1].score) <= tolerance);
  };
  for (size_t i = 0; i < p.size(); ++i) {
    EXPECT_NEAR(p[i].score, e[i].score, tolerance) << what << " rank " << i;
    if (!tied(i)) {
      EXPECT_EQ(std::make_pair(p[i].layer, p[i].index), std::make_pair(e[i].layer, e[i].index))
          << what << " rank " << i;
    }
  }
}

struct Totals {
  int64_t evaluated = 0, total = 0;
  double largest_difference = 0;  // |pruned − exhaustive| over every compared score
};

void AddDifferences(const NeuronRanking& pruned, const NeuronRanking& exhaustive, Totals& totals) {
  for (size_t i = 0; i < std::min(pruned.neurons.size(), exhaustive.neurons.size()); ++i) {
    totals.largest_difference = std::max(
        totals.largest_difference, std::abs(pruned.neurons[i].score - exhaustive.neurons[i].score));
  }
}

// The exhaustive ranking derived here from every neuron's exact value ([L, ...] per layer):
// best first, ties by (layer, index).
NeuronRanking RankAll(const at::Tensor& values, int64_t k, RankOrder order) {
  const at::Tensor flat = values.reshape({values.size(0), -1}).to(at::kDouble).contiguous();
  const double* data = flat.data_ptr<double>();
  const int64_t per_layer = flat.size(1);
  std::vector<RankedNeuron> all;
  for (int64_t i = 0; i < flat.numel(); ++i)
    all.push_back({i / per_layer, i % per_layer, data[i], 0});
  std::stable_sort(all.begin(), all.end(), [order](const RankedNeuron& a, const RankedNeuron& b) {
    return order == RankOrder::kTop ? a.score > b.score : a.score < b.score;
  });
  all.resize(std::min<size_t>(all.size(), k));
  NeuronRanking ranking;
  ranking.neurons = all;
  ranking.mode = RankMode::kExhaustive;
  return ranking;
}

constexpr int64_t kEveryNeuron = int64_t{1} << 40;  // k is clamped to the neuron count

// The k best of a complete top-first ranking in `order`: its head, or its tail reversed.
NeuronRanking FirstOf(const NeuronRanking& complete, int64_t k, RankOrder order) {
  NeuronRanking ranking = complete;
  if (order == RankOrder::kBottom) std::reverse(ranking.neurons.begin(), ranking.neurons.end());
  ranking.neurons.resize(std::min<size_t>(ranking.neurons.size(), k));
  return ranking;
}

void CheckAllRankings(const Model& model, const std::vector<int64_t>& ids, int64_t target,
                      int64_t k, const std::vector<Metric>& metrics,
                      const std::vector<RankOrder>& orders, const std::string& what,
                      bool exhaustive_top_k, Totals& totals) {
  absl::StatusOr<ForwardTrace> trace = Forward(model, ids, FullCapture());
  ASSERT_TRUE(trace.ok()) << trace.status();
  for (Metric metric : metrics) {
    AttributionTarget t;
    t.token_id = target;
    t.metric = metric;
    absl::StatusOr<std::unique_ptr<Attribution>> a = Attribution::Create(model, *trace, t);
    ASSERT_TRUE(a.ok()) << a.status();
    // One exhaustive ranking of every neuron per metric serves both orders (the suite must stay
    // fast on 2 cores): its first k are the top-k, its last k reversed the bottom-k.
    const NeuronRanking every_ffn =
        (*a)->RankFfnNeurons(kEveryNeuron, RankOrder::kTop, RankMode::kExhaustive).value();
    const NeuronRanking every_attn =
        (*a)->RankAttentionNeurons(kEveryNeuron, RankOrder::kTop, RankMode::kExhaustive).value();
    const NeuronRanking every_head =
        (*a)->RankHeads(kEveryNeuron, RankOrder::kTop, RankMode::kExhaustive).value();
    const NeuronRanking every_head_position =
        (*a)->RankHeadPositions(kEveryNeuron, RankOrder::kTop, RankMode::kExhaustive).value();
    // The logit increase is linear: every value is computed exactly, and the result says so.
    const RankMode mode =
        metric == Metric::kLogitIncrease ? RankMode::kExhaustive : RankMode::kExact;
    for (RankOrder order : orders) {
      const std::string label = what + " " + std::string(MetricName(metric)) +
                                (order == RankOrder::kTop ? " top" : " bottom");
      const NeuronRanking ffn = (*a)->RankFfnNeurons(k, order, RankMode::kExact).value();
      const NeuronRanking all_ffn = FirstOf(every_ffn, k, order);
      ExpectSameRanking(ffn, mode, all_ffn, label + " FFN");
      const NeuronRanking attn = (*a)->RankAttentionNeurons(k, order, RankMode::kExact).value();
      const NeuronRanking all_attn = FirstOf(every_attn, k, order);
      ExpectSameRanking(attn, mode, all_attn, label + " attention");
      AddDifferences(ffn, all_ffn, totals);
      AddDifferences(attn, all_attn, totals);
      if (exhaustive_top_k) {
        // The exhaustive top-k (every neuron from float32 logits, the contenders in float64).
        ExpectSameRanking((*a)->RankFfnNeurons(k, order, RankMode::kExhaustive).value(),
                          RankMode::kExhaustive, all_ffn, label + " FFN exhaustive top-k");
        ExpectSameRanking((*a)->RankAttentionNeurons(k, order, RankMode::kExhaustive).value(),
                          RankMode::kExhaustive, all_attn, label + " attention exhaustive top-k");
      }
      // Heads and head×positions (LocateFact's top heads) are ranked the same way.
      const NeuronRanking heads = (*a)->RankHeads(k, order, RankMode::kExact).value();
      const NeuronRanking all_heads = FirstOf(every_head, k, order);
      ExpectSameRanking(heads, mode, all_heads, label + " heads");
      const NeuronRanking head_positions =
          (*a)->RankHeadPositions(k, order, RankMode::kExact).value();
      const NeuronRanking all_head_positions = FirstOf(every_head_position, k, order);
      ExpectSameRanking(head_positions, mode, all_head_positions, label + " head positions");
      AddDifferences(heads, all_heads, totals);
      AddDifferences(head_positions, all_head_positions, totals);
      if (metric == Metric::kLogProbIncrease && order == RankOrder::kTop) {
        totals.evaluated += ffn.evaluated + attn.evaluated;
        totals.total += ffn.total + attn.total;
      }
    }
  }
}

TEST(RankingTest, PrunedEqualsExhaustiveOnReferenceModels) {
  // One softmax (GPT-2, Llama) and fairseq's adaptive softmax, with and without a final norm.
  for (const char* model_name :
       {"hf-reference/gpt2-tiny", "hf-reference/llama-tiny", "hf-reference/llama-gqa-tiny-bf16",
        "hf-reference/qwen2-tiny", "hf-reference/mistral-tiny", "fairseq-reference/baevski-tiny",
        "fairseq-reference/baevski-4band", "fairseq-reference/baevski-tiny-final-norm"}) {
    const std::string dir = testing::SourcePath(std::string("tests/data/") + model_name);
    absl::StatusOr<std::shared_ptr<const Model>> model = Model::Load(dir);
    ASSERT_TRUE(model.ok()) << model.status();
    std::ifstream in(dir + "/reference.json");
    const nlohmann::json reference = nlohmann::json::parse(in);
    Totals totals;
    for (const nlohmann::json& c : reference["cases"]) {
      CheckAllRankings(**model, c["input_ids"].get<std::vector<int64_t>>(),
                       c["target"].get<int64_t>(), 10,
                       {Metric::kLogProbIncrease, Metric::kProbIncrease, Metric::kLogitIncrease},
                       {RankOrder::kTop, RankOrder::kBottom}, model_name,
                       /*exhaustive_top_k=*/true, totals);
    }
    std::printf("  %s: largest |pruned - exhaustive| score difference %.3e\n", model_name,
                totals.largest_difference);
  }
}

// Exhaustive mode evaluates every neuron from float32 logits and again in float64 each that its
// bound leaves in contention: the same ranking as float64 values of every neuron (the *Increase()
// tensors), with scores equal to them within the two evaluations' rounding bounds.
TEST(RankingTest, ExhaustiveModeRanksEveryExactValue) {
  absl::StatusOr<std::shared_ptr<const Model>> model =
      Model::Load(testing::SourcePath("tests/data/hf-reference/llama-gqa-tiny-bf16"));
  ASSERT_TRUE(model.ok());
  absl::StatusOr<ForwardTrace> trace =
      Forward(**model, {231, 139, 128, 233, 331, 336, 3}, FullCapture());
  ASSERT_TRUE(trace.ok());
  int unscreened = 0;  // rankings compared bit for bit
  for (Metric metric : {Metric::kLogProbIncrease, Metric::kProbIncrease}) {
    AttributionTarget target;
    target.token_id = 422;
    target.metric = metric;
    absl::StatusOr<std::unique_ptr<Attribution>> a = Attribution::Create(**model, *trace, target);
    ASSERT_TRUE(a.ok());
    for (RankOrder order : {RankOrder::kTop, RankOrder::kBottom}) {
      const std::string what =
          std::string(MetricName(metric)) + (order == RankOrder::kTop ? " top" : " bottom");
      // [L, ...] values and k of them (every head: no screening).
      const std::vector<std::tuple<std::string, NeuronRanking, at::Tensor>> cases = {
          {"FFN", (*a)->RankFfnNeurons(20, order, RankMode::kExhaustive).value(),
           (*a)->FfnNeuronIncrease()},
          {"attention", (*a)->RankAttentionNeurons(20, order, RankMode::kExhaustive).value(),
           (*a)->AttentionNeuronIncrease()},
          {"heads", (*a)->RankHeads(5, order, RankMode::kExhaustive).value(), (*a)->HeadIncrease()},
          {"every head", (*a)->RankHeads(kEveryNeuron, order, RankMode::kExhaustive).value(),
           (*a)->HeadIncrease()},
          {"head positions", (*a)->RankHeadPositions(20, order, RankMode::kExhaustive).value(),
           (*a)->HeadPositionIncrease()}};
      for (const auto& [name, got, values] : cases) {
        EXPECT_EQ(got.evaluated, got.total) << what << " " << name;
        const NeuronRanking expected =
            RankAll(values, static_cast<int64_t>(got.neurons.size()), order);
        ASSERT_EQ(got.neurons.size(), expected.neurons.size()) << what << " " << name;
        ASSERT_GT(got.neurons.size(), 0u);
        NeuronRanking expected_with_bound = expected;
        expected_with_bound.max_error = got.max_error;  // the same bound of the same values
        ExpectSameRanking(got, RankMode::kExhaustive, expected_with_bound,
                          what + " " + name + " exhaustive");
        if (2 * static_cast<int64_t>(got.neurons.size()) >= got.total) {
          // Most of them reported (every head): no screening, the computation of the *Increase()
          // tensor itself, so the same bits.
          ++unscreened;
          for (size_t i = 0; i < got.neurons.size(); ++i) {
            EXPECT_EQ(got.neurons[i].score, expected.neurons[i].score) << what << " " << name;
          }
        }
      }
    }
  }
  EXPECT_EQ(unscreened, 4) << "the every-head ranking of each metric and order";
}

TEST(RankingTest, ApproximateModeIsTheFirstOrderValueAndSaysSo) {
  const std::string dir = testing::SourcePath("tests/data/hf-reference/gpt2-tiny");
  absl::StatusOr<std::shared_ptr<const Model>> model = Model::Load(dir);
  ASSERT_TRUE(model.ok());
  absl::StatusOr<ForwardTrace> trace = Forward(**model, {303, 211, 294, 53}, FullCapture());
  ASSERT_TRUE(trace.ok());
  absl::StatusOr<std::unique_ptr<Attribution>> a = Attribution::Create(**model, *trace, {7});
  ASSERT_TRUE(a.ok());
  const NeuronRanking approx =
      (*a)->RankFfnNeurons(5, RankOrder::kTop, RankMode::kApproximate).value();
  EXPECT_EQ(approx.mode, RankMode::kApproximate);
  EXPECT_EQ(approx.evaluated, 0);
  const NeuronRanking exact =
      (*a)->RankFfnNeurons(5, RankOrder::kTop, RankMode::kExhaustive).value();
  // By concavity the first-order value bounds the exact increase from above, up to the rounding
  // bounds both rankings report.
  EXPECT_GT(approx.max_error, 0);
  const double slack = approx.max_error + exact.max_error;
  const at::Tensor all = (*a)->FfnNeuronIncrease();
  for (const RankedNeuron& n : approx.neurons) {
    EXPECT_GE(n.score + slack, all[n.layer][n.index].item<double>());
  }
  EXPECT_GE(approx.neurons[0].score + slack, exact.neurons[0].score);

  // The logit increase is linear, so even an approximate ranking of it is exact, and says so.
  AttributionTarget logit{7};
  logit.metric = Metric::kLogitIncrease;
  absl::StatusOr<std::unique_ptr<Attribution>> linear = Attribution::Create(**model, *trace, logit);
  ASSERT_TRUE(linear.ok());
  const NeuronRanking ranked =
      (*linear)->RankFfnNeurons(5, RankOrder::kTop, RankMode::kApproximate).value();
  EXPECT_EQ(ranked.mode, RankMode::kExhaustive);
  const at::Tensor values = (*linear)->FfnNeuronIncrease();
  ASSERT_EQ(ranked.neurons.size(), 5u);
  EXPECT_EQ(ranked.neurons[0].score, values.max().item<double>());
  for (const RankedNeuron& n : ranked.neurons) {
    EXPECT_EQ(n.score, values[n.layer][n.index].item<double>());
  }
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
    absl::StatusOr<Encoding> encoding =
        (*tokenizer)->Encode(facts[i]["prompt"].get<std::string>(), true);
    ASSERT_TRUE(encoding.ok()) << encoding.status();
    const std::vector<int64_t> ids(encoding->ids.begin(), encoding->ids.end());
    // Top-k log-prob increase (the default) on every fact; bottom-k on every fifth fact and the
    // other metrics on every tenth (the suite must stay fast on 2 cores).
    std::vector<Metric> metrics = {Metric::kLogProbIncrease};
    if (i % 10 == 0)
      metrics = {Metric::kLogProbIncrease, Metric::kProbIncrease, Metric::kLogitIncrease};
    std::vector<RankOrder> orders = {RankOrder::kTop};
    if (i % 5 == 0) orders.push_back(RankOrder::kBottom);
    CheckAllRankings(**model, ids, facts[i]["target_id"].get<int64_t>(), 100, metrics, orders,
                     GetParam() + " fact " + std::to_string(i), /*exhaustive_top_k=*/i % 10 == 0,
                     totals);
  }
  std::printf(
      "  %s: top-100 log-prob pruning evaluated %lld of %lld neurons (%.1f%%); largest "
      "|pruned - exhaustive| score difference %.3e\n",
      GetParam().c_str(), static_cast<long long>(totals.evaluated),
      static_cast<long long>(totals.total), 100.0 * totals.evaluated / totals.total,
      totals.largest_difference);
  EXPECT_LT(totals.evaluated, totals.total / 2)
      << "pruning should skip most neurons on trained models";
}

// Long computations poll their Interrupted callback and stop with Cancelled when it says so; a
// callback that never fires changes nothing.
TEST(InterruptionTest, RankingAndDecompositionStopWhenInterrupted) {
  absl::StatusOr<std::shared_ptr<const Model>> model =
      Model::Load(testing::SourcePath("tests/data/hf-reference/gpt2-tiny"));
  ASSERT_TRUE(model.ok());
  absl::StatusOr<ForwardTrace> trace = Forward(**model, {5, 17, 42, 99, 3, 8}, FullCapture());
  ASSERT_TRUE(trace.ok());
  absl::StatusOr<std::unique_ptr<Attribution>> a = Attribution::Create(**model, *trace, {11});
  ASSERT_TRUE(a.ok());
  for (RankMode mode : {RankMode::kExact, RankMode::kExhaustive}) {
    for (const bool ffn : {true, false}) {
      auto rank = [&](const Interrupted& interrupted) {
        return ffn ? (*a)->RankFfnNeurons(10, RankOrder::kTop, mode, interrupted)
                   : (*a)->RankAttentionNeurons(10, RankOrder::kTop, mode, interrupted);
      };
      int polls = 0;
      absl::StatusOr<NeuronRanking> counted = rank([&] { return ++polls < 0; });
      ASSERT_TRUE(counted.ok());
      ASSERT_GT(polls, 0) << RankModeName(mode);
      const NeuronRanking plain = rank({}).value();
      ASSERT_EQ(counted->neurons.size(), plain.neurons.size());
      for (size_t i = 0; i < plain.neurons.size(); ++i)
        EXPECT_EQ(counted->neurons[i].score, plain.neurons[i].score);
      int seen = 0;
      const int stop_at = (polls + 1) / 2;
      absl::StatusOr<NeuronRanking> stopped = rank([&] { return ++seen >= stop_at; });
      EXPECT_TRUE(absl::IsCancelled(stopped.status())) << RankModeName(mode);
      EXPECT_EQ(seen, stop_at) << "no polls after the interruption";
    }
  }
  DecomposeOptions options;
  options.include_heads = true;
  int layers_polled = 0;
  absl::StatusOr<PositionDecomposition> decomposition =
      Decompose(**model, *trace, 5, options, [&] { return ++layers_polled > 1; });
  EXPECT_TRUE(absl::IsCancelled(decomposition.status()));
  EXPECT_EQ(layers_polled, 2);
}

INSTANTIATE_TEST_SUITE_P(Demo, DemoRankingTest,
                         ::testing::Values("gpt2-facts-tiny", "llama-facts-tiny"),
                         [](const auto& info) {
                           return info.param == "gpt2-facts-tiny" ? "gpt2" : "llama";
                         });

}  // namespace
}  // namespace factlens
