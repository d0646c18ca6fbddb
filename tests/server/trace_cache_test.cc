// TraceCache: hits share one trace, the byte budget evicts the least recently used, and neither
// errors nor traces larger than the budget are kept.
#include "server/trace_cache.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

namespace factlens {
namespace {

// A trace whose only tensor holds `floats` float32 values.
ForwardTrace TraceOf(int64_t floats) {
  ForwardTrace trace;
  trace.logits = at::zeros({floats}, at::kFloat);
  return trace;
}

TEST(TraceCacheTest, TraceBytesCountsEveryTensor) {
  ForwardTrace trace = TraceOf(10);
  trace.layers.resize(2);
  trace.layers[1].attention_probs = at::zeros({2, 3}, at::kDouble);
  EXPECT_EQ(TraceBytes(trace), 10 * 4 + 6 * 8);
}

TEST(TraceCacheTest, ASecondLookupSharesTheFirstTrace) {
  TraceCache cache(1000);
  int computed = 0;
  auto compute = [&] {
    ++computed;
    return absl::StatusOr<ForwardTrace>(TraceOf(10));
  };
  auto first = cache.GetOrCompute({1, 2, 3}, compute);
  auto second = cache.GetOrCompute({1, 2, 3}, compute);
  ASSERT_TRUE(first.ok() && second.ok());
  EXPECT_EQ(first->get(), second->get());
  EXPECT_EQ(computed, 1);
  auto other = cache.GetOrCompute({1, 2}, compute);  // a prefix is another prompt
  ASSERT_TRUE(other.ok());
  EXPECT_NE(other->get(), first->get());
  const TraceCache::Stats stats = cache.stats();
  EXPECT_EQ(stats.hits, 1);
  EXPECT_EQ(stats.misses, 2);
  EXPECT_EQ(stats.entries, 2);
  EXPECT_EQ(stats.bytes, 80);
}

TEST(TraceCacheTest, TheBudgetEvictsTheLeastRecentlyUsed) {
  TraceCache cache(100);  // two traces of 40 bytes fit, three do not
  auto compute = [] { return absl::StatusOr<ForwardTrace>(TraceOf(10)); };
  ASSERT_TRUE(cache.GetOrCompute({1}, compute).ok());
  ASSERT_TRUE(cache.GetOrCompute({2}, compute).ok());
  ASSERT_TRUE(cache.GetOrCompute({1}, compute).ok());  // {1} is now the most recent
  ASSERT_TRUE(cache.GetOrCompute({3}, compute).ok());  // evicts {2}
  EXPECT_EQ(cache.stats().bytes, 80);
  ASSERT_TRUE(cache.GetOrCompute({1}, compute).ok());
  ASSERT_TRUE(cache.GetOrCompute({3}, compute).ok());
  EXPECT_EQ(cache.stats().hits, 3);
  ASSERT_TRUE(cache.GetOrCompute({2}, compute).ok());
  EXPECT_EQ(cache.stats().misses, 4);
}

TEST(TraceCacheTest, ErrorsAndOversizedTracesAreNotKept) {
  TraceCache cache(100);
  int computed = 0;
  auto failing = [&] {
    ++computed;
    return absl::StatusOr<ForwardTrace>(absl::InvalidArgumentError("bad ids"));
  };
  EXPECT_EQ(cache.GetOrCompute({7}, failing).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(cache.GetOrCompute({7}, failing).ok());
  EXPECT_EQ(computed, 2);
  auto huge = cache.GetOrCompute({8}, [] { return absl::StatusOr<ForwardTrace>(TraceOf(100)); });
  ASSERT_TRUE(huge.ok());
  EXPECT_EQ((*huge)->logits.numel(), 100);  // returned, not stored
  EXPECT_EQ(cache.stats().entries, 0);
  EXPECT_EQ(cache.stats().bytes, 0);
  TraceCache disabled(0);
  auto compute = [] { return absl::StatusOr<ForwardTrace>(TraceOf(1)); };
  ASSERT_TRUE(disabled.GetOrCompute({1}, compute).ok());
  ASSERT_TRUE(disabled.GetOrCompute({1}, compute).ok());
  EXPECT_EQ(disabled.stats().hits, 0);
}

}  // namespace
}  // namespace factlens
