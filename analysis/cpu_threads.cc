#include "analysis/cpu_threads.h"

#include <ATen/Parallel.h>
#include <ATen/Utils.h>
#include <ATen/Version.h>
#include <dlfcn.h>
#include <stdlib.h>
#include <unistd.h>

#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_join.h"

namespace factlens {

void ConfigureCpuThreads(int threads) {
  // Large CPU tensors (2 MiB and up) on transparent huge pages, unless the environment says
  // otherwise: libtorch reads THP_MEM_ALLOC_ENABLE once, at its first allocation. A model with
  // bfloat16 / float16 weights widens each matrix to a fresh float32 tensor as the forward pass
  // uses it; on 4 KiB pages filling one (180 MB for a Llama-7B FFN matrix) costs ~44k page faults,
  // 4x the conversion itself (bench/RESULTS.md, "A 7B model on a CPU box").
  setenv("THP_MEM_ALLOC_ENABLE", "1", /*overwrite=*/0);
  if (threads <= 0) {
    // OMP_NUM_THREADS, where set, is libtorch's own default: keep it (scripts/test.sh gives each of
    // its concurrent tests a share of the cores this way).
    const char* omp_threads = getenv("OMP_NUM_THREADS");
    if (omp_threads != nullptr && atoi(omp_threads) > 0) return;
    threads = static_cast<int>(sysconf(_SC_NPROCESSORS_ONLN));
  }
  if (threads <= 0) threads = 1;
  at::set_num_threads(threads);
}

void ReleaseCpuThreads() {
  // Looked up at run time in the OpenMP runtime libtorch brought (torch/lib/libgomp.so.1 for the
  // PyPI wheel), so that the build does not link a second one. omp_pause_soft is 1 (OpenMP 5.0).
  using PauseResourceAll = int (*)(int kind);
  static const PauseResourceAll pause_resource_all =
      reinterpret_cast<PauseResourceAll>(dlsym(RTLD_DEFAULT, "omp_pause_resource_all"));
  constexpr int kOmpPauseSoft = 1;
  if (pause_resource_all != nullptr) pause_resource_all(kOmpPauseSoft);
}

std::string CpuMathLibraries() {
  // Lines of at::show_config() such as
  //   "  - Intel(R) oneAPI Math Kernel Library Version 2024.2-Product Build 20240605 for ..."
  //   "  - Intel(R) MKL-DNN v3.10.2 (Git Hash ...)"
  //   "  - CPU capability usage: AVX2"
  std::istringstream config(at::show_config());
  std::vector<std::string> parts;
  auto word_after = [](const std::string& line, const std::string& marker) {
    const size_t at = line.find(marker);
    if (at == std::string::npos) return std::string();
    const std::string rest = line.substr(at + marker.size());
    return rest.substr(0, rest.find_first_of(" -("));
  };
  for (std::string line; std::getline(config, line);) {
    if (std::string v = word_after(line, "Math Kernel Library Version "); !v.empty()) {
      parts.push_back("MKL " + v);
    } else if (std::string v = word_after(line, "MKL-DNN "); !v.empty()) {
      parts.push_back("oneDNN " + v);
    } else if (std::string v = word_after(line, "CPU capability usage: "); !v.empty()) {
      parts.push_back("CPU capability " + v);
    }
  }
  return parts.empty() ? "unknown" : absl::StrJoin(parts, ", ");
}

}  // namespace factlens
