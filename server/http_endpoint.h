// The operations HTTP endpoint, on its own port:
//   GET /metrics  200, Content-Type "text/plain; version=0.0.4; charset=utf-8", registry Render()
//   GET /healthz  200 "ok" while the process is alive (liveness)
//   GET /readyz   200 "ready" when the readiness callback says so, else 503 "not ready: <reason>"
// HEAD is answered like GET without a body; other methods get 405 (with "Allow: GET, HEAD"); other
// paths 404; a malformed request 400, a request head over the size limit 431. One request per
// connection ("Connection: close"); a request body is ignored.
//
// A small HTTP/1.x server of our own: one thread running an epoll loop over non-blocking sockets,
// so a client that connects and then stays silent, sends slowly, or never reads its answer holds a
// connection (bounded in number and time) but never a thread: probes are answered at once however
// many such clients there are.

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

namespace factlens {

struct HttpEndpointOptions {
  // A connection must deliver its whole request head (request line and headers) within this time
  // of being accepted; otherwise it is closed without an answer.
  int header_timeout_ms = 5000;
  // A response must be written out within this time of being ready; otherwise the connection is
  // reset (a client that never reads cannot hold it longer).
  int write_timeout_ms = 10000;
  // The largest request head (request line, headers and the empty line after them) accepted; a
  // longer one is answered 431 and the connection closed.
  int max_header_bytes = 8192;
  // The most connections open at once. A connection arriving when all are in use makes room by
  // closing the one idle the longest (the least recent byte received or sent): accepting never
  // stops.
  int max_connections = 1024;
};

class HttpEndpoint {
 public:
  // Decides readiness. Returns true when ready; when not ready it may write a short reason to
  // `*reason` (never null). Called on the endpoint's one I/O thread, never concurrently with
  // itself, but concurrently with the rest of the program: it must be thread-safe, and fast (no
  // other request is served while it runs). It must not call Start() or Stop(). Exceptions thrown
  // by it are caught and answered with 500.
  using ReadinessCallback = std::function<bool(std::string* reason)>;

  // `registry` must outlive the endpoint (or at least its Stop()); `readiness` may be empty, which
  // means "always ready". Option values below 1 are replaced by 1.
  HttpEndpoint(const MetricsRegistry* registry, ReadinessCallback readiness,
               HttpEndpointOptions options = {});
  ~HttpEndpoint();  // Stops the server if running.
  HttpEndpoint(const HttpEndpoint&) = delete;
  HttpEndpoint& operator=(const HttpEndpoint&) = delete;

  // Starts listening on `address`: "HOST:PORT" with HOST an IPv4 literal ("127.0.0.1",
  // "0.0.0.0") or a bracketed IPv6 literal ("[::1]", "[::]": IPv6 only), or just "PORT" (all IPv4
  // interfaces). Port 0 picks a free port; port() then tells which. Returns the bound port.
  // SO_REUSEADDR is set (a restart is not refused for connections in TIME_WAIT), SO_REUSEPORT is
  // not: a port another socket listens on is refused.
  // Errors: InvalidArgument for a malformed address or a null registry; FailedPrecondition if
  // already started; Unavailable when the socket cannot be set up, naming the address and the
  // system's reason (e.g. "metrics endpoint: cannot bind to 127.0.0.1:9090: Address already in
  // use"), or when the I/O thread cannot be created.
  absl::StatusOr<int> Start(absl::string_view address);

  // Stops listening, closes every open connection (a response still being written is cut off) and
  // joins the I/O thread; returns within milliseconds. Idempotent; Start() may be called again.
  void Stop();

  // The bound port while running, else 0.
  int port() const;
  bool running() const;

  // Thread safety: every method may be called from any thread; Start() and Stop() are serialized
  // with each other. None may be called from the readiness callback except port() and running().

 private:
  class Loop;  // The listening socket, its connections and the I/O thread (http_endpoint.cc).

  const MetricsRegistry* registry_;
  ReadinessCallback readiness_;
  HttpEndpointOptions options_;

  absl::Mutex lifecycle_mu_;  // Held for the whole of Start() and Stop().
  mutable absl::Mutex mu_;
  std::unique_ptr<Loop> loop_ ABSL_GUARDED_BY(mu_);
  int port_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace factlens

#endif  // FACTLENS_SERVER_HTTP_ENDPOINT_H_
