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

// Ends the calling thread's OpenMP worker threads (omp_pause_resource_all(omp_pause_soft) of the
// OpenMP runtime libtorch loaded; nothing where libtorch uses none). libgomp counts every thread
// that has run a parallel region and still keeps its workers; once that count exceeds the CPUs, it
// stops spinning between parallel regions and sleeps on futexes instead. A server whose requests
// run on changing gRPC threads left one idle team per thread, and each LocateFact then made ~3 400
// context switches instead of ~75 and took 5-14 % longer (bench/RESULTS.md). Call on a thread whose
// libtorch work is done, outside any parallel region; its next parallel region starts its workers
// again (microseconds per thread). Thread-safe.
void ReleaseCpuThreads();

// The CPU math libraries inside this libtorch and the kernels it dispatches to, e.g.
// "MKL 2024.2, oneDNN v3.10.2, CPU capability AVX2" (from at::show_config()). Thread-safe.
std::string CpuMathLibraries();

}  // namespace factlens

#endif  // FACTLENS_ANALYSIS_CPU_THREADS_H_
