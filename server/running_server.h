// factlens_server's wiring, out of main(): ServerOptions says everything a server is configured
// by, RunningServer builds and starts one (the gRPC service with health checking and reflection,
// the operations endpoint, the models loading in the background) and stops it gracefully. main()
// maps flags to options and signals to Shutdown(); tests start servers the same way.
#ifndef FACTLENS_SERVER_RUNNING_SERVER_H_
#define FACTLENS_SERVER_RUNNING_SERVER_H_

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "nlohmann/json.hpp"
#include "server/http_endpoint.h"
#include "server/metrics.h"
#include "server/model_registry.h"
#include "server/service.h"

namespace factlens {

// One structured log event, one JSON object ({"event": "ready", ...}). Called from any thread.
using EventLogger = std::function<void(const nlohmann::ordered_json& event)>;

// Writes `event` as one line on stderr, by nlohmann-json: every field escaped (a client's model
// name or peer cannot break the line or forge another), invalid UTF-8 replaced. Thread-safe.
void LogEventToStderr(const nlohmann::ordered_json& event);

// The request log's event for `record`: {"event": "request", rpc, model, code, latency_ms,
// queue_wait_ms, peer} and, for an internal failure, "error" (the details the client is not told).
nlohmann::ordered_json RequestEvent(const RequestRecord& record);

struct ServerOptions {
  // gRPC address "HOST:PORT" (port 0 picks a free one); empty: no port, in-process channels only.
  std::string listen;
  // Operations endpoint (/metrics, /healthz, /readyz), "HOST:PORT"; empty: none.
  std::string http_listen;
  std::vector<ModelSpec> models;  // at least one; names unique
  ModelLoader loader = LoadModelFromDisk;
  ServiceOptions service;
  ServingLimits limits;
  int max_message_bytes = 16 << 20;  // received or sent; at least 1024
  // Null: insecure (plain TCP).
  std::shared_ptr<grpc::ServerCredentials> credentials;
  // Most of each GPU the models are on that the server may hold, in (0, 1].
  double gpu_memory_fraction = 1;
  // How long admitted calls may finish after Shutdown() begins.
  absl::Duration drain = absl::Seconds(30);
  BuildInfo build;                     // factlens_build_info's labels
  EventLogger log = LogEventToStderr;  // start-up, readiness, shutdown and request events
  RequestObserver on_request;          // optional, besides the request log (tests)
};

// Thread-safe. Owns everything it starts; destroying it shuts the server down and waits.
class RunningServer {
 public:
  // Validates `options`, binds the ports and starts serving, not yet ready: every call on a model
  // is UNAVAILABLE ("loading"), gRPC health NOT_SERVING and /readyz 503 until WaitUntilReady();
  // the models load in the background. gRPC's SO_REUSEPORT is turned off, so a port another
  // server listens on is refused instead of silently shared. Errors: InvalidArgument naming the
  // option (no model, a name given twice, a limit out of range); Unavailable naming the address
  // that cannot be bound.
  static absl::StatusOr<std::unique_ptr<RunningServer>> Start(ServerOptions options);
  ~RunningServer();
  RunningServer(const RunningServer&) = delete;
  RunningServer& operator=(const RunningServer&) = delete;

  int port() const { return port_; }            // 0 without `listen`
  int http_port() const { return http_port_; }  // 0 without `http_listen`
  // A channel into the server that bypasses the network (no credentials, no port needed).
  std::shared_ptr<grpc::Channel> InProcessChannel();

  // Blocks until every model has loaded; then applies gpu_memory_fraction, sets the models'
  // metrics, logs "model_ready" for each and marks the server ready (health SERVING, /readyz 200).
  // Returns the first load error instead (naming the model; the server stays not ready: call
  // Shutdown), Cancelled if Shutdown() began first, or the error of limiting GPU memory.
  absl::Status WaitUntilReady();

  // Graceful stop: new calls get UNAVAILABLE and /readyz 503 (in that order, so a client that saw
  // 503 is never admitted), gRPC health NOT_SERVING; admitted calls run on for up to `drain`;
  // then gRPC stops (cancelling what still runs, after at most 1 s) and the endpoint closes.
  // Returns whether every admitted call finished within the drain. Idempotent (later calls wait
  // for the first and return its result).
  bool Shutdown();

  ModelRegistry& registry() { return *registry_; }
  FactLensService& service() { return *service_; }
  // What /metrics serves.
  const MetricsRegistry& metrics() const { return metrics_registry_; }

 private:
  explicit RunningServer(ServerOptions options) : options_(std::move(options)) {}
  bool Ready(std::string* reason) const;

  const ServerOptions options_;
  std::unique_ptr<ModelRegistry> registry_;
  MetricsRegistry metrics_registry_;
  std::optional<ServerMetrics> metrics_;  // set by Start
  std::unique_ptr<FactLensService> service_;
  std::unique_ptr<HttpEndpoint> http_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0, http_port_ = 0;
  std::atomic<bool> stopping_{false}, ready_{false};
  absl::Mutex shutdown_mu_;
  bool shut_down_ ABSL_GUARDED_BY(shutdown_mu_) = false;
  bool drained_ ABSL_GUARDED_BY(shutdown_mu_) = false;
};

}  // namespace factlens

#endif  // FACTLENS_SERVER_RUNNING_SERVER_H_
