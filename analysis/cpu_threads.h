// CPU thread set-up shared by every factlens binary.
#ifndef FACTLENS_ANALYSIS_CPU_THREADS_H_
#define FACTLENS_ANALYSIS_CPU_THREADS_H_

#include <string>

namespace factlens {

// Sets libtorch's intra-op threads (OpenMP, and MKL's with them) to `threads` (0 = the
// environment's OMP_NUM_THREADS where it is a positive number, else one per core),
// and puts large CPU tensors on transparent huge pages (THP_MEM_ALLOC_ENABLE=1 unless the
// environment sets it). Call once at start-up, before any tensor work. Not thread-safe.
void ConfigureCpuThreads(int threads);

// The CPU math libraries inside this libtorch and the kernels it dispatches to, e.g.
// "MKL 2024.2, oneDNN v3.10.2, CPU capability AVX2" (from at::show_config()). Thread-safe.
std::string CpuMathLibraries();

}  // namespace factlens

#endif  // FACTLENS_ANALYSIS_CPU_THREADS_H_
