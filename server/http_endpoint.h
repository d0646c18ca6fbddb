// The operations HTTP endpoint, on its own port (civetweb):
//   GET /metrics  200, Content-Type "text/plain; version=0.0.4; charset=utf-8", registry Render()
//   GET /healthz  200 "ok" while the process is alive (liveness)
//   GET /readyz   200 "ready" when the readiness callback says so, else 503 "not ready: <reason>"
// HEAD is answered like GET without a body; other methods get 405 (with "Allow: GET, HEAD"); other
// paths 404.

#ifndef FACTLENS_SERVER_HTTP_ENDPOINT_H_
#define FACTLENS_SERVER_HTTP_ENDPOINT_H_

#include <functional>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "server/metrics.h"

class CivetServer;  // civetweb's C++ server (CivetServer.h), kept out of this header.

namespace factlens {

struct HttpEndpointOptions {
  // civetweb worker threads (each serves one connection at a time).
  int num_threads = 2;
  // Per-request read/write timeout.
  int request_timeout_ms = 10000;
  // If set, civetweb also appends its error messages here (its "error_log_file" option).
  std::string error_log_file;
};

class HttpEndpoint {
 public:
  // Decides readiness. Returns true when ready; when not ready it may write a short reason to
  // `*reason` (never null). Called on civetweb worker threads, possibly concurrently: it must be
  // thread-safe and fast. Exceptions thrown by it are caught and answered with 500.
  using ReadinessCallback = std::function<bool(std::string* reason)>;

  // `registry` must outlive the endpoint (or at least its Stop()); `readiness` may be empty, which
  // means "always ready".
  HttpEndpoint(const MetricsRegistry* registry, ReadinessCallback readiness,
               HttpEndpointOptions options = {});
  ~HttpEndpoint();  // Stops the server if running.
  HttpEndpoint(const HttpEndpoint&) = delete;
  HttpEndpoint& operator=(const HttpEndpoint&) = delete;

  // Starts listening on `address`: "HOST:PORT" with HOST an IPv4 literal ("127.0.0.1",
  // "0.0.0.0") or a bracketed IPv6 literal ("[::1]"), or just "PORT" (all IPv4 interfaces). Port 0
  // picks a free port; port() then tells which. Returns the bound port.
  // Errors: InvalidArgument for a malformed address; FailedPrecondition if already started;
  // Unavailable when civetweb cannot start, with civetweb's own reason (e.g. "cannot bind to
  // 127.0.0.1:9090: 98 (Address already in use)") when it gave one.
  // Start/Stop/port may be called from any thread but Start/Stop are serialized internally.
  absl::StatusOr<int> Start(absl::string_view address);

  // Stops listening and joins civetweb's threads, after in-flight requests finish. Idempotent;
  // Start() may be called again. Takes milliseconds: it wakes civetweb's master thread, which
  // otherwise notices the stop only after its 2 s poll() (the "~2 s to stop" of STACK-NOTES).
  void Stop();

  // The bound port while running, else 0.
  int port() const;
  bool running() const;

 private:
  class Handler;

  const MetricsRegistry* registry_;
  ReadinessCallback readiness_;
  HttpEndpointOptions options_;
  std::unique_ptr<Handler> handler_;

  mutable absl::Mutex mu_;
  std::unique_ptr<::CivetServer> server_ ABSL_GUARDED_BY(mu_);
  int port_ ABSL_GUARDED_BY(mu_) = 0;
  std::string wake_host_ ABSL_GUARDED_BY(mu_);  // where Stop() connects to wake civetweb
};

}  // namespace factlens

#endif  // FACTLENS_SERVER_HTTP_ENDPOINT_H_
