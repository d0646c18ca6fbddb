// random_checkpoint: writes a random Llama checkpoint of a real shape (config.json +
// model.safetensors, HF layout) in float16, bfloat16 or float32, one tensor at a time, for
// measuring loads and forward passes of models too large to write from memory (the Llama-7B shape
// in float16 is 13.5 GB; bench/RESULTS.md, "A 7B model on a CPU box"). The caller removes it.
//
//   random_checkpoint --out build/bench/llama-7b-fp16 [--shape llama-7b] [--dtype float16]
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>

#include "bench/flags.h"
#include "tests/support/random_gpt2.h"

int main(int argc, char** argv) {
  std::string out, shape_name = "llama-7b", dtype_name = "float16";
  uint64_t seed = 1;
  for (factlens::FlagReader flags(argc, argv); flags.Next();) {
    if (flags.Is("--help") || flags.Is("-h")) {
      std::printf(
          "random_checkpoint: a random Llama checkpoint of a real shape, written one tensor at a\n"
          "time (memory: one tensor).\n"
          "  --out DIR       where to write config.json and model.safetensors (required)\n"
          "  --shape NAME    llama-7b (32 x 4096, 32 heads, FFN 11008, vocab 32000; default) or\n"
          "                  tinyllama (22 x 2048, GQA 32/4, FFN 5632, vocab 32000)\n"
          "  --dtype NAME    float16 (default), bfloat16 or float32\n"
          "  --seed N        weights (default 1)\n");
      return 0;
    }
    if (const char* v = flags.Value("--out")) {
      out = v;
    } else if (const char* v = flags.Value("--shape")) {
      shape_name = v;
    } else if (const char* v = flags.Value("--dtype")) {
      dtype_name = v;
    } else if (const char* v = flags.Value("--seed")) {
      seed = std::strtoull(v, nullptr, 10);
    } else {
      std::fprintf(stderr, "random_checkpoint: unknown argument '%s' (see --help)\n", flags.arg());
      return 2;
    }
  }
  const std::map<std::string, factlens::DType> dtypes = {{"float16", factlens::DType::kF16},
                                                         {"bfloat16", factlens::DType::kBF16},
                                                         {"float32", factlens::DType::kF32}};
  factlens::testing::RandomLlamaShape shape;  // TinyLlama-1.1B
  if (shape_name == "llama-7b") {
    shape.d_model = 4096;
    shape.layers = 32;
    shape.heads = 32;
    shape.kv_heads = 32;
    shape.ffn = 11008;
    shape.positions = 4096;
  } else if (shape_name != "tinyllama") {
    std::fprintf(stderr, "random_checkpoint: unknown --shape '%s'\n", shape_name.c_str());
    return 2;
  }
  if (out.empty() || dtypes.count(dtype_name) == 0) {
    std::fprintf(stderr,
                 "random_checkpoint: --out is required; --dtype is float16, bfloat16 or "
                 "float32 (see --help)\n");
    return 2;
  }
  const absl::Status written =
      factlens::testing::WriteRandomLlamaStreamed(out, shape, seed, dtypes.at(dtype_name));
  if (!written.ok()) {
    std::fprintf(stderr, "random_checkpoint: %s\n", std::string(written.message()).c_str());
    return 1;
  }
  std::printf("wrote %s/model.safetensors (%s, %s)\n", out.c_str(), shape_name.c_str(),
              dtype_name.c_str());
  return 0;
}
