// RequestLog writes one logfmt line per request to stderr: who asked, what ran, how it
// ended and where the time went, and the server's lifecycle events.
//
// Request lines are formatted on the caller's thread and written by a thread of the log's
// own, so a slow stderr (a full pipe to a log shipper) never holds up the thread that
// answered the call; past kMaxBufferedBytes waiting, lines are dropped and counted, and the
// count is logged. Events are written before Event returns. Thread-safe; a disabled log
// costs one branch per request.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "core/command.h"

namespace execd::server {

class RequestLog {
 public:
  static constexpr size_t kMaxBufferedBytes = 8 << 20;

  explicit RequestLog(bool enabled);
  // Writes what is buffered.
  ~RequestLog();

  struct Entry {
    absl::string_view rpc;
    absl::string_view request_id;
    absl::string_view peer;
    absl::string_view identity;  // Who the caller proved to be (server/auth.h); empty: nobody.
    absl::string_view argv0;
    const absl::StatusOr<core::Result>* result = nullptr;  // Or the status it failed with.
    absl::Duration total;
  };
  void Write(const Entry& entry);
  // The line of a finished call from `peer` that took `total` (called only when the log is
  // on: finding the peer costs an allocation).
  void WriteCall(absl::string_view rpc, absl::string_view request_id,
                 const std::function<std::string()>& peer, absl::string_view identity,
                 absl::string_view argv0, const absl::StatusOr<core::Result>& result,
                 absl::Duration total);

  // A logfmt line for `entry` (exposed for tests).
  static std::string Format(const Entry& entry, absl::Time now);

  // A server lifecycle line ("event=listening addr=..."), always written, and flushed before
  // this returns.
  void Event(absl::string_view fields);

 private:
  void Append(std::string line);
  void Run();

  const bool enabled_;
  absl::Mutex mu_;
  std::string buffer_ ABSL_GUARDED_BY(mu_);  // Lines not yet written.
  int64_t dropped_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t appended_ ABSL_GUARDED_BY(mu_) = 0;  // Lines (and drop notes) appended so far,
  int64_t written_ ABSL_GUARDED_BY(mu_) = 0;   // and how many of them are written.
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread writer_;
};

}  // namespace execd::server
