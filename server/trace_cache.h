// Per-model cache of full forward traces, so that a notebook's Decompose, Rank, Trace and
// ProjectToVocab calls on one prompt share one forward pass (DESIGN "cache per request").
#ifndef FACTLENS_SERVER_TRACE_CACHE_H_
#define FACTLENS_SERVER_TRACE_CACHE_H_

#include <cstdint>
#include <functional>
#include <list>
#include <map>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "analysis/forward.h"

namespace factlens {

// Bytes held by a trace's tensors (views of one storage counted once per tensor).
int64_t TraceBytes(const ForwardTrace& trace);

// A least-recently-used cache of traces keyed by token ids, bounded by the bytes of the traces
// it holds (0 disables it). Cached traces are shared read-only. Thread-safe.
class TraceCache {
 public:
  explicit TraceCache(int64_t max_bytes) : max_bytes_(max_bytes) {}

  // The trace of `ids`: the cached one, else `compute()`'s (run outside the lock; two concurrent
  // misses on one prompt both compute), stored unless larger than the whole budget. Errors of
  // `compute` are returned and not cached.
  absl::StatusOr<std::shared_ptr<const ForwardTrace>> GetOrCompute(
      const std::vector<int64_t>& ids,
      const std::function<absl::StatusOr<ForwardTrace>()>& compute);

  struct Stats {
    int64_t hits = 0, misses = 0, entries = 0, bytes = 0;  // entries: counted when read
  };
  Stats stats() const;

 private:
  struct Entry {
    std::vector<int64_t> ids;
    std::shared_ptr<const ForwardTrace> trace;
    int64_t bytes = 0;
  };
  const int64_t max_bytes_;
  mutable absl::Mutex mu_;
  std::list<Entry> entries_ ABSL_GUARDED_BY(mu_);  // most recently used first
  std::map<std::vector<int64_t>, std::list<Entry>::iterator> index_ ABSL_GUARDED_BY(mu_);
  Stats stats_ ABSL_GUARDED_BY(mu_);
};

}  // namespace factlens

#endif  // FACTLENS_SERVER_TRACE_CACHE_H_
