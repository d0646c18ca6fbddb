// The CPU thread set-up (analysis/cpu_threads.h): ReleaseCpuThreads ends the calling thread's
// OpenMP workers, so that an idle team does not stay behind on a thread that served a request.
#include "analysis/cpu_threads.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <iterator>
#include <string>
#include <thread>

namespace factlens {
namespace {

// Threads of this process, from /proc/self/task.
int ProcessThreads() {
  const std::filesystem::directory_iterator tasks("/proc/self/task");
  return static_cast<int>(
      std::distance(std::filesystem::begin(tasks), std::filesystem::end(tasks)));
}

// A libtorch kernel that runs as an OpenMP parallel region of every intra-op thread (the
// parallel_for inside libtorch: a template compiled here, without OpenMP, would run serially).
double ParallelSum() { return at::ones({int64_t{1} << 22}, at::kDouble).sum().item<double>(); }

bool UsesOpenMp() {
  return at::get_parallel_info().find("ATen parallel backend: OpenMP") != std::string::npos;
}

TEST(ReleaseCpuThreadsTest, EndsTheCallingThreadsOpenMpWorkers) {
  if (!UsesOpenMp()) GTEST_SKIP() << "this libtorch does not use OpenMP";
  at::set_num_threads(3);
  int before = 0, with_team = 0, released = 0;
  std::thread request([&] {
    before = ProcessThreads();
    EXPECT_EQ(ParallelSum(), 1 << 22);  // this thread and two workers, kept for the next region
    with_team = ProcessThreads();
    ReleaseCpuThreads();
    released = ProcessThreads();
  });
  request.join();
  EXPECT_EQ(with_team, before + 2) << "the parallel region did not start two workers";
  EXPECT_EQ(released, before) << "the workers outlived ReleaseCpuThreads";
}

TEST(ReleaseCpuThreadsTest, IsHarmlessWithoutATeamAndBeforeTheNextRegion) {
  at::set_num_threads(2);
  ReleaseCpuThreads();  // no team on this thread yet
  EXPECT_EQ(ParallelSum(), 1 << 22);
  ReleaseCpuThreads();
  const int without_team = ProcessThreads();
  EXPECT_EQ(ParallelSum(), 1 << 22);  // a new team
  if (UsesOpenMp()) EXPECT_EQ(ProcessThreads(), without_team + 1);
}

}  // namespace
}  // namespace factlens
