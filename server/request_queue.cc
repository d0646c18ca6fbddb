#include "server/request_queue.h"

#include "absl/strings/str_cat.h"

namespace factlens {

Slot::~Slot() {
  if (queue_ != nullptr) queue_->Release();
}

absl::StatusOr<Slot> RequestQueue::Acquire(absl::Time deadline,
                                           const std::function<bool()>& cancelled) {
  const absl::Time start = absl::Now();
  absl::MutexLock lock(&mu_);
  if (running_ < max_concurrent_ && waiting_ == 0) {
    ++running_;
    return Slot(this, absl::ZeroDuration());
  }
  if (waiting_ >= max_queued_) {
    return absl::ResourceExhaustedError(absl::StrCat("the model's queue is full (", running_,
                                                     " running, ", waiting_,
                                                     " waiting); retry later with backoff"));
  }
  ++waiting_;
  const absl::Condition slot_free(
      +[](RequestQueue* q)
           ABSL_NO_THREAD_SAFETY_ANALYSIS { return q->running_ < q->max_concurrent_; },
      this);
  while (true) {
    const absl::Time now = absl::Now();
    if (slot_free.Eval()) break;
    if (now >= deadline) {
      --waiting_;
      return absl::DeadlineExceededError("the deadline passed while the request was queued");
    }
    if (cancelled && cancelled()) {
      --waiting_;
      return absl::CancelledError("the client cancelled while the request was queued");
    }
    mu_.AwaitWithDeadline(slot_free, std::min(deadline, now + absl::Milliseconds(20)));
  }
  --waiting_;
  ++running_;
  return Slot(this, absl::Now() - start);
}

void RequestQueue::Release() {
  absl::MutexLock lock(&mu_);
  --running_;
}

int RequestQueue::running() const {
  absl::MutexLock lock(&mu_);
  return running_;
}

int RequestQueue::waiting() const {
  absl::MutexLock lock(&mu_);
  return waiting_;
}

}  // namespace factlens
