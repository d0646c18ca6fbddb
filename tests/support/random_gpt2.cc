#include "tests/support/random_gpt2.h"

#include <ATen/ATen.h>

#include <filesystem>
#include <fstream>
#include <map>

#include "absl/strings/str_cat.h"
#include "analysis/tensor_io.h"

namespace factlens::testing {

absl::Status WriteRandomGpt2(const std::string& dir, const RandomGpt2Shape& shape, uint64_t seed) {
  const int64_t v = shape.vocab, d = shape.d_model, n = shape.ffn;
  std::filesystem::create_directories(dir);
  std::ofstream(dir + "/config.json") << absl::StrCat(
      R"({"model_type":"gpt2","vocab_size":)", v, R"(,"n_embd":)", d, R"(,"n_layer":)",
      shape.layers, R"(,"n_head":)", shape.heads, R"(,"n_inner":)", n, R"(,"n_positions":)",
      shape.positions, R"(,"activation_function":"gelu_new"})");
  at::manual_seed(seed);
  std::map<std::string, at::Tensor> t;
  auto normal = [](std::vector<int64_t> dims) { return at::randn(dims) * 0.02; };
  t["wte.weight"] = normal({v, d});
  t["wpe.weight"] = normal({shape.positions, d}) / 2;
  for (int64_t l = 0; l < shape.layers; ++l) {
    const std::string p = absl::StrCat("h.", l, ".");
    t[p + "ln_1.weight"] = at::ones({d});
    t[p + "ln_1.bias"] = at::zeros({d});
    t[p + "attn.c_attn.weight"] = normal({d, 3 * d});
    t[p + "attn.c_attn.bias"] = at::zeros({3 * d});
    t[p + "attn.c_proj.weight"] = normal({d, d});
    t[p + "attn.c_proj.bias"] = at::zeros({d});
    t[p + "ln_2.weight"] = at::ones({d});
    t[p + "ln_2.bias"] = at::zeros({d});
    t[p + "mlp.c_fc.weight"] = normal({d, n});
    t[p + "mlp.c_fc.bias"] = at::zeros({n});
    t[p + "mlp.c_proj.weight"] = normal({n, d});
    t[p + "mlp.c_proj.bias"] = at::zeros({d});
  }
  t["ln_f.weight"] = at::ones({d});
  t["ln_f.bias"] = at::zeros({d});
  return WriteSafetensorsFile(dir + "/model.safetensors", t);
}

}  // namespace factlens::testing
