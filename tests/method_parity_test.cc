// The method against the float64 reference computations in tests/data/hf-reference and
// tests/data/fairseq-reference (method.*): one softmax with a frozen final norm (GPT-2, Llama) and
// fairseq's adaptive softmax without a final norm (Baevski-style models; one variant with one).
//
// Our side runs the float64 forward pass (LoadOptions::dtype) and the method's float64 evaluation
// (attribution.h: every increase is a float64 computation with a derived rounding bound far below
// the tolerance), so nothing compared depends on the CPU's float32 kernels. What remains is fixed
// data: the references are float64 computations from HF's *float32* forward tensors (whose own
// rounding, ≤ 4e-6 relative, is measured by forward_parity_test.cc) stored as float32 (2^-24
// relative), and our float32 trace (2^-24 relative). Tolerance 2e-5 × max(1, max |reference|)
// covers that fixed error with margin — relative to the tensor's scale because the fairseq
// references reach magnitudes of 20–200 (log-probabilities of an adaptive softmax without a final
// norm; query-layer scores, which divide layer scores by their sum and so amplify the trace's
// 2^-24 by Σ|s|/|Σ s|); observed errors are printed. A wrong convention (centering, bias, σ, base
// residual, cluster slot) errs by 1e-3 or more of the scale on these models.
#include <ATen/ATen.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <set>

#include "analysis/attribution.h"
#include "analysis/forward.h"
#include "analysis/tensor_io.h"
#include "analysis/tracing.h"
#include "analysis/weights.h"
#include "nlohmann/json.hpp"
#include "tests/testing.h"

namespace factlens {
namespace {

constexpr double kTolerance = 2e-5;

struct ReferenceCase {
  std::string root;  // under tests/data
  std::string model;
  int index;
};

class MethodParityTest : public ::testing::TestWithParam<ReferenceCase> {
 protected:
  void SetUp() override {
    const std::string dir =
        testing::SourcePath("tests/data/" + GetParam().root + "/" + GetParam().model);
    std::ifstream in(dir + "/reference.json");
    const nlohmann::json reference = nlohmann::json::parse(in);
    const nlohmann::json& c = reference["cases"][GetParam().index];
    LoadOptions options;
    options.dtype = at::kDouble;
    absl::StatusOr<std::shared_ptr<const Model>> model = Model::Load(dir, options);
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = *model;
    absl::StatusOr<std::map<std::string, at::Tensor>> expected =
        ReadSafetensorsFile(dir + "/" + c["file"].get<std::string>());
    ASSERT_TRUE(expected.ok()) << expected.status();
    expected_ = *std::move(expected);
    absl::StatusOr<ForwardTrace> trace =
        Forward(*model_, c["input_ids"].get<std::vector<int64_t>>(), FullCapture());
    ASSERT_TRUE(trace.ok()) << trace.status();
    trace_ = *std::move(trace);
    target_.token_id = c["target"].get<int64_t>();
    absl::StatusOr<std::unique_ptr<Attribution>> attribution =
        Attribution::Create(*model_, trace_, target_);
    ASSERT_TRUE(attribution.ok()) << attribution.status();
    attribution_ = *std::move(attribution);
  }

  at::Tensor Expected(const std::string& key) {
    EXPECT_EQ(expected_.count(key), 1u) << key;
    return expected_[key];
  }

  void ExpectClose(const at::Tensor& actual, const std::string& key,
                   double tolerance = kTolerance) {
    const at::Tensor expected = Expected(key);
    ASSERT_EQ(actual.sizes(), expected.sizes()) << key;
    const double error =
        (actual.to(at::kDouble) - expected.to(at::kDouble)).abs().max().item<double>();
    const double scale = expected.abs().max().item<double>();
    std::printf("  %-40s max|err| %.3e  (max |ref| %.3e)\n", key.c_str(), error, scale);
    EXPECT_LE(error, tolerance * std::max(1.0, scale)) << key;
  }

  std::shared_ptr<const Model> model_;
  std::map<std::string, at::Tensor> expected_;
  ForwardTrace trace_;
  AttributionTarget target_;
  std::unique_ptr<Attribution> attribution_;
};

TEST_P(MethodParityTest, FinalScaleAndLayerIncreases) {
  if (model_->config().architecture.final_norm) {
    EXPECT_NEAR(attribution_->final_scale(), Expected("method.final_scale").item<double>(), 1e-5);
  } else {  // nothing to freeze: the increases are what the model itself would output
    EXPECT_EQ(expected_.count("method.final_scale"), 0u);
    EXPECT_EQ(attribution_->final_scale(), 1.0);
  }
  ExpectClose(attribution_->AttentionLayerIncrease(), "method.layer_attn_logprob_increase");
  ExpectClose(attribution_->FfnLayerIncrease(), "method.layer_ffn_logprob_increase");
  AttributionTarget prob = target_;
  prob.metric = Metric::kProbIncrease;
  absl::StatusOr<std::unique_ptr<Attribution>> by_prob = Attribution::Create(*model_, trace_, prob);
  ASSERT_TRUE(by_prob.ok());
  ExpectClose((*by_prob)->AttentionLayerIncrease(), "method.layer_attn_prob_increase");
  ExpectClose((*by_prob)->FfnLayerIncrease(), "method.layer_ffn_prob_increase");
}

TEST_P(MethodParityTest, HeadAndHeadPositionIncreases) {
  ExpectClose(attribution_->HeadIncrease(), "method.head_logprob_increase");
  ExpectClose(attribution_->HeadPositionIncrease(), "method.head_position_logprob_increase");
}

TEST_P(MethodParityTest, EveryNeuronIncrease) {
  ExpectClose(attribution_->FfnNeuronIncrease(), "method.ffn_neuron_logprob_increase");
  ExpectClose(attribution_->AttentionNeuronIncrease(), "method.attn_neuron_logprob_increase");
}

TEST_P(MethodParityTest, PrunedTopTenEqualsReferenceTopTen) {
  const ModelConfig& c = model_->config();
  const NeuronRanking ffn =
      attribution_->RankFfnNeurons(10, RankOrder::kTop, RankMode::kExact).value();
  EXPECT_EQ(ffn.mode, RankMode::kExact);
  std::vector<int64_t> ffn_flat;
  for (const RankedNeuron& n : ffn.neurons) ffn_flat.push_back(n.layer * c.d_ffn + n.index);
  const at::Tensor top_ffn = Expected("method.top_ffn_neurons");
  EXPECT_EQ(ffn_flat,
            std::vector<int64_t>(top_ffn.data_ptr<int64_t>(), top_ffn.data_ptr<int64_t>() + 10));

  const NeuronRanking attn =
      attribution_->RankAttentionNeurons(10, RankOrder::kTop, RankMode::kExact).value();
  const int64_t per_layer = trace_.num_tokens * c.n_heads * c.head_dim;
  std::vector<int64_t> attn_flat;
  for (const RankedNeuron& n : attn.neurons) attn_flat.push_back(n.layer * per_layer + n.index);
  const at::Tensor top_attn = Expected("method.top_attn_neurons");
  EXPECT_EQ(attn_flat,
            std::vector<int64_t>(top_attn.data_ptr<int64_t>(), top_attn.data_ptr<int64_t>() + 10));
  std::printf("  pruning evaluated %lld of %lld FFN, %lld of %lld attention neurons\n",
              static_cast<long long>(ffn.evaluated), static_cast<long long>(ffn.total),
              static_cast<long long>(attn.evaluated), static_cast<long long>(attn.total));
}

TEST_P(MethodParityTest, QueryLayerAndQueryNeuronScores) {
  const NeuronRanking ffn =
      attribution_->RankFfnNeurons(10, RankOrder::kTop, RankMode::kExact).value();
  for (const auto& [name, scores] : QueryLayerScoresFfn(*attribution_, ffn.neurons)) {
    ExpectClose(scores, "method.query_layer_scores_ffn_K" + name);
  }
  const NeuronRanking attn =
      attribution_->RankAttentionNeurons(10, RankOrder::kTop, RankMode::kExact).value();
  ExpectClose(QueryLayerScoresAttention(*attribution_, attn.neurons),
              "method.query_layer_scores_attn");
  const std::vector<RankedNeuron> top5(attn.neurons.begin(), attn.neurons.begin() + 5);
  ExpectClose(QueryFfnNeuronScores(*attribution_, top5), "method.query_ffn_neuron_scores");
}

TEST_P(MethodParityTest, EveryMethodTensorIsCovered) {
  // The method.* tensors the tests above compare; a new reference tensor must get a test.
  const std::set<std::string> covered = {"method.final_scale",
                                         "method.layer_attn_logprob_increase",
                                         "method.layer_ffn_logprob_increase",
                                         "method.layer_attn_prob_increase",
                                         "method.layer_ffn_prob_increase",
                                         "method.head_logprob_increase",
                                         "method.head_position_logprob_increase",
                                         "method.ffn_neuron_logprob_increase",
                                         "method.attn_neuron_logprob_increase",
                                         "method.top_ffn_neurons",
                                         "method.top_attn_neurons",
                                         "method.query_layer_scores_ffn_Kin",
                                         "method.query_layer_scores_ffn_Kgate",
                                         "method.query_layer_scores_ffn_Kup",
                                         "method.query_layer_scores_attn",
                                         "method.query_ffn_neuron_scores",
                                         "method.decomposition_max_abs_err",
                                         "method.embed_vocab_logprobs",
                                         "method.attn_vocab_logprobs",
                                         "method.ffn_vocab_logprobs"};
  for (const auto& [key, value] : expected_) {
    if (key.rfind("method.", 0) == 0) EXPECT_EQ(covered.count(key), 1u) << key;
  }
  // The reference's own decomposition check: in our float64 forward the components sum to the
  // final residual exactly but for float64 rounding; each float32-captured tensor adds at most
  // 2^-24 of its own magnitude.
  at::Tensor sum = trace_.embedding[-1].to(at::kDouble);
  at::Tensor magnitude = trace_.embedding[-1].to(at::kDouble).abs();
  for (const LayerTrace& layer : trace_.layers) {
    sum += layer.attn_out[-1] + layer.ffn_out[-1];
    magnitude += layer.attn_out[-1].abs() + layer.ffn_out[-1].abs();
  }
  magnitude += trace_.final_residual[-1].abs();
  EXPECT_LE((sum - trace_.final_residual[-1]).abs().max().item<double>(),
            (magnitude * 0x1p-24).max().item<double>() + 1e-12);
}

// TopTokens finds the k largest entries of each vector's float64 projection, with their float64
// values, however it gets there (a single-softmax head screens in float32 first): the same tokens
// in the same order as a full projection and top-k, values equal to float64 rounding.
TEST_P(MethodParityTest, TopTokensAreTheLargestEntriesOfTheProjection) {
  const int64_t last = trace_.num_tokens - 1;
  std::vector<at::Tensor> rows = {trace_.embedding[last], -trace_.final_residual[last]};
  for (const LayerTrace& layer : trace_.layers) {
    rows.push_back(layer.attn_out[last]);
    rows.push_back(-layer.ffn_out[last]);
  }
  const at::Tensor out_weight = model_->weights().layers[0].out_weight.to(at::kFloat);
  for (int64_t n = 0; n < std::min<int64_t>(out_weight.size(1), 40); ++n) {
    rows.push_back(n % 2 == 0 ? out_weight.select(1, n) : -out_weight.select(1, n));
  }
  const at::Tensor vectors = at::stack(rows).to(at::kFloat);
  const at::Tensor projection = attribution_->Project(vectors);
  const int64_t vocab = projection.size(1);
  // k = V takes the full projection (screening pays only for small k).
  for (const int64_t k : {int64_t{1}, int64_t{10}, int64_t{200}, vocab}) {
    const std::vector<std::vector<TokenScore>> tops = attribution_->TopTokens(vectors, k);
    ASSERT_EQ(tops.size(), rows.size());
    for (size_t r = 0; r < rows.size(); ++r) {
      const std::vector<TokenScore> expected = TopScores(projection[r], k);
      ASSERT_EQ(tops[r].size(), expected.size()) << "row " << r << " k " << k;
      for (size_t i = 0; i < expected.size(); ++i) {
        EXPECT_EQ(tops[r][i].token_id, expected[i].token_id) << "row " << r << " k " << k;
        EXPECT_NEAR(tops[r][i].score, expected[i].score,
                    1e-12 * std::max(1.0, std::abs(expected[i].score)));
      }
    }
  }
  EXPECT_TRUE(attribution_->TopTokens(vectors, 0).front().empty());
}

// Geva et al.'s projection of a vector alone for an adaptive softmax: the full log-distribution
// assembled from the head and every tail cluster (FrozenOutputHead::VocabularyScores).
using AdaptiveSoftmaxParityTest = MethodParityTest;

TEST_P(AdaptiveSoftmaxParityTest, VocabularyProjectionIsTheFullLogDistribution) {
  const int64_t last = trace_.num_tokens - 1;
  ExpectClose(attribution_->Project(trace_.embedding[last].unsqueeze(0))[0],
              "method.embed_vocab_logprobs");
  std::vector<at::Tensor> attention, ffn;
  for (const LayerTrace& layer : trace_.layers) {
    attention.push_back(layer.attn_out[last]);
    ffn.push_back(layer.ffn_out[last]);
  }
  ExpectClose(attribution_->Project(at::stack(attention)), "method.attn_vocab_logprobs");
  ExpectClose(attribution_->Project(at::stack(ffn)), "method.ffn_vocab_logprobs");
  // A distribution: every row sums to 1.
  const at::Tensor sums = attribution_->Project(at::stack(ffn)).exp().sum(1);
  EXPECT_LE((sums - 1).abs().max().item<double>(), 1e-12);
}

std::string CaseName(const ::testing::TestParamInfo<ReferenceCase>& info) {
  std::string name = info.param.model + "_case" + std::to_string(info.param.index);
  for (char& ch : name) ch = ch == '-' ? '_' : ch;
  return name;
}

// fairseq adaptive-softmax references: every case of the shared baevski-tiny fixture and of the
// variants made by tools/make_fairseq_variants.py (other band counts and factors, fp16 storages,
// legacy attention layout and args, a final LayerNorm).
const ReferenceCase kFairseqCases[] = {
    {"fairseq-reference", "baevski-tiny", 0},
    {"fairseq-reference", "baevski-tiny", 1},
    {"fairseq-reference", "baevski-tiny", 2},
    {"fairseq-reference", "baevski-tiny", 3},
    {"fairseq-reference", "baevski-4band", 0},
    {"fairseq-reference", "baevski-4band", 1},
    {"fairseq-reference", "baevski-4band", 2},
    {"fairseq-reference", "baevski-tiny-fp16", 0},
    {"fairseq-reference", "baevski-tiny-fp16", 1},
    {"fairseq-reference", "baevski-tiny-inproj", 0},
    {"fairseq-reference", "baevski-tiny-inproj", 1},
    {"fairseq-reference", "baevski-tiny-final-norm", 0},
    {"fairseq-reference", "baevski-tiny-final-norm", 1},
};

INSTANTIATE_TEST_SUITE_P(HfReference, MethodParityTest,
                         ::testing::Values(ReferenceCase{"hf-reference", "gpt2-tiny", 0},
                                           ReferenceCase{"hf-reference", "gpt2-tiny", 1},
                                           ReferenceCase{"hf-reference", "llama-tiny", 0},
                                           ReferenceCase{"hf-reference", "llama-tiny", 1},
                                           ReferenceCase{"hf-reference", "llama-gqa-tiny-bf16", 0},
                                           ReferenceCase{"hf-reference", "llama-gqa-tiny-bf16", 1},
                                           ReferenceCase{"hf-reference", "qwen2-tiny", 0},
                                           ReferenceCase{"hf-reference", "qwen2-tiny", 1},
                                           ReferenceCase{"hf-reference", "mistral-tiny", 0},
                                           ReferenceCase{"hf-reference", "mistral-tiny", 1}),
                         CaseName);
INSTANTIATE_TEST_SUITE_P(FairseqReference, MethodParityTest, ::testing::ValuesIn(kFairseqCases),
                         CaseName);
INSTANTIATE_TEST_SUITE_P(FairseqReference, AdaptiveSoftmaxParityTest,
                         ::testing::ValuesIn(kFairseqCases), CaseName);

}  // namespace
}  // namespace factlens
