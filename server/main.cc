// factlens_server: serves the factlens.v1 API over gRPC with models kept resident.
#include <grpcpp/grpcpp.h>
#include <signal.h>

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
#include "absl/strings/strip.h"
#include "analysis/cpu_threads.h"
#include "analysis/model_files.h"
#include "factlens_commit.h"  // generated at build time: FACTLENS_COMMIT
#include "server/default_model.h"
#include "server/flag_usage.h"
#include "server/running_server.h"
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
ABSL_FLAG(int, threads, 0,
          "CPU threads for libtorch (0 = OMP_NUM_THREADS if set, else one per core)");
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

// The server's options from the flags; InvalidArgument naming a bad flag.
absl::StatusOr<factlens::ServerOptions> OptionsFromFlags(
    int argc, char** argv, const absl::StatusOr<std::string>& default_model) {
  factlens::ServerOptions o;
  o.listen = absl::GetFlag(FLAGS_listen);
  o.http_listen = absl::GetFlag(FLAGS_http_listen);
  std::vector<std::string> model_flags = ModelFlagValues(argc, argv);
  const std::string parsed_model = absl::GetFlag(FLAGS_model);  // e.g. from a --flagfile
  if (model_flags.empty() && !parsed_model.empty()) model_flags.push_back(parsed_model);
  if (!model_flags.empty() && model_flags.back() != parsed_model) {
    return absl::InvalidArgumentError(
        "--model: give every --model on the command line or every one in one flagfile, not both "
        "(absl keeps only the last one it reads)");
  }
  if (model_flags.empty()) {
    if (!default_model.ok()) return default_model.status();
    factlens::LogEventToStderr({{"event", "default_model"},
                                {"model", factlens::kDefaultModelName},
                                {"directory", *default_model}});
    model_flags.push_back(absl::StrCat(factlens::kDefaultModelName, "=", *default_model));
  }
  for (const std::string& text : model_flags) {
    absl::StatusOr<factlens::ModelSpec> spec = factlens::ParseModelSpec(text);
    if (!spec.ok()) return spec.status();
    o.models.push_back(*spec);
  }
  o.service.max_prompt_tokens = absl::GetFlag(FLAGS_max_prompt_tokens);
  o.service.max_top_k = absl::GetFlag(FLAGS_max_top_k);
  o.service.max_batch_items = absl::GetFlag(FLAGS_max_batch_items);
  o.service.default_deadline = absl::Seconds(absl::GetFlag(FLAGS_default_deadline_seconds));
  if (!absl::GetFlag(FLAGS_auth_token_file).empty()) {
    absl::StatusOr<std::vector<std::string>> tokens =
        ReadTokens(absl::GetFlag(FLAGS_auth_token_file));
    if (!tokens.ok()) return tokens.status();
    o.service.bearer_tokens = *tokens;
  }
  o.limits = {absl::GetFlag(FLAGS_max_concurrent), absl::GetFlag(FLAGS_max_queued),
              int64_t{absl::GetFlag(FLAGS_trace_cache_mb)} << 20};
  o.max_message_bytes = absl::GetFlag(FLAGS_max_message_bytes);
  absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> credentials = Credentials();
  if (!credentials.ok()) return credentials.status();
  o.credentials = *credentials;
  o.gpu_memory_fraction = absl::GetFlag(FLAGS_gpu_memory_fraction);
  o.drain = absl::Seconds(absl::GetFlag(FLAGS_drain_seconds));
  o.build = {FACTLENS_VERSION, FACTLENS_COMMIT, TORCH_VERSION};
  return o;
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
  if (absl::GetFlag(FLAGS_threads) < 0) {
    return Fail(absl::InvalidArgumentError(
        absl::StrCat("--threads=", absl::GetFlag(FLAGS_threads), ": must be at least 0")));
  }
  absl::StatusOr<factlens::ServerOptions> options = OptionsFromFlags(argc, argv, default_model);
  if (!options.ok()) return Fail(options.status());
  factlens::ConfigureCpuThreads(absl::GetFlag(FLAGS_threads));
  absl::StatusOr<std::unique_ptr<factlens::RunningServer>> server =
      factlens::RunningServer::Start(*std::move(options));
  if (!server.ok()) return Fail(server.status());

  std::thread signal_thread([&] {
    int signal = 0;
    sigwait(&signals, &signal);
    factlens::LogEventToStderr({{"event", "shutdown"},
                                {"signal", signal},
                                {"drain_seconds", absl::GetFlag(FLAGS_drain_seconds)}});
    (*server)->Shutdown();
  });
  if (absl::Status ready = (*server)->WaitUntilReady(); ready.ok()) {
    if (!absl::GetFlag(FLAGS_port_file).empty()) {
      std::ofstream(absl::GetFlag(FLAGS_port_file))
          << (*server)->port() << " " << (*server)->http_port() << "\n";
    }
    factlens::LogEventToStderr({{"event", "ready"}, {"port", (*server)->port()}});
  } else if (!absl::IsCancelled(ready)) {
    // A model failed to load: stop through the signal thread, exit 2.
    std::fprintf(stderr, "factlens_server: %s\n", ready.ToString().c_str());
    kill(getpid(), SIGTERM);
    signal_thread.join();
    return 2;
  }
  signal_thread.join();
  server->reset();
  factlens::LogEventToStderr({{"event", "stopped"}});
  return 0;
}
