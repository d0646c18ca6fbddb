// The gRPC handlers against a fake model backend: a randomly initialised GPT-2 (written once per
// test run, no trained model) with GPT-2's tokenizer, loaded through an injected ModelLoader that
// the tests can hold back or fail. The server runs in process; calls go through a real channel.
// Expected values come from the analysis library called directly on the same model.
#include "server/service.h"

#include <ATen/ATen.h>
#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "analysis/attribution.h"
#include "analysis/forward.h"
#include "analysis/status_macros.h"
#include "server/model_registry.h"
#include "server/running_server.h"
#include "tests/support/random_gpt2.h"
#include "tests/testing.h"

namespace factlens {
namespace {

using ::grpc::StatusCode;
using ::testing::HasSubstr;
using ::testing::Not;

constexpr char kPrompt[] = "The capital of France is";
constexpr int64_t kLayers = 2, kHeads = 4, kDModel = 32, kFfn = 64, kPositions = 32;
constexpr double kFloat32Unit = 0x1p-24;  // float32 unit roundoff

// The fake backend: one random model shared by every registry of the test run.
std::shared_ptr<const Model> FakeModel() {
  static const std::shared_ptr<const Model> model = [] {
    // Removed once loaded (the model holds its weights; a mapping outlives the unlinked file).
    const testing::ScopedTempDir dir;
    const absl::Status written = testing::WriteRandomGpt2(
        dir.path(), {50257, kDModel, kLayers, kHeads, kFfn, kPositions}, /*seed=*/7);
    if (!written.ok()) ADD_FAILURE() << written;
    absl::StatusOr<std::shared_ptr<const Model>> loaded = Model::Load(dir.path());
    if (!loaded.ok()) ADD_FAILURE() << loaded.status();
    return loaded.ok() ? *loaded : nullptr;
  }();
  return model;
}

absl::StatusOr<LoadedModel> LoadFake(const ModelSpec&) {
  LoadedModel loaded;
  loaded.model = FakeModel();
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer =
      Tokenizer::FromJsonFile(testing::SourcePath("tests/data/tokenizers/gpt2/tokenizer.json"));
  if (!tokenizer.ok()) return tokenizer.status();
  loaded.tokenizer = *std::move(tokenizer);
  return loaded;
}

v1::Prompt TextPrompt(const std::string& text) {
  v1::Prompt prompt;
  prompt.set_text(text);
  return prompt;
}

v1::Target TextTarget(const std::string& text) {
  v1::Target target;
  target.set_text(text);
  return target;
}

struct ServerSetup {
  ServiceOptions options;
  ServingLimits limits = {2, 4, int64_t{64} << 20};
  ModelLoader loader = LoadFake;
  std::vector<std::string> models = {"fake"};
};

// A server started as factlens_server starts one (RunningServer), without a port: calls go
// through an in-process channel. Records every RequestRecord the service reports and every log
// event.
class ServiceHarness {
 public:
  explicit ServiceHarness(ServerSetup setup) {
    ServerOptions options;
    for (const std::string& name : setup.models) {
      options.models.push_back({name, "fake://" + name, {}});
    }
    options.loader = setup.loader;
    options.service = setup.options;
    options.limits = setup.limits;
    options.drain = absl::ZeroDuration();
    options.log = [this](const nlohmann::ordered_json& event) {
      absl::MutexLock lock(&mu_);
      events_.push_back(event);
    };
    options.on_request = [this](const RequestRecord& record) {
      absl::MutexLock lock(&mu_);
      records_.push_back(record);
    };
    absl::StatusOr<std::unique_ptr<RunningServer>> server = RunningServer::Start(options);
    EXPECT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    stub_ = v1::FactLens::NewStub(server_->InProcessChannel());
  }

  ModelRegistry& registry() { return server_->registry(); }
  FactLensService& service() { return server_->service(); }
  std::string metrics() { return server_->metrics().Render(); }
  absl::Status WaitUntilReady() { return server_->WaitUntilReady(); }
  v1::FactLens::Stub& stub() { return *stub_; }
  std::vector<RequestRecord> records() {
    absl::MutexLock lock(&mu_);
    return records_;
  }
  std::vector<nlohmann::ordered_json> events() {
    absl::MutexLock lock(&mu_);
    return events_;
  }

 private:
  absl::Mutex mu_;
  std::vector<RequestRecord> records_ ABSL_GUARDED_BY(mu_);
  std::vector<nlohmann::ordered_json> events_ ABSL_GUARDED_BY(mu_);
  std::unique_ptr<RunningServer> server_;  // after mu_: stopped before the logs go
  std::unique_ptr<v1::FactLens::Stub> stub_;
};

class ServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ServerSetup setup;
    setup.options.max_prompt_tokens = 48;  // above the fake model's 32 positions
    setup.options.max_top_k = 50;
    setup.options.max_batch_items = 3;
    harness_ = std::make_unique<ServiceHarness>(setup);
    ASSERT_TRUE(harness_->WaitUntilReady().ok());
  }

  v1::FactLens::Stub& stub() { return harness_->stub(); }

  // Token ids of `text` as the service's tokenizer sees them.
  std::vector<int64_t> Encode(const std::string& text) {
    v1::TokenizeRequest request;
    request.set_text(text);
    v1::TokenizeResponse response;
    grpc::ClientContext context;
    const grpc::Status status = stub().Tokenize(&context, request, &response);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return {response.ids().begin(), response.ids().end()};
  }

  std::unique_ptr<ServiceHarness> harness_;
};

// The code label of factlens_requests_total and of the fuzzer's outcome table.
TEST(StatusCodeNameTest, CanonicalNamesAndUnknownCodes) {
  EXPECT_EQ(StatusCodeName(grpc::StatusCode::OK), "OK");
  EXPECT_EQ(StatusCodeName(grpc::StatusCode::INVALID_ARGUMENT), "INVALID_ARGUMENT");
  EXPECT_EQ(StatusCodeName(grpc::StatusCode::RESOURCE_EXHAUSTED), "RESOURCE_EXHAUSTED");
  EXPECT_EQ(StatusCodeName(grpc::StatusCode::UNAUTHENTICATED), "UNAUTHENTICATED");
  EXPECT_EQ(StatusCodeName(static_cast<grpc::StatusCode>(17)), "CODE_17");
  EXPECT_EQ(StatusCodeName(static_cast<grpc::StatusCode>(-1)), "CODE_-1");
}

TEST_F(ServiceTest, ListModelsReportsTheLoadedShape) {
  v1::ListModelsResponse response;
  grpc::ClientContext context;
  ASSERT_TRUE(stub().ListModels(&context, {}, &response).ok());
  ASSERT_EQ(response.models_size(), 1);
  const v1::ModelInfo& info = response.models(0);
  EXPECT_EQ(info.name(), "fake");
  EXPECT_TRUE(info.ready());
  EXPECT_EQ(info.family(), "gpt2");
  EXPECT_EQ(info.layers(), kLayers);
  EXPECT_EQ(info.heads(), kHeads);
  EXPECT_EQ(info.kv_heads(), kHeads);
  EXPECT_EQ(info.d_model(), kDModel);
  EXPECT_EQ(info.ffn_width(), kFfn);
  EXPECT_EQ(info.vocab_size(), 50257);
  EXPECT_EQ(info.max_positions(), kPositions);
  EXPECT_EQ(info.dtype(), "float32");
  EXPECT_EQ(info.weights_dtype(), "float32");
  EXPECT_EQ(info.device(), "cpu");
  // Like every RPC, it is logged and counted (issue 13: it used to bypass the request path).
  const std::vector<RequestRecord> records = harness_->records();
  ASSERT_FALSE(records.empty());
  EXPECT_EQ(records.back().rpc, "ListModels");
  EXPECT_EQ(records.back().code, grpc::StatusCode::OK);
}

// Autoscalers read the queue depth of every replica, idle ones included: the series exist at 0
// before the first call.
TEST_F(ServiceTest, AnIdleModelReportsZeroRequestsInFlight) {
  EXPECT_THAT(harness_->metrics(), HasSubstr("factlens_requests_in_flight{model=\"fake\"} 0\n"));
  EXPECT_THAT(harness_->metrics(), HasSubstr("factlens_model_ready{model=\"fake\"} 1\n"));
}

TEST_F(ServiceTest, PredictEqualsTheSoftmaxOfAForwardPass) {
  const std::vector<int64_t> ids = Encode(kPrompt);
  ASSERT_EQ(ids.size(), 5u);  // GPT-2: The| capital| of| France| is
  v1::PredictRequest request;
  *request.mutable_prompt() = TextPrompt(kPrompt);
  request.set_top_k(5);
  request.set_position(2);
  v1::PredictResponse response;
  grpc::ClientContext context;
  ASSERT_TRUE(stub().Predict(&context, request, &response).ok());
  EXPECT_THAT(std::vector<int64_t>(response.input_ids().begin(), response.input_ids().end()),
              ::testing::ElementsAreArray(ids));

  absl::StatusOr<ForwardTrace> trace = Forward(*FakeModel(), ids, FullCapture());
  ASSERT_TRUE(trace.ok());
  const at::Tensor probs = at::softmax(trace->logits[2].to(at::kDouble), -1);
  const auto [values, indices] = at::topk(probs, 5);
  ASSERT_EQ(response.predictions_size(), 5);
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ(response.predictions(i).id(), indices[i].item<int64_t>());
    // The same float32 logits (one deterministic forward pass) through a float64 softmax: equal
    // but for float64 rounding (≤ V·2^-53 ≈ 1e-13 relative).
    EXPECT_NEAR(response.predictions(i).score(), values[i].item<double>(), 1e-9);
  }
}

TEST_F(ServiceTest, DecomposeVectorsAddUpToTheFinalResidual) {
  const std::vector<int64_t> ids = Encode(kPrompt);
  absl::StatusOr<ForwardTrace> trace = Forward(*FakeModel(), ids, FullCapture());
  ASSERT_TRUE(trace.ok());
  for (const bool heads : {false, true}) {
    v1::DecomposeRequest request;
    *request.mutable_prompt() = TextPrompt(kPrompt);
    request.add_positions(-1);
    request.add_positions(1);
    request.set_include_vectors(true);
    request.set_include_heads(heads);
    request.mutable_target()->set_token_id(ids[0]);
    v1::DecomposeResponse response;
    grpc::ClientContext context;
    ASSERT_TRUE(stub().Decompose(&context, request, &response).ok());
    ASSERT_EQ(response.positions_size(), 2);
    EXPECT_EQ(response.positions(0).position(), 4);
    EXPECT_EQ(response.positions(1).position(), 1);
    for (const v1::PositionDecomposition& p : response.positions()) {
      EXPECT_EQ(p.token_id(), ids[p.position()]);
      // embedding + per layer (attention | heads + bias) + FFN
      EXPECT_EQ(p.components_size(), 1 + kLayers * (heads ? kHeads + 2 : 2));
      at::Tensor sum = at::zeros({kDModel}, at::kDouble);
      double magnitudes = 0;  // Σ over components of max |component|
      for (const v1::DecomposedComponent& c : p.components()) {
        ASSERT_EQ(c.vector_size(), kDModel);
        const at::Tensor v =
            at::tensor(std::vector<float>(c.vector().begin(), c.vector().end())).to(at::kDouble);
        const double norm = v.norm().item<double>();
        // A float32 norm of d terms errs by at most (d + 2)·2^-24 of itself.
        EXPECT_NEAR(c.norm(), norm, (kDModel + 2) * kFloat32Unit * norm);
        magnitudes += v.abs().max().item<double>();
        sum += v;
      }
      // The float32 residual stream rounds once per addition (2L of them) and each component is a
      // float32 matrix product over at most d terms (heads through W_O): at most
      // (d + 2 + 2L)·2^-24 of the components' magnitudes in all, on any CPU.
      const double bound = (kDModel + 2 + 2 * kLayers) * kFloat32Unit * magnitudes;
      const double error =
          (sum - trace->final_residual[p.position()].to(at::kDouble)).abs().max().item<double>();
      EXPECT_LE(error, bound);
      EXPECT_LE(p.reconstruction_error(), bound);
    }
  }
}

TEST_F(ServiceTest, RankedLayersAreTheAttributionsIncreasesInOrder) {
  const std::vector<int64_t> ids = Encode(kPrompt);
  absl::StatusOr<ForwardTrace> trace = Forward(*FakeModel(), ids, FullCapture());
  ASSERT_TRUE(trace.ok());
  const int64_t target = Encode(" Paris")[0];
  absl::StatusOr<std::unique_ptr<Attribution>> attribution =
      Attribution::Create(*FakeModel(), *trace, {target});
  ASSERT_TRUE(attribution.ok());
  const at::Tensor expected = (*attribution)->FfnLayerIncrease().to(at::kDouble);

  v1::RankRequest request;
  *request.mutable_prompt() = TextPrompt(kPrompt);
  *request.mutable_target() = TextTarget(" Paris");
  request.set_level(v1::RankRequest::FFN_LAYER);
  request.set_top_k(kLayers);
  v1::RankResponse response;
  grpc::ClientContext context;
  ASSERT_TRUE(stub().Rank(&context, request, &response).ok());
  EXPECT_EQ(response.target_id(), target);
  ASSERT_EQ(response.components_size(), kLayers);
  EXPECT_GE(response.components(0).score(), response.components(1).score());
  for (const v1::RankedComponent& c : response.components()) {
    EXPECT_EQ(c.component().kind(), v1::Component::FFN_LAYER);
    // The same float64 evaluation on the same trace (attribution.h).
    EXPECT_NEAR(c.score(), expected[c.component().layer()].item<double>(), 1e-12);
  }
}

TEST_F(ServiceTest, CallsOnOnePromptShareOneForwardPass) {
  const TraceCache& cache = harness_->registry().Get("fake").value()->traces;
  const TraceCache::Stats before = cache.stats();
  for (const auto level : {v1::RankRequest::FFN_LAYER, v1::RankRequest::HEAD}) {
    v1::RankRequest request;
    *request.mutable_prompt() = TextPrompt("The capital of Italy is");
    *request.mutable_target() = TextTarget(" Rome");
    request.set_level(level);
    v1::RankResponse response;
    grpc::ClientContext context;
    ASSERT_TRUE(stub().Rank(&context, request, &response).ok());
  }
  v1::DecomposeRequest decompose;
  *decompose.mutable_prompt() = TextPrompt("The capital of Italy is");
  v1::DecomposeResponse decomposed;
  grpc::ClientContext context;
  ASSERT_TRUE(stub().Decompose(&context, decompose, &decomposed).ok());
  const TraceCache::Stats after = cache.stats();
  EXPECT_EQ(after.misses - before.misses, 1);
  EXPECT_EQ(after.hits - before.hits, 2);
}

TEST_F(ServiceTest, LocateFactStreamsOneEventPerStageThenTheReport) {
  v1::LocateFactRequest request;
  *request.mutable_prompt() = TextPrompt(kPrompt);
  *request.mutable_target() = TextTarget(" Paris");
  grpc::ClientContext context;
  std::unique_ptr<grpc::ClientReader<v1::LocateFactEvent>> reader =
      stub().LocateFact(&context, request);
  std::vector<v1::Progress> progress;
  std::optional<v1::FactReport> report;
  v1::LocateFactEvent event;
  while (reader->Read(&event)) {
    ASSERT_FALSE(report.has_value()) << "an event after the report";
    if (event.has_progress()) progress.push_back(event.progress());
    if (event.has_report()) report = event.report();
  }
  ASSERT_TRUE(reader->Finish().ok());
  ASSERT_TRUE(report.has_value());
  EXPECT_EQ(report->target().id(), Encode(" Paris")[0]);
  EXPECT_EQ(report->attention_layer_increase_size(), kLayers);
  ASSERT_GE(progress.size(), 3u);
  EXPECT_EQ(progress.front().fraction(), 0.0);
  EXPECT_EQ(progress.back().fraction(), 1.0);
  for (size_t i = 1; i < progress.size(); ++i) {
    EXPECT_GE(progress[i].fraction(), progress[i - 1].fraction());
    EXPECT_FALSE(progress[i].stage() == progress[i - 1].stage() &&
                 progress[i].fraction() == progress[i - 1].fraction())
        << "repeated progress event " << progress[i].stage();
  }
}

TEST_F(ServiceTest, LocateFactsReportsABadItemAndGoesOn) {
  v1::LocateFactsRequest request;
  for (const char* target : {" Paris", " Paris France", " Rome"}) {
    v1::FactItem* item = request.add_items();
    *item->mutable_prompt() = TextPrompt(kPrompt);
    *item->mutable_target() = TextTarget(target);
  }
  grpc::ClientContext context;
  std::unique_ptr<grpc::ClientReader<v1::LocateFactsEvent>> reader =
      stub().LocateFacts(&context, request);
  std::vector<v1::ItemResult> items;
  std::optional<v1::BatchAggregate> aggregate;
  v1::LocateFactsEvent event;
  while (reader->Read(&event)) {
    if (event.has_item()) items.push_back(event.item());
    if (event.has_aggregate()) aggregate = event.aggregate();
  }
  ASSERT_TRUE(reader->Finish().ok());
  ASSERT_EQ(items.size(), 3u);
  EXPECT_TRUE(items[0].has_report());
  ASSERT_TRUE(items[1].has_error());
  EXPECT_EQ(items[1].error().code(), static_cast<int>(StatusCode::INVALID_ARGUMENT));
  EXPECT_THAT(items[1].error().message(), HasSubstr("items[1].target"));
  EXPECT_TRUE(items[2].has_report());
  ASSERT_TRUE(aggregate.has_value());
  EXPECT_EQ(aggregate->facts(), 2);
  EXPECT_EQ(aggregate->failed(), 1);
  EXPECT_EQ(aggregate->mean_ffn_layer_increase_size(), kLayers);
}

// One bad request and what the service must answer.
struct BadInput {
  std::string name;
  std::function<grpc::Status(v1::FactLens::Stub&, grpc::ClientContext*)> call;
  StatusCode code;
  std::string field;  // the message must name it
};

using Stub = v1::FactLens::Stub;
using Call = std::function<grpc::Status(Stub&, grpc::ClientContext*)>;

// A unary call of `method` with `request`; the response is dropped.
template <typename Request, typename Response>
Call Unary(grpc::Status (Stub::*method)(grpc::ClientContext*, const Request&, Response*),
           Request request) {
  return [method, request](Stub& stub, grpc::ClientContext* context) {
    Response response;
    return (stub.*method)(context, request, &response);
  };
}

// A server-streaming call read to its end; its final status.
template <typename Event, typename Request>
Call Streamed(std::unique_ptr<grpc::ClientReader<Event>> (Stub::*method)(grpc::ClientContext*,
                                                                         const Request&),
              Request request) {
  return [method, request](Stub& stub, grpc::ClientContext* context) {
    std::unique_ptr<grpc::ClientReader<Event>> reader = (stub.*method)(context, request);
    Event event;
    while (reader->Read(&event)) {
    }
    return reader->Finish();
  };
}

template <typename Request>
Request WithPrompt(const std::string& text) {
  Request request;
  *request.mutable_prompt() = TextPrompt(text);
  return request;
}

std::vector<BadInput> BadInputs() {
  const std::string long_prompt = [] {
    std::string s;
    for (int i = 0; i < 40; ++i) s += " the";
    return s;
  }();
  const std::string too_long_prompt = long_prompt + long_prompt;
  const auto predict = [](const v1::PredictRequest& r) { return Unary(&Stub::Predict, r); };
  const auto rank = [](const v1::RankRequest& r) { return Unary(&Stub::Rank, r); };
  const auto project = [](const v1::ProjectToVocabRequest& r) {
    return Unary(&Stub::ProjectToVocab, r);
  };
  const auto trace = [](const v1::TraceRequest& r) { return Unary(&Stub::Trace, r); };
  const auto ablate = [](const v1::AblateRequest& r) { return Unary(&Stub::Ablate, r); };
  const auto decompose = [](const v1::DecomposeRequest& r) { return Unary(&Stub::Decompose, r); };
  const auto ranked = [](v1::RankRequest::Level level, const std::string& target) {
    v1::RankRequest r = WithPrompt<v1::RankRequest>(kPrompt);
    r.set_level(level);
    *r.mutable_target() = TextTarget(target);
    return r;
  };
  auto component = [](v1::Component::Kind kind, int layer, int head, int neuron) {
    v1::Component c;
    c.set_kind(kind);
    c.set_layer(layer);
    c.set_head(head);
    c.set_neuron(neuron);
    return c;
  };
  const auto projected = [&](v1::Component c) {
    v1::ProjectToVocabRequest r = WithPrompt<v1::ProjectToVocabRequest>(kPrompt);
    *r.mutable_component() = c;
    return r;
  };
  const auto traced = [&](v1::Component c) {
    v1::TraceRequest r = WithPrompt<v1::TraceRequest>(kPrompt);
    *r.mutable_neuron() = c;
    return r;
  };
  const auto ablated = [&](std::vector<v1::Component> components) {
    v1::AblateRequest r = WithPrompt<v1::AblateRequest>(kPrompt);
    *r.mutable_target() = TextTarget(" Paris");
    for (const v1::Component& c : components) *r.add_ablations()->mutable_component() = c;
    return r;
  };

  std::vector<BadInput> cases;
  const StatusCode invalid = StatusCode::INVALID_ARGUMENT;
  const StatusCode exhausted = StatusCode::RESOURCE_EXHAUSTED;
  cases.push_back({"no prompt", predict({}), invalid, "prompt"});
  cases.push_back({"empty prompt", predict(WithPrompt<v1::PredictRequest>("")), invalid, "prompt"});
  cases.push_back({"invalid UTF-8", predict(WithPrompt<v1::PredictRequest>("Paris \xC3\x28")),
                   invalid, "prompt"});
  cases.push_back({"longer than the model's positions",
                   predict(WithPrompt<v1::PredictRequest>(long_prompt)), invalid, "prompt"});
  cases.push_back({"longer than --max_prompt_tokens",
                   predict(WithPrompt<v1::PredictRequest>(too_long_prompt)), exhausted, "prompt"});
  {
    v1::PredictRequest r;
    r.mutable_prompt()->mutable_token_ids()->add_ids(50257);
    cases.push_back({"token id outside the vocabulary", predict(r), invalid, "prompt.token_ids"});
  }
  {
    v1::PredictRequest r = WithPrompt<v1::PredictRequest>(kPrompt);
    r.set_position(5);
    cases.push_back({"position past the end", predict(r), invalid, "position"});
    r.set_position(-6);
    cases.push_back({"position before the start", predict(r), invalid, "position"});
  }
  {
    v1::PredictRequest r = WithPrompt<v1::PredictRequest>(kPrompt);
    r.set_top_k(-1);
    cases.push_back({"negative top_k", predict(r), invalid, "top_k"});
    r.set_top_k(51);
    cases.push_back({"top_k above --max_top_k", predict(r), exhausted, "top_k"});
  }
  {
    v1::PredictRequest r = WithPrompt<v1::PredictRequest>(kPrompt);
    r.set_model("gpt-17");
    cases.push_back({"unknown model", predict(r), StatusCode::NOT_FOUND, "gpt-17"});
  }
  cases.push_back({"multi-token target", rank(ranked(v1::RankRequest::FFN_NEURON, " Paris France")),
                   invalid, "target"});
  cases.push_back({"no target", rank(ranked(v1::RankRequest::FFN_NEURON, "")), invalid, "target"});
  cases.push_back({"unspecified level", rank(ranked(v1::RankRequest::LEVEL_UNSPECIFIED, " Paris")),
                   invalid, "level"});
  {
    v1::RankRequest r = ranked(v1::RankRequest::FFN_NEURON, " Paris");
    r.mutable_target()->clear_text();
    r.mutable_target()->set_token_id(-3);
    cases.push_back({"target id outside the vocabulary", rank(r), invalid, "target"});
  }
  cases.push_back({"layer out of range",
                   project(projected(component(v1::Component::FFN_LAYER, kLayers, 0, 0))), invalid,
                   "layer"});
  cases.push_back({"head out of range",
                   project(projected(component(v1::Component::HEAD, 0, kHeads, 0))), invalid,
                   "head"});
  cases.push_back({"neuron out of range",
                   project(projected(component(v1::Component::FFN_NEURON, 0, 0, kFfn))), invalid,
                   "neuron"});
  cases.push_back({"unspecified component", project(projected({})), invalid, "component.kind"});
  cases.push_back({"trace of a layer", trace(traced(component(v1::Component::FFN_LAYER, 0, 0, 0))),
                   invalid, "neuron.kind"});
  cases.push_back({"trace of a neuron out of range",
                   trace(traced(component(v1::Component::FFN_NEURON, 0, 0, -1))), invalid,
                   "neuron"});
  cases.push_back({"no ablations", ablate(ablated({})), invalid, "ablations"});
  cases.push_back({"ablating the embedding",
                   ablate(ablated({component(v1::Component::EMBEDDING, 0, 0, 0)})), invalid,
                   "ablations"});
  cases.push_back({"more ablations than --max_top_k",
                   ablate(ablated(std::vector<v1::Component>(
                       51, component(v1::Component::FFN_LAYER, 0, 0, 0)))),
                   exhausted, "ablations"});
  {
    v1::DecomposeRequest r = WithPrompt<v1::DecomposeRequest>(kPrompt);
    r.add_positions(9);
    cases.push_back({"decomposed position out of range", decompose(r), invalid, "positions"});
    r.clear_positions();
    r.set_logit_lens_top_k(51);
    cases.push_back({"logit lens above --max_top_k", decompose(r), exhausted, "logit_lens_top_k"});
  }
  cases.push_back(
      {"no batch items", Streamed<v1::LocateFactsEvent>(&Stub::LocateFacts, {}), invalid, "items"});
  {
    v1::LocateFactsRequest r;
    for (int i = 0; i < 4; ++i) *r.add_items()->mutable_prompt() = TextPrompt(kPrompt);
    cases.push_back({"more items than --max_batch_items",
                     Streamed<v1::LocateFactsEvent>(&Stub::LocateFacts, r), exhausted, "items"});
  }
  {
    v1::LocateFactRequest r = WithPrompt<v1::LocateFactRequest>(kPrompt);
    *r.mutable_target() = TextTarget(" Paris");
    r.mutable_options()->set_top_ffn_neurons(51);
    cases.push_back({"locate option above --max_top_k",
                     Streamed<v1::LocateFactEvent>(&Stub::LocateFact, r), exhausted,
                     "options.top_ffn_neurons"});
  }
  return cases;
}

TEST_F(ServiceTest, BadInputGetsTheRightCodeNamingTheField) {
  for (const BadInput& bad : BadInputs()) {
    grpc::ClientContext context;
    const grpc::Status status = bad.call(stub(), &context);
    EXPECT_EQ(status.error_code(), bad.code) << bad.name << ": " << status.error_message();
    EXPECT_THAT(status.error_message(), HasSubstr(bad.field)) << bad.name;
  }
  // Every rejected request was recorded with its code, none as OK or INTERNAL.
  for (const RequestRecord& record : harness_->records()) {
    if (record.rpc == "Tokenize") continue;
    EXPECT_NE(record.code, StatusCode::OK) << record.rpc;
    EXPECT_NE(record.code, StatusCode::INTERNAL) << record.rpc;
  }
}

TEST(ServiceLoadingTest, UnavailableWhileLoadingThenServes) {
  absl::Notification release;
  ServerSetup setup;
  setup.loader = [&release](const ModelSpec& spec) {
    release.WaitForNotification();
    return LoadFake(spec);
  };
  ServiceHarness harness(setup);
  v1::PredictRequest request = WithPrompt<v1::PredictRequest>(kPrompt);
  v1::PredictResponse response;
  {
    grpc::ClientContext context;
    const grpc::Status status = harness.stub().Predict(&context, request, &response);
    EXPECT_EQ(status.error_code(), StatusCode::UNAVAILABLE);
    EXPECT_THAT(status.error_message(), HasSubstr("loading"));
    v1::ListModelsResponse models;
    grpc::ClientContext list_context;
    ASSERT_TRUE(harness.stub().ListModels(&list_context, {}, &models).ok());
    EXPECT_FALSE(models.models(0).ready());
  }
  release.Notify();
  ASSERT_TRUE(harness.registry().WaitUntilLoaded().ok());
  grpc::ClientContext context;
  EXPECT_TRUE(harness.stub().Predict(&context, request, &response).ok());
}

TEST(ServiceLoadingTest, AFailedLoadIsFailedPreconditionWithoutInternals) {
  ServerSetup setup;
  setup.models = {"broken", "fake"};
  setup.loader = [](const ModelSpec& spec) -> absl::StatusOr<LoadedModel> {
    if (spec.name == "broken")
      return absl::DataLossError("/srv/secret/model.safetensors: truncated");
    return LoadFake(spec);
  };
  ServiceHarness harness(setup);
  EXPECT_FALSE(harness.registry().WaitUntilLoaded().ok());
  for (const char* model : {"broken", "fake", ""}) {
    v1::PredictRequest request = WithPrompt<v1::PredictRequest>(kPrompt);
    request.set_model(model);
    v1::PredictResponse response;
    grpc::ClientContext context;
    const grpc::Status status = harness.stub().Predict(&context, request, &response);
    if (std::string(model) == "broken") {
      EXPECT_EQ(status.error_code(), StatusCode::FAILED_PRECONDITION);
      EXPECT_THAT(status.error_message(), Not(HasSubstr("/srv/secret")));
    } else if (std::string(model) == "fake") {
      EXPECT_TRUE(status.ok()) << status.error_message();  // the other model still serves
    } else {
      // With two models served, an empty name is ambiguous.
      EXPECT_EQ(status.error_code(), StatusCode::NOT_FOUND);
      EXPECT_THAT(status.error_message(), HasSubstr("broken, fake"));
    }
  }
}

// An internal failure: the loader hands over a model whose first FFN output matrix is (wrongly)
// 2 × 2, so the forward pass throws inside libtorch. The client gets INTERNAL with a generic
// message; the details reach the request record and the log event only.
TEST(ServiceInternalErrorTest, InternalRepliesHideTheDetailsWhichTheLogKeeps) {
  ServerSetup setup;
  setup.loader = [](const ModelSpec& spec) -> absl::StatusOr<LoadedModel> {
    const testing::ScopedTempDir dir;
    FACTLENS_RETURN_IF_ERROR(testing::WriteRandomGpt2(
        dir.path(), {50257, kDModel, kLayers, kHeads, kFfn, kPositions}, /*seed=*/3));
    absl::StatusOr<LoadedModel> loaded = LoadFake(spec);
    if (!loaded.ok()) return loaded.status();
    absl::StatusOr<std::shared_ptr<const Model>> model = Model::Load(dir.path());
    if (!model.ok()) return model.status();
    at::Tensor damaged = (*model)->weights().layers[0].out_weight;  // shares the model's tensor
    damaged.resize_({2, 2});
    loaded->model = *model;
    return loaded;
  };
  ServiceHarness harness(setup);
  ASSERT_TRUE(harness.registry().WaitUntilLoaded().ok());
  v1::PredictResponse response;
  grpc::ClientContext context;
  const grpc::Status status =
      harness.stub().Predict(&context, WithPrompt<v1::PredictRequest>(kPrompt), &response);
  EXPECT_EQ(status.error_code(), StatusCode::INTERNAL);
  EXPECT_EQ(status.error_message(), "internal error in factlens (details are in the server log)");
  const std::vector<RequestRecord> records = harness.records();
  ASSERT_EQ(records.size(), 1u);
  EXPECT_EQ(records[0].code, StatusCode::INTERNAL);
  EXPECT_THAT(records[0].error, HasSubstr("shapes cannot be multiplied"));
  bool logged = false;
  for (const nlohmann::ordered_json& event : harness.events()) {
    if (event.value("event", "") != "request") continue;
    logged = true;
    EXPECT_EQ(event["code"], static_cast<int>(StatusCode::INTERNAL));
    EXPECT_THAT(event["error"].get<std::string>(), HasSubstr("shapes cannot be multiplied"));
  }
  EXPECT_TRUE(logged);
}

// Scheduling: the test takes the model's only slot itself, so requests must wait or be refused.
class SchedulingTest : public ::testing::Test {
 protected:
  void Start(int max_queued) {
    ServerSetup setup;
    setup.limits.max_concurrent = 1;
    setup.limits.max_queued = max_queued;
    harness_ = std::make_unique<ServiceHarness>(setup);
    ASSERT_TRUE(harness_->registry().WaitUntilLoaded().ok());
    absl::StatusOr<std::shared_ptr<const ServedModel>> served = harness_->registry().Get("fake");
    ASSERT_TRUE(served.ok());
    absl::StatusOr<Slot> slot =
        (*served)->queue.Acquire(absl::Now() + absl::Seconds(5), [] { return false; });
    ASSERT_TRUE(slot.ok());
    held_.emplace(*std::move(slot));
  }

  grpc::Status Predict(grpc::ClientContext* context) {
    v1::PredictResponse response;
    return harness_->stub().Predict(context, WithPrompt<v1::PredictRequest>(kPrompt), &response);
  }

  RequestRecord LastRecord() {
    const std::vector<RequestRecord> records = harness_->records();
    return records.empty() ? RequestRecord{} : records.back();
  }

  std::unique_ptr<ServiceHarness> harness_;
  std::optional<Slot> held_;
};

TEST_F(SchedulingTest, AFullQueueIsRefusedAtOnce) {
  Start(/*max_queued=*/0);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  const auto start = std::chrono::steady_clock::now();
  const grpc::Status status = Predict(&context);
  EXPECT_EQ(status.error_code(), StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
  EXPECT_EQ(LastRecord().code, StatusCode::RESOURCE_EXHAUSTED);
  held_.reset();
  grpc::ClientContext again;
  EXPECT_TRUE(Predict(&again).ok());  // the slot is free again
}

TEST_F(SchedulingTest, TheDeadlineIsHonouredWhileQueued) {
  Start(/*max_queued=*/1);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(300));
  EXPECT_EQ(Predict(&context).error_code(), StatusCode::DEADLINE_EXCEEDED);
  // The server gives up by itself and says why.
  for (int i = 0; i < 100 && LastRecord().rpc.empty(); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  const RequestRecord record = LastRecord();
  EXPECT_EQ(record.code, StatusCode::DEADLINE_EXCEEDED);
  EXPECT_GE(record.latency_seconds, 0.2);
}

TEST_F(SchedulingTest, ACancelledCallLeavesTheQueue) {
  Start(/*max_queued=*/1);
  grpc::ClientContext context;
  std::thread canceller([&context] {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    context.TryCancel();
  });
  EXPECT_EQ(Predict(&context).error_code(), StatusCode::CANCELLED);
  canceller.join();
  for (int i = 0; i < 100 && LastRecord().rpc.empty(); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_EQ(LastRecord().code, StatusCode::CANCELLED);
  // Its place in the queue is free: another request can wait there.
  held_.reset();
  grpc::ClientContext again;
  EXPECT_TRUE(Predict(&again).ok());
}

TEST_F(SchedulingTest, DrainingRefusesNewCallsAndWaitsForAdmittedOnes) {
  Start(/*max_queued=*/1);
  FactLensService& service = harness_->service();
  EXPECT_TRUE(service.WaitUntilIdle(absl::Now()));
  grpc::Status admitted_status;
  std::thread admitted([&] {
    grpc::ClientContext context;
    admitted_status = Predict(&context);  // waits in the queue behind the held slot
  });
  while (service.WaitUntilIdle(absl::Now())) absl::SleepFor(absl::Milliseconds(5));
  service.StartDraining();
  grpc::ClientContext context;
  const grpc::Status refused = Predict(&context);
  EXPECT_EQ(refused.error_code(), StatusCode::UNAVAILABLE);
  EXPECT_THAT(refused.error_message(), HasSubstr("shutting down"));
  grpc::ClientContext list_context;
  v1::ListModelsResponse models;
  EXPECT_EQ(harness_->stub().ListModels(&list_context, {}, &models).error_code(),
            StatusCode::UNAVAILABLE);  // a draining server sends clients elsewhere for all calls
  EXPECT_FALSE(service.WaitUntilIdle(absl::Now() + absl::Milliseconds(100)));
  held_.reset();  // the admitted call gets its slot and finishes
  EXPECT_TRUE(service.WaitUntilIdle(absl::Now() + absl::Seconds(30)));
  admitted.join();
  EXPECT_TRUE(admitted_status.ok()) << admitted_status.error_message();
}

TEST(ServiceAuthTest, BearerTokensAreRequiredWhenConfigured) {
  ServerSetup setup;
  setup.options.bearer_tokens = {"alpha-token", "beta-token"};
  ServiceHarness harness(setup);
  ASSERT_TRUE(harness.registry().WaitUntilLoaded().ok());
  const auto list = [&](const std::string& authorization) {
    grpc::ClientContext context;
    if (!authorization.empty()) context.AddMetadata("authorization", authorization);
    v1::ListModelsResponse response;
    return harness.stub().ListModels(&context, {}, &response).error_code();
  };
  const auto predict = [&](const std::string& authorization) {
    grpc::ClientContext context;
    if (!authorization.empty()) context.AddMetadata("authorization", authorization);
    v1::PredictResponse response;
    return harness.stub()
        .Predict(&context, WithPrompt<v1::PredictRequest>(kPrompt), &response)
        .error_code();
  };
  for (const auto& call : {std::function<StatusCode(const std::string&)>(list),
                           std::function<StatusCode(const std::string&)>(predict)}) {
    EXPECT_EQ(call(""), StatusCode::UNAUTHENTICATED);
    EXPECT_EQ(call("Bearer wrong-token"), StatusCode::UNAUTHENTICATED);
    EXPECT_EQ(call("Bearer alpha-toke"), StatusCode::UNAUTHENTICATED);
    EXPECT_EQ(call("alpha-token"), StatusCode::UNAUTHENTICATED);
    EXPECT_EQ(call("Bearer alpha-token"), StatusCode::OK);
    EXPECT_EQ(call("Bearer beta-token"), StatusCode::OK);
  }
}

}  // namespace
}  // namespace factlens
