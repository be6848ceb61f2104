// RETURN_IF_ERROR / ASSIGN_OR_RETURN: the two macros Abseil 20220623 lacks.
#pragma once

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define EXECD_CONCAT_INNER_(a, b) a##b
#define EXECD_CONCAT_(a, b) EXECD_CONCAT_INNER_(a, b)

// Returns the status of `expr` from the enclosing function when it is not OK.
#define RETURN_IF_ERROR(expr)                      \
  do {                                             \
    ::absl::Status execd_status_ = (expr);         \
    if (!execd_status_.ok()) return execd_status_; \
  } while (0)

// `ASSIGN_OR_RETURN(auto x, F());` declares or assigns `x` from an OK StatusOr, or returns
// its status.
#define ASSIGN_OR_RETURN(lhs, expr) \
  EXECD_ASSIGN_OR_RETURN_IMPL_(EXECD_CONCAT_(execd_statusor_, __LINE__), lhs, expr)

#define EXECD_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, expr)  \
  auto statusor = (expr);                                  \
  if (!statusor.ok()) return std::move(statusor).status(); \
  lhs = std::move(statusor).value()
