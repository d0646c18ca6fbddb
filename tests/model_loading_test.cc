// Loading paths the public references do not cover (unprefixed GPT-2 names with mask buffers,
// sharded checkpoints, the HF cache layout, fp16 files), and clear errors for broken checkpoints.
// Variants are rewritten from the reference models, so they must reproduce HF's logits.
#include <ATen/ATen.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>

#include "analysis/forward.h"
#include "analysis/tensor_io.h"
#include "analysis/weights.h"
#include "tests/testing.h"

namespace factlens {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using TensorMap = std::map<std::string, at::Tensor>;

const std::vector<int64_t> kGpt2Ids = {303, 211, 294, 53, 204, 372, 152};    // gpt2-tiny case 0
const std::vector<int64_t> kLlamaIds = {442, 120, 368, 476, 325, 336, 457};  // llama-tiny case 0

std::string Reference(const std::string& model) {
  return testing::SourcePath("tests/data/hf-reference/" + model);
}

at::Tensor ReferenceLogits(const std::string& model) {
  absl::StatusOr<TensorMap> ref =
      ReadSafetensorsFile(Reference(model) + "/reference_case0.safetensors");
  EXPECT_TRUE(ref.ok()) << ref.status();
  return ref.ok() ? ref->at("forward.logits") : at::Tensor();
}

// Copies a reference model to `dst`, with its tensors rewritten by `transform` into `shards`
// files (an index when > 1) and its config edited by `edit_config`.
void WriteVariant(const std::string& model, const fs::path& dst,
                  const std::function<void(TensorMap&)>& transform, int shards = 1,
                  const std::function<void(std::string&)>& edit_config = nullptr) {
  fs::create_directories(dst);
  absl::StatusOr<TensorMap> tensors = ReadSafetensorsFile(Reference(model) + "/model.safetensors");
  ASSERT_TRUE(tensors.ok()) << tensors.status();
  transform(*tensors);
  std::ifstream config_in(Reference(model) + "/config.json");
  std::string config((std::istreambuf_iterator<char>(config_in)), std::istreambuf_iterator<char>());
  if (edit_config) edit_config(config);
  std::ofstream(dst / "config.json") << config;
  if (shards == 1) {
    ASSERT_TRUE(WriteSafetensorsFile((dst / "model.safetensors").string(), *tensors).ok());
    return;
  }
  std::vector<TensorMap> parts(shards);
  std::string weight_map;
  int i = 0;
  for (const auto& [name, tensor] : *tensors) {
    const int shard = i++ % shards;
    parts[shard][name] = tensor;
    const std::string file = "model-0000" + std::to_string(shard + 1) + "-of-0000" +
                             std::to_string(shards) + ".safetensors";
    weight_map += (weight_map.empty() ? "" : ",") + ("\"" + name + "\":\"" + file + "\"");
  }
  for (int s = 0; s < shards; ++s) {
    const std::string file =
        "model-0000" + std::to_string(s + 1) + "-of-0000" + std::to_string(shards) + ".safetensors";
    ASSERT_TRUE(WriteSafetensorsFile((dst / file).string(), parts[s]).ok());
  }
  std::ofstream(dst / "model.safetensors.index.json")
      << "{\"metadata\":{},\"weight_map\":{" << weight_map << "}}";
}

// Loads `reference` in float64 and compares its logits with HF's for `model_model`. As in
// forward_parity_test.cc, the float64 side does not depend on the CPU's float32 kernels, so the
// default tolerance (2e-5 of the logits' scale) covers HF's own float32 rounding, fixed data.
void ExpectReferenceLogits(const std::string& reference, const std::string& model_model,
                           const std::vector<int64_t>& ids, double relative_tolerance = 2e-5) {
  LoadOptions options;
  options.dtype = at::kDouble;
  absl::StatusOr<std::shared_ptr<const Model>> model = Model::Load(reference, options);
  ASSERT_TRUE(model.ok()) << model.status();
  absl::StatusOr<ForwardTrace> trace = Forward(**model, ids);
  ASSERT_TRUE(trace.ok()) << trace.status();
  const at::Tensor expected = ReferenceLogits(model_model).to(at::kDouble);
  const double scale = std::max(1.0, expected.abs().max().item<double>());
  const double error = (trace->logits.to(at::kDouble) - expected).abs().max().item<double>();
  EXPECT_LE(error, relative_tolerance * scale) << reference;
}

TEST(ModelLoadingTest, Gpt2WithoutTransformerPrefixAndWithMaskBuffers) {
  const testing::ScopedTempDir tmp;
  const fs::path dir = fs::path(tmp.path()) / "gpt2-unprefixed";
  WriteVariant("gpt2-tiny", dir, [](TensorMap& tensors) {
    TensorMap renamed;
    for (auto& [name, tensor] : tensors)
      renamed[name.substr(std::string("transformer.").size())] = tensor;
    for (int l = 0; l < 3; ++l) {  // the causal-mask buffers old hub checkpoints carry
      renamed["h." + std::to_string(l) + ".attn.bias"] = at::ones({1, 1, 64, 64}).tril();
    }
    tensors = renamed;
  });
  ExpectReferenceLogits(dir.string(), "gpt2-tiny", kGpt2Ids);
}

TEST(ModelLoadingTest, ShardedCheckpointWithIndex) {
  const testing::ScopedTempDir tmp;
  const fs::path dir = fs::path(tmp.path()) / "llama-sharded";
  WriteVariant(
      "llama-tiny", dir, [](TensorMap&) {}, /*shards=*/3);
  ASSERT_TRUE(fs::exists(dir / "model-00003-of-00003.safetensors"));
  ASSERT_FALSE(fs::exists(dir / "model.safetensors"));
  ExpectReferenceLogits(dir.string(), "llama-tiny", kLlamaIds);
}

TEST(ModelLoadingTest, RepoIdInHuggingFaceCache) {
  const testing::ScopedTempDir tmp;
  const fs::path cache = tmp.path();
  const fs::path repo = cache / "models--factlens--gpt2-tiny";
  WriteVariant("gpt2-tiny", repo / "snapshots" / "c0ffee", [](TensorMap&) {});
  fs::create_directories(repo / "refs");
  std::ofstream(repo / "refs" / "main") << "c0ffee";
  setenv("HF_HUB_CACHE", cache.c_str(), 1);
  ExpectReferenceLogits("factlens/gpt2-tiny", "gpt2-tiny", kGpt2Ids);
  unsetenv("HF_HUB_CACHE");
}

TEST(ModelLoadingTest, Float16CheckpointIsUpcastToFloat32OnCpu) {
  const testing::ScopedTempDir tmp;
  const fs::path dir = fs::path(tmp.path()) / "gpt2-fp16";
  WriteVariant("gpt2-tiny", dir, [](TensorMap& tensors) {
    for (auto& [name, tensor] : tensors) tensor = tensor.to(at::kHalf);
  });
  absl::StatusOr<std::shared_ptr<const Model>> model = Model::Load(dir.string());
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ((*model)->dtype(), at::kFloat);
  EXPECT_EQ((*model)->weights().token_embedding.scalar_type(), at::kFloat);
  // fp16 rounding of the weights (2^-11 ≈ 4.9e-4 relative each) moves these 3-layer model's logits
  // by about 1e-2 of their scale; fixed data (the weights and their rounding), the same on any CPU.
  ExpectReferenceLogits(dir.string(), "gpt2-tiny", kGpt2Ids, /*relative_tolerance=*/1.25e-2);
}

TEST(ModelLoadingTest, ResidentBytesCountTiedEmbeddingOnce) {
  absl::StatusOr<std::shared_ptr<const Model>> model = Model::Load(Reference("gpt2-tiny"));
  ASSERT_TRUE(model.ok()) << model.status();
  // GPT-2 parameter count from its shapes (V=512, P=64, d=48, N=192, L=3), float32, tied
  // unembedding, plus the method's float64 unembedding prepared at load.
  const int64_t v = 512, p = 64, d = 48, n = 192, layers = 3;
  const int64_t per_layer =
      2 * d + (d * 3 * d + 3 * d) + (d * d + d) + 2 * d + (d * n + n) + (n * d + d);
  EXPECT_EQ((*model)->resident_bytes(),
            4u * static_cast<uint64_t>(v * d + p * d + layers * per_layer + 2 * d) +
                8u * static_cast<uint64_t>(v * d));
}

// A broken copy of a reference model must fail to load with `code` and a message naming `what`.
void ExpectLoadError(const fs::path& dir, absl::StatusCode code, const std::string& what) {
  const absl::Status status = Model::Load(dir.string()).status();
  EXPECT_EQ(status.code(), code) << status;
  EXPECT_THAT(std::string(status.message()), HasSubstr(what));
}

TEST(ModelLoadingTest, BrokenCheckpointsAreClearErrors) {
  const testing::ScopedTempDir tmp;
  const fs::path root = tmp.path();
  WriteVariant("gpt2-tiny", root / "missing",
               [](TensorMap& t) { t.erase("transformer.h.1.ln_2.bias"); });
  ExpectLoadError(root / "missing", absl::StatusCode::kDataLoss, "transformer.h.1.ln_2.bias");

  WriteVariant("gpt2-tiny", root / "shape", [](TensorMap& t) {
    t["transformer.h.0.mlp.c_fc.weight"] = at::zeros({48, 100});
  });
  ExpectLoadError(root / "shape", absl::StatusCode::kDataLoss, "shape [48, 100]");

  WriteVariant("gpt2-tiny", root / "dtype", [](TensorMap& t) {
    t["transformer.ln_f.weight"] = t["transformer.ln_f.weight"].to(at::kLong);
  });
  ExpectLoadError(root / "dtype", absl::StatusCode::kDataLoss, "I64");

  WriteVariant(
      "gpt2-tiny", root / "untied", [](TensorMap&) {}, 1,
      [](std::string& config) {
        config.replace(config.find("\"tie_word_embeddings\": true"), 27,
                       "\"tie_word_embeddings\": false");
      });
  ExpectLoadError(root / "untied", absl::StatusCode::kDataLoss, "lm_head.weight");

  WriteVariant(
      "gpt2-tiny", root / "bert", [](TensorMap&) {}, 1,
      [](std::string& config) { config.replace(config.find("\"gpt2\""), 6, "\"bert\""); });
  ExpectLoadError(root / "bert", absl::StatusCode::kUnimplemented, "bert");

  WriteVariant(
      "gpt2-tiny", root / "config", [](TensorMap&) {}, 1,
      [](std::string& config) {
        config.replace(config.find("\"n_layer\": 3"), 12, "\"n_layer\": \"3\"");
      });
  ExpectLoadError(root / "config", absl::StatusCode::kInvalidArgument, "n_layer");

  // Truncated weights: cut the file in the middle of the data section.
  WriteVariant("gpt2-tiny", root / "truncated", [](TensorMap&) {});
  fs::resize_file(root / "truncated" / "model.safetensors", 200000);
  ExpectLoadError(root / "truncated", absl::StatusCode::kDataLoss, "past the end");

  fs::create_directories(root / "empty");
  ExpectLoadError(root / "empty", absl::StatusCode::kNotFound, "config.json");
  ExpectLoadError(root / "no-such-model", absl::StatusCode::kNotFound, "no-such-model");
}

TEST(ModelLoadingTest, BadDeviceAndDtypeOptions) {
  LoadOptions cuda;
  cuda.device = "cuda";
  if (!at::hasCUDA()) {
    EXPECT_EQ(Model::Load(Reference("gpt2-tiny"), cuda).status().code(),
              absl::StatusCode::kFailedPrecondition);
  }
  LoadOptions nonsense;
  nonsense.device = "quantum:7";
  EXPECT_EQ(Model::Load(Reference("gpt2-tiny"), nonsense).status().code(),
            absl::StatusCode::kInvalidArgument);
  LoadOptions integer;
  integer.dtype = at::kLong;
  EXPECT_EQ(Model::Load(Reference("gpt2-tiny"), integer).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// The values a load with weights in `dtype` computes with: the large matrices (2-D tensors but
// GPT-2's position embeddings) rounded to `dtype`, everything else as stored.
void RoundMatrices(TensorMap& tensors, at::ScalarType dtype) {
  for (auto& [name, tensor] : tensors) {
    if (tensor.dim() == 2 && name.find("wpe") == std::string::npos) {
      tensor = tensor.to(dtype).to(at::kFloat);
    }
  }
}

struct LowPrecisionCase {
  std::string model;
  std::vector<int64_t> ids;
  at::ScalarType dtype;
};

class LowPrecisionWeightsTest : public ::testing::TestWithParam<LowPrecisionCase> {};

// On CPU, dtype=bfloat16 / float16 means the large matrices held in that dtype and float32
// compute: the same numbers as a float32 model whose matrices were rounded to that dtype.
TEST_P(LowPrecisionWeightsTest, ComputeInFloat32WithTheMatricesRounded) {
  const LowPrecisionCase& c = GetParam();
  LoadOptions options;
  options.dtype = c.dtype;
  absl::StatusOr<std::shared_ptr<const Model>> low = Model::Load(Reference(c.model), options);
  ASSERT_TRUE(low.ok()) << low.status();
  EXPECT_EQ((*low)->dtype(), at::kFloat);
  EXPECT_EQ((*low)->weights_dtype(), c.dtype);
  const ModelWeights& w = (*low)->weights();
  EXPECT_EQ(w.token_embedding.scalar_type(), c.dtype);
  EXPECT_EQ(w.unembedding.scalar_type(), c.dtype);
  for (const LayerWeights& l : w.layers) {
    for (const at::Tensor* matrix :
         {&l.q_weight, &l.k_weight, &l.v_weight, &l.o_weight, &l.in_weight, &l.out_weight}) {
      EXPECT_EQ(matrix->scalar_type(), c.dtype);
    }
    for (const at::Tensor* small :
         {&l.attn_norm_weight, &l.ffn_norm_weight, &l.q_bias, &l.attn_norm_bias, &l.out_bias}) {
      if (small->defined()) EXPECT_EQ(small->scalar_type(), at::kFloat);
    }
  }
  if (w.position_embedding.defined()) EXPECT_EQ(w.position_embedding.scalar_type(), at::kFloat);
  EXPECT_EQ(w.final_norm_weight.scalar_type(), at::kFloat);

  const testing::ScopedTempDir tmp;
  const fs::path rounded = fs::path(tmp.path()) / "rounded";
  WriteVariant(c.model, rounded, [&](TensorMap& t) { RoundMatrices(t, c.dtype); });
  absl::StatusOr<std::shared_ptr<const Model>> reference = Model::Load(rounded.string());
  ASSERT_TRUE(reference.ok()) << reference.status();
  ASSERT_EQ((*reference)->weights_dtype(), at::kFloat);

  CaptureOptions all;
  all.ffn_coefficients = all.head_outputs = all.attention_probs = all.values = true;
  absl::StatusOr<ForwardTrace> a = Forward(**low, c.ids, all);
  absl::StatusOr<ForwardTrace> b = Forward(**reference, c.ids, all);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_TRUE(at::equal(a->logits, b->logits));
  EXPECT_TRUE(at::equal(a->final_residual, b->final_residual));
  for (size_t l = 0; l < a->layers.size(); ++l) {
    EXPECT_TRUE(at::equal(a->layers[l].attn_out, b->layers[l].attn_out)) << l;
    EXPECT_TRUE(at::equal(a->layers[l].ffn_coefficients, b->layers[l].ffn_coefficients)) << l;
  }
}

INSTANTIATE_TEST_SUITE_P(CpuBfloat16AndFloat16, LowPrecisionWeightsTest,
                         ::testing::Values(LowPrecisionCase{"llama-tiny", kLlamaIds, at::kBFloat16},
                                           LowPrecisionCase{"llama-tiny", kLlamaIds, at::kHalf},
                                           LowPrecisionCase{"qwen2-tiny", kLlamaIds, at::kBFloat16},
                                           LowPrecisionCase{"gpt2-tiny", kGpt2Ids, at::kBFloat16},
                                           LowPrecisionCase{"gpt2-tiny", kGpt2Ids, at::kHalf}),
                         [](const ::testing::TestParamInfo<LowPrecisionCase>& info) {
                           std::string name = info.param.model +
                                              (info.param.dtype == at::kHalf ? "_f16" : "_bf16");
                           for (char& ch : name) ch = ch == '-' ? '_' : ch;
                           return name;
                         });

TEST(ModelLoadingTest, Bfloat16WeightsHalveTheResidentBytesOfTheMatrices) {
  LoadOptions bf16;
  bf16.dtype = at::kBFloat16;
  absl::StatusOr<std::shared_ptr<const Model>> model = Model::Load(Reference("gpt2-tiny"), bf16);
  ASSERT_TRUE(model.ok()) << model.status();
  // As ResidentBytesCountTiedEmbeddingOnce, with the matrices (tied embedding, c_attn, c_proj,
  // c_fc, mlp c_proj) in 2 bytes; norms, biases and position embeddings stay float32.
  const int64_t v = 512, p = 64, d = 48, n = 192, layers = 3;
  const int64_t matrices = v * d + layers * (d * 3 * d + d * d + d * n + n * d);
  const int64_t small = p * d + layers * (2 * d + 3 * d + d + 2 * d + n + d) + 2 * d;
  EXPECT_EQ((*model)->resident_bytes(), 2u * static_cast<uint64_t>(matrices) +
                                            4u * static_cast<uint64_t>(small) +
                                            8u * static_cast<uint64_t>(v * d));
}

TEST(ModelLoadingTest, EstimateCountsOnlyConvertedCopies) {
  const testing::ScopedTempDir tmp;
  const fs::path dir = fs::path(tmp.path()) / "gpt2-fp16";
  WriteVariant("gpt2-tiny", dir, [](TensorMap& tensors) {
    for (auto& [name, tensor] : tensors) tensor = tensor.to(at::kHalf);
  });
  const uint64_t v = 512, p = 64, d = 48, n = 192, layers = 3;
  const uint64_t matrices = v * d + layers * (d * 3 * d + d * d + d * n + n * d);
  const uint64_t small = p * d + layers * (2 * d + 3 * d + d + 2 * d + n + d) + 2 * d;
  LoadOptions options;
  absl::StatusOr<LoadFootprint> float32 = EstimateLoad(dir.string(), options);
  options.dtype = at::kBFloat16;
  absl::StatusOr<LoadFootprint> bfloat16 = EstimateLoad(dir.string(), options);
  options.dtype = at::kHalf;
  absl::StatusOr<LoadFootprint> float16 = EstimateLoad(dir.string(), options);
  ASSERT_TRUE(float32.ok() && bfloat16.ok() && float16.ok()) << float32.status();
  EXPECT_EQ(float32->weights, 4 * (matrices + small));
  EXPECT_EQ(bfloat16->weights, 2 * matrices + 4 * small);
  EXPECT_EQ(float16->weights, 4 * small);  // the matrices are used in place from the file
  EXPECT_EQ(float32->output_head, 8 * v * d);
  // The stated margin: the head's build temporary, two widened layer matrices, 256 MiB.
  EXPECT_EQ(float32->margin, 8 * v * d + 2 * 4 * (d * n) + (uint64_t{256} << 20));
  // A float32 checkpoint loaded in float32 converts nothing.
  absl::StatusOr<LoadFootprint> mapped = EstimateLoad(Reference("gpt2-tiny"));
  ASSERT_TRUE(mapped.ok());
  EXPECT_EQ(mapped->weights, 0u);
}

TEST(ModelLoadingTest, Bfloat16CheckpointWithBfloat16WeightsIsUsedInPlace) {
  const std::string dir = Reference("llama-gqa-tiny-bf16");
  LoadOptions bf16;
  bf16.dtype = at::kBFloat16;
  absl::StatusOr<LoadFootprint> need = EstimateLoad(dir, bf16);
  absl::StatusOr<std::shared_ptr<const Model>> in_place = Model::Load(dir, bf16);
  absl::StatusOr<std::shared_ptr<const Model>> widened = Model::Load(dir);
  ASSERT_TRUE(need.ok() && in_place.ok() && widened.ok()) << need.status();
  // Only the small tensors (the RMSNorm weights) are converted, to float32.
  const ModelConfig& c = (*widened)->config();
  EXPECT_EQ(need->weights, 4u * static_cast<uint64_t>(c.d_model) * (2 * c.n_layers + 1));
  EXPECT_EQ((*in_place)->weights_dtype(), at::kBFloat16);
  EXPECT_EQ((*widened)->weights_dtype(), at::kFloat);
  // The same weight values and float32 arithmetic: the same logits, bit for bit.
  EXPECT_TRUE(
      at::equal(Forward(**in_place, kLlamaIds)->logits, Forward(**widened, kLlamaIds)->logits));
  EXPECT_LT((*in_place)->resident_bytes(), (*widened)->resident_bytes());
}

TEST(ForwardTest, BadInputsAreInvalidArgumentNamingTheField) {
  absl::StatusOr<std::shared_ptr<const Model>> model = Model::Load(Reference("llama-tiny"));
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_THAT(std::string(Forward(**model, {}).status().message()), HasSubstr("token_ids"));
  const absl::Status out_of_vocab = Forward(**model, {1, 512}).status();
  EXPECT_EQ(out_of_vocab.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(out_of_vocab.message()), HasSubstr("token_ids[1] = 512"));
  EXPECT_EQ(Forward(**model, {-1}).status().code(), absl::StatusCode::kInvalidArgument);
  CaptureOptions capture;
  capture.positions = {7};
  const absl::Status bad_position = Forward(**model, kLlamaIds, capture).status();
  EXPECT_EQ(bad_position.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(bad_position.message()), HasSubstr("positions"));
}

TEST(ForwardTest, CapturingSomePositionsKeepsExactlyThoseRows) {
  absl::StatusOr<std::shared_ptr<const Model>> model =
      Model::Load(Reference("llama-gqa-tiny-bf16"));
  ASSERT_TRUE(model.ok()) << model.status();
  CaptureOptions all;
  all.ffn_coefficients = all.head_outputs = all.attention_probs = all.values = true;
  CaptureOptions some = all;
  some.positions = {-1, 2};
  absl::StatusOr<ForwardTrace> full = Forward(**model, kLlamaIds, all);
  absl::StatusOr<ForwardTrace> part = Forward(**model, kLlamaIds, some);
  ASSERT_TRUE(full.ok() && part.ok());
  EXPECT_EQ(part->positions, (std::vector<int64_t>{6, 2}));
  const at::Tensor rows = at::tensor(std::vector<int64_t>{6, 2});
  for (size_t l = 0; l < full->layers.size(); ++l) {
    const LayerTrace& f = full->layers[l];
    const LayerTrace& p = part->layers[l];
    EXPECT_TRUE(at::allclose(p.residual_in, f.residual_in.index_select(0, rows)));
    EXPECT_TRUE(at::allclose(p.ffn_coefficients, f.ffn_coefficients.index_select(0, rows)));
    EXPECT_TRUE(at::allclose(p.head_outputs, f.head_outputs.index_select(0, rows)));
    EXPECT_TRUE(at::allclose(p.attention_probs, f.attention_probs.index_select(1, rows)));
    EXPECT_EQ(p.values.size(0), 7);  // values keep every source position
  }
  EXPECT_TRUE(at::allclose(part->logits, full->logits.index_select(0, rows)));
  CaptureOptions nothing;
  nothing.residuals = nothing.logits = false;
  absl::StatusOr<ForwardTrace> empty = Forward(**model, kLlamaIds, nothing);
  ASSERT_TRUE(empty.ok());
  EXPECT_FALSE(empty->logits.defined());
  EXPECT_FALSE(empty->layers[0].residual_in.defined());
}

}  // namespace
}  // namespace factlens
