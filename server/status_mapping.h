// The one mapping from absl::Status (used everywhere inside factlens) to grpc::Status.
#ifndef FACTLENS_SERVER_STATUS_MAPPING_H_
#define FACTLENS_SERVER_STATUS_MAPPING_H_

#include <grpcpp/support/status.h>

#include "absl/status/status.h"

namespace factlens {

// Same code (absl and gRPC share the numbering); the message is capped at 1 KiB. INTERNAL,
// UNKNOWN and DATA_LOSS carry a generic message instead, so no internals leak; the caller logs the
// original. Pure function; thread-safe.
grpc::Status ToGrpcStatus(const absl::Status& status);

// Whether ToGrpcStatus replaces the message of a status with `code` by the generic one.
bool HidesMessage(absl::StatusCode code);

}  // namespace factlens

#endif  // FACTLENS_SERVER_STATUS_MAPPING_H_
