#include "server/status_mapping.h"

#include <string>

namespace factlens {

bool HidesMessage(absl::StatusCode code) {
  return code == absl::StatusCode::kInternal || code == absl::StatusCode::kUnknown ||
         code == absl::StatusCode::kDataLoss;
}

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  const auto code = static_cast<grpc::StatusCode>(status.code());
  if (HidesMessage(status.code())) {
    return grpc::Status(code, "internal error in factlens (details are in the server log)");
  }
  constexpr size_t kMaxMessage = 1024;
  return grpc::Status(code, std::string(status.message().substr(0, kMaxMessage)));
}

}  // namespace factlens
