// The factlens.v1.FactLens gRPC service: thin handlers that validate a request, take a slot in the
// model's queue, call analysis/ and map the result.
#ifndef FACTLENS_SERVER_SERVICE_H_
#define FACTLENS_SERVER_SERVICE_H_

#include <c10/core/Device.h>

#include <functional>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "analysis/forward.h"
#include "factlens/v1/factlens.grpc.pb.h"
#include "server/metrics.h"
#include "server/model_registry.h"

namespace factlens {

// Limits with reasons (README "Service limits").
struct ServiceOptions {
  int max_prompt_tokens = 512;  // beyond the demo models' 64 positions; bounds trace memory
  int max_top_k = 1000;         // a ranking response of 1000 entries is ~100 KB
  int max_batch_items = 256;    // one LocateFacts call holds one queue slot for all its items
  absl::Duration default_deadline = absl::Minutes(10);  // when the client sets none
  std::vector<std::string> bearer_tokens;               // empty: no authentication
};

// What the server records about each finished request (for metrics and the request log).
struct RequestRecord {
  std::string rpc;
  std::string model;
  grpc::StatusCode code = grpc::StatusCode::OK;
  double latency_seconds = 0;
  double queue_wait_seconds = 0;
  std::string peer;
  // For INTERNAL, UNKNOWN and DATA_LOSS: the original message, which the client is not told
  // (status_mapping.h); empty otherwise. For the server's log only.
  std::string error;
};
using RequestObserver = std::function<void(const RequestRecord&)>;

// Sets factlens_gpu_memory_bytes for the CUDA devices among `devices` (CPU ones are skipped).
// Thread-safe. The service calls it after every request on a CUDA model; main.cc after loading.
void RecordGpuMemory(const ServerMetrics& metrics, const std::vector<c10::Device>& devices);

// The canonical name of a gRPC status code ("OK", "INVALID_ARGUMENT", ...).
std::string StatusCodeName(grpc::StatusCode code);

// Thread-safe: gRPC calls handlers concurrently. `registry` (and `metrics`, which may be null)
// must outlive the service.
class FactLensService final : public v1::FactLens::Service {
 public:
  FactLensService(const ModelRegistry* registry, ServiceOptions options, RequestObserver observer,
                  const ServerMetrics* metrics = nullptr);

  grpc::Status ListModels(grpc::ServerContext* context, const v1::ListModelsRequest* request,
                          v1::ListModelsResponse* response) override;
  grpc::Status Tokenize(grpc::ServerContext* context, const v1::TokenizeRequest* request,
                        v1::TokenizeResponse* response) override;
  grpc::Status Detokenize(grpc::ServerContext* context, const v1::DetokenizeRequest* request,
                          v1::DetokenizeResponse* response) override;
  grpc::Status Predict(grpc::ServerContext* context, const v1::PredictRequest* request,
                       v1::PredictResponse* response) override;
  grpc::Status Decompose(grpc::ServerContext* context, const v1::DecomposeRequest* request,
                         v1::DecomposeResponse* response) override;
  grpc::Status Rank(grpc::ServerContext* context, const v1::RankRequest* request,
                    v1::RankResponse* response) override;
  grpc::Status Trace(grpc::ServerContext* context, const v1::TraceRequest* request,
                     v1::TraceResponse* response) override;
  grpc::Status ProjectToVocab(grpc::ServerContext* context,
                              const v1::ProjectToVocabRequest* request,
                              v1::ProjectToVocabResponse* response) override;
  grpc::Status Ablate(grpc::ServerContext* context, const v1::AblateRequest* request,
                      v1::AblateResponse* response) override;
  grpc::Status LocateFact(grpc::ServerContext* context, const v1::LocateFactRequest* request,
                          grpc::ServerWriter<v1::LocateFactEvent>* writer) override;
  grpc::Status LocateFacts(grpc::ServerContext* context, const v1::LocateFactsRequest* request,
                           grpc::ServerWriter<v1::LocateFactsEvent>* writer) override;

  // Graceful shutdown, first half: from now on every new call is answered UNAVAILABLE ("shutting
  // down", so clients retry elsewhere) while calls already admitted run on. Then WaitUntilIdle
  // returns true once none is left, or false at `deadline`.
  void StartDraining();
  bool WaitUntilIdle(absl::Time deadline);

 private:
  using Work = std::function<absl::Status(const ServedModel&)>;
  // Authentication, model lookup, admission (when `queued`), the work, status mapping, and one
  // RequestRecord for the observer.
  grpc::Status Serve(grpc::ServerContext* context, const char* rpc, const std::string& model,
                     bool queued, const Work& work);
  // What every RPC shares, ListModels included: authentication, refusal while draining, the
  // request metrics, the RequestRecord for the observer (the request log) and the log line of an
  // internal failure, around `work` (which may fill the record's model and queue wait).
  grpc::Status Handle(grpc::ServerContext* context, const char* rpc, const std::string& model,
                      bool queued, const std::function<absl::Status(RequestRecord&)>& work);
  void FillModelList(v1::ListModelsResponse* response) const;
  absl::Status Authenticate(const grpc::ServerContext& context) const;
  // The FullCapture() trace of `ids` through the model's trace cache (counted in metrics).
  absl::StatusOr<std::shared_ptr<const ForwardTrace>> FullTrace(
      const ServedModel& m, const std::vector<int64_t>& ids) const;

  const ModelRegistry* registry_;
  const ServiceOptions options_;
  const RequestObserver observer_;
  const ServerMetrics* metrics_;
  absl::Mutex mu_;
  bool draining_ ABSL_GUARDED_BY(mu_) = false;
  int active_calls_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace factlens

#endif  // FACTLENS_SERVER_SERVICE_H_
