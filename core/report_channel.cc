#include "core/report_channel.h"

#include <sys/epoll.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "core/status_macros.h"

namespace execd::core {
namespace {

// The longest line read; a longer one is not a report.
constexpr size_t kMaxLine = 128;
// A CPU time past this (about 35 years) is not a report: it would not fit a response.
constexpr int64_t kMaxReportedMicros = int64_t{1} << 50;

}  // namespace

std::optional<ExitReport> ParseExitReport(absl::string_view line) {
  std::vector<absl::string_view> words = absl::StrSplit(line, ' ');
  int code;
  int64_t user_us, system_us, max_rss_kib;
  if (words.size() != 5 || words[0] != "exit" || !absl::SimpleAtoi(words[1], &code) || code < 0 ||
      code > 255 || !absl::SimpleAtoi(words[2], &user_us) || user_us < 0 ||
      !absl::SimpleAtoi(words[3], &system_us) || system_us < 0 ||
      !absl::SimpleAtoi(words[4], &max_rss_kib) || max_rss_kib < 0 ||
      std::max(user_us, system_us) > kMaxReportedMicros || max_rss_kib > (int64_t{1} << 40)) {
    return std::nullopt;
  }
  ExitReport report;
  report.status = ExitStatus{.exited = true, .code = code, .signal = 0};
  report.usage.user_cpu = absl::Microseconds(user_us);
  report.usage.system_cpu = absl::Microseconds(system_us);
  report.usage.max_rss_bytes = max_rss_kib * 1024;
  return report;
}

absl::Status ReportChannel::AwaitReady(absl::AnyInvocable<void(absl::Status) &&> done) {
  EXECD_DCHECK_LOOP(loop_);
  if (!fd_.valid()) return absl::FailedPreconditionError("no report descriptor");
  RETURN_IF_ERROR(loop_.Watch(fd_.get(), EPOLLIN, this));
  watched_ = true;
  on_ready_ = std::move(done);
  return absl::OkStatus();
}

absl::Status ReportChannel::Watch(Listener* listener) {
  EXECD_DCHECK_LOOP(loop_);
  listener_ = listener;
  // Watched from here on even if this fails: the owner gives up on the process then.
  watched_ = true;
  return loop_.Watch(fd_.get(), EPOLLIN, this);
}

void ReportChannel::Close() {
  if (!fd_.valid()) return;
  if (watched_) loop_.Unwatch(fd_.get());  // Never touch the loop from a spawning thread.
  watched_ = false;
  fd_.reset();
}

void ReportChannel::OnFdReady(int /*fd*/, uint32_t /*events*/) {
  EXECD_DCHECK_LOOP(loop_);
  if (on_ready_) {
    ReadReadyLine();
  } else {
    ReadExitReport();
  }
}

bool ReportChannel::ReadLine(size_t* end, bool* closed) {
  char buf[kMaxLine];
  ssize_t n;
  do {
    n = read(fd_.get(), buf, sizeof(buf));
  } while (n < 0 && errno == EINTR);
  if (n < 0 && errno == EAGAIN) return false;
  if (n > 0) line_.append(buf, static_cast<size_t>(n));
  *end = line_.find('\n');
  *closed = n <= 0;
  return *closed || *end != std::string::npos || line_.size() >= kMaxLine;
}

void ReportChannel::ReadReadyLine() {
  size_t end;
  bool closed;
  if (!ReadLine(&end, &closed)) return;
  absl::Status status;
  if (end == std::string::npos) {
    status = absl::FailedPreconditionError(
        closed ? "it closed its report descriptor, or exited, before it reported \"ready\""
               : "it wrote too long a line on its report descriptor, where \"ready\" was expected");
  } else if (absl::string_view(line_).substr(0, end) != "ready") {
    status = absl::FailedPreconditionError(
        absl::StrCat("it wrote \"", absl::CHexEscape(absl::string_view(line_).substr(0, end)),
                     "\" on its report descriptor, where \"ready\" was expected"));
  } else if (end + 1 < line_.size()) {
    // Nothing it says before it has a request can be its program's exit.
    status = absl::FailedPreconditionError(
        "it wrote more after \"ready\" on its report descriptor before it had a request");
  }
  line_.clear();
  loop_.Unwatch(fd_.get());  // Watch() watches it again, for the exit report.
  watched_ = false;
  loop_.Post([alive = std::weak_ptr<bool>(alive_), done = std::move(on_ready_),
              status = std::move(status)]() mutable {
    if (alive.lock() != nullptr) std::move(done)(std::move(status));
  });
  on_ready_ = nullptr;
}

void ReportChannel::ReadExitReport() {
  size_t end;
  bool closed;
  if (!ReadLine(&end, &closed)) return;
  // A line, the end of the descriptor, an error or too long a line: it has said all it will.
  std::optional<ExitReport> report;
  if (end != std::string::npos) report = ParseExitReport(absl::string_view(line_).substr(0, end));
  Close();
  std::string().swap(line_);
  listener_->OnReportEnded(std::move(report));
}

}  // namespace execd::core
