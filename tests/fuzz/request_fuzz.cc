// Fuzz-built requests of every RPC, through the server's own parsing, validation and handlers, on
// the demo model (gpt2-facts-tiny served as "demo", started by RunningServer as factlens_server
// starts it, reached through an in-process channel).
//
// An input is one byte choosing the RPC (among the service descriptor's methods, so a new RPC is
// fuzzed without a change here) and the request's bytes, sent unparsed: the server parses them.
// Every call must end with a code a client can act on; INTERNAL, UNKNOWN or DATA_LOSS (a bug, see
// server/status_mapping.h), a crash, a sanitizer report or a call that outlives its deadline by
// far aborts.
//
// The driver (main, `fuzz_requests --help`) replays corpus files, then for --seconds builds random
// requests field by field through protobuf reflection, from values chosen to reach the limits (0,
// -1, the model's sizes and one past them, huge counts, NaN, invalid UTF-8, names of served and
// unserved models, ...), and now and then damages a message's bytes. It is generation-based, not
// coverage-guided: the entry point follows libFuzzer's convention, but no build links libFuzzer
// here (that needs clang for all of libtorch's users; the parsers' fuzz targets use it).
// Runs in the suite bounded (fuzz_requests_bounded) and under ASan + UBSan (scripts/sanitize.sh).
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <map>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "factlens/v1/factlens.grpc.pb.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/message.h"
#include "google/protobuf/text_format.h"
#include "server/running_server.h"

namespace factlens {
namespace {

using google::protobuf::Descriptor;
using google::protobuf::FieldDescriptor;
using google::protobuf::Message;
using google::protobuf::MethodDescriptor;
using google::protobuf::Reflection;

constexpr auto kCallDeadline = std::chrono::seconds(3);
// A call that has not finished this long after its deadline hangs.
constexpr auto kHangBound = std::chrono::seconds(30);

const google::protobuf::ServiceDescriptor& Service() {
  static const google::protobuf::ServiceDescriptor* service =
      v1::ListModelsRequest::descriptor()->file()->FindServiceByName("FactLens");
  return *service;
}

// The demo model's server, started once per process; never destroyed (the fuzzer exits).
struct Fixture {
  std::unique_ptr<RunningServer> server;
  std::unique_ptr<grpc::GenericStub> stub;
};

Fixture& TheFixture() {
  static Fixture* fixture = [] {
    ServerOptions options;
    options.models = {{"demo", FACTLENS_SOURCE_DIR "/models/gpt2-facts-tiny", {}}};
    options.service.max_prompt_tokens = 64;
    options.service.max_top_k = 200;
    options.service.max_batch_items = 4;
    options.limits = {2, 4, int64_t{16} << 20};
    options.log = nullptr;  // the request log of millions of calls helps nobody
    absl::StatusOr<std::unique_ptr<RunningServer>> server = RunningServer::Start(options);
    if (!server.ok() || !(*server)->WaitUntilReady().ok()) {
      std::fprintf(stderr, "fuzz_requests: the demo server did not start\n");
      std::abort();
    }
    auto* f = new Fixture;
    f->server = *std::move(server);
    f->stub = std::make_unique<grpc::GenericStub>(f->server->InProcessChannel());
    return f;
  }();
  return *fixture;
}

// Blocks for the next completion of `queue`; its `ok`.
bool Await(grpc::CompletionQueue* queue) {
  void* tag = nullptr;
  bool ok = false;
  if (!queue->Next(&tag, &ok)) std::abort();
  return ok;
}

// Calls `method` with `request` bytes as the request message (any RPC kind: the generic call
// writes one message and reads every response); returns the final status.
grpc::Status Call(const MethodDescriptor& method, const std::string& request) {
  Fixture& fixture = TheFixture();
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + kCallDeadline);
  grpc::CompletionQueue queue;
  const std::string path = absl::StrCat("/", Service().full_name(), "/", method.name());
  std::unique_ptr<grpc::GenericClientAsyncReaderWriter> call =
      fixture.stub->PrepareCall(&context, path, &queue);
  call->StartCall(nullptr);
  grpc::Status status;
  if (Await(&queue)) {
    grpc::Slice slice(request);
    grpc::ByteBuffer buffer(&slice, 1);
    call->Write(buffer, nullptr);
    if (Await(&queue)) {
      call->WritesDone(nullptr);
      Await(&queue);
    }
    grpc::ByteBuffer response;
    for (;;) {
      call->Read(&response, nullptr);
      if (!Await(&queue)) break;
    }
  }
  call->Finish(&status, nullptr);
  Await(&queue);
  return status;
}

bool IsBug(grpc::StatusCode code) {
  return code == grpc::StatusCode::INTERNAL || code == grpc::StatusCode::UNKNOWN ||
         code == grpc::StatusCode::DATA_LOSS;
}

// An empty request message of `method`.
std::unique_ptr<Message> NewRequest(const MethodDescriptor& method) {
  return std::unique_ptr<Message>(google::protobuf::MessageFactory::generated_factory()
                                      ->GetPrototype(method.input_type())
                                      ->New());
}

// Whether `bytes` parse as `method`'s request message. gRPC answers bytes that do not (e.g. invalid
// UTF-8 in a string field) with INTERNAL itself, before any factlens code runs (README, status
// codes); that INTERNAL is gRPC's, not a factlens bug.
bool Parses(const MethodDescriptor& method, const std::string& bytes) {
  return NewRequest(method)->ParseFromString(bytes);
}

// A valid request of each RPC on the demo server, in protobuf text format: the driver sends some of
// them as they are and some a mutation or two away, so that every RPC's success path and the
// validation just beside it are fuzzed too (fields filled at random rarely make a whole request
// valid: Ablate never answered OK that way). An RPC without one is fuzzed from scratch only.
const std::map<std::string, std::string>& ValidRequests() {
  static const auto* requests = new std::map<std::string, std::string>{
      {"ListModels", ""},
      {"Tokenize", R"(model: "demo" text: "The capital of France is")"},
      {"Detokenize", R"(model: "demo" ids: [464, 3139, 286, 4881, 318])"},
      {"Predict", R"(model: "demo" prompt { text: "The capital of France is" } top_k: 5)"},
      {"Decompose",
       R"(model: "demo" prompt { text: "The capital of France is" } target { text: " Paris" }
          include_heads: true logit_lens_top_k: 3 cumulative: true)"},
      {"Rank",
       R"(model: "demo" prompt { text: "The capital of France is" } target { text: " Paris" }
          level: FFN_NEURON top_k: 5)"},
      {"Trace",
       R"(model: "demo" prompt { text: "The capital of France is" }
          neuron { kind: FFN_NEURON layer: 1 neuron: 157 } top_k: 5)"},
      {"ProjectToVocab",
       R"(model: "demo" prompt { text: "The capital of France is" }
          component { kind: FFN_NEURON_VALUE layer: 1 neuron: 157 } top_k: 5)"},
      {"Ablate",
       R"(model: "demo" prompt { text: "The capital of France is" } target { text: " Paris" }
          ablations { component { kind: FFN_NEURON layer: 1 neuron: 157 } })"},
      {"LocateFact",
       R"(model: "demo" prompt { text: "The capital of France is" } target { text: " Paris" }
          options { top_ffn_neurons: 5 top_attention_neurons: 5 top_tokens: 3 })"},
      {"LocateFacts",
       R"(model: "demo"
          items { prompt { text: "The capital of France is" } target { text: " Paris" } }
          items { prompt { text: "The capital of Italy is" } target { text: " Rome" } }
          options { top_ffn_neurons: 5 top_attention_neurons: 5 top_tokens: 3 })"}};
  return *requests;
}

// Statistics of the standalone driver: calls per RPC and code.
std::map<std::string, std::map<std::string, int64_t>>& Counts() {
  static auto* counts = new std::map<std::string, std::map<std::string, int64_t>>;
  return *counts;
}

}  // namespace
}  // namespace factlens

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace factlens;  // NOLINT: the entry point's C linkage keeps it outside the namespace
  if (size == 0) return 0;
  const MethodDescriptor& method = *Service().method(data[0] % Service().method_count());
  const std::string request(reinterpret_cast<const char*>(data) + 1, size - 1);
  const auto start = std::chrono::steady_clock::now();
  const grpc::Status status = Call(method, request);
  const auto took = std::chrono::steady_clock::now() - start;
  const bool unparsable =
      status.error_code() == grpc::StatusCode::INTERNAL && !Parses(method, request);
  ++Counts()[method.name()]
            [unparsable ? "INTERNAL(gRPC: unparsable)" : StatusCodeName(status.error_code())];
  if ((IsBug(status.error_code()) && !unparsable) || took > kCallDeadline + kHangBound) {
    std::fprintf(stderr, "fuzz_requests: %s answered %s after %.1f s: %s\n", method.name().c_str(),
                 StatusCodeName(status.error_code()).c_str(),
                 std::chrono::duration<double>(took).count(), status.error_message().c_str());
    std::abort();
  }
  return 0;
}

namespace factlens {
namespace {

// Random requests built field by field, from values that reach the limits of the demo model
// (4 layers, 4 heads, d = 64, FFN 256, 64 positions, vocabulary 50257) and of the server.
class RequestBuilder {
 public:
  explicit RequestBuilder(uint64_t seed) : rng_(seed) {}

  void Fill(Message* message, int depth) {
    const Descriptor& type = *message->GetDescriptor();
    for (int i = 0; i < type.field_count(); ++i) {
      if (Chance(0.4)) continue;
      const FieldDescriptor& field = *type.field(i);
      const int n = !field.is_repeated() ? 1 : Chance(0.05) ? 300 : Uniform(0, 4);
      for (int k = 0; k < n; ++k) Store(message, field, depth);
    }
  }

  // Changes one field of `message` or of a message inside it: a random value, or cleared. A valid
  // request becomes one a step away from valid.
  void Mutate(Message* message, int depth = 0) {
    const Descriptor& type = *message->GetDescriptor();
    if (type.field_count() == 0) return;
    const FieldDescriptor& field = *type.field(Uniform(0, type.field_count() - 1));
    const Reflection& r = *message->GetReflection();
    if (field.cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE && depth < 4 && Chance(0.7)) {
      if (field.is_repeated() && r.FieldSize(*message, &field) > 0) {
        const int element = Uniform(0, r.FieldSize(*message, &field) - 1);
        return Mutate(r.MutableRepeatedMessage(message, &field, element), depth + 1);
      }
      if (!field.is_repeated() && r.HasField(*message, &field)) {
        return Mutate(r.MutableMessage(message, &field), depth + 1);
      }
    }
    if (Chance(0.3)) {
      r.ClearField(message, &field);
    } else {
      Store(message, field, depth);
    }
  }

  int Uniform(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng_); }
  bool Chance(double p) { return std::bernoulli_distribution(p)(rng_); }

 private:
  template <typename T>
  T Pick(const std::vector<T>& values) {
    return values[Uniform(0, static_cast<int>(values.size()) - 1)];
  }
  // Mostly a value near the demo model's sizes for fields whose name says what they index, else one
  // of the values at the limits.
  int64_t Integer(const FieldDescriptor& f) {
    static const std::map<std::string, std::pair<int, int>> near = {
        {"layer", {-1, 4}},    {"head", {-1, 4}},      {"neuron", {-1, 256}},
        {"position", {-1, 6}}, {"positions", {-1, 6}}, {"source_position", {-1, 6}},
        {"top_k", {0, 12}},    {"ids", {0, 50257}},    {"token_id", {0, 50257}}};
    if (auto it = near.find(f.name()); it != near.end() && Chance(0.7)) {
      return Uniform(it->second.first, it->second.second);
    }
    static const std::vector<int64_t> limits = {0,
                                                1,
                                                -1,
                                                2,
                                                3,
                                                4,
                                                5,
                                                63,
                                                64,
                                                65,
                                                255,
                                                256,
                                                1000,
                                                1001,
                                                6342,
                                                50256,
                                                50257,
                                                -65,
                                                1 << 20,
                                                std::numeric_limits<int32_t>::max(),
                                                std::numeric_limits<int32_t>::min(),
                                                std::numeric_limits<int64_t>::max(),
                                                std::numeric_limits<int64_t>::min()};
    return Pick(limits);
  }
  double Real() {
    static const std::vector<double> values = {0,
                                               1,
                                               -1,
                                               0.5,
                                               2,
                                               1e3,
                                               1e4,
                                               1e30,
                                               -1e30,
                                               std::numeric_limits<double>::quiet_NaN(),
                                               std::numeric_limits<double>::infinity()};
    return Pick(values);
  }
  std::string Text(const FieldDescriptor& f) {
    if (f.name() == "model" && Chance(0.9)) return Pick<std::string>({"", "demo"});
    if (f.name() == "key_name" && Chance(0.7))
      return Pick<std::string>({"in", "gate", "up", "value"});
    static const std::vector<std::string> values = {
        "",
        "The capital of France is",
        " Paris",
        "Paris",
        " France",
        "Paris is the capital of",
        "demo",
        "llama",
        "in",
        "value",
        "L1.N3",
        "\xff\xfe",
        "\xc3",
        "../../etc/passwd",
        "\n{\"event\":\"forged\"}",
        std::string(3000, 'a'),
        "The capital of France is The capital of France is The capital of France is"};
    return Pick(values);
  }
  // Sets `f` (adds one element when it is repeated) to a random value; messages are filled in turn.
  void Store(Message* m, const FieldDescriptor& f, int depth) {
    const Reflection& r = *m->GetReflection();
    const bool add = f.is_repeated();
    switch (f.cpp_type()) {
      case FieldDescriptor::CPPTYPE_INT32: {
        const auto v = static_cast<int32_t>(Integer(f));
        add ? r.AddInt32(m, &f, v) : r.SetInt32(m, &f, v);
        break;
      }
      case FieldDescriptor::CPPTYPE_INT64: {
        const int64_t v = Integer(f);
        add ? r.AddInt64(m, &f, v) : r.SetInt64(m, &f, v);
        break;
      }
      case FieldDescriptor::CPPTYPE_UINT32: {
        const auto v = static_cast<uint32_t>(Integer(f));
        add ? r.AddUInt32(m, &f, v) : r.SetUInt32(m, &f, v);
        break;
      }
      case FieldDescriptor::CPPTYPE_UINT64: {
        const auto v = static_cast<uint64_t>(Integer(f));
        add ? r.AddUInt64(m, &f, v) : r.SetUInt64(m, &f, v);
        break;
      }
      case FieldDescriptor::CPPTYPE_DOUBLE: {
        const double v = Real();
        add ? r.AddDouble(m, &f, v) : r.SetDouble(m, &f, v);
        break;
      }
      case FieldDescriptor::CPPTYPE_FLOAT: {
        const auto v = static_cast<float>(Real());
        add ? r.AddFloat(m, &f, v) : r.SetFloat(m, &f, v);
        break;
      }
      case FieldDescriptor::CPPTYPE_BOOL: {
        const bool v = Chance(0.5);
        add ? r.AddBool(m, &f, v) : r.SetBool(m, &f, v);
        break;
      }
      case FieldDescriptor::CPPTYPE_ENUM: {
        const int v = EnumNumber(f);
        add ? r.AddEnumValue(m, &f, v) : r.SetEnumValue(m, &f, v);
        break;
      }
      case FieldDescriptor::CPPTYPE_STRING: {
        const std::string v = Text(f);
        add ? r.AddString(m, &f, v) : r.SetString(m, &f, v);
        break;
      }
      case FieldDescriptor::CPPTYPE_MESSAGE:
        if (depth < 4) Fill(add ? r.AddMessage(m, &f) : r.MutableMessage(m, &f), depth + 1);
        break;
    }
  }
  // A declared value mostly, sometimes one the schema does not know.
  int EnumNumber(const FieldDescriptor& f) {
    const google::protobuf::EnumDescriptor& e = *f.enum_type();
    return Chance(0.1) ? Uniform(-2, 40) : e.value(Uniform(0, e.value_count() - 1))->number();
  }

  std::mt19937_64 rng_;
};

int Usage(const char* message) {
  std::fprintf(stderr,
               "%s\nUsage: fuzz_requests [--seconds N] [--seed S] [--require_ok] [FILE...]\n"
               "Replays each FILE (one input: a byte choosing the RPC, then the request bytes),\n"
               "then sends random requests of every RPC for N seconds (default 30) to the demo\n"
               "model's in-process server, some of them valid requests mutated once or twice.\n"
               "Aborts on INTERNAL, UNKNOWN, DATA_LOSS or a hang. --require_ok: exit 1 if an RPC\n"
               "never answered OK (its success path went unfuzzed).\n",
               message);
  return 2;
}

}  // namespace
}  // namespace factlens

int main(int argc, char** argv) {
  using namespace factlens;  // NOLINT
  double seconds = 30;
  uint64_t seed = 1;
  bool require_ok = false;
  std::vector<std::string> files;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") return Usage("Fuzzes factlens_server's RPCs.") - 2;
    if (arg == "--require_ok") {
      require_ok = true;
      continue;
    }
    if ((arg == "--seconds" || arg == "--seed") && i + 1 < argc) {
      char* end = nullptr;
      const double value = std::strtod(argv[++i], &end);
      if (*end != '\0' || !(value >= 0)) return Usage("a number is expected");
      if (arg == "--seconds") {
        seconds = value;
      } else {
        seed = static_cast<uint64_t>(value);
      }
    } else if (!arg.empty() && arg[0] == '-') {
      return Usage(("unknown flag " + arg).c_str());
    } else {
      files.push_back(arg);
    }
  }
  for (const std::string& file : files) {
    std::ifstream in(file, std::ios::binary);
    if (!in) return Usage(("cannot read " + file).c_str());
    std::stringstream bytes;
    bytes << in.rdbuf();
    const std::string input = bytes.str();
    LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(input.data()), input.size());
  }
  std::map<std::string, std::unique_ptr<Message>> valid_requests;  // by RPC name, parsed once
  for (const auto& [name, text] : ValidRequests()) {
    const MethodDescriptor* method = Service().FindMethodByName(name);
    std::unique_ptr<Message> request = method ? NewRequest(*method) : nullptr;
    if (!request || !google::protobuf::TextFormat::ParseFromString(text, request.get())) {
      std::fprintf(stderr, "fuzz_requests: the valid request of %s does not parse\n", name.c_str());
      return 2;
    }
    valid_requests[name] = std::move(request);
  }
  RequestBuilder builder(seed);
  // Requests with invalid UTF-8 make protobuf log an error per message; the counts say how many.
  google::protobuf::SetLogHandler(nullptr);
  const auto stop = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  int64_t calls = 0;
  while (std::chrono::steady_clock::now() < stop) {
    const int index = builder.Uniform(0, Service().method_count() - 1);
    const MethodDescriptor& method = *Service().method(index);
    std::unique_ptr<Message> request = NewRequest(method);
    const auto valid = valid_requests.find(method.name());
    if (valid != valid_requests.end() && builder.Chance(0.3)) {
      request->CopyFrom(*valid->second);
      for (int m = builder.Uniform(0, 2); m > 0; --m) builder.Mutate(request.get());
    } else {
      builder.Fill(request.get(), 0);
    }
    std::string input(1, static_cast<char>(index));
    request->AppendToString(&input);
    if (builder.Chance(0.05) && input.size() > 1) {  // a damaged message, now and then
      input[builder.Uniform(1, static_cast<int>(input.size()) - 1)] ^= 0x5a;
    }
    LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(input.data()), input.size());
    ++calls;
  }
  std::printf("fuzz_requests: %lld random calls in %.0f s (seed %llu); by RPC and code:\n",
              static_cast<long long>(calls), seconds, static_cast<unsigned long long>(seed));
  for (const auto& [rpc, codes] : Counts()) {
    std::printf("  %-14s", rpc.c_str());
    for (const auto& [code, n] : codes)
      std::printf(" %s %lld", code.c_str(), static_cast<long long>(n));
    std::printf("\n");
  }
  int status = 0;
  for (int i = 0; require_ok && i < Service().method_count(); ++i) {
    const std::string& name = Service().method(i)->name();
    if (!Counts()[name].count("OK")) {
      std::fprintf(stderr,
                   "fuzz_requests: %s never answered OK: its success path went unfuzzed (give it "
                   "a valid request in ValidRequests)\n",
                   name.c_str());
      status = 1;
    }
  }
  std::fflush(stdout);
  std::_Exit(status);  // the fixture's server is never torn down
}
