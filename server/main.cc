// factlens_server: serves the factlens.v1 API over gRPC with models kept resident.
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <signal.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "analysis/cpu_threads.h"
#include "analysis/device.h"
#include "analysis/model_files.h"
#include "factlens_commit.h"  // generated at build time: FACTLENS_COMMIT
#include "nlohmann/json.hpp"
#include "server/default_model.h"
#include "server/flag_usage.h"
#include "server/http_endpoint.h"
#include "server/metrics.h"
#include "server/model_registry.h"
#include "server/service.h"
#include "torch/csrc/api/include/torch/version.h"

ABSL_FLAG(std::string, listen, "0.0.0.0:50051",
          "gRPC address (host:port; port 0 picks a free one)");
ABSL_FLAG(std::string, model, "",
          "NAME=DIR_OR_REPO_ID[,device=cpu|cuda[:N]][,dtype=float32|float64|float16|bfloat16]; "
          "repeat the "
          "flag on the command line for several models (a --flagfile may hold one). Default: "
          "the demo model gpt2-facts-tiny from <prefix>/share/factlens/models beside "
          "<prefix>/bin (the directory chosen is shown above and logged at startup)");
ABSL_FLAG(int, max_prompt_tokens, 512, "Longest prompt accepted, in tokens");
ABSL_FLAG(int, max_top_k, 1000, "Largest top_k (and ablation count) accepted");
ABSL_FLAG(int, max_batch_items, 256, "Most items in one LocateFacts request");
ABSL_FLAG(int, max_message_bytes, 16 << 20, "Largest gRPC message received or sent");
ABSL_FLAG(int, max_concurrent, 2, "Requests running at once per model");
ABSL_FLAG(int, max_queued, 16,
          "Requests waiting per model; beyond that RESOURCE_EXHAUSTED at once");
ABSL_FLAG(int, trace_cache_mb, 256,
          "Per model: MiB of forward traces kept so that calls on one prompt share one forward "
          "pass (0 disables)");
ABSL_FLAG(int, default_deadline_seconds, 600, "Deadline for requests that set none");
ABSL_FLAG(int, drain_seconds, 30, "On SIGTERM/SIGINT: how long in-flight requests may finish");
ABSL_FLAG(int, threads, 0, "CPU threads for libtorch (0 = one per core)");
ABSL_FLAG(double, gpu_memory_fraction, 1.0,
          "Most of each GPU this server's models are on that it may hold, as a fraction of the "
          "card (0 < f <= 1); beyond it a request gets RESOURCE_EXHAUSTED. For shared cards");
ABSL_FLAG(std::string, auth_token_file, "",
          "File of accepted bearer tokens, one per line; empty: no auth");
ABSL_FLAG(std::string, tls_cert, "", "PEM server certificate chain (enables TLS)");
ABSL_FLAG(std::string, tls_key, "", "PEM server private key");
ABSL_FLAG(std::string, tls_client_ca, "",
          "PEM CA bundle; when set, clients must present a certificate (mTLS)");
ABSL_FLAG(std::string, http_listen, "0.0.0.0:9090",
          "HTTP address for /metrics, /healthz, /readyz (port 0 picks one; empty disables)");
ABSL_FLAG(std::string, port_file, "", "Once serving, write '<grpc port> <http port>' to this file");

namespace {

// Concurrent streams one connection may hold, and threads beyond the admission queues' capacity
// (health checks, reflection, ListModels, Tokenize and refusals need threads too).
constexpr int kMaxStreamsPerConnection = 256;
constexpr int kSpareThreads = 256;

absl::StatusOr<std::vector<std::string>> ReadTokens(const std::string& path) {
  absl::StatusOr<std::string> text = factlens::ReadTextFile(path);
  if (!text.ok()) return text.status();
  std::vector<std::string> tokens;
  std::istringstream lines(*text);
  for (std::string line; std::getline(lines, line);) {
    const std::string token(absl::StripAsciiWhitespace(line));
    if (!token.empty() && token[0] != '#') tokens.push_back(token);
  }
  if (tokens.empty())
    return absl::InvalidArgumentError(absl::StrCat("'", path, "' holds no tokens"));
  return tokens;
}

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> Credentials() {
  const std::string cert = absl::GetFlag(FLAGS_tls_cert), key = absl::GetFlag(FLAGS_tls_key);
  const std::string ca = absl::GetFlag(FLAGS_tls_client_ca);
  if (cert.empty() && key.empty()) {
    if (!ca.empty())
      return absl::InvalidArgumentError("--tls_client_ca needs --tls_cert and --tls_key");
    return grpc::InsecureServerCredentials();
  }
  if (cert.empty() || key.empty())
    return absl::InvalidArgumentError("TLS needs both --tls_cert and --tls_key");
  grpc::SslServerCredentialsOptions options(
      ca.empty() ? GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE
                 : GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  absl::StatusOr<std::string> cert_pem = factlens::ReadTextFile(cert),
                              key_pem = factlens::ReadTextFile(key);
  if (!cert_pem.ok()) return cert_pem.status();
  if (!key_pem.ok()) return key_pem.status();
  options.pem_key_cert_pairs.push_back({*key_pem, *cert_pem});
  if (!ca.empty()) {
    absl::StatusOr<std::string> ca_pem = factlens::ReadTextFile(ca);
    if (!ca_pem.ok()) return ca_pem.status();
    options.pem_root_certs = *ca_pem;
  }
  return grpc::SslServerCredentials(options);
}

// One structured line per event on stderr, written by nlohmann-json: every field escaped (a
// client's model name or peer cannot break the line or forge another), invalid UTF-8 replaced.
void LogEvent(const nlohmann::ordered_json& event) {
  const std::string line = event.dump(/*indent=*/-1, ' ', /*ensure_ascii=*/false,
                                      nlohmann::ordered_json::error_handler_t::replace);
  std::fprintf(stderr, "%s\n", line.c_str());
}

void LogRequest(const factlens::RequestRecord& r) {
  LogEvent({{"event", "request"},
            {"rpc", r.rpc},
            {"model", r.model},
            {"code", static_cast<int>(r.code)},
            {"latency_ms", 1000 * r.latency_seconds},
            {"queue_wait_ms", 1000 * r.queue_wait_seconds},
            {"peer", r.peer}});
}

int Fail(const absl::Status& status) {
  std::fprintf(stderr, "factlens_server: %s\n", status.ToString().c_str());
  return 2;
}

// Every value given to --model, in order. absl keeps only a flag's last occurrence, so the
// repeated flag is read from argv (forms --model=V, -model=V, --model V, -model V; "--" ends
// flags); absl still parses it, which rejects a --model without a value.
std::vector<std::string> ModelFlagValues(int argc, char** argv) {
  std::vector<std::string> values;
  for (int i = 1; i < argc; ++i) {
    const absl::string_view arg = argv[i];
    if (arg == "--") break;
    for (const absl::string_view name : {"--model", "-model"}) {
      if (arg == name && i + 1 < argc) {
        values.push_back(argv[++i]);
      } else if (absl::StartsWith(arg, absl::StrCat(name, "="))) {
        values.push_back(std::string(arg.substr(name.size() + 1)));
      }
    }
  }
  return values;
}

// The numeric flags' ranges; InvalidArgument naming the first flag out of range.
absl::Status CheckNumericFlags() {
  struct Range {
    const char* flag;
    int64_t value, min;
  };
  const Range ranges[] = {
      {"max_prompt_tokens", absl::GetFlag(FLAGS_max_prompt_tokens), 1},
      {"max_top_k", absl::GetFlag(FLAGS_max_top_k), 1},
      {"max_batch_items", absl::GetFlag(FLAGS_max_batch_items), 1},
      {"max_message_bytes", absl::GetFlag(FLAGS_max_message_bytes), 1024},
      {"max_concurrent", absl::GetFlag(FLAGS_max_concurrent), 1},
      {"max_queued", absl::GetFlag(FLAGS_max_queued), 0},
      {"trace_cache_mb", absl::GetFlag(FLAGS_trace_cache_mb), 0},
      {"default_deadline_seconds", absl::GetFlag(FLAGS_default_deadline_seconds), 1},
      {"drain_seconds", absl::GetFlag(FLAGS_drain_seconds), 0},
      {"threads", absl::GetFlag(FLAGS_threads), 0},
  };
  for (const Range& r : ranges) {
    if (r.value < r.min) {
      return absl::InvalidArgumentError(
          absl::StrCat("--", r.flag, "=", r.value, ": must be at least ", r.min));
    }
  }
  const double gpu_fraction = absl::GetFlag(FLAGS_gpu_memory_fraction);
  if (!(gpu_fraction > 0 && gpu_fraction <= 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--gpu_memory_fraction=", gpu_fraction, ": must be in (0, 1]"));
  }
  return absl::OkStatus();
}

}  // namespace

int main(int argc, char** argv) {
  // The usage message names the default model's directory, or why there is none.
  const absl::StatusOr<std::string> default_model = factlens::DefaultModelDirectory();
  const std::string usage = absl::StrCat(
      "Serves the factlens.v1 gRPC API. See README.md.\nWithout --model it serves ",
      default_model.ok() ? absl::StrCat(factlens::kDefaultModelName, "=", *default_model)
                         : std::string(default_model.status().message()));
  factlens::ParseFlags(argc, argv, usage.c_str(), "/server/");
  // SIGTERM/SIGINT are handled by a thread of ours (sigwait); block them before threads start.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  if (absl::Status flags = CheckNumericFlags(); !flags.ok()) return Fail(flags);
  factlens::ConfigureCpuThreads(absl::GetFlag(FLAGS_threads));

  std::vector<factlens::ModelSpec> specs;
  std::vector<std::string> model_flags = ModelFlagValues(argc, argv);
  const std::string parsed_model = absl::GetFlag(FLAGS_model);  // e.g. from a --flagfile
  if (model_flags.empty() && !parsed_model.empty()) model_flags.push_back(parsed_model);
  if (!model_flags.empty() && model_flags.back() != parsed_model) {
    return Fail(absl::InvalidArgumentError(
        "--model: give every --model on the command line or every one in one flagfile, not both "
        "(absl keeps only the last one it reads)"));
  }
  if (model_flags.empty()) {
    if (!default_model.ok()) return Fail(default_model.status());
    LogEvent({{"event", "default_model"},
              {"model", factlens::kDefaultModelName},
              {"directory", *default_model}});
    model_flags.push_back(absl::StrCat(factlens::kDefaultModelName, "=", *default_model));
  }
  for (const std::string& text : model_flags) {
    absl::StatusOr<factlens::ModelSpec> spec = factlens::ParseModelSpec(text);
    if (!spec.ok()) return Fail(spec.status());
    for (const factlens::ModelSpec& earlier : specs) {
      if (earlier.name == spec->name) {
        return Fail(absl::InvalidArgumentError(
            absl::StrCat("--model: the name '", spec->name, "' is given twice")));
      }
    }
    specs.push_back(*spec);
  }
  factlens::ServiceOptions options;
  options.max_prompt_tokens = absl::GetFlag(FLAGS_max_prompt_tokens);
  options.max_top_k = absl::GetFlag(FLAGS_max_top_k);
  options.max_batch_items = absl::GetFlag(FLAGS_max_batch_items);
  options.default_deadline = absl::Seconds(absl::GetFlag(FLAGS_default_deadline_seconds));
  if (!absl::GetFlag(FLAGS_auth_token_file).empty()) {
    absl::StatusOr<std::vector<std::string>> tokens =
        ReadTokens(absl::GetFlag(FLAGS_auth_token_file));
    if (!tokens.ok()) return Fail(tokens.status());
    options.bearer_tokens = *tokens;
  }
  absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> credentials = Credentials();
  if (!credentials.ok()) return Fail(credentials.status());

  factlens::ModelRegistry registry(
      specs, {absl::GetFlag(FLAGS_max_concurrent), absl::GetFlag(FLAGS_max_queued),
              int64_t{absl::GetFlag(FLAGS_trace_cache_mb)} << 20});
  factlens::MetricsRegistry metrics_registry;
  absl::StatusOr<factlens::ServerMetrics> metrics = factlens::ServerMetrics::Create(
      &metrics_registry, {FACTLENS_VERSION, FACTLENS_COMMIT, TORCH_VERSION});
  if (!metrics.ok()) return Fail(metrics.status());
  for (const factlens::ModelSpec& spec : specs)
    metrics->model_ready->WithLabels({spec.name}).Set(0);
  factlens::FactLensService service(&registry, options, LogRequest, &*metrics);
  std::atomic<bool> stopping{false};
  factlens::HttpEndpoint http(&metrics_registry, [&](std::string* reason) {
    if (stopping)
      *reason = "shutting down";
    else if (!registry.ready())
      *reason = "models are loading";
    return !stopping && registry.ready();
  });
  int http_port = 0;
  if (!absl::GetFlag(FLAGS_http_listen).empty()) {
    absl::StatusOr<int> bound = http.Start(absl::GetFlag(FLAGS_http_listen));
    if (!bound.ok()) return Fail(bound.status());
    http_port = *bound;
  }

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  // gRPC turns SO_REUSEPORT on by default, which lets a second server bind a port that is already
  // serving and take a share of its connections (another user's models, tokens or TLS on a shared
  // box). Off: a taken port fails the bind, and the server stops saying so.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  int port = 0;
  builder.AddListeningPort(absl::GetFlag(FLAGS_listen), *credentials, &port);
  builder.RegisterService(&service);
  builder.SetMaxReceiveMessageSize(absl::GetFlag(FLAGS_max_message_bytes));
  builder.SetMaxSendMessageSize(absl::GetFlag(FLAGS_max_message_bytes));
  // A client opening thousands of streams at once ("rapid reset") made the synchronous server
  // start a thread per stream (1500+ threads, +450 MB). Streams per connection and the server's
  // threads are bounded; calls beyond the thread bound are answered RESOURCE_EXHAUSTED by gRPC,
  // and the bound exceeds what the admission queues (per model: running + queued) can admit.
  builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS, kMaxStreamsPerConnection);
  grpc::ResourceQuota quota("factlens");
  quota.SetMaxThreads(kSpareThreads +
                      2 * static_cast<int>(model_flags.size()) *
                          (absl::GetFlag(FLAGS_max_concurrent) + absl::GetFlag(FLAGS_max_queued)));
  builder.SetResourceQuota(quota);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server || port == 0) {
    return Fail(absl::UnavailableError(
        absl::StrCat("cannot listen on --listen ", absl::GetFlag(FLAGS_listen),
                     ": the address is invalid or already in use (is another server running "
                     "there?)")));
  }
  grpc::HealthCheckServiceInterface* health = server->GetHealthCheckService();
  health->SetServingStatus(false);  // not ready until the models are loaded
  LogEvent(
      {{"event", "listening"}, {"port", port}, {"http_port", http_port}, {"models", specs.size()}});

  registry.StartLoading();
  std::thread signal_thread([&] {
    int signal = 0;
    sigwait(&signals, &signal);
    // Draining starts before /readyz turns 503, so a client that saw 503 never gets admitted.
    service.StartDraining();
    stopping = true;
    LogEvent({{"event", "shutdown"},
              {"signal", signal},
              {"drain_seconds", absl::GetFlag(FLAGS_drain_seconds)}});
    health->Shutdown();  // NOT_SERVING, like /readyz: load balancers stop sending work
    // New calls are answered UNAVAILABLE while admitted ones finish, up to --drain_seconds; then
    // the server stops and cancels whatever still runs.
    const bool idle =
        service.WaitUntilIdle(absl::Now() + absl::Seconds(absl::GetFlag(FLAGS_drain_seconds)));
    LogEvent({{"event", "drained"}, {"complete", idle}});
    server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
  });
  // Start-up failures after the server started: stop it through the signal thread, exit 2.
  auto stop_with_error = [&](const std::string& message) {
    std::fprintf(stderr, "factlens_server: %s\n", message.c_str());
    kill(getpid(), SIGTERM);
    signal_thread.join();
    server->Wait();
    return 2;
  };
  const absl::Status loaded = registry.WaitUntilLoaded();
  if (!loaded.ok()) return stop_with_error(loaded.ToString());
  if (!stopping && absl::GetFlag(FLAGS_gpu_memory_fraction) < 1) {
    for (const factlens::ModelSpec& spec : specs) {
      const c10::Device device = registry.Loaded(spec.name)->model->device();
      if (!device.is_cuda()) continue;
      if (absl::Status limited =
              factlens::LimitGpuMemory(device, absl::GetFlag(FLAGS_gpu_memory_fraction));
          !limited.ok()) {
        return stop_with_error("--gpu_memory_fraction: " + limited.ToString());
      }
    }
  }
  if (!stopping) {
    health->SetServingStatus(true);
    for (const factlens::ModelSpec& spec : specs) {
      const auto served = registry.Loaded(spec.name);
      metrics->model_load_seconds->WithLabels({spec.name}).Set(served->load_seconds);
      metrics->model_resident_bytes->WithLabels({spec.name, served->model->device().str()})
          .Set(static_cast<double>(served->model->resident_bytes()));
      metrics->model_ready->WithLabels({spec.name}).Set(1);
      factlens::RecordGpuMemory(*metrics, {served->model->device()});
      LogEvent({{"event", "model_ready"},
                {"model", spec.name},
                {"device", served->model->device().str()},
                {"load_seconds", served->load_seconds},
                {"resident_bytes", served->model->resident_bytes()}});
    }
    if (!absl::GetFlag(FLAGS_port_file).empty()) {
      std::ofstream(absl::GetFlag(FLAGS_port_file)) << port << " " << http_port << "\n";
    }
    LogEvent({{"event", "ready"}, {"port", port}});
  }
  server->Wait();
  signal_thread.join();
  http.Stop();
  LogEvent({{"event", "stopped"}});
  return 0;
}
