// factlens_cpp_client: a small sample C++ client of the factlens gRPC API (factlens.v1.FactLens).
//
// It shows the two calls most users start with:
//   locate  LocateFact, a server-streaming RPC: progress events, then one FactReport
//   rank    Rank: the components at one level ranked by their increase for the target
//
// Usage:
//   factlens_cpp_client --server HOST:PORT [--token T] [--model NAME] [--deadline_s S] [--json]
//                       locate PROMPT TARGET [--top_k N]
//   factlens_cpp_client ... rank PROMPT TARGET [--level LEVEL] [--top_k N]
// LEVEL is one of ffn_neuron (default), attention_neuron, head, head_position, ffn_layer,
// attention_layer. --top_k (default 10) is the number of components ranked, or for locate the
// number of FFN and attention neurons reported. Flags may appear anywhere, as `--flag value` or
// `--flag=value`; an empty --model means the server's only model.
//
// Contract:
//   - locate writes one line per progress event to stderr ("progress <fraction> <stage>") and the
//     report to stdout; rank writes a table to stdout. With --json, stdout holds instead exactly
//     one line: the FactReport or RankResponse as protobuf JSON (original field names, default
//     values included).
//   - Exit status: 0 on success; 1 when the RPC fails, after writing
//     "error: <CODE_NAME>: <message>" to stderr (CODE_NAME as in grpc::StatusCode, e.g.
//     UNAUTHENTICATED); 2 on a usage error, after writing "error: usage: <what>" and the usage.
//   - --token T sends the metadata "authorization: Bearer T". Every call has the deadline
//     --deadline_s (default 60 seconds). The channel is plaintext (no TLS).
#include <google/protobuf/util/json_util.h>
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <iterator>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "factlens/v1/factlens.grpc.pb.h"

namespace {

namespace pb = ::factlens::v1;

constexpr char kUsage[] =
    "usage: factlens_cpp_client --server HOST:PORT [--token T] [--model NAME] [--deadline_s S]\n"
    "                           [--json] locate PROMPT TARGET [--top_k N]\n"
    "       factlens_cpp_client ... rank PROMPT TARGET [--level LEVEL] [--top_k N]\n"
    "LEVEL: ffn_neuron (default), attention_neuron, head, head_position, ffn_layer,\n"
    "       attention_layer\n";

// Top tokens shown for each FFN neuron's value vector in the locate report.
constexpr int kTopTokens = 5;

// The command line, parsed.
struct Options {
  std::string server;
  std::string token;
  std::string model;  // empty: the server's only model
  double deadline_s = 60;
  bool json = false;
  std::string command;  // "locate" or "rank"
  std::string prompt;
  std::string target;
  pb::RankRequest::Level level = pb::RankRequest::FFN_NEURON;
  int top_k = 10;
};

// Parses a whole decimal int or double from `text` into `*value`; false if `text` is not one.
bool ParseNumber(const std::string& text, int* value) {
  char* end = nullptr;
  long parsed = std::strtol(text.c_str(), &end, 10);
  if (text.empty() || *end != '\0' || parsed < std::numeric_limits<int>::min() ||
      parsed > std::numeric_limits<int>::max())
    return false;
  *value = static_cast<int>(parsed);
  return true;
}
bool ParseNumber(const std::string& text, double* value) {
  char* end = nullptr;
  *value = std::strtod(text.c_str(), &end);
  return !text.empty() && *end == '\0';
}

// Fills `*options` from argv. Returns an empty string on success, else what is wrong.
std::string ParseArgs(int argc, char** argv, Options* options) {
  std::vector<std::string> positional;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg.rfind("--", 0) != 0) {
      positional.push_back(arg);
      continue;
    }
    std::string name = arg.substr(2);
    std::string value;
    bool has_value = false;
    if (size_t eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
      has_value = true;
    }
    if (name == "json") {
      if (has_value) return "--json takes no value";
      options->json = true;
      continue;
    }
    if (!has_value) {
      if (i + 1 >= argc) return "--" + name + " needs a value";
      value = argv[++i];
    }
    if (name == "server") {
      options->server = value;
    } else if (name == "token") {
      options->token = value;
    } else if (name == "model") {
      options->model = value;
    } else if (name == "deadline_s") {
      if (!ParseNumber(value, &options->deadline_s) || !(options->deadline_s > 0)) {
        return "--deadline_s must be a positive number of seconds";
      }
    } else if (name == "top_k") {
      if (!ParseNumber(value, &options->top_k)) return "--top_k must be an integer";
    } else if (name == "level") {
      std::string upper = value;
      std::transform(upper.begin(), upper.end(), upper.begin(),
                     [](unsigned char c) { return std::toupper(c); });
      if (!pb::RankRequest::Level_Parse(upper, &options->level) ||
          options->level == pb::RankRequest::LEVEL_UNSPECIFIED) {
        return "unknown --level " + value;
      }
    } else {
      return "unknown flag --" + name;
    }
  }
  if (options->server.empty()) return "--server is required";
  if (positional.size() != 3) return "expected COMMAND PROMPT TARGET";
  options->command = positional[0];
  if (options->command != "locate" && options->command != "rank") {
    return "unknown command " + options->command;
  }
  options->prompt = positional[1];
  options->target = positional[2];
  return "";
}

// The canonical name of a gRPC status code ("INVALID_ARGUMENT"), or "CODE_<n>" for an unknown one.
std::string StatusCodeName(grpc::StatusCode code) {
  static const char* const kNames[] = {"OK",
                                       "CANCELLED",
                                       "UNKNOWN",
                                       "INVALID_ARGUMENT",
                                       "DEADLINE_EXCEEDED",
                                       "NOT_FOUND",
                                       "ALREADY_EXISTS",
                                       "PERMISSION_DENIED",
                                       "RESOURCE_EXHAUSTED",
                                       "FAILED_PRECONDITION",
                                       "ABORTED",
                                       "OUT_OF_RANGE",
                                       "UNIMPLEMENTED",
                                       "INTERNAL",
                                       "UNAVAILABLE",
                                       "DATA_LOSS",
                                       "UNAUTHENTICATED"};
  int index = static_cast<int>(code);
  if (index >= 0 && index < static_cast<int>(std::size(kNames))) return kNames[index];
  return "CODE_" + std::to_string(index);
}

// Reports a failed RPC on stderr in the documented form and returns the exit status 1.
int ReportRpcError(const grpc::Status& status) {
  std::fprintf(stderr, "error: %s: %s\n", StatusCodeName(status.error_code()).c_str(),
               status.error_message().c_str());
  return 1;
}

// A client context carrying the bearer token (if any) and the deadline of `options`.
std::unique_ptr<grpc::ClientContext> MakeContext(const Options& options) {
  auto context = std::make_unique<grpc::ClientContext>();
  if (!options.token.empty()) context->AddMetadata("authorization", "Bearer " + options.token);
  context->set_deadline(std::chrono::system_clock::now() +
                        std::chrono::duration_cast<std::chrono::system_clock::duration>(
                            std::chrono::duration<double>(options.deadline_s)));
  return context;
}

// Writes `message` to stdout as one line of protobuf JSON; returns the exit status (0, or 1 if
// the message cannot be converted).
int PrintJson(const google::protobuf::Message& message) {
  google::protobuf::util::JsonPrintOptions json_options;
  json_options.preserve_proto_field_names = true;
  json_options.always_print_primitive_fields = true;
  std::string json;
  auto status = google::protobuf::util::MessageToJsonString(message, &json, json_options);
  if (!status.ok()) {
    std::fprintf(stderr, "error: INTERNAL: JSON conversion failed: %s\n",
                 status.ToString().c_str());
    return 1;
  }
  std::printf("%s\n", json.c_str());
  return 0;
}

// A component as a short label: "L3 N117" (FFN neuron), "L3 H2" (head), "L3 H2 @4" (head at source
// position 4), "L3 H2 @4 d7" (attention neuron), "L3 ffn", "L3 attn".
std::string ComponentLabel(const pb::Component& c) {
  std::string label = "L" + std::to_string(c.layer());
  switch (c.kind()) {
    case pb::Component::FFN_NEURON:
      return label + " N" + std::to_string(c.neuron());
    case pb::Component::HEAD:
      return label + " H" + std::to_string(c.head());
    case pb::Component::HEAD_POSITION:
      return label + " H" + std::to_string(c.head()) + " @" + std::to_string(c.source_position());
    case pb::Component::ATTENTION_NEURON:
      return label + " H" + std::to_string(c.head()) + " @" + std::to_string(c.source_position()) +
             " d" + std::to_string(c.neuron());
    case pb::Component::FFN_LAYER:
      return label + " ffn";
    case pb::Component::ATTENTION_LAYER:
      return label + " attn";
    default:
      return label + " " + pb::Component::Kind_Name(c.kind());
  }
}

// Tokens with scores as `" Paris" 12.3, " Lyon" 4.5`.
std::string TokenList(const google::protobuf::RepeatedPtrField<pb::TokenScore>& tokens) {
  std::string text;
  char score[32];
  for (const pb::TokenScore& token : tokens) {
    std::snprintf(score, sizeof(score), " %.3g", token.score());
    text += (text.empty() ? "\"" : ", \"") + token.token() + "\"" + score;
  }
  return text;
}

// Writes the human-readable report to stdout: target and its outcome, top predictions, per-layer
// increases, top heads, top FFN neurons with the top tokens of their value vectors, and the
// outcome once those neurons are removed (unless the server skipped the ablation).
void PrintFactReport(const pb::FactReport& r) {
  std::printf("prompt tokens: %d, analysed position %d\n", r.input_ids_size(), r.position());
  std::printf("target \"%s\" (id %lld): prob %.6f  log_prob %.6f  rank %lld\n",
              r.target().token().c_str(), static_cast<long long>(r.target().id()),
              r.outcome().prob(), r.outcome().log_prob(),
              static_cast<long long>(r.outcome().rank()));
  std::printf("top predictions: %s\n", TokenList(r.predictions()).c_str());
  std::printf("metric %s\n\n%-6s %12s %12s\n", pb::Metric_Name(r.metric()).c_str(), "layer",
              "attention", "ffn");
  for (int layer = 0; layer < r.ffn_layer_increase_size(); ++layer) {
    double attention =
        layer < r.attention_layer_increase_size() ? r.attention_layer_increase(layer) : 0.0;
    std::printf("%-6d %12.6f %12.6f\n", layer, attention, r.ffn_layer_increase(layer));
  }
  std::printf("\ntop heads:\n");
  for (const pb::HeadScore& head : r.top_heads()) {
    std::printf("  L%d H%d  %.6f\n", head.layer(), head.head(), head.score());
  }
  std::printf("\ntop FFN neurons (%lld of %lld evaluated exactly):\n",
              static_cast<long long>(r.ffn_evaluated()), static_cast<long long>(r.ffn_total()));
  for (const pb::NeuronScore& neuron : r.ffn_neurons()) {
    std::printf("  L%d N%d  %.6f  coef %.4f  top tokens: %s\n", neuron.layer(), neuron.neuron(),
                neuron.score(), neuron.coefficient(), TokenList(neuron.top_tokens()).c_str());
  }
  if (r.ablated_ffn_neurons() > 0) {
    std::printf("\nwith those %d FFN neurons removed: prob %.6f  rank %lld\n",
                r.ablated_ffn_neurons(), r.ablated().prob(),
                static_cast<long long>(r.ablated().rank()));
  }
}

// Writes the ranking as a table to stdout: one row per component, in the server's order; the
// coefficient column only for neurons.
void PrintRankTable(const pb::RankResponse& response) {
  std::printf(
      "target id %lld, mode %s, %lld of %lld components evaluated exactly\n",
      static_cast<long long>(response.target_id()), pb::RankMode_Name(response.mode()).c_str(),
      static_cast<long long>(response.evaluated()), static_cast<long long>(response.total()));
  std::printf("%-5s %-16s %12s %12s\n", "rank", "component", "score", "coefficient");
  int rank = 0;
  for (const pb::RankedComponent& ranked : response.components()) {
    pb::Component::Kind kind = ranked.component().kind();
    bool neuron = kind == pb::Component::FFN_NEURON || kind == pb::Component::ATTENTION_NEURON;
    std::printf("%-5d %-16s %12.6f", ++rank, ComponentLabel(ranked.component()).c_str(),
                ranked.score());
    if (neuron) std::printf(" %12.6f", ranked.coefficient());
    std::printf("\n");
  }
}

// Runs LocateFact: progress to stderr, the report to stdout. Returns the exit status.
int RunLocate(pb::FactLens::Stub& stub, const Options& options) {
  pb::LocateFactRequest request;
  request.set_model(options.model);
  request.mutable_prompt()->set_text(options.prompt);
  request.mutable_target()->set_text(options.target);
  request.mutable_options()->set_top_ffn_neurons(options.top_k);
  request.mutable_options()->set_top_attention_neurons(options.top_k);
  request.mutable_options()->set_top_tokens(kTopTokens);
  auto context = MakeContext(options);
  std::unique_ptr<grpc::ClientReader<pb::LocateFactEvent>> reader =
      stub.LocateFact(context.get(), request);
  pb::LocateFactEvent event;
  pb::FactReport report;
  bool have_report = false;
  while (reader->Read(&event)) {
    if (event.has_progress()) {
      std::fprintf(stderr, "progress %.3f %s\n", event.progress().fraction(),
                   event.progress().stage().c_str());
    } else if (event.has_report()) {
      report = std::move(*event.mutable_report());
      have_report = true;
    }
  }
  grpc::Status status = reader->Finish();
  if (!status.ok()) return ReportRpcError(status);
  if (!have_report) {
    return ReportRpcError(
        grpc::Status(grpc::StatusCode::INTERNAL, "stream ended without a report"));
  }
  if (options.json) return PrintJson(report);
  PrintFactReport(report);
  return 0;
}

// Runs Rank: the table (or JSON) to stdout. Returns the exit status.
int RunRank(pb::FactLens::Stub& stub, const Options& options) {
  pb::RankRequest request;
  request.set_model(options.model);
  request.mutable_prompt()->set_text(options.prompt);
  request.mutable_target()->set_text(options.target);
  request.set_level(options.level);
  request.set_top_k(options.top_k);
  pb::RankResponse response;
  auto context = MakeContext(options);
  grpc::Status status = stub.Rank(context.get(), request, &response);
  if (!status.ok()) return ReportRpcError(status);
  if (options.json) return PrintJson(response);
  PrintRankTable(response);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options options;
  std::string usage_error = ParseArgs(argc, argv, &options);
  if (!usage_error.empty()) {
    std::fprintf(stderr, "error: usage: %s\n%s", usage_error.c_str(), kUsage);
    return 2;
  }
  auto channel = grpc::CreateChannel(options.server, grpc::InsecureChannelCredentials());
  auto stub = pb::FactLens::NewStub(channel);
  return options.command == "locate" ? RunLocate(*stub, options) : RunRank(*stub, options);
}
