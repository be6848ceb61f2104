#include "core/output_collector.h"

#include <sys/epoll.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <utility>

namespace execd::core {
namespace {

constexpr size_t kReadChunk = 64 << 10;

}  // namespace

OutputCollector::~OutputCollector() {
  if (flush_timer_ != 0) loop_.CancelTimer(flush_timer_);
  for (int i = 0; i < 2; ++i) Close(i);
}

void OutputCollector::Configure(const Settings& settings) {
  settings_ = settings;
  settings_.chunk_bytes = std::max<int64_t>(1, settings.chunk_bytes);
}

void OutputCollector::Adopt(UniqueFd stdout_read, UniqueFd stderr_read) {
  fds_[0] = std::move(stdout_read);
  fds_[1] = std::move(stderr_read);
}

absl::Status OutputCollector::Watch() {
  EXECD_DCHECK_LOOP(loop_);
  watched_ = true;
  for (const UniqueFd& fd : fds_) {
    if (!fd.valid()) continue;
    if (absl::Status s = loop_.Watch(fd.get(), EPOLLIN, this); !s.ok()) return s;
  }
  return absl::OkStatus();
}

void OutputCollector::SetPaused(bool paused) {
  EXECD_DCHECK_LOOP(loop_);
  if (!watched_ || paused == paused_) return;
  paused_ = paused;
  for (const UniqueFd& fd : fds_) {
    if (fd.valid()) (void)loop_.Modify(fd.get(), paused ? 0u : static_cast<uint32_t>(EPOLLIN));
  }
  // Output held back by the pause goes on from the loop, not from inside this call: a
  // resume can be decided while the listener is handing on output.
  if (!paused && (!batches_[0].empty() || !batches_[1].empty())) {
    if (flush_timer_ != 0) loop_.CancelTimer(flush_timer_);
    flush_timer_ = 0;
    ArmFlush(absl::ZeroDuration());
  }
}

void OutputCollector::OnFdReady(int fd, uint32_t /*events*/) {
  EXECD_DCHECK_LOOP(loop_);
  for (int i = 0; i < 2; ++i) {
    if (fd != fds_[i].get()) continue;
    Read(i, /*drain=*/false);
    listener_->OnOutputRead();
    return;
  }
}

void OutputCollector::Read(int index, bool drain) {
  const int max_reads = drain ? 64 : 4;
  char buf[kReadChunk];
  for (int i = 0; i < max_reads && fds_[index].valid(); ++i) {
    ssize_t n = read(fds_[index].get(), buf, sizeof(buf));
    if (n > 0) {
      Deliver(index, buf, static_cast<size_t>(n));
      if (static_cast<size_t>(n) < sizeof(buf) && !drain) return;
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) return;
    Close(index);  // EOF or a read error: nothing more will come.
  }
}

void OutputCollector::Deliver(int index, const char* data, size_t size) {
  const int64_t room = std::max<int64_t>(0, settings_.max_bytes - captured_[index]);
  const size_t keep = std::min<size_t>(size, room);
  if (keep > 0) {
    captured_[index] += keep;
    if (settings_.stream) {
      batches_[index].append(data, keep);
      // Full chunks go now; the rest waits for more, or for the flush timer.
      HandOn(index, /*partial=*/false);
      if (!batches_[index].empty()) ArmFlush(settings_.flush_interval);
    } else {
      data_[index].append(data, keep);
    }
  }
  if (keep < size) {
    truncated_[index] = true;
    listener_->OnOutputCapped();
  }
}

void OutputCollector::HandOn(int index, bool partial) {
  // The listener may pause the output from inside OnOutput (its reader fell behind): what
  // is left then waits here, in one buffer, rather than as many queued messages there.
  std::string& batch = batches_[index];
  const size_t chunk = static_cast<size_t>(settings_.chunk_bytes);
  size_t sent = 0;
  while (!paused_ && sent < batch.size() && (partial || batch.size() - sent >= chunk)) {
    const size_t n = std::min(chunk, batch.size() - sent);
    listener_->OnOutput(index == 0 ? OutputStream::kStdout : OutputStream::kStderr,
                        absl::string_view(batch).substr(sent, n));
    sent += n;
  }
  batch.erase(0, sent);
}

void OutputCollector::ArmFlush(absl::Duration after) {
  if (flush_timer_ != 0) return;
  flush_timer_ = loop_.AddTimer(loop_.clock().Now() + after, [this]() mutable {
    flush_timer_ = 0;
    Flush();
  });
}

void OutputCollector::Flush() {
  for (int i = 0; i < 2; ++i) HandOn(i, /*partial=*/true);
  if (exit_held_ && batches_[0].empty() && batches_[1].empty()) {
    exit_held_ = false;
    listener_->OnExitReleased();
  }
}

void OutputCollector::Drain() {
  for (int i = 0; i < 2; ++i) {
    Read(i, /*drain=*/true);
    Close(i);
  }
}

void OutputCollector::HoldExit() {
  if (flush_timer_ != 0) loop_.CancelTimer(flush_timer_);
  flush_timer_ = 0;
  exit_held_ = true;
  Flush();
}

void OutputCollector::DropHeld() {
  for (int i = 0; i < 2; ++i) {
    if (!batches_[i].empty()) truncated_[i] = true;
    batches_[i].clear();
  }
  Flush();
}

void OutputCollector::MoveInto(Result& result) {
  result.stdout_data = std::move(data_[0]);
  result.stderr_data = std::move(data_[1]);
  result.stdout_truncated = truncated_[0];
  result.stderr_truncated = truncated_[1];
}

void OutputCollector::Close(int index) {
  UniqueFd& fd = fds_[index];
  if (!fd.valid()) return;
  if (watched_) loop_.Unwatch(fd.get());  // Never touch the loop from a spawning thread.
  fd.reset();
}

}  // namespace execd::core
