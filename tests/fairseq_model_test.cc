// fairseq LM directories (model.pt + dict.txt) as fairseq ships them: the forward pass against the
// float64 references of tests/data/fairseq-reference (the shared baevski-tiny fixture, computed by
// an independent numpy forward and reproduced by fairseq's own modules, and the variants of
// tools/make_fairseq_variants.py: fp16 storages, legacy in_proj_weight / layer_norms / 2019 args,
// four bands with factor 2 in a zip container, a final LayerNorm), both torch.save containers,
// and clear errors for damaged directories.
//
// Tolerances (per tensor, relative to max(1, max |reference|)):
// - float64 compute: 1e-6. Our side is exact to ~1e-15 relative; the references are float64
//   values stored as float32 (2^-24 ≈ 6e-8 relative), and our trace is captured in float32 (one
//   more 2^-24). A wrong convention (position offset, embedding scale, a missing bias, the cluster
//   slot) errs by 1e-2 or more.
// - float32 compute: derived as for the HF references (tests/hf_parity.h): each of the 6L + 1
//   chained products errs by at most n·2^-24 of its magnitude in any summation order, n =
//   max(d, d_ffn, T, V_band): 2·(6L + 1)·n·2^-24.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <set>

#include "analysis/attribution.h"
#include "analysis/forward.h"
#include "analysis/tensor_io.h"
#include "analysis/weights.h"
#include "nlohmann/json.hpp"
#include "tests/file_util.h"
#include "tests/hf_parity.h"
#include "tests/testing.h"

namespace factlens {
namespace {

std::string FixtureDir(const std::string& name) {
  return testing::SourcePath("tests/data/fairseq-reference/" + name);
}

nlohmann::json ReadReference(const std::string& name) {
  std::ifstream in(FixtureDir(name) + "/reference.json");
  return nlohmann::json::parse(in);
}

struct ForwardCase {
  std::string model;
  int index;
  c10::ScalarType dtype;
};

class FairseqForwardTest : public ::testing::TestWithParam<ForwardCase> {};

TEST_P(FairseqForwardTest, EveryReferenceTensorMatches) {
  const ForwardCase& param = GetParam();
  const nlohmann::json c = ReadReference(param.model)["cases"][param.index];
  LoadOptions options;
  options.dtype = param.dtype;
  absl::StatusOr<std::shared_ptr<const Model>> loaded =
      Model::Load(FixtureDir(param.model), options);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  const Model& model = **loaded;
  const ModelConfig& config = model.config();
  EXPECT_EQ(config.family, ModelFamily::kFairseqLm);
  absl::StatusOr<std::map<std::string, at::Tensor>> expected =
      ReadSafetensorsFile(FixtureDir(param.model) + "/" + c["file"].get<std::string>());
  ASSERT_TRUE(expected.ok()) << expected.status();
  std::set<std::string> compared;
  auto ref = [&](const std::string& key) {
    EXPECT_EQ(expected->count(key), 1u) << key;
    compared.insert(key);
    return (*expected)[key];
  };
  const std::vector<int64_t> ids = c["input_ids"].get<std::vector<int64_t>>();
  const int64_t t = static_cast<int64_t>(ids.size());
  absl::StatusOr<ForwardTrace> trace = Forward(model, ids, FullCapture());
  ASSERT_TRUE(trace.ok()) << trace.status();

  int64_t widest = std::max({config.d_model, config.d_ffn, t});
  for (const AdaptiveSoftmaxBand& band : model.weights().output_bands) {
    widest = std::max(widest, band.embedding.size(0));
  }
  const double tolerance =
      param.dtype == at::kDouble ? 1e-6 : 2 * (6 * config.n_layers + 1) * double(widest) * 0x1p-24;
  auto expect_close = [&](const at::Tensor& actual, const std::string& key) {
    testing::ExpectClose(actual, ref(key), key, tolerance);
  };
  expect_close(trace->embedding, "forward.in.0");
  testing::ExpectClose(trace->embedding, ref("forward.token_embed") + ref("forward.pos_embed"),
                       "token_embed+pos_embed", tolerance);
  std::vector<at::Tensor> probs;
  for (int64_t l = 0; l < config.n_layers; ++l) {
    const LayerTrace& layer = trace->layers[l];
    const std::string s = std::to_string(l);
    expect_close(layer.residual_in, "forward.in." + s);
    expect_close(layer.attn_out, "forward.attn." + s);
    expect_close(layer.residual_mid, "forward.mid." + s);
    expect_close(layer.ffn_out, "forward.ffn." + s);
    expect_close(layer.ffn_coefficients, "forward.coef." + s);
    expect_close(layer.head_outputs.reshape({t, -1}), "forward.heads." + s);
    expect_close(layer.values.reshape({t, -1}), "forward.v." + s);
    probs.push_back(layer.attention_probs);
  }
  expect_close(at::stack(probs), "forward.attn_probs");
  expect_close(trace->final_residual, "forward.final");
  // The output head's values are log-probabilities already (their log-softmax is themselves).
  expect_close(trace->logits, "forward.logprobs");
  EXPECT_LE((trace->logits.exp().sum(1) - 1).abs().max().item<double>(), 1e-9);
  // The adaptive softmax's logits from the loaded tensors: head words and cluster logits, then
  // every tail band's word logits through its projection.
  const ModelWeights& w = model.weights();
  const at::Tensor h =
      w.final_norm_weight.defined()
          ? at::layer_norm(trace->final_residual.to(model.dtype()), {config.d_model},
                           w.final_norm_weight, w.final_norm_bias, config.norm_eps)
          : trace->final_residual.to(model.dtype());
  expect_close(at::matmul(h, at::cat({w.output_bands[0].embedding, w.cluster_weight}).t()),
               "forward.head_logits");
  for (size_t b = 1; b < w.output_bands.size(); ++b) {
    const AdaptiveSoftmaxBand& band = w.output_bands[b];
    expect_close(at::matmul(at::matmul(h, band.projection.t()), band.embedding.t()),
                 "forward.tail_logits." + std::to_string(b));
  }
  for (const auto& [key, value] : *expected) {
    if (key.rfind("forward.", 0) == 0) EXPECT_EQ(compared.count(key), 1u) << key << " not compared";
  }
  // The reference's target log-probability, recorded in float64.
  EXPECT_NEAR(trace->logits[t - 1][c["target"].get<int64_t>()].item<double>(),
              c["target_logprob"].get<double>(), tolerance * 200);
}

std::vector<ForwardCase> AllForwardCases() {
  std::vector<ForwardCase> cases;
  for (const char* model : {"baevski-tiny", "baevski-4band", "baevski-tiny-fp16",
                            "baevski-tiny-inproj", "baevski-tiny-final-norm"}) {
    const int count = static_cast<int>(ReadReference(model)["cases"].size());
    for (int i = 0; i < count; ++i) {
      for (c10::ScalarType dtype : {at::kDouble, at::kFloat}) cases.push_back({model, i, dtype});
    }
  }
  return cases;
}

INSTANTIATE_TEST_SUITE_P(FairseqReference, FairseqForwardTest,
                         ::testing::ValuesIn(AllForwardCases()),
                         [](const ::testing::TestParamInfo<ForwardCase>& info) {
                           std::string name = info.param.model + "_case" +
                                              std::to_string(info.param.index) +
                                              (info.param.dtype == at::kDouble ? "_f64" : "_f32");
                           for (char& ch : name) ch = ch == '-' ? '_' : ch;
                           return name;
                         });

// A temporary copy of a fixture directory, removed in every outcome.
class ScratchDirectory {
 public:
  explicit ScratchDirectory(const std::string& fixture) {
    for (const char* file : {"model.pt", "dict.txt"}) {
      Write(file, testing::ReadFileToString(FixtureDir(fixture) + "/" + file));
    }
  }
  const std::string& path() const { return dir_.path(); }
  void Write(const std::string& file, const std::string& contents) const {
    std::ofstream(path() + "/" + file, std::ios::binary | std::ios::trunc) << contents;
  }

 private:
  testing::ScopedTempDir dir_;
};

TEST(FairseqLoadingTest, BothContainersGiveTheSameModel) {
  const ScratchDirectory zip("baevski-tiny");
  zip.Write("model.pt",
            testing::ReadFileToString(FixtureDir("baevski-tiny") + "/model-zipformat.pt"));
  absl::StatusOr<std::shared_ptr<const Model>> legacy = Model::Load(FixtureDir("baevski-tiny"));
  absl::StatusOr<std::shared_ptr<const Model>> zipped = Model::Load(zip.path());
  ASSERT_TRUE(legacy.ok()) << legacy.status();
  ASSERT_TRUE(zipped.ok()) << zipped.status();
  const std::vector<int64_t> ids = {2, 17, 120, 5, 333};
  const at::Tensor a = Forward(**legacy, ids, LogitsAt(-1))->logits;
  const at::Tensor b = Forward(**zipped, ids, LogitsAt(-1))->logits;
  EXPECT_TRUE(at::equal(a, b));
  // Tied tensors are stored once and loaded once.
  const ModelWeights& w = (*legacy)->weights();
  EXPECT_TRUE(
      w.output_bands[1].embedding.is_same(w.input_bands[1].embedding) ||
      w.output_bands[1].embedding.storage().is_alias_of(w.input_bands[1].embedding.storage()));
  EXPECT_EQ((*legacy)->config().n_heads, 4);
  EXPECT_FALSE((*legacy)->config().architecture.final_norm);
}

// An fp16 checkpoint loaded with dtype=float16 on CPU keeps its matrices in fp16 (tied bands
// still one storage) and computes in float32: the numbers of the float32 load, which widens the
// same fp16 values up front.
TEST(FairseqLoadingTest, Float16WeightsOnCpuComputeAsTheFloat32Load) {
  LoadOptions half;
  half.dtype = at::kHalf;
  absl::StatusOr<std::shared_ptr<const Model>> fp16 =
      Model::Load(FixtureDir("baevski-tiny-fp16"), half);
  absl::StatusOr<std::shared_ptr<const Model>> fp32 = Model::Load(FixtureDir("baevski-tiny-fp16"));
  ASSERT_TRUE(fp16.ok()) << fp16.status();
  ASSERT_TRUE(fp32.ok()) << fp32.status();
  EXPECT_EQ((*fp16)->dtype(), at::kFloat);
  EXPECT_EQ((*fp16)->weights_dtype(), at::kHalf);
  const ModelWeights& w = (*fp16)->weights();
  EXPECT_EQ(w.input_bands[1].embedding.scalar_type(), at::kHalf);
  EXPECT_EQ(w.layers[0].in_weight.scalar_type(), at::kHalf);
  EXPECT_EQ(w.layers[0].in_bias.scalar_type(), at::kFloat);
  EXPECT_EQ(w.layers[0].attn_norm_weight.scalar_type(), at::kFloat);
  EXPECT_EQ(w.cluster_weight.scalar_type(), at::kFloat);
  EXPECT_TRUE(
      w.output_bands[1].embedding.storage().is_alias_of(w.input_bands[1].embedding.storage()));
  const std::vector<int64_t> ids = {2, 17, 120, 5, 333};
  absl::StatusOr<ForwardTrace> a = Forward(**fp16, ids, FullCapture());
  absl::StatusOr<ForwardTrace> b = Forward(**fp32, ids, FullCapture());
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_TRUE(at::equal(a->logits, b->logits));
  EXPECT_TRUE(at::equal(a->final_residual, b->final_residual));
  EXPECT_LT((*fp16)->resident_bytes(), (*fp32)->resident_bytes());
}

TEST(FairseqLoadingTest, DamagedDirectoriesGiveClearErrors) {
  {
    const ScratchDirectory dir("baevski-tiny");
    dir.Write("dict.txt", "only 1\nthree 1\nwords 1\n");
    const absl::Status status = Model::Load(dir.path()).status();
    EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss) << status;
    EXPECT_NE(status.message().find("dict.txt has 3 words"), std::string::npos) << status;
  }
  {
    const ScratchDirectory dir("baevski-tiny");
    const std::string bytes = testing::ReadFileToString(FixtureDir("baevski-tiny") + "/model.pt");
    dir.Write("model.pt", bytes.substr(0, bytes.size() / 2));
    const absl::Status status = Model::Load(dir.path()).status();
    EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss) << status;
    EXPECT_NE(status.message().find("model.pt"), std::string::npos) << status;
    EXPECT_NE(status.message().find("offset"), std::string::npos) << status;
  }
  {
    const ScratchDirectory dir("baevski-tiny");
    std::remove((dir.path() + "/dict.txt").c_str());
    EXPECT_EQ(Model::Load(dir.path()).status().code(), absl::StatusCode::kNotFound);
  }
}

}  // namespace
}  // namespace factlens
