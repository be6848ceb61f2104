#include "tools/execctl/top.h"

#include <fcntl.h>
#include <grpcpp/grpcpp.h>
#include <poll.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <iostream>
#include <string>

#include "absl/time/time.h"
#include "core/clock.h"
#include "execd/v1/execd.grpc.pb.h"
#include "tools/execctl/connect.h"
#include "tools/execctl/execctl.h"
#include "tools/execctl/metrics_snapshot.h"
#include "tools/execctl/top_figures.h"
#include "tools/execctl/top_frame.h"

namespace execd::execctl {
namespace {

// Clears the screen and puts the cursor home: each frame is drawn over the last.
constexpr char kClearScreen[] = "\x1b[H\x1b[2J";

// Ctrl-C: the handler writes to this pipe (all a handler may do), which the wait between
// frames watches.
int interrupt_pipe[2] = {-1, -1};

void OnInterrupt(int) {
  const char byte = 0;
  ssize_t ignored = write(interrupt_pipe[1], &byte, 1);
  (void)ignored;
}

bool WatchInterrupt() {
  if (pipe2(interrupt_pipe, O_CLOEXEC | O_NONBLOCK) < 0) return false;
  struct sigaction action = {};
  action.sa_handler = OnInterrupt;
  sigemptyset(&action.sa_mask);
  return sigaction(SIGINT, &action, nullptr) == 0;
}

// Waits until `until` on `clock`; false when Ctrl-C came first.
bool WaitUntil(const core::Clock& clock, absl::Time until) {
  for (;;) {
    const absl::Duration left = until - clock.Now();
    if (left <= absl::ZeroDuration()) return true;
    pollfd p{interrupt_pipe[0], POLLIN, 0};
    const int ms =
        static_cast<int>(absl::ToInt64Milliseconds(absl::Ceil(left, absl::Milliseconds(1))));
    const int ready = poll(&p, 1, ms);
    if (ready > 0) return false;
    if (ready < 0 && errno != EINTR) return true;
  }
}

grpc::Status TakeSnapshot(v1::Executor::Stub& stub, const core::Clock& clock,
                          MetricsSnapshot* out) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  v1::StatusRequest request;
  request.set_include_metrics(true);
  v1::StatusResponse response;
  grpc::Status status = stub.GetStatus(&context, request, &response);
  if (status.ok()) *out = MetricsSnapshot(response.metrics(), clock.Now());
  return status;
}

// Draws `frame`: over the last one on a terminal, cut to its size; else after a blank line.
void Draw(const std::string& frame, bool terminal, bool first) {
  if (!terminal) {
    std::cout << (first ? "" : "\n") << frame << std::flush;
    return;
  }
  winsize ws{};
  const bool sized = ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_row > 0 && ws.ws_col > 0;
  std::cout << kClearScreen << (sized ? FitToScreen(frame, ws.ws_row, ws.ws_col) : frame)
            << std::flush;
}

}  // namespace

int Top(const Args& args, const std::shared_ptr<grpc::Channel>& channel) {
  if (!WatchInterrupt()) {
    std::cerr << "execctl: cannot watch for Ctrl-C: " << strerror(errno) << "\n";
    return kExitError;
  }
  const bool terminal = isatty(STDOUT_FILENO) == 1;
  const core::Clock& clock = core::MonotonicClock::Get();
  auto stub = v1::Executor::NewStub(channel);
  MetricsSnapshot after;
  grpc::Status status = TakeSnapshot(*stub, clock, &after);
  if (!status.ok()) return ExitForRpcError(status, args.target);
  MetricsSnapshot before = after;  // The first frame: totals and gauges, no rates yet.
  absl::Time next = after.taken();
  for (long long frame = 1;; ++frame) {
    Draw(FormatFrame(ComputeFigures(before, after), args.target), terminal, frame == 1);
    if (args.iterations > 0 && frame >= args.iterations) return 0;
    // On the interval's beat, unless a slow answer made it late.
    next = std::max(next + args.interval, clock.Now());
    if (!WaitUntil(clock, next)) return 0;
    before = std::move(after);
    status = TakeSnapshot(*stub, clock, &after);
    if (!status.ok()) {
      // Not retried: a screen that keeps a gone server's last figures would mislead.
      std::cerr << "execctl: top stopped: no snapshot from " << args.target << "\n";
      return ExitForRpcError(status, args.target);
    }
  }
}

}  // namespace execd::execctl
