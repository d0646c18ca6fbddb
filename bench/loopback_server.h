// A FactLensService on 127.0.0.1 serving one in-memory model, for benchmarks that time RPCs as a
// client sees them (gpu_bench, locate_bench): the same service, admission queue and request
// conversion as factlens_server, with the trace cache off so that every call runs its forward pass.
#ifndef FACTLENS_BENCH_LOOPBACK_SERVER_H_
#define FACTLENS_BENCH_LOOPBACK_SERVER_H_

#include <grpcpp/grpcpp.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "analysis/weights.h"
#include "factlens/v1/factlens.grpc.pb.h"
#include "server/model_registry.h"
#include "server/service.h"

namespace factlens {

// Serves `model` as kModelName with GPT-2's tokenizer (tests/data), which only names the tokens of
// replies: requests carry token ids, so any model's vocabulary works. Thread-safe; the server stops
// when the object is destroyed.
class LoopbackServer {
 public:
  static constexpr char kModelName[] = "bench";

  // `max_concurrent` requests run at once (as many wait). Errors: Unavailable when no loopback port
  // can be opened; those of reading the tokenizer.
  static absl::StatusOr<std::unique_ptr<LoopbackServer>> Start(std::shared_ptr<const Model> model,
                                                               int max_concurrent);
  ~LoopbackServer();

  // A client on a TCP connection of its own.
  std::unique_ptr<v1::FactLens::Stub> NewClient() const;

 private:
  LoopbackServer() = default;
  std::unique_ptr<ModelRegistry> registry_;
  std::unique_ptr<FactLensService> service_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
};

// The requests the benchmarks time, for kModelName on a prompt of token ids: Predict (default
// options: the last position's top 10) and the standard LocateFact (default options) of `target`.
struct BenchRequests {
  v1::PredictRequest predict;
  v1::LocateFactRequest locate_fact;
};
BenchRequests RequestsFor(const std::vector<int64_t>& ids, int64_t target);

// One LocateFact call until its report: the client-side latency in seconds. Internal when the call
// fails or its stream ends without a report.
absl::StatusOr<double> TimedLocateFact(v1::FactLens::Stub& stub,
                                       const v1::LocateFactRequest& request);

// One Predict call: the client-side latency in seconds. Internal when the call fails.
absl::StatusOr<double> TimedPredict(v1::FactLens::Stub& stub, const v1::PredictRequest& request);

}  // namespace factlens

#endif  // FACTLENS_BENCH_LOOPBACK_SERVER_H_
