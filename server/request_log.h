// RequestLog writes one logfmt line per request to stderr: who asked, what ran, how it
// ended and where the time went. Thread-safe; a disabled log costs one branch.
#pragma once

#include <functional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "core/command.h"

namespace execd::server {

class RequestLog {
 public:
  explicit RequestLog(bool enabled) : enabled_(enabled) {}

  struct Entry {
    absl::string_view rpc;
    absl::string_view request_id;
    absl::string_view peer;
    absl::string_view argv0;
    const absl::StatusOr<core::Result>* result = nullptr;  // Or the status it failed with.
    absl::Duration total;
  };
  void Write(const Entry& entry);
  // The line of a finished call that came at `received` from `peer` (called only when the
  // log is on: finding the peer costs an allocation).
  void WriteCall(absl::string_view rpc, absl::string_view request_id,
                 const std::function<std::string()>& peer, absl::string_view argv0,
                 const absl::StatusOr<core::Result>& result, absl::Time received);

  // A logfmt line for `entry` (exposed for tests).
  static std::string Format(const Entry& entry, absl::Time now);

  // A server lifecycle line ("event=listening addr=..."), always written.
  void Event(absl::string_view fields);

 private:
  const bool enabled_;
  absl::Mutex mu_;
};

}  // namespace execd::server
