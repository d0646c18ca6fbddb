// CPU throughput of the BLAS libtorch uses, and forward-pass latency on the demo models.
// Run: build/bench/forward_bench  (libtorch's CPU math libraries are printed in the context).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <benchmark/benchmark.h>

#include <string>
#include <vector>

#include "analysis/cpu_threads.h"
#include "analysis/forward.h"
#include "analysis/weights.h"

namespace factlens {
namespace {

// The 512×1024×8192 fp32 matmul of STACK-NOTES (2.7 GFLOP/s on netlib, ~118 on BLIS, 2 cores).
void BM_Matmul(benchmark::State& state) {
  const at::Tensor a = at::randn({512, 1024});
  const at::Tensor b = at::randn({1024, 8192});
  for (auto _ : state) benchmark::DoNotOptimize(at::matmul(a, b));
  state.counters["GFLOP/s"] =
      benchmark::Counter(2.0 * 512 * 1024 * 8192, benchmark::Counter::kIsIterationInvariantRate,
                         benchmark::Counter::kIs1000);
}
BENCHMARK(BM_Matmul)->Unit(benchmark::kMillisecond)->UseRealTime();

void BM_ForwardFullCapture(benchmark::State& state, const std::string& model_dir,
                           std::vector<int64_t> ids) {
  absl::StatusOr<std::shared_ptr<const Model>> model =
      Model::Load(std::string(FACTLENS_SOURCE_DIR) + "/" + model_dir);
  if (!model.ok()) {
    state.SkipWithError(std::string(model.status().message()).c_str());
    return;
  }
  CaptureOptions capture;
  capture.ffn_coefficients = capture.head_outputs = capture.attention_probs = capture.values = true;
  for (auto _ : state) benchmark::DoNotOptimize(Forward(**model, ids, capture));
}
BENCHMARK_CAPTURE(BM_ForwardFullCapture, gpt2_facts_tiny, "models/gpt2-facts-tiny",
                  std::vector<int64_t>{464, 3139, 286, 4881, 318})
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();
BENCHMARK_CAPTURE(BM_ForwardFullCapture, llama_facts_tiny, "models/llama-facts-tiny",
                  std::vector<int64_t>{1, 415, 5565, 302, 4843, 349})
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();

}  // namespace
}  // namespace factlens

int main(int argc, char** argv) {
  factlens::ConfigureCpuThreads(0);
  at::matmul(at::ones({2, 2}), at::ones({2, 2}));  // loads the BLAS so the context can name it
  benchmark::AddCustomContext("cpu_math", factlens::CpuMathLibraries());
  benchmark::AddCustomContext("torch_threads", std::to_string(at::get_num_threads()));
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
