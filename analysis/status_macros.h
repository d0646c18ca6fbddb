// Early-return helpers for absl::Status / absl::StatusOr.
#ifndef FACTLENS_ANALYSIS_STATUS_MACROS_H_
#define FACTLENS_ANALYSIS_STATUS_MACROS_H_

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define FACTLENS_CONCAT_INNER_(a, b) a##b
#define FACTLENS_CONCAT_(a, b) FACTLENS_CONCAT_INNER_(a, b)

// Returns the status of `expr` from the enclosing function if it is not OK.
#define FACTLENS_RETURN_IF_ERROR(expr)                   \
  do {                                                   \
    const ::absl::Status factlens_status_ = (expr);      \
    if (!factlens_status_.ok()) return factlens_status_; \
  } while (0)

// Evaluates `rexpr` (a StatusOr); returns its status if not OK, else moves its value into `lhs`.
#define FACTLENS_ASSIGN_OR_RETURN(lhs, rexpr) \
  FACTLENS_ASSIGN_OR_RETURN_IMPL_(FACTLENS_CONCAT_(factlens_statusor_, __LINE__), lhs, rexpr)
#define FACTLENS_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, rexpr) \
  auto statusor = (rexpr);                                    \
  if (!statusor.ok()) return statusor.status();               \
  lhs = *std::move(statusor)

#endif  // FACTLENS_ANALYSIS_STATUS_MACROS_H_
