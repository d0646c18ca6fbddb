#include "server/running_server.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>

#include <chrono>
#include <cstdio>
#include <mutex>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "analysis/device.h"

namespace factlens {
namespace {

// Concurrent streams one connection may hold, and threads beyond the admission queues' capacity
// (health checks, reflection, ListModels, Tokenize and refusals need threads too).
constexpr int kMaxStreamsPerConnection = 256;
constexpr int kSpareThreads = 256;

// The options' ranges; InvalidArgument naming the first option out of range.
absl::Status CheckOptions(const ServerOptions& o) {
  if (o.models.empty()) return absl::InvalidArgumentError("no model to serve");
  for (size_t i = 0; i < o.models.size(); ++i) {
    for (size_t j = 0; j < i; ++j) {
      if (o.models[i].name == o.models[j].name) {
        return absl::InvalidArgumentError(
            absl::StrCat("--model: the name '", o.models[i].name, "' is given twice"));
      }
    }
  }
  struct Range {
    const char* option;
    int64_t value, min;
  };
  const Range ranges[] = {
      {"max_prompt_tokens", o.service.max_prompt_tokens, 1},
      {"max_top_k", o.service.max_top_k, 1},
      {"max_batch_items", o.service.max_batch_items, 1},
      {"max_message_bytes", o.max_message_bytes, 1024},
      {"max_concurrent", o.limits.max_concurrent, 1},
      {"max_queued", o.limits.max_queued, 0},
      {"trace_cache_mb", o.limits.trace_cache_bytes >> 20, 0},
      {"default_deadline_seconds", absl::ToInt64Seconds(o.service.default_deadline), 1},
      {"drain_seconds", absl::ToInt64Seconds(o.drain), 0},
  };
  for (const Range& r : ranges) {
    if (r.value < r.min) {
      return absl::InvalidArgumentError(
          absl::StrCat("--", r.option, "=", r.value, ": must be at least ", r.min));
    }
  }
  if (!(o.gpu_memory_fraction > 0 && o.gpu_memory_fraction <= 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--gpu_memory_fraction=", o.gpu_memory_fraction, ": must be in (0, 1]"));
  }
  return absl::OkStatus();
}

}  // namespace

void LogEventToStderr(const nlohmann::ordered_json& event) {
  const std::string line = event.dump(/*indent=*/-1, ' ', /*ensure_ascii=*/false,
                                      nlohmann::ordered_json::error_handler_t::replace);
  std::fprintf(stderr, "%s\n", line.c_str());
}

nlohmann::ordered_json RequestEvent(const RequestRecord& r) {
  nlohmann::ordered_json event = {{"event", "request"},
                                  {"rpc", r.rpc},
                                  {"model", r.model},
                                  {"code", static_cast<int>(r.code)},
                                  {"latency_ms", 1000 * r.latency_seconds},
                                  {"queue_wait_ms", 1000 * r.queue_wait_seconds},
                                  {"peer", r.peer}};
  if (!r.error.empty()) event["error"] = r.error;
  return event;
}

absl::StatusOr<std::unique_ptr<RunningServer>> RunningServer::Start(ServerOptions options) {
  if (absl::Status valid = CheckOptions(options); !valid.ok()) return valid;
  std::unique_ptr<RunningServer> s(new RunningServer(std::move(options)));
  const ServerOptions& o = s->options_;
  s->registry_ = std::make_unique<ModelRegistry>(o.models, o.limits, o.loader);
  absl::StatusOr<ServerMetrics> metrics = ServerMetrics::Create(&s->metrics_registry_, o.build);
  if (!metrics.ok()) return metrics.status();
  s->metrics_ = *metrics;
  // Every served model's series exist from the start (at 0), so an idle replica reports a queue
  // depth for autoscalers instead of no sample (deploy/k8s/autoscaling).
  for (const ModelSpec& spec : o.models) {
    metrics->model_ready->WithLabels({spec.name}).Set(0);
    metrics->requests_in_flight->WithLabels({spec.name}).Set(0);
  }
  const EventLogger log = o.log;
  const RequestObserver extra = o.on_request;
  s->service_ = std::make_unique<FactLensService>(
      s->registry_.get(), o.service,
      [log, extra](const RequestRecord& record) {
        if (log) log(RequestEvent(record));
        if (extra) extra(record);
      },
      &*s->metrics_);
  RunningServer* self = s.get();
  s->http_ = std::make_unique<HttpEndpoint>(
      &s->metrics_registry_, [self](std::string* reason) { return self->Ready(reason); });
  if (!o.http_listen.empty()) {
    absl::StatusOr<int> bound = s->http_->Start(o.http_listen);
    if (!bound.ok()) return bound.status();
    s->http_port_ = *bound;
  }

  static std::once_flag grpc_plugins;
  std::call_once(grpc_plugins, [] {
    grpc::EnableDefaultHealthCheckService(true);
    grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  });
  grpc::ServerBuilder builder;
  // gRPC turns SO_REUSEPORT on by default, which lets a second server bind a port that is already
  // serving and take a share of its connections (another user's models, tokens or TLS on a shared
  // box). Off: a taken port fails the bind.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  if (!o.listen.empty()) {
    builder.AddListeningPort(
        o.listen, o.credentials ? o.credentials : grpc::InsecureServerCredentials(), &s->port_);
  }
  builder.RegisterService(s->service_.get());
  builder.SetMaxReceiveMessageSize(o.max_message_bytes);
  builder.SetMaxSendMessageSize(o.max_message_bytes);
  // A client opening thousands of streams at once ("rapid reset") made the synchronous server
  // start a thread per stream (1500+ threads, +450 MB). Streams per connection and the server's
  // threads are bounded; calls beyond the thread bound are answered RESOURCE_EXHAUSTED by gRPC,
  // and the bound exceeds what the admission queues (per model: running + queued) can admit.
  builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS, kMaxStreamsPerConnection);
  grpc::ResourceQuota quota("factlens");
  quota.SetMaxThreads(kSpareThreads + 2 * static_cast<int>(o.models.size()) *
                                          (o.limits.max_concurrent + o.limits.max_queued));
  builder.SetResourceQuota(quota);
  s->server_ = builder.BuildAndStart();
  if (!s->server_ || (!o.listen.empty() && s->port_ == 0)) {
    return absl::UnavailableError(absl::StrCat(
        "cannot listen on --listen ", o.listen,
        ": the address is invalid or already in use (is another server running there?)"));
  }
  s->server_->GetHealthCheckService()->SetServingStatus(false);  // ready once the models are
  if (log) {
    log({{"event", "listening"},
         {"port", s->port_},
         {"http_port", s->http_port_},
         {"models", o.models.size()}});
  }
  s->registry_->StartLoading();
  return s;
}

RunningServer::~RunningServer() {
  if (server_) Shutdown();
  if (http_) http_->Stop();
}

std::shared_ptr<grpc::Channel> RunningServer::InProcessChannel() {
  return server_->InProcessChannel(grpc::ChannelArguments());
}

bool RunningServer::Ready(std::string* reason) const {
  if (stopping_) {
    *reason = "shutting down";
  } else if (!ready_) {
    *reason = registry_->ready() ? "starting" : "models are loading";
  }
  return !stopping_ && ready_;
}

absl::Status RunningServer::WaitUntilReady() {
  if (absl::Status loaded = registry_->WaitUntilLoaded(); !loaded.ok()) return loaded;
  if (stopping_) return absl::CancelledError("the server is shutting down");
  for (const ModelSpec& spec : options_.models) {
    const std::shared_ptr<const ServedModel> served = registry_->Loaded(spec.name);
    const c10::Device device = served->model->device();
    if (device.is_cuda() && options_.gpu_memory_fraction < 1) {
      if (absl::Status limited = LimitGpuMemory(device, options_.gpu_memory_fraction);
          !limited.ok()) {
        return absl::Status(limited.code(),
                            absl::StrCat("--gpu_memory_fraction: ", limited.message()));
      }
    }
    metrics_->model_load_seconds->WithLabels({spec.name}).Set(served->load_seconds);
    metrics_->model_resident_bytes->WithLabels({spec.name, device.str()})
        .Set(static_cast<double>(served->model->resident_bytes()));
    metrics_->model_ready->WithLabels({spec.name}).Set(1);
    RecordGpuMemory(*metrics_, {device});
    if (options_.log) {
      options_.log(
          {{"event", "model_ready"},
           {"model", spec.name},
           {"device", device.str()},
           {"dtype", std::string(ComputeDTypeName(served->model->dtype()))},
           {"weights_dtype", std::string(ComputeDTypeName(served->model->weights_dtype()))},
           {"load_seconds", served->load_seconds},
           {"resident_bytes", served->model->resident_bytes()}});
    }
  }
  server_->GetHealthCheckService()->SetServingStatus(true);
  ready_ = true;
  return absl::OkStatus();
}

bool RunningServer::Shutdown() {
  absl::MutexLock lock(&shutdown_mu_);
  if (shut_down_) return drained_;
  // Draining starts before /readyz turns 503, so a client that saw 503 never gets admitted.
  service_->StartDraining();
  stopping_ = true;
  // NOT_SERVING, like /readyz: load balancers stop sending work.
  server_->GetHealthCheckService()->Shutdown();
  // New calls are answered UNAVAILABLE while admitted ones finish, up to the drain; then the
  // server stops and cancels whatever still runs.
  drained_ = service_->WaitUntilIdle(absl::Now() + options_.drain);
  if (options_.log) options_.log({{"event", "drained"}, {"complete", drained_}});
  server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
  server_->Wait();
  http_->Stop();
  shut_down_ = true;
  return drained_;
}

}  // namespace factlens
