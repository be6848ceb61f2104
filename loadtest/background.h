// A busy machine on demand: `nice 19` loops, child processes of the load generator, that
// burn CPU or fork /bin/true while the load runs, in the caller's session (and with it its
// scheduler autogroup) or each in a session of its own, as a CI job's would be.
//
// Start from a thread that lives as long as the loops should (the main thread): they get
// SIGKILL when it ends (PR_SET_PDEATHSIG), should the load generator die without Stop.
// Stop may be called from any thread, more than once.
#pragma once

#include <signal.h>
#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"

namespace execd::loadtest {

enum class BackgroundKind { kNone, kCpu, kFork };
enum class BackgroundSession { kSame, kOwn };

// Flag syntax: none|cpu|fork and same|own.
bool AbslParseFlag(absl::string_view text, BackgroundKind* kind, std::string* error);
std::string AbslUnparseFlag(BackgroundKind kind);
bool AbslParseFlag(absl::string_view text, BackgroundSession* session, std::string* error);
std::string AbslUnparseFlag(BackgroundSession session);

class BackgroundLoad {
 public:
  // Starts `loops` loops of `kind` (none starts nothing); returns once each runs niced in
  // its session, or the step that failed.
  static absl::StatusOr<std::unique_ptr<BackgroundLoad>> Start(BackgroundKind kind,
                                                               BackgroundSession session,
                                                               int loops = 2);
  ~BackgroundLoad() { Stop(); }

  // Kills each loop's process group (the loop and the /bin/true it may have running) and
  // reaps them all: Start makes this process their subreaper.
  void Stop();
  // The loops' process ids, as started (Stop does not clear them).
  const std::vector<pid_t>& pids() const { return pids_; }
  // "cpu x2, own sessions, nice 19, pids 123,124" or "none".
  std::string Describe() const;

 private:
  BackgroundLoad(BackgroundKind kind, BackgroundSession session) : kind_(kind), session_(session) {}

  const BackgroundKind kind_;
  const BackgroundSession session_;
  std::vector<pid_t> pids_;
  absl::Mutex mu_;
  bool stopped_ ABSL_GUARDED_BY(mu_) = false;
};

// Blocks SIGINT, SIGTERM and SIGHUP (those not ignored) in the calling thread, hence in the
// threads it starts from now on, and returns them. Call before any other thread starts.
sigset_t BlockTerminationSignals();
// Waits for `signals` on a thread of its own: on one, stops `load` and ends the process as
// the signal's default action would. `load` must outlive the process: the thread may use it
// at any time.
void StopOnSignal(const sigset_t& signals, BackgroundLoad* load);

}  // namespace execd::loadtest
