// Ablation: removing a component of the last layer must change the residual right after it (the
// last layer's residual_mid for attention components, the final residual for FFN components) by
// exactly that component, computed independently from the unablated trace.
//
// The model runs in float64 (LoadOptions::dtype), so the forward passes are exact but for float64
// rounding on any CPU; what remains is the float32 rounding of the captured tensors (2^-24 of
// each), which bounds the tolerance: see RoundingBound.
#include <ATen/ATen.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <iostream>

#include "analysis/attribution.h"
#include "analysis/forward.h"
#include "analysis/weights.h"
#include "tests/testing.h"

namespace factlens {
namespace {

const std::vector<int64_t> kIds = {231, 139, 128, 233, 331, 336, 3};  // llama-gqa-tiny-bf16 case 0

class AblationTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    LoadOptions options;
    options.dtype = at::kDouble;
    absl::StatusOr<std::shared_ptr<const Model>> model =
        Model::Load(testing::SourcePath("tests/data/hf-reference/" + GetParam()), options);
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = *model;
    CaptureOptions all;
    all.ffn_coefficients = all.head_outputs = all.attention_probs = all.values = true;
    absl::StatusOr<ForwardTrace> base = Forward(*model_, kIds, all);
    ASSERT_TRUE(base.ok()) << base.status();
    base_ = *std::move(base);
  }

  // The change `ablation` makes at the last position to the residual right after the ablated
  // sublayer of the last layer.
  at::Tensor Change(const Ablation& ablation) {
    absl::StatusOr<ForwardTrace> ablated = Forward(*model_, kIds, {}, {ablation});
    EXPECT_TRUE(ablated.ok()) << ablated.status();
    const bool ffn = ablation.target == AblationTarget::kFfnNeuron ||
                     ablation.target == AblationTarget::kFfnLayer;
    if (ffn) return ablated->final_residual[-1] - base_.final_residual[-1];
    return ablated->layers[last_layer()].residual_mid[-1] -
           base_.layers[last_layer()].residual_mid[-1];
  }

  int64_t last_layer() const { return model_->config().n_layers - 1; }
  at::Tensor OutputColumns(int64_t head) const {  // W_O columns of `head`: [d, Dh]
    const ModelConfig& c = model_->config();
    return model_->weights().layers[last_layer()].o_weight.narrow(1, head * c.head_dim, c.head_dim);
  }
  at::Tensor Value(int64_t source, int64_t head) const {  // [Dh]
    const ModelConfig& c = model_->config();
    return base_.layers[last_layer()].values[source][head / (c.n_heads / c.n_kv_heads)].to(
        at::kDouble);
  }
  double Prob(int64_t head, int64_t source) const {
    return base_.layers[last_layer()].attention_probs[head][-1][source].item<double>();
  }

  // |Change(a) − expected| ≤ this: the two float32-captured residuals (of magnitude ≤ R + E, R
  // the base residuals' largest magnitude, E the expected change's) round by 2^-24 each, and the
  // float32 captures `expected` is built from by 2^-24 of E each (two factors at most); float64
  // arithmetic adds nothing visible at this scale.
  double RoundingBound(const at::Tensor& expected) const {
    const double r =
        std::max(base_.final_residual[-1].abs().max().item<double>(),
                 base_.layers[last_layer()].residual_mid[-1].abs().max().item<double>());
    const double e = expected.abs().max().item<double>();
    return 0x1p-24 * (2 * (r + e) + 3 * e) + 1e-12;
  }
  // Asserts that `ablation` changes the residual after it by `expected`.
  void ExpectChange(const Ablation& ablation, const at::Tensor& expected) {
    EXPECT_LE((Change(ablation) - expected).abs().max().item<double>(), RoundingBound(expected));
  }

  std::shared_ptr<const Model> model_;
  ForwardTrace base_;
};

TEST_P(AblationTest, FfnNeuronRemovesItsSubvalue) {
  const int64_t n = 5, last = static_cast<int64_t>(kIds.size()) - 1;
  const at::Tensor expected = -base_.layers[last_layer()].ffn_coefficients[-1][n] *
                              model_->weights().layers[last_layer()].out_weight.select(1, n);
  Ablation a{AblationTarget::kFfnNeuron, last_layer(), 0, 0, n, last, 0.0};
  ExpectChange(a, expected);
  a.scale = 0.5;
  ExpectChange(a, expected / 2);
  a.position = std::nullopt;  // every position: the last position changes the same way
  ExpectChange(a, expected / 2);
}

TEST_P(AblationTest, HeadRemovesItsOutput) {
  const int64_t h = 1;
  const at::Tensor expected =
      -at::mv(OutputColumns(h), base_.layers[last_layer()].head_outputs[-1][h].to(at::kDouble));
  ExpectChange({AblationTarget::kHead, last_layer(), h, 0, 0, std::nullopt, 0.0}, expected);
}

TEST_P(AblationTest, HeadPositionAndAttentionNeuronRemoveTheirTerms) {
  const int64_t h = 2, s = 3, j = 1;
  const at::Tensor head_position = -Prob(h, s) * at::mv(OutputColumns(h), Value(s, h));
  ExpectChange({AblationTarget::kHeadPosition, last_layer(), h, s, 0, std::nullopt, 0.0},
               head_position);
  const at::Tensor neuron = -Prob(h, s) * Value(s, h)[j] * OutputColumns(h).select(1, j);
  ExpectChange({AblationTarget::kAttentionNeuron, last_layer(), h, s, j, std::nullopt, 0.0},
               neuron);
}

TEST_P(AblationTest, LayersAndIdentityScale) {
  ExpectChange({AblationTarget::kAttentionLayer, last_layer(), 0, 0, 0, std::nullopt, 0.0},
               -base_.layers[last_layer()].attn_out[-1].to(at::kDouble));
  ExpectChange({AblationTarget::kFfnLayer, last_layer(), 0, 0, 0, std::nullopt, 0.0},
               -base_.layers[last_layer()].ffn_out[-1].to(at::kDouble));
  EXPECT_EQ(
      Change({AblationTarget::kFfnLayer, 0, 0, 0, 0, std::nullopt, 1.0}).abs().max().item<double>(),
      0.0);
  // Ablating layer 0's FFN changes later layers too, not just its own output.
  const at::Tensor early = Change({AblationTarget::kFfnLayer, 0, 0, 0, 0, std::nullopt, 0.0});
  EXPECT_GT((early + base_.layers[0].ffn_out[-1]).abs().max().item<double>(), 1e-3);
  // Ablating the last layer's attention changes its FFN's input, hence the final residual by more
  // than the attention output alone.
  absl::StatusOr<ForwardTrace> no_attention =
      Forward(*model_, kIds, {},
              {{AblationTarget::kAttentionLayer, last_layer(), 0, 0, 0, std::nullopt, 0.0}});
  ASSERT_TRUE(no_attention.ok());
  EXPECT_GT((no_attention->final_residual[-1] - base_.final_residual[-1] +
             base_.layers[last_layer()].attn_out[-1])
                .abs()
                .max()
                .item<double>(),
            1e-3);
}

TEST_P(AblationTest, OutOfRangeAblationsNameTheField) {
  struct Case {
    Ablation ablation;
    const char* field;
  };
  const Case cases[] = {
      {{AblationTarget::kFfnNeuron, 99, 0, 0, 0, std::nullopt, 0.0}, "ablations[0].layer"},
      {{AblationTarget::kFfnNeuron, 0, 0, 0, 100000, std::nullopt, 0.0}, "ablations[0].index"},
      {{AblationTarget::kHead, 0, 64, 0, 0, std::nullopt, 0.0}, "ablations[0].head"},
      {{AblationTarget::kHeadPosition, 0, 0, 7, 0, std::nullopt, 0.0},
       "ablations[0].source_position"},
      {{AblationTarget::kAttentionNeuron, 0, 0, 0, 64, std::nullopt, 0.0}, "ablations[0].index"},
      {{AblationTarget::kFfnLayer, 0, 0, 0, 0, 7, 0.0}, "ablations[0].position"},
      {{AblationTarget::kFfnLayer, 0, 0, 0, 0, std::nullopt, NAN}, "ablations[0].scale"},
  };
  for (const Case& c : cases) {
    const absl::Status status = Forward(*model_, kIds, {}, {c.ablation}).status();
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << c.field;
    EXPECT_THAT(std::string(status.message()), ::testing::HasSubstr(c.field));
  }
}

INSTANTIATE_TEST_SUITE_P(Models, AblationTest,
                         ::testing::Values("gpt2-tiny", "llama-gqa-tiny-bf16"),
                         [](const auto& info) {
                           return info.param == "gpt2-tiny" ? "gpt2" : "llama_gqa";
                         });

// AblatedLogitsAt recomputes only the ablated position's row from the first ablated layer on,
// reading every other row from an unablated FullCapture trace. On a float32 model it and the full
// ablated pass are two float32 evaluations of the same function: each stays within the float32
// forward bound of the float64 pass (hf_parity.h: each of the 6L + 1 chained products errs by at
// most n·2^-24 of its magnitude, n = max(d, d_ffn, T); here one side is float64, exact to ~1e-15).
class OneRowAblationTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    const std::string dir = testing::SourcePath("tests/data/hf-reference/" + GetParam());
    absl::StatusOr<std::shared_ptr<const Model>> model = Model::Load(dir);
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = *model;
    LoadOptions float64;
    float64.dtype = at::kDouble;
    model = Model::Load(dir, float64);
    ASSERT_TRUE(model.ok()) << model.status();
    model64_ = *model;
    absl::StatusOr<ForwardTrace> reference = Forward(*model_, kIds, FullCapture());
    ASSERT_TRUE(reference.ok()) << reference.status();
    reference_ = *std::move(reference);
  }

  // Several kinds of component at query position p, in the first and the last layer.
  std::vector<Ablation> AblationsAt(int64_t p) const {
    const int64_t last = model_->config().n_layers - 1;
    return {{AblationTarget::kFfnNeuron, 0, 0, 0, 3, p, 0.0},
            {AblationTarget::kFfnNeuron, last, 0, 0, 7, p, 0.0},
            {AblationTarget::kHeadPosition, 0, 1, 0, 0, p, 0.0},
            {AblationTarget::kAttentionNeuron, last, 0, 2, 1, p, 0.0},
            {AblationTarget::kHead, last, 1, 0, 0, p, 0.5},
            {AblationTarget::kAttentionLayer, last, 0, 0, 0, p, 0.25}};
  }
  at::Tensor FullPass(const Model& model, int64_t p, const std::vector<Ablation>& ablations) {
    absl::StatusOr<ForwardTrace> trace = Forward(model, kIds, LogitsAt(p), ablations);
    EXPECT_TRUE(trace.ok()) << trace.status();
    return trace.ok() ? trace->logits[0] : at::Tensor();
  }
  at::Tensor OneRow(const ForwardTrace& reference, int64_t p,
                    const std::vector<Ablation>& ablations) {
    absl::StatusOr<at::Tensor> logits = AblatedLogitsAt(*model_, kIds, reference, p, ablations);
    EXPECT_TRUE(logits.ok()) << logits.status();
    return logits.ok() ? *logits : at::Tensor();
  }
  double Float32Bound(const at::Tensor& truth) const {
    const ModelConfig& c = model_->config();
    const double n =
        static_cast<double>(std::max({c.d_model, c.d_ffn, static_cast<int64_t>(kIds.size())}));
    return (6.0 * c.n_layers + 1) * n * 0x1p-24 * std::max(1.0, truth.abs().max().item<double>());
  }
  static double MaxDifference(const at::Tensor& a, const at::Tensor& b) {
    return (a - b).abs().max().item<double>();
  }

  std::shared_ptr<const Model> model_, model64_;
  ForwardTrace reference_;
};

TEST_P(OneRowAblationTest, AgreesWithTheFullPassWithinFloat32Rounding) {
  for (const int64_t p : {int64_t{4}, static_cast<int64_t>(kIds.size()) - 1}) {
    const std::vector<Ablation> ablations = AblationsAt(p);
    const at::Tensor truth = FullPass(*model64_, p, ablations);
    const double bound = Float32Bound(truth);
    // The ablations matter far beyond the bound, so agreement is not agreement on "no change".
    EXPECT_GT(MaxDifference(truth, FullPass(*model64_, p, {})), 10 * bound) << p;
    const double one_row = MaxDifference(OneRow(reference_, p, ablations), truth);
    const double full = MaxDifference(FullPass(*model_, p, ablations), truth);
    EXPECT_LE(one_row, bound) << "position " << p;
    EXPECT_LE(full, bound) << "position " << p;
    std::cout << GetParam() << " position " << p << ": |one row − float64| " << one_row
              << ", |full pass − float64| " << full << ", bound " << bound << "\n";
  }
}

TEST_P(OneRowAblationTest, ReadsEarlierRowsFromTheReferenceAndRecomputesItsOwn) {
  const int64_t p = 4, last = model_->config().n_layers - 1;
  const std::vector<Ablation> ablations = AblationsAt(p);
  const at::Tensor untouched = OneRow(reference_, p, ablations);
  ForwardTrace tampered = reference_;
  tampered.layers[last].keys = reference_.layers[last].keys.clone();
  tampered.layers[last].keys[p].add_(1.0);  // p's own key is recomputed, not read
  EXPECT_TRUE(at::equal(OneRow(tampered, p, ablations), untouched));
  tampered.layers[last].keys[p - 1].add_(1.0);  // an earlier key (inside any sliding window)
  EXPECT_GT(MaxDifference(OneRow(tampered, p, ablations), untouched), 1e-6);
}

TEST_P(OneRowAblationTest, RunsTheFullPassWhenTheReferenceCannotStandIn) {
  const int64_t p = 4;
  // An ablation at another position changes the rows the reference holds.
  std::vector<Ablation> elsewhere = AblationsAt(p);
  elsewhere.back().position = 2;
  EXPECT_TRUE(at::equal(OneRow(reference_, p, elsewhere), FullPass(*model_, p, elsewhere)));
  elsewhere.back().position = std::nullopt;
  EXPECT_TRUE(at::equal(OneRow(reference_, p, elsewhere), FullPass(*model_, p, elsewhere)));
  // A float64 model's trace is rounded to float32: it is not reused.
  absl::StatusOr<ForwardTrace> reference64 = Forward(*model64_, kIds, FullCapture());
  ASSERT_TRUE(reference64.ok());
  absl::StatusOr<at::Tensor> logits64 =
      AblatedLogitsAt(*model64_, kIds, *reference64, p, AblationsAt(p));
  ASSERT_TRUE(logits64.ok()) << logits64.status();
  EXPECT_TRUE(at::equal(*logits64, FullPass(*model64_, p, AblationsAt(p))));
}

TEST_P(OneRowAblationTest, BadInputNamesTheField) {
  std::vector<Ablation> ablations = AblationsAt(4);
  ablations[0].index = 100000;
  absl::Status status = AblatedLogitsAt(*model_, kIds, reference_, 4, ablations).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()), ::testing::HasSubstr("ablations[0].index"));
  status = AblatedLogitsAt(*model_, kIds, reference_, 7, AblationsAt(4)).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()), ::testing::HasSubstr("position"));
}

INSTANTIATE_TEST_SUITE_P(Models, OneRowAblationTest,
                         ::testing::Values("gpt2-tiny", "llama-gqa-tiny-bf16", "mistral-tiny",
                                           "qwen2-tiny"),
                         [](const auto& info) {
                           std::string name = info.param.substr(0, info.param.find("-tiny"));
                           return name == "llama-gqa" ? std::string("llama_gqa") : name;
                         });

}  // namespace
}  // namespace factlens
