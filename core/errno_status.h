// Turns an errno value into an absl::Status whose code a caller can act on.
#pragma once

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace execd::core {

// Maps `err` to a status code (ENOENT -> NOT_FOUND, EACCES -> PERMISSION_DENIED,
// EMFILE/EAGAIN/ENOMEM -> RESOURCE_EXHAUSTED, ...) with the message
// "<what>: <strerror>".
// The errno rides along with the status (ErrnoOf reads it back).
absl::Status ErrnoToStatus(int err, absl::string_view what);

// `status` carrying `err` as ErrnoToStatus's do, for a status whose message says more than
// strerror would.
absl::Status WithErrno(absl::Status status, int err);

// The errno of a status made by ErrnoToStatus or WithErrno, or 0.
int ErrnoOf(const absl::Status& status);

}  // namespace execd::core
