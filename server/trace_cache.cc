#include "server/trace_cache.h"

#include <ATen/ATen.h>

namespace factlens {

int64_t TraceBytes(const ForwardTrace& trace) {
  int64_t bytes = 0;
  auto add = [&bytes](const at::Tensor& t) {
    if (t.defined()) bytes += static_cast<int64_t>(t.nbytes());
  };
  for (const LayerTrace& layer : trace.layers) {
    for (const at::Tensor* t :
         {&layer.residual_in, &layer.attn_out, &layer.residual_mid, &layer.ffn_out,
          &layer.ffn_coefficients, &layer.head_outputs, &layer.attention_probs, &layer.values}) {
      add(*t);
    }
  }
  add(trace.embedding);
  add(trace.final_residual);
  add(trace.logits);
  return bytes;
}

absl::StatusOr<std::shared_ptr<const ForwardTrace>> TraceCache::GetOrCompute(
    const std::vector<int64_t>& ids, const std::function<absl::StatusOr<ForwardTrace>()>& compute) {
  {
    absl::MutexLock lock(&mu_);
    if (const auto it = index_.find(ids); it != index_.end()) {
      entries_.splice(entries_.begin(), entries_, it->second);
      ++stats_.hits;
      return it->second->trace;
    }
    ++stats_.misses;
  }
  absl::StatusOr<ForwardTrace> computed = compute();
  if (!computed.ok()) return computed.status();
  auto trace = std::make_shared<const ForwardTrace>(*std::move(computed));
  const int64_t bytes = TraceBytes(*trace);
  absl::MutexLock lock(&mu_);
  if (bytes > max_bytes_ || index_.count(ids) > 0) return trace;
  entries_.push_front({ids, trace, bytes});
  index_[ids] = entries_.begin();
  stats_.bytes += bytes;
  while (stats_.bytes > max_bytes_) {
    const Entry& oldest = entries_.back();
    stats_.bytes -= oldest.bytes;
    index_.erase(oldest.ids);
    entries_.pop_back();
  }
  return trace;
}

TraceCache::Stats TraceCache::stats() const {
  absl::MutexLock lock(&mu_);
  Stats stats = stats_;
  stats.entries = static_cast<int64_t>(entries_.size());
  return stats;
}

}  // namespace factlens
