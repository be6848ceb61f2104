// ReportChannel: a pre-warmed process's descriptor 3 (ChildProcess::Options::exit_report),
// on which it says two things, one line each: "ready", once it has warmed up, and for its
// request "exit CODE USER_US SYSTEM_US MAX_RSS_KIB", written after it closed its stdout
// and stderr, just before it exits. Reported so, the exit needs no wait for the kernel to
// tear the process down. The process finds the descriptor's number in its environment.
//
// Thread-safety: created on the spawning thread; from AwaitReady() or Watch() on, loop
// thread only.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "core/command.h"
#include "core/event_loop.h"
#include "core/unique_fd.h"

namespace execd::core {

// The report descriptor's number in the process, and the variable that says so.
inline constexpr int kExitReportFd = 3;
inline constexpr char kExitReportFdVariable[] = "EXECD_EXIT_FD";

struct ExitReport {
  ExitStatus status;
  ResourceUsage usage;  // CPU times and the largest RSS.
};

// "exit CODE USER_US SYSTEM_US MAX_RSS_KIB": the program's exit code and resource use, or
// nullopt when `line` is not such a line (or its values are out of range).
std::optional<ExitReport> ParseExitReport(absl::string_view line);

class ReportChannel final : public EventLoop::FdHandler {
 public:
  class Listener {
   public:
    virtual ~Listener() = default;
    // The descriptor has said all it will (a line, its end, an error or too long a line)
    // and is closed: `report` is what the line reported, when it was an exit report.
    virtual void OnReportEnded(std::optional<ExitReport> report) = 0;
  };

  explicit ReportChannel(EventLoop& loop) : loop_(loop) {}
  ~ReportChannel() override { Close(); }
  ReportChannel(const ReportChannel&) = delete;
  ReportChannel& operator=(const ReportChannel&) = delete;

  // Takes the read end of the process's descriptor 3 (StdioPlan::Report::kExitReport).
  void Adopt(UniqueFd read_end) { fd_ = std::move(read_end); }
  // Adopted, and not closed yet (nor ended).
  bool open() const { return fd_.valid(); }
  // Waits for the line "ready", then runs `done` with OK, or with why the process will not
  // be ready (it wrote something else, or closed the descriptor, as it does when it dies).
  // `done` runs on the loop as a task of its own (it may destroy the channel's owner), and
  // not at all if the channel is destroyed first.
  absl::Status AwaitReady(absl::AnyInvocable<void(absl::Status) &&> done);
  // AwaitReady's line (or the end of the descriptor) has not come yet.
  bool awaiting_ready() const { return static_cast<bool>(on_ready_); }
  // Reads the exit report as it comes, then tells `listener`.
  absl::Status Watch(Listener* listener);
  // Closes the descriptor unread: what comes after the answer is not wanted.
  void Close();

  void OnFdReady(int fd, uint32_t events) override;

 private:
  // Reads what the descriptor has into line_: false while a line may still come; true once
  // it has one (`*end`, its newline's index) or never will: the descriptor ended
  // (`*closed`; or failed), or the line grew too long (`*end` npos).
  bool ReadLine(size_t* end, bool* closed);
  void ReadReadyLine();
  void ReadExitReport();

  EventLoop& loop_;
  UniqueFd fd_;
  bool watched_ = false;
  std::string line_;
  absl::AnyInvocable<void(absl::Status) &&> on_ready_;          // AwaitReady(), until its line.
  Listener* listener_ = nullptr;                                // Watch().
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);  // Expires with the channel.
};

}  // namespace execd::core
