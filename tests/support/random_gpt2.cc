#include "tests/support/random_gpt2.h"

#include <ATen/ATen.h>

#include <filesystem>
#include <fstream>
#include <map>

#include "absl/strings/str_cat.h"
#include "analysis/tensor_io.h"

namespace factlens::testing {
namespace {

at::Tensor Normal(std::vector<int64_t> dims) { return at::randn(dims) * 0.02; }

// config.json of a Llama `shape`; `torch_dtype` is recorded unless empty.
void WriteLlamaConfig(const std::string& dir, const RandomLlamaShape& shape,
                      const std::string& torch_dtype) {
  std::filesystem::create_directories(dir);
  std::ofstream(dir + "/config.json") << absl::StrCat(
      R"({"model_type":"llama","vocab_size":)", shape.vocab, R"(,"hidden_size":)", shape.d_model,
      R"(,"num_hidden_layers":)", shape.layers, R"(,"num_attention_heads":)", shape.heads,
      R"(,"num_key_value_heads":)", shape.kv_heads, R"(,"intermediate_size":)", shape.ffn,
      R"(,"max_position_embeddings":)", shape.positions,
      R"(,"rms_norm_eps":1e-05,"rope_theta":10000.0,"hidden_act":"silu",)",
      R"("tie_word_embeddings":false)",
      torch_dtype.empty() ? "" : absl::StrCat(R"(,"torch_dtype":")", torch_dtype, "\""), "}");
}

}  // namespace

absl::Status WriteRandomGpt2(const std::string& dir, const RandomGpt2Shape& shape, uint64_t seed) {
  const int64_t v = shape.vocab, d = shape.d_model, n = shape.ffn;
  std::filesystem::create_directories(dir);
  std::ofstream(dir + "/config.json") << absl::StrCat(
      R"({"model_type":"gpt2","vocab_size":)", v, R"(,"n_embd":)", d, R"(,"n_layer":)",
      shape.layers, R"(,"n_head":)", shape.heads, R"(,"n_inner":)", n, R"(,"n_positions":)",
      shape.positions, R"(,"activation_function":"gelu_new"})");
  at::manual_seed(seed);
  std::map<std::string, at::Tensor> t;
  t["wte.weight"] = Normal({v, d});
  t["wpe.weight"] = Normal({shape.positions, d}) / 2;
  for (int64_t l = 0; l < shape.layers; ++l) {
    const std::string p = absl::StrCat("h.", l, ".");
    t[p + "ln_1.weight"] = at::ones({d});
    t[p + "ln_1.bias"] = at::zeros({d});
    t[p + "attn.c_attn.weight"] = Normal({d, 3 * d});
    t[p + "attn.c_attn.bias"] = at::zeros({3 * d});
    t[p + "attn.c_proj.weight"] = Normal({d, d});
    t[p + "attn.c_proj.bias"] = at::zeros({d});
    t[p + "ln_2.weight"] = at::ones({d});
    t[p + "ln_2.bias"] = at::zeros({d});
    t[p + "mlp.c_fc.weight"] = Normal({d, n});
    t[p + "mlp.c_fc.bias"] = at::zeros({n});
    t[p + "mlp.c_proj.weight"] = Normal({n, d});
    t[p + "mlp.c_proj.bias"] = at::zeros({d});
  }
  t["ln_f.weight"] = at::ones({d});
  t["ln_f.bias"] = at::zeros({d});
  return WriteSafetensorsFile(dir + "/model.safetensors", t);
}

absl::Status WriteRandomLlama(const std::string& dir, const RandomLlamaShape& shape,
                              uint64_t seed) {
  const int64_t v = shape.vocab, d = shape.d_model, n = shape.ffn;
  const int64_t kv_dim = d / shape.heads * shape.kv_heads;
  WriteLlamaConfig(dir, shape, /*torch_dtype=*/"");
  at::manual_seed(seed);
  std::map<std::string, at::Tensor> t;
  t["model.embed_tokens.weight"] = Normal({v, d});
  for (int64_t l = 0; l < shape.layers; ++l) {
    const std::string p = absl::StrCat("model.layers.", l, ".");
    t[p + "input_layernorm.weight"] = at::ones({d});
    t[p + "self_attn.q_proj.weight"] = Normal({d, d});
    t[p + "self_attn.k_proj.weight"] = Normal({kv_dim, d});
    t[p + "self_attn.v_proj.weight"] = Normal({kv_dim, d});
    t[p + "self_attn.o_proj.weight"] = Normal({d, d});
    t[p + "post_attention_layernorm.weight"] = at::ones({d});
    t[p + "mlp.gate_proj.weight"] = Normal({n, d});
    t[p + "mlp.up_proj.weight"] = Normal({n, d});
    t[p + "mlp.down_proj.weight"] = Normal({d, n});
  }
  t["model.norm.weight"] = at::ones({d});
  t["lm_head.weight"] = Normal({v, d});
  return WriteSafetensorsFile(dir + "/model.safetensors", t);
}

absl::Status WriteRandomLlamaStreamed(const std::string& dir, const RandomLlamaShape& shape,
                                      uint64_t seed, DType dtype) {
  const std::map<DType, std::pair<at::ScalarType, const char*>> kTypes = {
      {DType::kF32, {at::kFloat, "float32"}},
      {DType::kF16, {at::kHalf, "float16"}},
      {DType::kBF16, {at::kBFloat16, "bfloat16"}}};
  const auto type = kTypes.find(dtype);
  if (type == kTypes.end()) return absl::InvalidArgumentError("dtype must be F32, F16 or BF16");
  const int64_t v = shape.vocab, d = shape.d_model, n = shape.ffn;
  const int64_t kv_dim = d / shape.heads * shape.kv_heads;
  // Name -> (shape, random: N(0, 0.02²), else ones), in file order.
  std::map<std::string, std::pair<std::vector<int64_t>, bool>> tensors;
  tensors["model.embed_tokens.weight"] = {{v, d}, true};
  for (int64_t l = 0; l < shape.layers; ++l) {
    const std::string p = absl::StrCat("model.layers.", l, ".");
    tensors[p + "input_layernorm.weight"] = {{d}, false};
    tensors[p + "self_attn.q_proj.weight"] = {{d, d}, true};
    tensors[p + "self_attn.k_proj.weight"] = {{kv_dim, d}, true};
    tensors[p + "self_attn.v_proj.weight"] = {{kv_dim, d}, true};
    tensors[p + "self_attn.o_proj.weight"] = {{d, d}, true};
    tensors[p + "post_attention_layernorm.weight"] = {{d}, false};
    tensors[p + "mlp.gate_proj.weight"] = {{n, d}, true};
    tensors[p + "mlp.up_proj.weight"] = {{n, d}, true};
    tensors[p + "mlp.down_proj.weight"] = {{d, n}, true};
  }
  tensors["model.norm.weight"] = {{d}, false};
  tensors["lm_head.weight"] = {{v, d}, true};

  WriteLlamaConfig(dir, shape, type->second.second);
  std::vector<TensorToWrite> stream;
  for (const auto& [name, spec] : tensors) {
    const auto& [dims, random] = spec;
    const at::ScalarType dtype = type->second.first;
    stream.push_back({name, dtype, dims, [dims = dims, random = random, dtype] {
                        return (random ? Normal(dims) : at::ones(dims)).to(dtype);
                      }});
  }
  at::manual_seed(seed);
  return WriteSafetensorsStream(dir + "/model.safetensors", stream);
}

}  // namespace factlens::testing
