// Wall-clock helpers of the bench tools.
#ifndef FACTLENS_BENCH_TIMING_H_
#define FACTLENS_BENCH_TIMING_H_

#include <algorithm>
#include <chrono>
#include <vector>

namespace factlens {

using SteadyClock = std::chrono::steady_clock;

// Seconds from `start` to now. Thread-safe.
inline double SecondsSince(SteadyClock::time_point start) {
  return std::chrono::duration<double>(SteadyClock::now() - start).count();
}

// The median of `values` (the upper one of an even count), 0 for none. Thread-safe.
inline double Median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  return values.empty() ? 0 : values[values.size() / 2];
}

}  // namespace factlens

#endif  // FACTLENS_BENCH_TIMING_H_
