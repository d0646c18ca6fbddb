// Parity of one forward pass with Hugging Face transformers' recorded tensors
// (tests/data/hf-reference), on any device and compute dtype: shared by the CPU suite
// (forward_parity_test.cc) and the GPU suite (gpu_test.cc). Tolerances, by compute dtype:
//
// - float64: max |ours − HF| ≤ 2e-5 × max(1, max |HF|) per tensor. Our side is exact to ~1e-15
//   relative on any CPU or GPU (and its float32 trace adds one rounding, 2^-24 relative), so what
//   is measured is HF's own float32 rounding — fixed data, the same on every machine: at most 4e-6
//   relative when measured. A wrong formula (missing bias, wrong scale, un-rotated key) errs by
//   1e-2 or more.
// - float32 (what the server runs), derived from float32 error analysis rather than measured on one
//   machine: each of the 6L + 1 chained matrix products (q/k/v, scores, probs·v, output projection,
//   FFN in, FFN out per layer; the unembedding) is a sum of at most n = max(d, d_ffn, T) products
//   and errs by at most n·2^-24 of its magnitude in any summation order (Higham); the norms rescale
//   errors with the values. Both sides err that way: 2·(6L + 1)·n·2^-24 × max(1, max |HF|)
//   (4.3e-4 relative for gpt2-tiny). It holds on a GPU too because factlens keeps TF32 off.
// - bfloat16 / float16: stated, not derived. On a GPU (the serving dtypes) every op's inputs and
//   outputs are rounded to the dtype (unit u = 2^-8 bf16, 2^-11 fp16) while products accumulate in
//   float32 (reduced-precision reductions are turned off at load), so to first order each of the
//   6L + 1 products contributes about 2u of its magnitude: 2·(6L + 1)·u × max(1, max |HF|) (0.1
//   relative for a 2-layer model in bf16). On CPU the dtype is the weights' only (float32 compute):
//   just the weight matrices are rounded, once each, so the same bound holds with room. Checks that
//   the low-precision path computes the same function, not that it is as accurate as float32; the
//   argmax must agree too.
#ifndef FACTLENS_TESTS_HF_PARITY_H_
#define FACTLENS_TESTS_HF_PARITY_H_

#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>

#include <string>

#include "nlohmann/json.hpp"

namespace factlens::testing {

// Expects max |actual − expected| ≤ relative_tolerance × max(1, max |expected|) and prints the
// measured error (which the closing notes quote). Reports through GoogleTest.
void ExpectClose(const at::Tensor& actual, const at::Tensor& expected, const std::string& what,
                 double relative_tolerance);

// tests/data/hf-reference/<model>/reference.json.
nlohmann::json ReadReferenceJson(const std::string& model);

// Loads tests/data/hf-reference/<model> on `device` in `dtype`, runs case `index` with every
// capture on, and compares every forward.* tensor of the case's reference file (plus the argmax it
// records) within the tolerance of `dtype` above, printing each tensor's measured error. Reports
// failures through GoogleTest (call it inside a test).
void CompareWithHuggingFace(const std::string& model, int index, c10::ScalarType dtype,
                            const std::string& device = "cpu");

}  // namespace factlens::testing

#endif  // FACTLENS_TESTS_HF_PARITY_H_
