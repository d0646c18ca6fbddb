// config.json parsing: both families, both rope layouts, HF defaults, and clear errors.
#include "analysis/model_config.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include "tests/file_util.h"
#include "tests/testing.h"

namespace factlens {
namespace {

using ::testing::HasSubstr;

std::string ReadFixture(const std::string& relative) {
  return testing::ReadFileToString(testing::SourcePath(relative));
}

TEST(ModelConfigTest, Gpt2ReferenceWithNullInnerTakesHfDefaults) {
  absl::StatusOr<ModelConfig> c =
      ParseModelConfig(ReadFixture("tests/data/hf-reference/gpt2-tiny/config.json"));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->family, ModelFamily::kGpt2);
  EXPECT_EQ(c->vocab_size, 512);
  EXPECT_EQ(c->d_model, 48);
  EXPECT_EQ(c->n_layers, 3);
  EXPECT_EQ(c->n_heads, 4);
  EXPECT_EQ(c->n_kv_heads, 4);
  EXPECT_EQ(c->head_dim, 12);
  EXPECT_EQ(c->d_ffn, 4 * 48);  // "n_inner": null
  EXPECT_EQ(c->max_positions, 64);
  EXPECT_DOUBLE_EQ(c->norm_eps, 1e-5);
  EXPECT_TRUE(c->tie_word_embeddings);
  EXPECT_EQ(c->activation, Activation::kGeluTanh);
}

TEST(ModelConfigTest, LlamaClassicAndTransformers5LayoutsAgree) {
  for (const char* file : {"config.json", "config.hf-saved.json"}) {
    absl::StatusOr<ModelConfig> c = ParseModelConfig(
        ReadFixture(std::string("tests/data/hf-reference/llama-gqa-tiny-bf16/") + file));
    ASSERT_TRUE(c.ok()) << file << ": " << c.status();
    EXPECT_EQ(c->family, ModelFamily::kLlama);
    EXPECT_EQ(c->n_heads, 8) << file;
    EXPECT_EQ(c->n_kv_heads, 2) << file;
    EXPECT_EQ(c->head_dim, 8) << file;
    EXPECT_EQ(c->d_ffn, 96) << file;
    EXPECT_FALSE(c->tie_word_embeddings) << file;
    EXPECT_EQ(c->rope.type, RopeType::kLlama3) << file;
    EXPECT_DOUBLE_EQ(c->rope.theta, 500000.0) << file;
    EXPECT_DOUBLE_EQ(c->rope.factor, 8.0) << file;
    EXPECT_DOUBLE_EQ(c->rope.low_freq_factor, 1.0) << file;
    EXPECT_DOUBLE_EQ(c->rope.high_freq_factor, 4.0) << file;
    EXPECT_EQ(c->rope.original_max_position_embeddings, 64) << file;
  }
  absl::StatusOr<ModelConfig> saved =
      ParseModelConfig(ReadFixture("tests/data/hf-reference/llama-tiny/config.hf-saved.json"));
  ASSERT_TRUE(saved.ok()) << saved.status();
  EXPECT_EQ(saved->rope.type, RopeType::kDefault);
  EXPECT_DOUBLE_EQ(saved->rope.theta, 10000.0);
  EXPECT_DOUBLE_EQ(saved->norm_eps, 1e-6);
}

TEST(ModelConfigTest, AbsentOptionalValuesTakeHfDefaults) {
  absl::StatusOr<ModelConfig> gpt2 = ParseModelConfig(R"({"model_type":"gpt2"})");
  ASSERT_TRUE(gpt2.ok()) << gpt2.status();
  EXPECT_EQ(gpt2->vocab_size, 50257);
  EXPECT_EQ(gpt2->d_model, 768);
  EXPECT_EQ(gpt2->d_ffn, 3072);
  EXPECT_EQ(gpt2->max_positions, 1024);
  EXPECT_TRUE(gpt2->tie_word_embeddings);

  absl::StatusOr<ModelConfig> llama = ParseModelConfig(
      R"({"model_type":"llama","num_key_value_heads":null,"rope_scaling":null,"head_dim":null})");
  ASSERT_TRUE(llama.ok()) << llama.status();
  EXPECT_EQ(llama->d_model, 4096);
  EXPECT_EQ(llama->n_kv_heads, 32);
  EXPECT_EQ(llama->head_dim, 128);
  EXPECT_EQ(llama->d_ffn, 11008);
  EXPECT_FALSE(llama->tie_word_embeddings);
  EXPECT_EQ(llama->rope.type, RopeType::kDefault);
  EXPECT_EQ(llama->activation, Activation::kSilu);
}

TEST(ModelConfigTest, Qwen2AndMistralAreLlamaWithOneTraitEach) {
  absl::StatusOr<ModelConfig> qwen2 = ParseModelConfig(
      R"({"model_type":"qwen2","use_sliding_window":false,"sliding_window":131072})");
  ASSERT_TRUE(qwen2.ok()) << qwen2.status();
  EXPECT_EQ(qwen2->family, ModelFamily::kQwen2);
  EXPECT_EQ(qwen2->architecture.positions, PositionKind::kRotary);
  EXPECT_EQ(qwen2->architecture.ffn, FfnKind::kGated);
  EXPECT_TRUE(qwen2->attention_bias);  // q/k/v
  EXPECT_FALSE(qwen2->attention_output_bias);
  EXPECT_EQ(qwen2->architecture.sliding_window, 0);  // not used without use_sliding_window
  EXPECT_EQ(qwen2->vocab_size, 151936);
  EXPECT_EQ(ParseModelConfig(R"({"model_type":"qwen2","use_sliding_window":true})").status().code(),
            absl::StatusCode::kUnimplemented);

  absl::StatusOr<ModelConfig> mistral = ParseModelConfig(R"({"model_type":"mistral"})");
  ASSERT_TRUE(mistral.ok()) << mistral.status();
  EXPECT_EQ(mistral->family, ModelFamily::kMistral);
  EXPECT_EQ(mistral->n_kv_heads, 8);
  EXPECT_EQ(mistral->d_ffn, 14336);
  EXPECT_EQ(mistral->architecture.sliding_window, 4096);  // MistralConfig's default
  absl::StatusOr<ModelConfig> windowed =
      ParseModelConfig(R"({"model_type":"mistral","sliding_window":4})");
  ASSERT_TRUE(windowed.ok()) << windowed.status();
  EXPECT_EQ(windowed->architecture.sliding_window, 4);
  EXPECT_EQ(ParseModelConfig(R"({"model_type":"mistral","sliding_window":null})")
                ->architecture.sliding_window,
            0);
}

TEST(ModelConfigTest, LinearRopeAndLegacyTypeKey) {
  absl::StatusOr<ModelConfig> c = ParseModelConfig(
      R"({"model_type":"llama","rope_theta":1e6,"rope_scaling":{"type":"linear","factor":4}})");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->rope.type, RopeType::kLinear);
  EXPECT_DOUBLE_EQ(c->rope.factor, 4.0);
  EXPECT_DOUBLE_EQ(c->rope.theta, 1e6);
}

TEST(ModelConfigTest, ExplicitHeadDimOverridesHiddenOverHeads) {
  absl::StatusOr<ModelConfig> c = ParseModelConfig(
      R"({"model_type":"llama","hidden_size":64,"num_attention_heads":4,"head_dim":32})");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->head_dim, 32);
}

TEST(ModelConfigTest, ClearErrors) {
  struct Case {
    const char* json;
    absl::StatusCode code;
    const char* message;
  };
  const Case cases[] = {
      {"not json", absl::StatusCode::kInvalidArgument, "not a JSON object"},
      {"[]", absl::StatusCode::kInvalidArgument, "not a JSON object"},
      {"{}", absl::StatusCode::kInvalidArgument, "model_type"},
      {R"({"model_type":"bert"})", absl::StatusCode::kUnimplemented, "bert"},
      {R"({"model_type":3})", absl::StatusCode::kInvalidArgument, "model_type"},
      {R"({"model_type":"gpt2","n_layer":"3"})", absl::StatusCode::kInvalidArgument, "'n_layer'"},
      {R"({"model_type":"gpt2","n_layer":2.5})", absl::StatusCode::kInvalidArgument, "'n_layer'"},
      {R"({"model_type":"gpt2","n_layer":0})", absl::StatusCode::kInvalidArgument, "'n_layer'"},
      {R"({"model_type":"gpt2","n_head":-4})", absl::StatusCode::kInvalidArgument, "'n_head'"},
      {R"({"model_type":"gpt2","n_embd":100,"n_head":3})", absl::StatusCode::kInvalidArgument,
       "divisible"},
      {R"({"model_type":"gpt2","layer_norm_epsilon":"1e-5"})", absl::StatusCode::kInvalidArgument,
       "'layer_norm_epsilon'"},
      {R"({"model_type":"gpt2","tie_word_embeddings":1})", absl::StatusCode::kInvalidArgument,
       "'tie_word_embeddings'"},
      {R"({"model_type":"gpt2","activation_function":"mish"})", absl::StatusCode::kUnimplemented,
       "mish"},
      {R"({"model_type":"gpt2","vocab_size":18446744073709551615})",
       absl::StatusCode::kInvalidArgument, "'vocab_size'"},
      {R"({"model_type":"llama","num_attention_heads":32,"num_key_value_heads":5})",
       absl::StatusCode::kInvalidArgument, "num_key_value_heads"},
      {R"({"model_type":"llama","rope_scaling":{"rope_type":"yarn","factor":4}})",
       absl::StatusCode::kUnimplemented, "yarn"},
      {R"({"model_type":"llama","rope_scaling":[1]})", absl::StatusCode::kInvalidArgument,
       "'rope_scaling'"},
      {R"({"model_type":"llama","rope_parameters":{"rope_type":"llama3","factor":"8"}})",
       absl::StatusCode::kInvalidArgument, "'rope_parameters.factor'"},
      {R"({"model_type":"llama","rope_theta":-1})", absl::StatusCode::kInvalidArgument,
       "'rope_theta'"},
  };
  for (const Case& c : cases) {
    const absl::Status status = ParseModelConfig(c.json).status();
    EXPECT_EQ(status.code(), c.code) << c.json << " -> " << status;
    EXPECT_THAT(std::string(status.message()), HasSubstr(c.message)) << c.json;
  }
}

}  // namespace
}  // namespace factlens
