// Admission control for one model: at most `max_concurrent` requests run, at most `max_queued`
// wait; a request beyond that is refused at once.
#ifndef FACTLENS_SERVER_REQUEST_QUEUE_H_
#define FACTLENS_SERVER_REQUEST_QUEUE_H_

#include <functional>
#include <memory>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace factlens {

class RequestQueue;

// A running request's slot; releases it when destroyed.
class Slot {
 public:
  Slot(Slot&& other) noexcept : queue_(other.queue_), queue_wait_(other.queue_wait_) {
    other.queue_ = nullptr;
  }
  Slot(const Slot&) = delete;
  Slot& operator=(const Slot&) = delete;
  ~Slot();
  absl::Duration queue_wait() const { return queue_wait_; }

 private:
  friend class RequestQueue;
  Slot(RequestQueue* queue, absl::Duration wait) : queue_(queue), queue_wait_(wait) {}
  RequestQueue* queue_;
  absl::Duration queue_wait_;
};

// Thread-safe. Must outlive every Slot it hands out.
class RequestQueue {
 public:
  RequestQueue(int max_concurrent, int max_queued)
      : max_concurrent_(max_concurrent), max_queued_(max_queued) {}

  // Waits for a slot. ResourceExhausted at once when `max_queued` requests already wait;
  // DeadlineExceeded when `deadline` passes while waiting; Cancelled when `cancelled()` turns true
  // (polled every 20 ms).
  absl::StatusOr<Slot> Acquire(absl::Time deadline, const std::function<bool()>& cancelled);

  int running() const;
  int waiting() const;

 private:
  friend class Slot;
  void Release();

  const int max_concurrent_, max_queued_;
  mutable absl::Mutex mu_;
  int running_ ABSL_GUARDED_BY(mu_) = 0;
  int waiting_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace factlens

#endif  // FACTLENS_SERVER_REQUEST_QUEUE_H_
