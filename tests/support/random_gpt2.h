// Randomly initialised GPT-2 and Llama checkpoints (config.json + model.safetensors in HF layout)
// for tests and benchmarks that need a model of a given shape but not a trained one.
#ifndef FACTLENS_TESTS_SUPPORT_RANDOM_GPT2_H_
#define FACTLENS_TESTS_SUPPORT_RANDOM_GPT2_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "analysis/safetensors.h"

namespace factlens::testing {

struct RandomGpt2Shape {
  int64_t vocab = 50257;
  int64_t d_model = 1024;
  int64_t layers = 24;
  int64_t heads = 16;
  int64_t ffn = 4096;  // GPT-2 always uses 4·d_model; other widths set n_inner
  int64_t positions = 1024;
};

// Writes a GPT-2 checkpoint of `shape` into `dir` (created if needed): weights N(0, 0.02²) drawn
// from libtorch's generator seeded with `seed`, norms at identity, biases zero. Same seed and
// shape, same files. Not thread-safe (reseeds the global generator).
absl::Status WriteRandomGpt2(const std::string& dir, const RandomGpt2Shape& shape, uint64_t seed);

// TinyLlama-1.1B's shape by default (grouped-query attention 32/4, untied output layer).
struct RandomLlamaShape {
  int64_t vocab = 32000;
  int64_t d_model = 2048;
  int64_t layers = 22;
  int64_t heads = 32;
  int64_t kv_heads = 4;
  int64_t ffn = 5632;
  int64_t positions = 2048;
};

// Writes a float32 Llama checkpoint of `shape` into `dir` like WriteRandomGpt2: projections
// N(0, 0.02²), RMSNorm weights at identity. Same seed and shape, same files. Not thread-safe.
absl::Status WriteRandomLlama(const std::string& dir, const RandomLlamaShape& shape, uint64_t seed);

// Writes a Llama checkpoint of `shape` like WriteRandomLlama, with its tensors in `dtype` (F32, F16
// or BF16), one tensor at a time: memory holds one tensor, so a Llama-7B shape (13.5 GB in F16)
// can be written on a machine that could not hold it twice. Values are drawn tensor by tensor in
// the file's (name) order from `seed`, so they differ from WriteRandomLlama's; same seed, shape
// and dtype, same files. Not thread-safe.
absl::Status WriteRandomLlamaStreamed(const std::string& dir, const RandomLlamaShape& shape,
                                      uint64_t seed, DType dtype);

}  // namespace factlens::testing

#endif  // FACTLENS_TESTS_SUPPORT_RANDOM_GPT2_H_
