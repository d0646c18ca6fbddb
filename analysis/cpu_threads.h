// CPU thread set-up shared by every factlens binary.
#ifndef FACTLENS_ANALYSIS_CPU_THREADS_H_
#define FACTLENS_ANALYSIS_CPU_THREADS_H_

#include <string>

namespace factlens {

// Sets libtorch's intra-op threads to `threads` (0 = one per core) and, unless the environment
// already says otherwise, BLIS_NUM_THREADS to the same number: BLIS, the BLAS the set-up script
// selects, runs single-threaded without it. Call once at start-up, before any tensor work.
// Not thread-safe (it edits the environment).
void ConfigureCpuThreads(int threads);

// The file libblas.so.3 resolves to in this process (e.g. ".../blis-pthread/libblas.so.3"), or
// "not loaded". Thread-safe.
std::string LoadedBlasLibrary();

}  // namespace factlens

#endif  // FACTLENS_ANALYSIS_CPU_THREADS_H_
