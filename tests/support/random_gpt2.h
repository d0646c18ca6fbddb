// Randomly initialised GPT-2 checkpoints (config.json + model.safetensors in HF layout) for tests
// and benchmarks that need a model of a given shape but not a trained one.
#ifndef FACTLENS_TESTS_SUPPORT_RANDOM_GPT2_H_
#define FACTLENS_TESTS_SUPPORT_RANDOM_GPT2_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"

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

}  // namespace factlens::testing

#endif  // FACTLENS_TESTS_SUPPORT_RANDOM_GPT2_H_
