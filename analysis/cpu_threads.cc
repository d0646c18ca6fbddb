#include "analysis/cpu_threads.h"

#include <ATen/Parallel.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <string>

namespace factlens {

void ConfigureCpuThreads(int threads) {
  if (threads <= 0) threads = static_cast<int>(sysconf(_SC_NPROCESSORS_ONLN));
  if (threads <= 0) threads = 1;
  setenv("BLIS_NUM_THREADS", std::to_string(threads).c_str(), /*overwrite=*/0);
  at::set_num_threads(threads);
}

std::string LoadedBlasLibrary() {
  std::ifstream maps("/proc/self/maps");
  std::string line;
  while (std::getline(maps, line)) {
    const size_t slash = line.find('/');
    if (slash != std::string::npos && line.find("libblas.so") != std::string::npos) {
      std::string path = line.substr(slash);
      char resolved[4096];
      return realpath(path.c_str(), resolved) != nullptr ? std::string(resolved) : path;
    }
  }
  return "not loaded";
}

}  // namespace factlens
