#include "bench/loopback_server.h"

#include <chrono>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "analysis/status_macros.h"
#include "analysis/tokenizer/tokenizer.h"
#include "bench/timing.h"

namespace factlens {

absl::StatusOr<std::unique_ptr<LoopbackServer>> LoopbackServer::Start(
    std::shared_ptr<const Model> model, int max_concurrent) {
  std::unique_ptr<LoopbackServer> s(new LoopbackServer);
  const ModelLoader loader = [model](const ModelSpec&) -> absl::StatusOr<LoadedModel> {
    LoadedModel loaded;
    loaded.model = model;
    FACTLENS_ASSIGN_OR_RETURN(
        loaded.tokenizer, Tokenizer::FromJsonFile(std::string(FACTLENS_SOURCE_DIR) +
                                                  "/tests/data/tokenizers/gpt2/tokenizer.json"));
    return loaded;
  };
  const ServingLimits limits{max_concurrent, max_concurrent, /*trace_cache_bytes=*/0};
  s->registry_ = std::make_unique<ModelRegistry>(std::vector<ModelSpec>{{kModelName, "memory", {}}},
                                                 limits, loader);
  s->service_ = std::make_unique<FactLensService>(s->registry_.get(), ServiceOptions{}, nullptr);
  grpc::ServerBuilder builder;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &s->port_);
  builder.RegisterService(s->service_.get());
  s->server_ = builder.BuildAndStart();
  if (s->server_ == nullptr || s->port_ == 0) {
    return absl::UnavailableError("could not listen on 127.0.0.1");
  }
  s->registry_->StartLoading();
  FACTLENS_RETURN_IF_ERROR(s->registry_->WaitUntilLoaded());
  return s;
}

LoopbackServer::~LoopbackServer() {
  if (server_ != nullptr) server_->Shutdown();
}

std::unique_ptr<v1::FactLens::Stub> LoopbackServer::NewClient() const {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  args.SetMaxReceiveMessageSize(-1);
  return v1::FactLens::NewStub(grpc::CreateCustomChannel(absl::StrCat("127.0.0.1:", port_),
                                                         grpc::InsecureChannelCredentials(), args));
}

BenchRequests RequestsFor(const std::vector<int64_t>& ids, int64_t target) {
  BenchRequests r;
  r.locate_fact.set_model(LoopbackServer::kModelName);
  for (const int64_t id : ids) r.locate_fact.mutable_prompt()->mutable_token_ids()->add_ids(id);
  r.locate_fact.mutable_target()->set_token_id(target);
  r.predict.set_model(LoopbackServer::kModelName);
  *r.predict.mutable_prompt() = r.locate_fact.prompt();
  return r;
}

absl::StatusOr<double> TimedLocateFact(v1::FactLens::Stub& stub,
                                       const v1::LocateFactRequest& request) {
  const SteadyClock::time_point start = SteadyClock::now();
  grpc::ClientContext context;
  const std::unique_ptr<grpc::ClientReader<v1::LocateFactEvent>> reader =
      stub.LocateFact(&context, request);
  v1::LocateFactEvent event;
  bool reported = false;
  while (reader->Read(&event)) reported = reported || event.has_report();
  const grpc::Status status = reader->Finish();
  if (!status.ok()) {
    return absl::InternalError(absl::StrCat("LocateFact failed: ", status.error_message()));
  }
  if (!reported) return absl::InternalError("LocateFact ended without a report");
  return SecondsSince(start);
}

absl::StatusOr<double> TimedPredict(v1::FactLens::Stub& stub, const v1::PredictRequest& request) {
  const SteadyClock::time_point start = SteadyClock::now();
  grpc::ClientContext context;
  v1::PredictResponse response;
  const grpc::Status status = stub.Predict(&context, request, &response);
  if (!status.ok()) {
    return absl::InternalError(absl::StrCat("Predict failed: ", status.error_message()));
  }
  return SecondsSince(start);
}

}  // namespace factlens
